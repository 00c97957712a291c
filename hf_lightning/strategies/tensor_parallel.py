"""Tensor parallelism for Hugging Face models: a plan per model family, applied with torch's ``parallelize_module``.

Lightning's ``ModelParallelStrategy`` builds a 2-D device mesh ``(data_parallel, tensor_parallel)`` and
leaves the parallelisation to the module's ``configure_model``. There the model is split over the
``tensor_parallel`` axis with torch's own ``ColwiseParallel``/``RowwiseParallel`` (Megatron-style: the
first projection of a block keeps a slice of the output features, the second a slice of the input
features and all-reduces its output), then, when several data-parallel groups exist, sharded with FSDP2
over the ``data_parallel`` axis (2-D parallelism).

The plan comes from transformers where the model declares one (``config.base_model_tp_plan``, e.g.
Llama, Mistral, Qwen2: q/k/v/gate/up colwise, o/down rowwise), or from :data:`BERT_TP_PLAN` for BERT-style
encoders, which transformers 5.25 gives none; a user ``tp_plan`` dict overrides both. transformers' own
``apply_tensor_parallelism`` is not used: it needs the mesh manager that ``from_pretrained(tp_plan=...)``
attaches while loading, whereas here the model is already built when the strategy starts.

Every process of a tensor-parallel group sees the same batches (the sampler splits data over the
data-parallel ranks only, :mod:`hf_lightning.data_parallel`), so losses, item counts and the token-exact
accumulation arithmetic are those of one process holding the whole model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_lightning.errors import ConfigError

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy
    from torch.distributed.device_mesh import DeviceMesh

    from hf_lightning.strategies.fsdp_options import FSDPOptions

__all__ = [
    "BERT_TP_PLAN",
    "TP_STYLES",
    "parallelize_for_strategy",
    "resolve_tp_plan",
    "tensor_parallel_strategy",
    "tensor_parallelize",
]

# BERT-style encoders (BERT, RoBERTa, ELECTRA, ... share these module names), relative to the base model:
# attention q/k/v colwise and its output projection rowwise; the feed-forward's first layer colwise and its
# second rowwise. Each block then costs two all-reduces forward and two backward, as in Megatron-LM.
BERT_TP_PLAN: dict[str, str] = {
    "encoder.layer.*.attention.self.query": "colwise",
    "encoder.layer.*.attention.self.key": "colwise",
    "encoder.layer.*.attention.self.value": "colwise",
    "encoder.layer.*.attention.output.dense": "rowwise",
    "encoder.layer.*.intermediate.dense": "colwise",
    "encoder.layer.*.output.dense": "rowwise",
}

TP_STYLES = ("colwise", "rowwise")


def _base_prefix(model: nn.Module) -> str:
    """The attribute under which a task model keeps its base model ('' when ``model`` is the base)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    return f"{prefix}." if prefix and hasattr(model, prefix) else ""


def resolve_tp_plan(model: nn.Module, tp_plan: Mapping[str, str] | str | None = None) -> dict[str, str]:
    """The plan for ``model``: module-name patterns (``*`` matches one name part) -> ``colwise``/``rowwise``.

    ``tp_plan`` None or ``"auto"``: the model config's ``base_model_tp_plan`` (transformers' own), else
    :data:`BERT_TP_PLAN` for a model with BERT's module names; the patterns are prefixed with the task
    model's ``base_model_prefix``. A dict is taken as given, with names as ``model.named_modules()``
    prints them. Refused in one line: styles other than colwise/rowwise, patterns that match no layer,
    a plan that matches no ``nn.Linear`` (GPT-2's ``Conv1D`` layers among them).
    """
    resolve_tp_plan_arg(tp_plan)
    _refuse_conv1d(model)
    plan = dict(tp_plan) if isinstance(tp_plan, Mapping) else _auto_plan(model)
    _check_styles(plan)
    _check_plan_matches(model, plan)
    return plan


def resolve_tp_plan_arg(tp_plan: Any) -> None:
    """Refuse a ``tp_plan`` that is neither None, ``"auto"`` nor a dict of colwise/rowwise styles (no model needed)."""
    if tp_plan is not None and not isinstance(tp_plan, (str, Mapping)):
        raise ConfigError("tp_plan", f"expected a dict or 'auto', got {type(tp_plan).__name__}",
                          "pass tp_plan='auto' or {'<module pattern>': 'colwise' | 'rowwise'}")
    if isinstance(tp_plan, str) and tp_plan != "auto":
        raise ConfigError("tp_plan", f"unknown plan {tp_plan!r}", "pass 'auto' or a dict of module patterns")
    if isinstance(tp_plan, Mapping):
        _check_styles(tp_plan)


def _check_styles(plan: Mapping[str, str]) -> None:
    for pattern, style in plan.items():
        if style not in TP_STYLES:
            raise ConfigError("tp_plan", f"{pattern!r}: style {style!r} is not supported here",
                              f"use one of {', '.join(TP_STYLES)} (transformers' other styles need its "
                              "from_pretrained loader)")


def _auto_plan(model: nn.Module) -> dict[str, str]:
    config = getattr(model, "config", None)
    base_plan = getattr(config, "base_model_tp_plan", None) if config is not None else None
    if not base_plan:
        prefix = _base_prefix(model)
        names = {name for name, _ in model.named_modules()}
        base_plan = BERT_TP_PLAN if f"{prefix}encoder.layer.0.attention.self.query" in names else None
    if not base_plan:
        raise ConfigError("tp_plan", f"{type(model).__name__} has no tensor-parallel plan (its config has no "
                          "base_model_tp_plan)", "pass tp_plan={'<module pattern>': 'colwise' | 'rowwise', ...}")
    prefix = _base_prefix(model)
    return {prefix + pattern: style for pattern, style in base_plan.items()}


def _refuse_conv1d(model: nn.Module) -> None:
    """GPT-2-style ``Conv1D`` layers store the weight transposed; torch's colwise/rowwise styles shard ``Linear``."""
    for name, module in model.named_modules():
        if type(module).__name__ == "Conv1D":
            raise ConfigError("tp_size", f"{type(model).__name__} is built from transformers Conv1D layers "
                              f"(e.g. {name}), which tensor parallelism cannot shard",
                              "train it with tp_size=1 (ddp, or fsdp to shard its weights)")


def _matches(pattern: str, name: str) -> bool:
    parts, want = name.split("."), pattern.split(".")
    return len(parts) == len(want) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want))


def _check_plan_matches(model: nn.Module, plan: Mapping[str, str]) -> None:
    modules = list(model.named_modules())
    for pattern in plan:
        matched = [module for name, module in modules if _matches(pattern, name)]
        if not matched:
            raise ConfigError("tp_plan", f"{pattern!r} matches no module of {type(model).__name__}",
                              "use names as model.named_modules() prints them ('*' for the layer index)")
        bad = [type(m).__name__ for m in matched if not isinstance(m, nn.Linear)]
        if bad:
            raise ConfigError("tp_plan", f"{pattern!r} matches a {bad[0]}, not an nn.Linear",
                              "name only linear projections in the plan")


def _check_divisible(model: nn.Module, plan: Mapping[str, str], tp_size: int) -> None:
    """Sharded feature counts and attention heads must split evenly over the tensor-parallel ranks."""
    config = getattr(model, "config", None)
    for field in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(config, field, None)
        if isinstance(heads, int) and heads % tp_size:
            raise ConfigError("tp_size", f"{field}={heads} of {type(model).__name__} does not divide by "
                              f"tp_size={tp_size}", f"use a tp_size that divides {heads}")
    for name, module in model.named_modules():
        for pattern, style in plan.items():
            if _matches(pattern, name) and isinstance(module, nn.Linear):
                features = module.out_features if style == "colwise" else module.in_features
                if features % tp_size:
                    raise ConfigError("tp_size", f"{name} has {features} features to split, which does not "
                                      f"divide by tp_size={tp_size}", "use a tp_size that divides it")


@torch.no_grad()
def _broadcast_replicated(model: nn.Module, mesh: DeviceMesh) -> None:
    """Make every tensor-parallel rank start from rank 0's copy of the weights that stay whole.

    Sharded weights are scattered from rank 0 by ``parallelize_module``; layer norms, embeddings and heads
    stay ordinary tensors on every rank and must be equal there, whatever each process' initialisation was.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    group = mesh.get_group()
    src = dist.get_global_rank(group, 0)
    for tensor in [*model.parameters(), *model.buffers()]:
        if not isinstance(tensor, DTensor):
            dist.broadcast(tensor.data, src=src, group=group)


def tensor_parallelize(
    model: nn.Module, mesh: DeviceMesh, tp_plan: Mapping[str, str] | str | None = None
) -> nn.Module:
    """Split ``model`` over the 1-D tensor-parallel ``mesh`` following its plan (collective; every rank calls it).

    Idempotent: a model that already holds sharded (``DTensor``) weights is returned unchanged, since
    Lightning may call ``configure_model`` twice (validate after fit).
    """
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    if any(isinstance(p, DTensor) for p in model.parameters()):
        return model
    plan = resolve_tp_plan(model, tp_plan)
    _check_divisible(model, plan, mesh.size())
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    parallelize_module(model, mesh, {pattern: styles[style]() for pattern, style in plan.items()})
    _broadcast_replicated(model, mesh)
    return model


def parallelize_for_strategy(model: nn.Module, strategy: Strategy, mesh: DeviceMesh) -> nn.Module:
    """What ``configure_model`` does under ``ModelParallelStrategy``: tensor parallel, then FSDP2 (collective).

    ``mesh`` is Lightning's 2-D ``(data_parallel, tensor_parallel)`` mesh. With a tensor-parallel size
    above 1 the model is split by its plan (:class:`~hf_lightning.strategies.fsdp2.TensorParallelStrategy`
    carries a user ``tp_plan``; a plain ``ModelParallelStrategy`` uses the model's own) and FSDP2 shards it
    over the data-parallel axis only when that axis has several ranks. With tensor-parallel size 1 this is
    FSDP2 alone, as before. The data-parallel axis is registered for samplers and gathers.
    """
    from hf_lightning.data_parallel import use_data_parallel_mesh
    from hf_lightning.strategies.fsdp import shard_for_strategy

    dp_mesh, tp_mesh = mesh["data_parallel"], mesh["tensor_parallel"]
    use_data_parallel_mesh(dp_mesh)
    if tp_mesh.size() == 1:
        return shard_for_strategy(model, strategy, mesh=dp_mesh)
    tensor_parallelize(model, tp_mesh, getattr(strategy, "tp_plan", None))
    if dp_mesh.size() > 1:
        shard_for_strategy(model, strategy, mesh=dp_mesh)
    return model


def tensor_parallel_strategy(
    tp_size: int,
    tp_plan: Mapping[str, str] | str | None,
    fsdp_options: FSDPOptions,
    world_size: int,
    timeout: timedelta,
    backend: str | None,
) -> Strategy:
    """``TrainingArguments(tp_size=N)``: a :class:`TensorParallelStrategy` over ``world_size`` processes."""
    if world_size < tp_size or world_size % tp_size:
        raise ConfigError("tp_size", f"tp_size={tp_size} needs a multiple of {tp_size} processes, got {world_size}",
                          f"set devices (x num_nodes) to {tp_size} or a multiple of it")
    if fsdp_options.enabled and fsdp_options.sharding_strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
        raise ConfigError("fsdp", f"{fsdp_options.sharding_strategy.lower()} cannot be combined with tp_size "
                          "(FSDP2 over the data-parallel ranks)", "use full_shard or shard_grad_op")
    if tp_plan is not None:
        resolve_tp_plan_arg(tp_plan)
    from hf_lightning.strategies.fsdp2 import TensorParallelStrategy

    return TensorParallelStrategy(tp_size, tp_plan=tp_plan, fsdp_options=fsdp_options, timeout=timeout,
                                  process_group_backend=backend)
