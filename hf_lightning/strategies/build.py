"""``build_strategy``: HF's parallelism arguments -> the one Lightning strategy that realises them.

Order of precedence: ``deepspeed`` -> ``fsdp`` -> an explicit ``strategy`` -> DDP when more than one
process runs -> ``"auto"``. Each strategy's construction lives beside its own rules (``deepspeed.py``,
``fsdp.py``, ``ddp.py``); this module only checks the arguments against each other and picks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from torch import nn

from hf_lightning.errors import ConfigError
from hf_lightning.strategies.ddp import (
    ddp_strategy,
    is_ddp_name,
    process_group_backend,
    process_group_timeout,
)
from hf_lightning.strategies.deepspeed import deepspeed_strategy
from hf_lightning.strategies.devices import count_devices, targets_cuda
from hf_lightning.strategies.fsdp import fsdp1_strategy, fsdp2_strategy
from hf_lightning.strategies.fsdp_options import FSDPOptions
from hf_lightning.strategies.tensor_parallel import tensor_parallel_strategy

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy

__all__ = ["build_strategy"]


def build_strategy(
    *,
    fsdp: bool | str | list[str] | None = None,
    fsdp_config: Mapping[str, Any] | str | None = None,
    deepspeed: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    args: Any = None,
    model: nn.Module | None = None,
    num_training_steps: int = 0,
    accelerator: Any = "auto",
    devices: Any = "auto",
    num_nodes: int = 1,
    ddp_find_unused_parameters: bool | None = None,
    ddp_bucket_cap_mb: int | None = None,
    ddp_broadcast_buffers: bool | None = None,
    ddp_timeout: int | float | timedelta | None = 1800,
    ddp_backend: str | None = None,
    strategy: str | Strategy | None = None,
    tp_size: int = 1,
    tp_plan: Mapping[str, str] | str | None = None,
) -> str | Strategy:
    """Pick the Lightning strategy that realises HF's parallelism arguments.

    Order of precedence: ``deepspeed`` → ``tp_size`` > 1 → ``fsdp`` → an explicit ``strategy`` → DDP when more
    than one process runs → ``"auto"``. ``tp_size`` > 1 builds a :class:`TensorParallelStrategy` (tensor
    parallel over ``tp_size`` processes, FSDP2 with ``fsdp``'s options over the data-parallel rest).
    DeepSpeed and Lightning's FSDPStrategy need CUDA, so on CPU ``fsdp`` becomes FSDP2 under
    ``ModelParallelStrategy`` (the LightningModule must then call :func:`fully_shard_hf_model` in
    ``configure_model``; :func:`fsdp_options` gives it the layer names and offload setting) and ``deepspeed``
    is refused with the fix. DDP gets HF's ``ddp_*`` knobs and the gloo backend on CPU.
    """
    options = FSDPOptions.from_hf(fsdp, fsdp_config)
    explicit = strategy if not (isinstance(strategy, str) and strategy.lower() == "auto") else None
    _check_exclusive(deepspeed, options, explicit, strategy, num_nodes)
    tp_size = _check_tp_size(tp_size, tp_plan, deepspeed, explicit)

    cuda = targets_cuda(accelerator)
    world = count_devices(devices, cuda) * num_nodes
    timeout = process_group_timeout(ddp_timeout)
    backend = process_group_backend(ddp_backend, cuda)

    if deepspeed:
        if not cuda:
            raise ConfigError(
                "deepspeed",
                "DeepSpeed needs a GPU but this run is on the CPU",
                'use fsdp="full_shard auto_wrap" instead, which runs on CPU via FSDP2',
            )
        return deepspeed_strategy(
            deepspeed, args, model, num_training_steps, world_size=world, timeout=timeout, backend=backend
        )
    if tp_size > 1:
        return tensor_parallel_strategy(tp_size, tp_plan, options, world, timeout, backend)
    if options.enabled:
        if cuda:
            return fsdp1_strategy(options, model, timeout, backend)
        return fsdp2_strategy(options, world, timeout, backend)
    if explicit is not None and not is_ddp_name(explicit):
        return explicit
    if explicit is not None or world > 1:
        return ddp_strategy(
            explicit,
            model,
            args,
            timeout=timeout,
            backend=backend,
            find_unused_parameters=ddp_find_unused_parameters,
            bucket_cap_mb=ddp_bucket_cap_mb,
            broadcast_buffers=ddp_broadcast_buffers,
        )
    return "auto"


def _check_tp_size(tp_size: Any, tp_plan: Any, deepspeed: Any, explicit: Any) -> int:
    """``tp_size`` as a positive int that no other strategy argument contradicts."""
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise ConfigError("tp_size", f"must be a positive integer, got {tp_size!r}", "use tp_size=1 (off) or e.g. 2")
    if isinstance(tp_plan, Mapping) and tp_size == 1:
        raise ConfigError("tp_plan", "is set but tp_size is 1, so nothing would be split", "set tp_size=2 or more")
    if tp_size > 1 and deepspeed:
        raise ConfigError("tp_size", "tensor parallelism and deepspeed are both set", "choose one of them")
    if tp_size > 1 and explicit is not None:
        raise ConfigError("strategy", f"strategy={explicit!r} conflicts with tp_size={tp_size}", "drop strategy")
    return tp_size


def _check_exclusive(
    deepspeed: Any, options: FSDPOptions, explicit: Any, strategy: Any, num_nodes: Any
) -> None:
    """Refuse arguments that ask for two strategies at once, and a bad ``num_nodes``."""
    if deepspeed and options.enabled:
        raise ConfigError("deepspeed", "deepspeed and fsdp are both set", "choose one of them")
    if explicit is not None and (deepspeed or options.enabled):
        chosen = "deepspeed" if deepspeed else "fsdp"
        raise ConfigError(
            "strategy", f"strategy={strategy!r} conflicts with {chosen}", f"drop strategy or {chosen}"
        )
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ConfigError(
            "num_nodes", f"must be a positive integer, got {num_nodes!r}", "use num_nodes=1 or more"
        )
