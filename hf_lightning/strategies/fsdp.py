"""Sharding Hugging Face models with FSDP, and the Lightning strategies that run it.

Lightning's ``FSDPStrategy`` (FSDP1) refuses the CPU, while FSDP2 (``fully_shard``) runs there under
``ModelParallelStrategy``: on CPU the LightningModule shards the model in ``configure_model`` with
:func:`fully_shard_hf_model`; on CUDA :func:`fsdp1_strategy` gives Lightning HF's wrap and checkpointing
policies. Either way the sharding unit is a transformer block (the model's ``_no_split_modules``, the
granularity transformers uses for device maps), and the full weights come back through one collective
gather (:func:`export_full_state_dict`) so ``save_pretrained`` writes ordinary HF files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_lightning.errors import ConfigError
from hf_lightning.strategies.fsdp_options import FSDPOptions

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy
    from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "export_full_state_dict",
    "fsdp1_strategy",
    "fsdp2_strategy",
    "fully_shard_hf_model",
    "save_full_pretrained",
    "shard_for_strategy",
]


def _owners_by_param(model: nn.Module) -> dict[int, list[str]]:
    """Every qualified name under which each parameter is reachable (tied weights have several)."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    return owners


def _shares_params_outside(prefix: str, module: nn.Module, owners: dict[int, list[str]]) -> bool:
    """Whether ``module`` owns a parameter that is also used outside it (e.g. an embedding tied to a LM head).

    FSDP (1 and 2) cannot put one parameter in two sharding units, so such a module must stay with its
    parent instead of getting its own unit; the root unit then holds the tied weight once.
    """
    inside = prefix + "."
    return any(
        not name.startswith(inside) for param in module.parameters() for name in owners.get(id(param), ())
    )


def _layer_classes(
    model: nn.Module, names: Iterable[str] | None, field: str = "fsdp_config.transformer_layer_cls_to_wrap"
) -> set[type[nn.Module]]:
    """Module classes to wrap: user-named ones (must exist) or the model's ``_no_split_modules``.

    Classes whose instances hold tied weights are left out (see :func:`_shares_params_outside`).
    """
    explicit = names is not None
    wanted = set(names) if names is not None else set(getattr(model, "_no_split_modules", None) or ())
    owners = _owners_by_param(model)
    found: dict[str, type[nn.Module]] = {}
    excluded: set[str] = set()
    for prefix, module in model.named_modules():
        cls_name = type(module).__name__
        if cls_name not in wanted or module is model:
            continue
        if _shares_params_outside(prefix, module, owners):
            excluded.add(cls_name)
        found.setdefault(cls_name, type(module))
    missing = wanted - set(found)
    if explicit and missing:
        present = sorted({type(m).__name__ for m in model.modules()})
        raise ConfigError(
            field,
            f"{type(model).__name__} has no module of class {', '.join(sorted(missing))}",
            f"use class names that occur in the model, e.g. {', '.join(present[:8])}",
        )
    return {cls for name, cls in found.items() if name not in excluded}


def _size_based_units(model: nn.Module, min_num_params: int) -> list[nn.Module]:
    """Modules that torch's size-based policy would wrap: children first, each holding at least
    ``min_num_params`` parameters that no smaller unit holds (blocks owning a tied weight are skipped)."""
    owners = _owners_by_param(model)
    covered: set[int] = set()
    units = []
    for prefix, module in reversed(list(model.named_modules())):
        if module is model:
            continue
        fresh = [p for p in module.parameters() if id(p) not in covered]
        if sum(p.numel() for p in fresh) >= max(min_num_params, 1) and not _shares_params_outside(
            prefix, module, owners
        ):
            units.append(module)
            covered.update(id(p) for p in fresh)
    return units


def _data_parallel_mesh(mesh: DeviceMesh | None) -> DeviceMesh | None:
    """Accept Lightning's 2-D ``(data_parallel, tensor_parallel)`` mesh and shard over its data axis."""
    if mesh is None or mesh.ndim == 1:
        return mesh
    dim_names = mesh.mesh_dim_names or ()
    if "data_parallel" in dim_names:
        return mesh["data_parallel"]
    raise ValueError(
        f"fully_shard_hf_model needs a 1-D mesh or one with a 'data_parallel' axis, got {dim_names}"
    )


def fully_shard_hf_model(
    model: nn.Module,
    mesh: DeviceMesh | None = None,
    layer_cls_names: Iterable[str] | None = None,
    offload: bool = False,
    *,
    reshard_after_forward: bool = True,
    mp_policy: Any = None,
    wrap_policy: str = "TRANSFORMER_BASED_WRAP",
    min_num_params: int = 0,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """Shard a Hugging Face model with FSDP2: one unit per transformer block, then the root.

    Blocks are the model's ``_no_split_modules`` classes (or ``layer_cls_names``), the same granularity
    transformers uses for device maps. A block that owns a weight tied elsewhere (a tied input embedding)
    is left to the root unit, since FSDP refuses to split a shared parameter. Safe to call twice (Lightning
    may call ``configure_model`` again): an already sharded model is returned unchanged. ``mesh`` may be
    1-D or Lightning's ModelParallelStrategy mesh. ``offload`` gives every unit a ``CPUOffloadPolicy``:
    parameters, gradients and the optimizer step stay on the CPU between uses (pinned memory only when
    a GPU is in use; on a CPU run the policy is applied all the same, it just saves no device memory).
    ``reshard_after_forward=False`` keeps gathered weights until backward (HF's ``shard_grad_op``).
    ``wrap_policy`` is HF's ``fsdp_config.auto_wrap_policy``: ``TRANSFORMER_BASED_WRAP`` (the blocks above),
    ``SIZE_BASED_WRAP`` (every module, children first, holding ``min_num_params`` parameters not yet in a
    unit, as torch's size-based policy) or ``NO_WRAP`` (the root unit only). ``activation_checkpointing``
    turns on the model's own non-reentrant checkpointing of its blocks before sharding.
    Collective: every rank must call it.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

    if isinstance(model, FSDPModule):
        return model
    mesh = _data_parallel_mesh(mesh)
    if activation_checkpointing:
        from hf_lightning.models import enable_gradient_checkpointing

        enable_gradient_checkpointing(model, field="fsdp_config.activation_checkpointing")
    classes = _layer_classes(model, layer_cls_names) if wrap_policy == "TRANSFORMER_BASED_WRAP" else set()
    on_cpu = mesh.device_type == "cpu" if mesh is not None else not torch.cuda.is_available()
    kwargs: dict[str, Any] = {"reshard_after_forward": reshard_after_forward}
    if mesh is not None:
        kwargs["mesh"] = mesh
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=not on_cpu) if offload else OffloadPolicy()
    # Children before parents, so a nested block is sharded before the block around it.
    if wrap_policy == "SIZE_BASED_WRAP":
        for module in _size_based_units(model, min_num_params):
            fully_shard(module, **kwargs)
    for _, module in reversed(list(model.named_modules())):
        if module is not model and isinstance(module, tuple(classes)) and not isinstance(module, FSDPModule):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


def export_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Gather a (possibly FSDP2-sharded) model into one full CPU state dict for ``save_pretrained``.

    Collective: every rank must call it, since the gather is an all-gather. Only rank 0 gets the dict
    (others get None) so that only one process holds, and writes, the full weights. Without an
    initialised process group this is simply the model's state dict moved to CPU.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else None


def save_full_pretrained(
    model: nn.Module, save_directory: str | os.PathLike[str], **save_kwargs: Any
) -> bool:
    """Collective ``save_pretrained`` for a sharded model: gather on all ranks, write on rank 0.

    Returns True on the rank that wrote. ``model`` must be a ``PreTrainedModel`` (sharding keeps its class).
    """
    state = export_full_state_dict(model)
    if state is None:
        return False
    model.save_pretrained(save_directory, state_dict=state, **save_kwargs)  # type: ignore[operator]
    return True


def fsdp1_strategy(
    options: FSDPOptions, model: nn.Module | None, timeout: timedelta, backend: str | None
) -> Strategy:
    """Lightning's (CUDA-only) FSDPStrategy with HF's wrap and checkpointing policies."""
    from lightning.pytorch.strategies import FSDPStrategy

    classes: set[type[nn.Module]] = set()
    if options.auto_wrap_policy == "TRANSFORMER_BASED_WRAP" or options.activation_checkpointing:
        if model is None:
            raise ConfigError(
                "model", "FSDP needs the model to find its layer classes", "pass model= (not only model_init)"
            )
        classes = _layer_classes(model, options.transformer_layer_cls_to_wrap)
        if not classes:
            raise ConfigError(
                "fsdp_config.transformer_layer_cls_to_wrap",
                f"{type(model).__name__} declares no _no_split_modules to wrap",
                "name the transformer block class, e.g. transformer_layer_cls_to_wrap=['BertLayer']",
            )
    wrap_policy: Any = None
    if options.auto_wrap_policy == "TRANSFORMER_BASED_WRAP":
        wrap_policy = classes
    elif options.auto_wrap_policy == "SIZE_BASED_WRAP":
        from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

        wrap_policy = partial(size_based_auto_wrap_policy, min_num_params=options.min_num_params)
    extra: dict[str, Any] = {
        "limit_all_gathers": options.limit_all_gathers,
        "forward_prefetch": options.forward_prefetch,
        "sync_module_states": options.sync_module_states,
        "use_orig_params": options.use_orig_params,
    }
    if options.backward_prefetch is not None:
        from torch.distributed.fsdp import BackwardPrefetch

        extra["backward_prefetch"] = BackwardPrefetch[options.backward_prefetch]
    return FSDPStrategy(
        sharding_strategy=options.sharding_strategy,
        auto_wrap_policy=wrap_policy,
        cpu_offload=options.cpu_offload,
        activation_checkpointing_policy=classes if options.activation_checkpointing else None,
        state_dict_type="sharded" if options.state_dict_type == "SHARDED_STATE_DICT" else "full",
        timeout=timeout,
        process_group_backend=backend,
        **extra,
    )


def fsdp2_strategy(options: FSDPOptions, world_size: int, timeout: timedelta, backend: str | None) -> Strategy:
    """FSDP2 for CPU runs: :class:`FSDP2Strategy` over all processes; the module shards in ``configure_model``."""
    if options.sharding_strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
        raise ConfigError(
            "fsdp",
            f"{options.sharding_strategy.lower()} is not available on CPU (FSDP2)",
            "use full_shard or shard_grad_op",
        )
    from hf_lightning.strategies.fsdp2 import FSDP2Strategy

    warn_fsdp1_only_options(options)
    return FSDP2Strategy(
        options,
        data_parallel_size=world_size,
        tensor_parallel_size=1,
        timeout=timeout,
        process_group_backend=backend,
    )


#: FSDP1 settings with no FSDP2 counterpart, as (option, value that acts, why it cannot act on FSDP2).
FSDP1_ONLY: tuple[tuple[str, Any, str], ...] = (
    ("forward_prefetch", False, "FSDP2 prefetches the next unit's all-gather on its own"),
    ("backward_prefetch", None, "FSDP2 prefetches the next unit's all-gather on its own"),
    ("limit_all_gathers", True, "FSDP1's all-gather rate limiter; FSDP2 has no such setting"),
    ("use_orig_params", True, "FSDP2 always trains the original parameters (as DTensors)"),
    ("sync_module_states", True, "FSDP2 does not broadcast rank 0's weights: every rank builds the same "
                                 "seeded model before sharding"),
    ("cpu_ram_efficient_loading", False, "the model is loaded on every rank before the strategy exists"),
)


def warn_fsdp1_only_options(options: FSDPOptions) -> None:
    """Warn once for each ``fsdp_config`` option that acts on the GPU (FSDP1) path but not on FSDP2 (CPU)."""
    from hf_lightning.args import _warn_once

    for name, inert, reason in FSDP1_ONLY:
        if getattr(options, name) != inert:
            _warn_once(f"no-effect:fsdp_config.{name}",
                       f"fsdp_config.{name} has no effect on the CPU FSDP2 path: {reason}")


def shard_for_strategy(model: nn.Module, strategy: Strategy, mesh: DeviceMesh | None = None) -> nn.Module:
    """FSDP2-shard ``model`` the way ``strategy`` asks (call from ``configure_model``; collective).

    An :class:`~hf_lightning.strategies.fsdp2.FSDP2Strategy` (what ``fsdp=...`` builds on CPU) carries
    HF's options: the layer classes to wrap, CPU offload and reshard-after-forward. A plain
    ``ModelParallelStrategy`` (e.g. named in a LightningCLI config) gets the defaults: one unit per
    ``_no_split_modules`` block, full resharding, no offload.
    """
    from hf_lightning.strategies.fsdp2 import FSDP2Strategy

    if isinstance(strategy, FSDP2Strategy):
        options = strategy.fsdp_options
        return fully_shard_hf_model(
            model,
            mesh=mesh if mesh is not None else strategy.device_mesh,
            layer_cls_names=options.transformer_layer_cls_to_wrap,
            offload=options.cpu_offload,
            reshard_after_forward=options.reshard_after_forward,
            wrap_policy=options.auto_wrap_policy,
            min_num_params=options.min_num_params,
            activation_checkpointing=options.activation_checkpointing,
        )
    return fully_shard_hf_model(model, mesh=mesh)
