"""Optimizers and schedulers under their Hugging Face names, with HF's weight-decay grouping.

We do not keep our own table of optimizers: transformers already maps every ``optim`` name to a
class and kwargs (``Trainer.get_optimizer_cls_and_kwargs``) and knows which parameters get weight
decay (``Trainer.get_decay_parameter_names``). Reusing both gives bit-identical optimizers to
``transformers.Trainer``, which the parity tests rely on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn as nn

from hf_lightning.errors import ConfigError

__all__ = [
    "optimizer_names",
    "scheduler_names",
    "OptimName",
    "SchedulerName",
    "build_optimizer",
    "build_scheduler",
    "check_name",
    "is_metric_scheduler",
    "lightning_optimizers",
    "step_plateau",
    "decay_parameter_groups",
    "resolve_warmup_steps",
    "separate_sharded_parameters",
    "set_optimizer_mode",
]



def optimizer_names() -> tuple[str, ...]:
    """transformers' own optimizer names, read on first use.

    Importing ``transformers.trainer_utils`` pulls in peft, bitsandbytes and parts of torch._dynamo
    (seconds); a command that only prints ``--help`` never needs them.
    """
    from transformers.training_args import OptimizerNames

    return tuple(o.value for o in OptimizerNames)


def scheduler_names() -> tuple[str, ...]:
    """transformers' own scheduler names, read on first use (see :func:`optimizer_names`)."""
    from transformers.trainer_utils import SchedulerType

    return tuple(s.value for s in SchedulerType)




# Literal types so that LightningCLI lists the choices in --help and rejects typos at parse time.
OptimName = Literal[
    "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop", "ademamix",
    "lion_32bit", "lion_8bit", "adamw_8bit", "adamw_bnb_8bit", "galore_adamw", "galore_adafactor",
    "lomo", "adalomo", "grokadamw", "schedule_free_adamw", "schedule_free_sgd", "schedule_free_radam",
    "apollo_adamw", "stable_adamw", "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit",
]  # fmt: skip
SchedulerName = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy",
]  # fmt: skip


def check_name(field: str, value: str, names: tuple[str, ...], kind: str) -> None:
    """Refuse an unknown optimizer/scheduler name in one line, suggesting the closest valid one."""
    if value in names:
        return
    import difflib

    close = difflib.get_close_matches(value, names, n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(names[:8])}, ..."
    raise ConfigError(field, f"unknown {kind} {value!r}", fix)


# Optimizers whose class lives in an optional package (transformers imports it lazily), by name prefix.
# ``pip install "hf_lightning[optimizers]"`` brings every one that installs on CPU.
_OPTIONAL_PACKAGES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("galore_",), "galore_torch", "galore-torch"),
    (("schedule_free_",), "schedulefree", "schedulefree"),
    (("grokadamw",), "grokadamw", "grokadamw"),
    (("stable_adamw",), "optimi", "torch-optimi"),
    (("lion", "paged_", "ademamix", "adamw_bnb", "adamw_8bit", "rmsprop_bnb", "rmsprop_8bit", "rmsprop_32bit"),
     "bitsandbytes", "bitsandbytes"),
    (("apollo_",), "apollo_torch", "apollo-torch"),
    (("lomo", "adalomo"), "lomo_optim", "lomo-optim"),
    (("adamw_torch_4bit", "adamw_torch_8bit"), "torchao", "torchao"),
)
_LOW_RANK_PREFIXES = ("galore_", "apollo_")


def _require_package(optim: str) -> None:
    """One line naming the extra when ``optim``'s package is missing (transformers' own text names no extra)."""
    import importlib

    for prefixes, module, dist in _OPTIONAL_PACKAGES:
        if optim.startswith(prefixes):
            try:
                importlib.import_module(module)
            except ImportError:
                raise ConfigError(
                    "optim", f"{optim!r} needs the {dist} package, which is not installed",
                    f'pip install "hf_lightning[optimizers]" (or pip install {dist})',
                ) from None
            return


def _split_optim_args(
    optim_args: str | dict[str, Any] | None, optim_target_modules: str | list[str] | None
) -> tuple[str | None, str | list[str] | None]:
    """``optim_args`` as HF's "k=v,k=v" text; a dict's list-valued ``galore_target_modules`` becomes
    ``optim_target_modules`` (the seed documents write GaLore's targets there), which "k=v" cannot carry."""
    if not isinstance(optim_args, dict):
        return optim_args, optim_target_modules
    optim_args = dict(optim_args)
    for alias in ("galore_target_modules", "apollo_target_modules", "target_modules"):
        targets = optim_args.pop(alias, None)
        if targets is not None and optim_target_modules is None:
            optim_target_modules = targets
    return ",".join(f"{k}={v}" for k, v in optim_args.items()) or None, optim_target_modules


def set_optimizer_mode(optimizers: Iterable[Any] | Any, train: bool) -> None:
    """Put schedule-free optimizers in train or eval mode (their weights differ between the two).

    HF's Trainer calls ``optimizer.train()`` in every training step and ``optimizer.eval()`` before
    evaluating; both front doors do the same through this helper. Other optimizers have no modes.
    """
    if optimizers is None:
        return
    for optimizer in optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the real one
        switch = getattr(optimizer, "train" if train else "eval", None)
        if callable(switch):
            switch()


def decay_parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], decay_names: set[str], weight_decay: float
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group (HF's grouping)."""
    params = [(n, p) for n, p in named_parameters if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay_names], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decay_names], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    module: nn.Module,
    optim: str = "adamw_torch_fused",
    learning_rate: float = 5e-5,
    weight_decay: float = 0.0,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    adam_epsilon: float = 1e-8,
    optim_args: str | dict[str, Any] | None = None,
    model_for_optimizer: nn.Module | None = None,
    no_decay_prefixes: tuple[str, ...] = (),
    optim_target_modules: str | list[str] | None = None,
    warmup_steps: float = 0,
) -> torch.optim.Optimizer:
    """Build the optimizer HF's Trainer would build for these settings.

    ``module`` owns every trainable parameter (the HF model plus, e.g., learnable loss weights);
    weight decay skips biases and normalisation weights by HF's own rule, and parameters under
    ``no_decay_prefixes`` (learnable loss weights: decay would pull them towards zero).
    ``optim_target_modules`` are the modules GaLore/Apollo project (HF's field); ``warmup_steps`` is
    passed to schedule-free optimizers, which warm up themselves, as HF does.
    """
    from transformers import Trainer

    check_name("optim", str(optim), optimizer_names(), "optimizer")
    _require_package(str(optim))
    optim_args, optim_target_modules = _split_optim_args(optim_args, optim_target_modules)
    if str(optim).endswith("layerwise"):
        raise ConfigError(
            "optim", f"{optim!r} steps each parameter inside backward, outside Lightning's optimizer step",
            f"use {str(optim).removesuffix('_layerwise')!r}",
        )
    if str(optim).startswith(_LOW_RANK_PREFIXES) and optim_target_modules is None:
        raise ConfigError(
            "optim_target_modules", f"{optim!r} projects chosen linear layers and none were named",
            'set optim_target_modules=["q_proj", "v_proj"] (names or a regex) or "all-linear"',
        )
    args = SimpleNamespace(
        optim=optim,
        optim_args=optim_args,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        adam_beta1=adam_beta1,
        adam_beta2=adam_beta2,
        adam_epsilon=adam_epsilon,
        warmup_steps=warmup_steps,
        optim_target_modules=optim_target_modules,
    )
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model_for_optimizer or module)
    # HF's rule does not depend on the Trainer instance; call it unbound to stay identical to it.
    decay_names = {n for n in Trainer.get_decay_parameter_names(None, module) if not n.startswith(no_decay_prefixes)}
    groups = decay_parameter_groups(module.named_parameters(), decay_names, weight_decay)
    if "params" in optimizer_kwargs:  # GaLore/Apollo build their own groups
        groups = optimizer_kwargs.pop("params")
    if "optimizer_dict" in optimizer_kwargs:  # layer-wise optimizers
        groups = optimizer_kwargs.pop("optimizer_dict")
    return optimizer_cls(groups, **optimizer_kwargs)


def separate_sharded_parameters(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Split each parameter group by device mesh (whole tensors apart), keeping the group's settings.

    Under tensor parallelism only the split projections are ``DTensor``s (under 2-D parallelism they sit
    on the 2-D mesh, the rest on its data-parallel axis); torch's fused and foreach optimizer kernels
    refuse a group that mixes meshes or ``DTensor``s with ordinary tensors, while each group is stepped
    on its own. Call on a fresh optimizer, before a scheduler records its groups. No-op for one mesh.
    """
    from torch.distributed.tensor import DTensor

    def mesh(p: torch.Tensor) -> Any:
        return p.device_mesh if isinstance(p, DTensor) else None

    if len({mesh(p) for group in optimizer.param_groups for p in group["params"]}) < 2:
        return optimizer
    groups = []
    for group in optimizer.param_groups:
        by_mesh: dict[Any, list[torch.Tensor]] = {}
        for p in group["params"]:
            by_mesh.setdefault(mesh(p), []).append(p)
        groups.extend({**group, "params": params} for params in by_mesh.values())
    optimizer.param_groups = groups
    return optimizer


def resolve_warmup_steps(warmup_steps: float, warmup_ratio: float | None, num_training_steps: int) -> int:
    """HF 5 semantics: ``warmup_steps`` below 1 is a ratio of the total; ``warmup_ratio`` is the old name."""
    if warmup_ratio is not None and warmup_ratio > 0:
        return math.ceil(num_training_steps * warmup_ratio)
    if 0 < warmup_steps < 1:
        return math.ceil(num_training_steps * warmup_steps)
    return int(warmup_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    lr_scheduler_type: str = "linear",
    num_training_steps: int = 1,
    warmup_steps: float = 0,
    warmup_ratio: float | None = None,
    lr_scheduler_kwargs: dict[str, Any] | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """``transformers.get_scheduler`` with HF's warmup resolution; stepped once per optimizer step."""
    from transformers import get_scheduler

    check_name("lr_scheduler_type", str(lr_scheduler_type), scheduler_names(), "scheduler")
    return get_scheduler(
        lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=resolve_warmup_steps(warmup_steps, warmup_ratio, num_training_steps),
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=dict(lr_scheduler_kwargs or {}),
    )


def _metric_scheduler_types() -> tuple[type, ...]:
    """The schedulers transformers.Trainer steps with an evaluation metric: ReduceLROnPlateau and GreedyLR."""
    import transformers.optimization

    greedy = getattr(transformers.optimization, "GreedyLR", None)  # lr_scheduler_type="greedy", transformers 5.x
    return (torch.optim.lr_scheduler.ReduceLROnPlateau,) + ((greedy,) if greedy is not None else ())


def is_metric_scheduler(scheduler: Any) -> bool:
    """Whether ``scheduler`` steps on an evaluation metric (after each evaluation) instead of every optimizer step."""
    return isinstance(scheduler, _metric_scheduler_types())


def lightning_optimizers(optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """``configure_optimizers``' answer: the scheduler steps once per optimizer step.

    ``ReduceLROnPlateau`` and ``GreedyLR`` are the exception: they need an evaluation metric, and HF steps
    them after each evaluation during training, so Lightning is not given them; :func:`step_plateau` does.
    """
    if is_metric_scheduler(scheduler):
        return {"optimizer": optimizer}
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def step_plateau(scheduler: Any, metrics: dict[str, Any], metric: str | None) -> None:
    """Step a metric scheduler (:func:`is_metric_scheduler`) with this evaluation's ``metric``, as HF does.

    The ``eval_`` prefix of ``metric`` is optional; other schedulers are left alone.
    """
    if not is_metric_scheduler(scheduler):
        return
    name = metric or "loss"
    name = name if name.startswith("eval_") else f"eval_{name}"
    if name not in metrics:
        raise ConfigError(
            "metric_for_best_model", f"the {type(scheduler).__name__} scheduler watches {name!r}, which the "
            "evaluation did not report", f"use one of {sorted(k for k in metrics if k.startswith('eval_'))}",
        )
    scheduler.step(float(metrics[name]))
