"""Data parallelism from HF's ``ddp_*`` arguments, and process-group hygiene.

Lightning's ``"ddp"`` strategy name would silently drop ``ddp_find_unused_parameters``,
``ddp_bucket_cap_mb`` and friends, so DDP is built here with them; the backend defaults to gloo on CPU
because Lightning's own guess is wrong there. The timeout and backend readers are shared by every
strategy that opens a process group (DDP, FSDP, DeepSpeed).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_lightning.errors import ConfigError
from hf_lightning.strategies.config import closest

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy

__all__ = [
    "DDP_BACKENDS",
    "ddp_strategy",
    "destroy_process_group_at_exit",
    "is_ddp_name",
    "process_group_backend",
    "process_group_timeout",
]

#: Process-group backends ``TrainingArguments.ddp_backend`` accepts.
DDP_BACKENDS: tuple[str, ...] = ("nccl", "gloo", "mpi", "xccl", "hccl", "cncl", "mccl")

# Lightning strategy names that mean "DDP, launched this way"; we build DDPStrategy ourselves for them so
# that the ddp_* arguments are not silently dropped.
_DDP_START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}



def process_group_timeout(ddp_timeout: Any) -> timedelta:
    """``ddp_timeout`` in seconds (HF's default 1800) as the timedelta Lightning's strategies take."""
    if ddp_timeout is None:
        return timedelta(seconds=1800)
    if isinstance(ddp_timeout, timedelta):
        return ddp_timeout
    if isinstance(ddp_timeout, bool) or not isinstance(ddp_timeout, (int, float)) or ddp_timeout <= 0:
        raise ConfigError(
            "ddp_timeout", f"must be a positive number of seconds, got {ddp_timeout!r}", "e.g. 1800"
        )
    return timedelta(seconds=ddp_timeout)


def process_group_backend(ddp_backend: str | None, cuda: bool) -> str | None:
    """Validate ``ddp_backend``; default to gloo on CPU because Lightning's default guess is wrong there."""
    if ddp_backend is None:
        return None if cuda else "gloo"
    backend = ddp_backend.lower()
    if backend not in DDP_BACKENDS:
        raise ConfigError(
            "ddp_backend",
            f"unknown backend {ddp_backend!r}{closest(backend, DDP_BACKENDS)}",
            f"use one of {', '.join(DDP_BACKENDS)}",
        )
    if backend == "nccl" and not cuda:
        raise ConfigError(
            "ddp_backend", "nccl needs CUDA GPUs but this run is on the CPU", 'use ddp_backend="gloo"'
        )
    return backend


def _find_unused(model: Any, args: Any, explicit: bool | None) -> bool:
    """HF's default for ``ddp_find_unused_parameters``: on, except for activation-checkpointed HF models.

    Checkpointing re-runs forward inside backward, which breaks DDP's unused-parameter search; otherwise
    HF stays on the safe side because many heads leave parameters unused (e.g. BERT's pooler).
    """
    if explicit is not None:
        return bool(explicit)
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return True
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return not (bool(checkpointing) or bool(getattr(args, "activation_checkpointing", False)))


def ddp_strategy(
    explicit: str | Strategy | None,
    model: nn.Module | None,
    args: Any,
    *,
    timeout: timedelta,
    backend: str | None,
    find_unused_parameters: bool | None,
    bucket_cap_mb: int | None,
    broadcast_buffers: bool | None,
) -> Strategy:
    """Lightning's ``DDPStrategy`` carrying HF's ``ddp_*`` knobs, launched as ``explicit`` names (``ddp_spawn``...)."""
    from lightning.pytorch.strategies import DDPStrategy

    start_method = _DDP_START_METHODS[explicit.lower()] if isinstance(explicit, str) else "popen"
    ddp_kwargs: dict[str, Any] = {"find_unused_parameters": _find_unused(model, args, find_unused_parameters)}
    if bucket_cap_mb is not None:
        ddp_kwargs["bucket_cap_mb"] = bucket_cap_mb
    if broadcast_buffers is not None:
        ddp_kwargs["broadcast_buffers"] = broadcast_buffers
    static_graph = getattr(args, "ddp_static_graph", None)
    if static_graph is not None:  # as transformers passes it to DistributedDataParallel
        ddp_kwargs["static_graph"] = static_graph
    return DDPStrategy(start_method=start_method, timeout=timeout, process_group_backend=backend, **ddp_kwargs)


def is_ddp_name(strategy: Any) -> bool:
    """Whether ``strategy`` is a Lightning name meaning "DDP, launched this way" (built here with HF's knobs)."""
    return isinstance(strategy, str) and strategy.lower() in _DDP_START_METHODS


_EXIT_HOOK_REGISTERED = False


def destroy_process_group_at_exit() -> None:
    """Tear down an open process group before the interpreter does.

    Lightning registers this only for NCCL. A gloo group left for interpreter shutdown is destroyed in
    arbitrary order with its worker threads, and about one CPU run in ten then aborts with
    ``terminate called without an active exception`` *after* training finished and outputs were written:
    the exit code says "crashed" although nothing did. ``atexit`` runs before that shutdown.
    """
    global _EXIT_HOOK_REGISTERED
    if _EXIT_HOOK_REGISTERED or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    import atexit

    def _destroy() -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(_destroy)
    _EXIT_HOOK_REGISTERED = True
