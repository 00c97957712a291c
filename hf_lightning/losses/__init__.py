"""Losses that run the model themselves and return ``(mean_loss, outputs)``; see ``base``.

Each loss is also available as a pure tensor function (``focal_loss``, ``nt_xent_loss``, ...) for
use outside the training module.

Each name is imported on first use: the distillation and multi-task losses import transformers'
model classes (and with them accelerate), which a run that uses neither never needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "IGNORE_INDEX": "base", "ModelLoss": "base", "count_label_items": "base",
    "ContrastiveLoss": "contrastive", "PoolingName": "contrastive", "TwoViewCollator": "contrastive",
    "drop_words": "contrastive", "nt_xent_loss": "contrastive", "pool_hidden_states": "contrastive",
    "DistillationLoss": "distillation", "distillation_loss": "distillation",
    "AlphaSpec": "focal", "FocalLoss": "focal", "focal_loss": "focal",
    "LabelSmoothingLoss": "label_smoothing", "label_smoothed_cross_entropy": "label_smoothing",
    "MultiTaskLoss": "multitask", "UncertaintyWeightedLoss": "multitask", "task_loss": "multitask",
}  # fmt: skip

__all__ = [
    "IGNORE_INDEX",
    "AlphaSpec",
    "ContrastiveLoss",
    "DistillationLoss",
    "FocalLoss",
    "LabelSmoothingLoss",
    "ModelLoss",
    "MultiTaskLoss",
    "PoolingName",
    "TwoViewCollator",
    "UncertaintyWeightedLoss",
    "count_label_items",
    "distillation_loss",
    "drop_words",
    "focal_loss",
    "label_smoothed_cross_entropy",
    "nt_xent_loss",
    "pool_hidden_states",
    "task_loss",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"hf_lightning.losses.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
