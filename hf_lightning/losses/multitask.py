"""Combine per-task losses that a multi-task model reports as ``<task>_loss`` outputs.

A multi-task model (see ``hf_lightning.multitask_model``) computes one loss per head itself,
because only it knows which labels feed which head. What remains for the loss object is the
weighting: fixed weights (:class:`MultiTaskLoss`) or learned ones (:class:`UncertaintyWeightedLoss`,
Kendall, Gal & Cipolla 2018).

Item count: each task loss is already a mean (over sequences, or over tokens), so their weighted
sum is treated as a mean over the batch's *examples*; ``count_items`` returns the batch size.
Gradient accumulation therefore weights micro-batches by example count, which is exact for
sentence-level tasks and an approximation for token-level ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

import hf_lightning.multitask_model  # noqa: F401  (registers the reference model type with the Auto classes)
from hf_lightning.errors import ConfigError
from hf_lightning.losses._utils import batch_size_of
from hf_lightning.losses.base import ModelLoss

__all__ = ["MultiTaskLoss", "UncertaintyWeightedLoss", "task_loss"]


def task_loss(outputs: Any, task: str, field: str = "task_weights") -> torch.Tensor:
    """The scalar ``<task>_loss`` from model outputs (a ModelOutput, a dict or an object).

    Raises ConfigError naming the missing key: a typo in the task name, or a batch without that
    task's labels (transformers drops None fields from its outputs), would otherwise silently
    train on fewer tasks than configured.
    """
    key = f"{task}_loss"
    if isinstance(outputs, Mapping):
        value = outputs.get(key)
        available = sorted(k for k in outputs if k.endswith("_loss"))
    else:
        value = getattr(outputs, key, None)
        available = (
            sorted(k for k in vars(outputs) if k.endswith("_loss")) if hasattr(outputs, "__dict__") else []
        )
    if value is None:
        raise ConfigError(
            field,
            f"the model outputs have no {key!r} (available: {available or 'none'})",
            f"rename task {task!r} to match the model, or give every batch the labels for {task!r}",
        )
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ConfigError(
            field,
            f"{key!r} must be a scalar tensor, got {type(value).__name__}",
            "return a mean loss per task",
        )
    return value.reshape(())


def _check_tasks(tasks: Sequence[str], field: str) -> list[str]:
    if isinstance(tasks, str) or not isinstance(tasks, Sequence | Mapping) or len(tasks) == 0:
        raise ConfigError(
            field,
            f"needs at least one task name, got {tasks!r}",
            "list the tasks, e.g. ['classification', 'ner']",
        )
    names = list(tasks)
    bad = [t for t in names if not isinstance(t, str) or not t]
    if bad:
        raise ConfigError(
            field, f"task names must be non-empty strings, got {bad!r}", "use names like 'classification'"
        )
    if len(set(names)) != len(names):
        raise ConfigError(field, f"task names repeat: {names!r}", "list each task once")
    return names


class _TaskLossCombiner(ModelLoss):
    """Shared by the multi-task losses: run the model once, combine its per-task losses."""

    def combine(self, outputs: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        outputs = model(**batch)
        return self.combine(outputs), outputs

    def count_items(self, batch: dict[str, Any]) -> torch.Tensor:
        """One item per example (see the module docstring)."""
        return torch.tensor(batch_size_of(batch))


class MultiTaskLoss(_TaskLossCombiner):
    """Weighted sum of the model's task losses: ``sum_t w_t * outputs[f"{t}_loss"]``.

    The model is run on the whole batch, labels included (it routes each task's labels itself).
    """

    def __init__(self, task_weights: dict[str, float]) -> None:
        super().__init__()
        if not isinstance(task_weights, Mapping):
            raise ConfigError(
                "task_weights",
                f"must be a mapping task -> weight, got {task_weights!r}",
                "e.g. {classification: 1.0, ner: 0.5}",
            )
        names = _check_tasks(list(task_weights), "task_weights")
        weights: dict[str, float] = {}
        for name in names:
            w = task_weights[name]
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise ConfigError(
                    f"task_weights.{name}", f"weight must be a finite number >= 0, got {w!r}", "use e.g. 1.0"
                )
            weights[name] = float(w)
        self.task_weights = weights

    def combine(self, outputs: Any) -> torch.Tensor:
        """Weighted sum of the task losses found in ``outputs``; a float32 scalar."""
        total = torch.zeros((), dtype=torch.float32)
        for task, weight in self.task_weights.items():
            value = task_loss(outputs, task)
            total = total.to(value.device) + weight * value.float()
        return total

    def extra_repr(self) -> str:
        return f"task_weights={self.task_weights}"


class UncertaintyWeightedLoss(_TaskLossCombiner):
    """Learned task weighting by homoscedastic uncertainty: ``sum_i exp(-s_i) * L_i + s_i``.

    ``s_i = log(sigma_i**2)`` is the learnable ``log_vars[i]`` (one per task, starting at 0, i.e.
    weight 1). A noisy task raises its ``s_i`` to down-weight itself; the ``+ s_i`` term stops all
    weights collapsing to 0. ``log_vars`` is an ``nn.Parameter`` of this module, so it reaches the
    optimizer, the device and the checkpoint through whichever module owns the loss.
    """

    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        self.tasks = _check_tasks(tasks, "tasks")
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))  # (T,)

    def combine(self, outputs: Any) -> torch.Tensor:
        """``sum_i exp(-log_vars[i]) * L_i + log_vars[i]`` over the tasks; a float32 scalar."""
        losses = torch.stack([task_loss(outputs, task, field="tasks").float() for task in self.tasks])  # (T,)
        log_vars = self.log_vars.to(losses.device).float()
        return (torch.exp(-log_vars) * losses + log_vars).sum()

    def task_weights(self) -> dict[str, float]:
        """Current effective weights ``exp(-s_i)`` per task (for logging)."""
        weights = torch.exp(-self.log_vars.detach().float()).tolist()
        return dict(zip(self.tasks, weights))

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}"
