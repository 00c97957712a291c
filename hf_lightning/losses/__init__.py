"""Losses that run the model themselves and return ``(mean_loss, outputs)``; see ``base``.

Each loss is also available as a pure tensor function (``focal_loss``, ``nt_xent_loss``, ...) for
use outside the training module.
"""

from __future__ import annotations

from hf_lightning.losses.base import IGNORE_INDEX, ModelLoss, count_label_items
from hf_lightning.losses.contrastive import (
    ContrastiveLoss,
    PoolingName,
    TwoViewCollator,
    drop_words,
    nt_xent_loss,
    pool_hidden_states,
)
from hf_lightning.losses.distillation import DistillationLoss, distillation_loss
from hf_lightning.losses.focal import AlphaSpec, FocalLoss, focal_loss
from hf_lightning.losses.label_smoothing import LabelSmoothingLoss, label_smoothed_cross_entropy
from hf_lightning.losses.multitask import MultiTaskLoss, UncertaintyWeightedLoss, task_loss

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
