"""DeepSpeed configs resolved the way ``transformers.Trainer`` resolves them, and the Lightning strategy.

A config file written for ``transformers.Trainer`` must mean exactly the same thing here, so its
``"auto"`` placeholders are filled by transformers' own ``HfTrainerDeepSpeedConfig`` (without needing
the deepspeed package, so configs can be checked on any machine). Lightning's ``DeepSpeedStrategy``
refuses the CPU; :func:`deepspeed_strategy` is only reached for CUDA runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from torch import nn

from hf_lightning.errors import ConfigError
from hf_lightning.strategies.config import load_json_config

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy

__all__ = ["deepspeed_strategy", "resolve_deepspeed_config"]


def _warmup_steps(args: Any, num_training_steps: int) -> int:
    """``args.get_warmup_steps`` when available; otherwise HF's rule (an int count, or a ratio below 1)."""
    getter = getattr(args, "get_warmup_steps", None)
    if callable(getter):
        return int(getter(num_training_steps))
    warmup = getattr(args, "warmup_steps", 0) or 0
    ratio = getattr(args, "warmup_ratio", 0) or 0
    if warmup >= 1:
        return int(warmup)
    if warmup > 0:
        return math.ceil(num_training_steps * warmup)
    return math.ceil(num_training_steps * ratio)


def _args_view(args: Any, world_size: int | None, num_training_steps: int) -> Any:
    """A plain snapshot of exactly the fields HF's DeepSpeed processing reads.

    Why not pass ``args`` itself: ``TrainingArguments.world_size`` consults the distributed state, which is
    not set up (or is Lightning's, not Accelerate's) when strategies are built. Taking the world size from
    Lightning's ``devices * num_nodes`` and everything else from ``args`` avoids that, and lets tests pass a
    ``SimpleNamespace``.
    """
    from types import SimpleNamespace

    warmup = _warmup_steps(args, num_training_steps)
    return SimpleNamespace(
        world_size=world_size if world_size is not None else int(getattr(args, "world_size", 1) or 1),
        per_device_train_batch_size=getattr(args, "per_device_train_batch_size", 8),
        gradient_accumulation_steps=getattr(args, "gradient_accumulation_steps", 1),
        max_grad_norm=getattr(args, "max_grad_norm", 1.0),
        learning_rate=getattr(args, "learning_rate", 5e-5),
        adam_beta1=getattr(args, "adam_beta1", 0.9),
        adam_beta2=getattr(args, "adam_beta2", 0.999),
        adam_epsilon=getattr(args, "adam_epsilon", 1e-8),
        weight_decay=getattr(args, "weight_decay", 0.0),
        save_on_each_node=getattr(args, "save_on_each_node", False),
        fp16=bool(getattr(args, "fp16", False)),
        fp16_full_eval=bool(getattr(args, "fp16_full_eval", False)),
        bf16=bool(getattr(args, "bf16", False)),
        bf16_full_eval=bool(getattr(args, "bf16_full_eval", False)),
        auto_find_batch_size=bool(getattr(args, "auto_find_batch_size", False)),
        get_warmup_steps=lambda _steps: warmup,
    )


def _detached_hf_deepspeed_config(config: dict[str, Any]) -> Any:
    """An ``HfTrainerDeepSpeedConfig`` that neither needs the deepspeed package nor registers the global.

    transformers only gives ``HfTrainerDeepSpeedConfig`` its config-query methods (inherited from
    Accelerate) when deepspeed is installed, yet resolving ``"auto"`` is pure dict work. This subclass
    supplies those few queries so CPU-only installs can still check and resolve a DeepSpeed config, while
    the fill rules themselves stay transformers' own.
    """
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    class _Detached(HfTrainerDeepSpeedConfig):
        def __init__(self, cfg: dict[str, Any]) -> None:  # no super(): that would set the global
            self.config = cfg
            self._dtype = None
            self.mismatches = []
            self._stage = self.get_value("zero_optimization.stage", -1)

        def find_config_node(self, ds_key_long: str) -> tuple[Any, str]:
            *parents, key = ds_key_long.split(".")
            node: Any = self.config
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
                if node is None:
                    return None, key
            return node, key

        def get_value(self, ds_key_long: str, default: Any = None) -> Any:
            node, key = self.find_config_node(ds_key_long)
            return default if node is None else node.get(key, default)

        def is_true(self, ds_key_long: str) -> bool:
            value = self.get_value(ds_key_long)
            return False if value is None else bool(value)

        def is_zero3(self) -> bool:
            return self._stage == 3

    return _Detached(config)


def _find_auto(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every value still equal to ``"auto"``."""
    if isinstance(node, dict):
        return [path for key, value in node.items() for path in _find_auto(value, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [path for i, value in enumerate(node) for path in _find_auto(value, f"{prefix}{i}.")]
    return [prefix[:-1]] if node == "auto" else []


def _fill_deepspeed(
    config: dict[str, Any], view: Any, model: Any, num_training_steps: int, detached: bool
) -> Any:
    """Run transformers' two-stage ``"auto"`` resolution, restoring its module-level global afterwards.

    The global (a weakref read by ``is_deepspeed_zero3_enabled``) must not outlive this call: left set, it
    would make every later ``from_pretrained`` in the process believe ZeRO-3 is active.
    """
    import transformers.integrations.deepspeed as hf_ds

    previous = hf_ds._hf_deepspeed_config_weak_ref
    try:
        if detached:
            hf_config = _detached_hf_deepspeed_config(config)
        else:
            hf_config = hf_ds.HfTrainerDeepSpeedConfig(config)
        hf_config.trainer_config_process(view, auto_find_batch_size=view.auto_find_batch_size)
        hf_config.trainer_config_finalize(view, model, num_training_steps)
        return hf_config
    except ValueError as err:
        message = " ".join(str(err).split())
        if "mismatch" in message:
            raise ConfigError(
                "deepspeed",
                f"config values disagree with the training arguments: {message}",
                'set those DeepSpeed values to "auto" or make them match',
            ) from None
        raise ConfigError("deepspeed", message, 'replace the "auto" values it names with numbers') from None
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = previous


def resolve_deepspeed_config(
    deepspeed: str | os.PathLike[str] | Mapping[str, Any],
    args: Any,
    model: nn.Module | None,
    num_training_steps: int,
    *,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Load a DeepSpeed config and replace its ``"auto"`` values the way ``transformers.Trainer`` does.

    Batch sizes, gradient accumulation and clipping, optimizer and scheduler parameters, fp16/bf16 and the
    ``hidden_size``-based ZeRO bucket sizes are filled from ``args``/``model``; explicit values that
    contradict ``args`` are reported. Works on CPU and without the deepspeed package, so configs can be
    validated anywhere. ``world_size`` defaults to ``args.world_size``; pass Lightning's
    ``devices * num_nodes`` when building a strategy before the processes exist.

    Returns a plain dict (JSON-serialisable) with no ``"auto"`` left; the input is never mutated.
    """
    from transformers.integrations.deepspeed import is_deepspeed_available

    config = load_json_config(deepspeed, "deepspeed")
    if (
        isinstance(num_training_steps, bool)
        or not isinstance(num_training_steps, int)
        or num_training_steps < 0
    ):
        raise ConfigError(
            "max_steps",
            f"the number of training steps must be a non-negative integer, got {num_training_steps!r}",
            "set max_steps or num_train_epochs",
        )
    view = _args_view(args, world_size, num_training_steps)
    hf_config = _fill_deepspeed(
        config, view, model, num_training_steps, detached=not is_deepspeed_available()
    )
    resolved: dict[str, Any] = hf_config.config
    leftover = _find_auto(resolved)
    if leftover:
        raise ConfigError(
            "deepspeed",
            f'no value is known for the "auto" entries {", ".join(leftover)}',
            'replace these "auto" values with numbers',
        )
    if "optimizer" not in resolved:
        # The optimizer is the one TrainingArguments.optim names (built in configure_optimizers), as
        # transformers.Trainer does; DeepSpeed's ZeRO refuses such a client optimizer without this flag.
        resolved.setdefault("zero_allow_untested_optimizer", True)
    return resolved


def deepspeed_strategy(
    deepspeed: str | os.PathLike[str] | Mapping[str, Any],
    args: Any,
    model: nn.Module | None,
    num_training_steps: int,
    *,
    world_size: int,
    timeout: timedelta,
    backend: str | None,
) -> Strategy:
    """Lightning's ``DeepSpeedStrategy`` with the config resolved as transformers resolves it (CUDA only)."""
    config = resolve_deepspeed_config(deepspeed, args, model, num_training_steps, world_size=world_size)
    from lightning.pytorch.strategies import DeepSpeedStrategy
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    # Lightning sets the accumulation itself (from accumulate_grad_batches) and refuses a config that has it.
    config = {key: value for key, value in config.items() if key != "gradient_accumulation_steps"}
    try:
        return DeepSpeedStrategy(config=config, timeout=timeout, process_group_backend=backend)
    except MisconfigurationException as err:
        raise ConfigError("deepspeed", " ".join(str(err).split()), "pip install deepspeed") from None
