"""Task metrics, computed streaming with torchmetrics, plus the bridge to HF's ``compute_metrics``.

HF's evaluation keeps every logit before calling ``compute_metrics`` (about 14 GB for 1k x 512 x 30k
vocab). Built-in metrics here update per batch and keep only counters. A user ``compute_metrics``
(which wants numpy arrays, as in HF) is still supported: then, and only then, predictions are kept,
after ``preprocess_logits_for_metrics`` has had the chance to shrink them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torchmetrics
from transformers import EvalPrediction

from hf_lightning.losses.base import IGNORE_INDEX

__all__ = ["PredictionCollector", "TaskMetrics", "build_task_metrics"]


class TaskMetrics(nn.Module):
    """Streaming metrics for one task; ``compute(mean_loss)`` returns HF-named values without prefix."""

    def __init__(self, task: str, num_labels: int | None = None) -> None:
        super().__init__()
        self.task = task
        self.classification = task in {"sequence-classification", "token-classification"} and (num_labels or 0) > 1
        if self.classification:
            kwargs = {"task": "multiclass", "num_classes": num_labels, "ignore_index": IGNORE_INDEX}
            self.accuracy = torchmetrics.Accuracy(average="micro", **kwargs)
            self.f1 = torchmetrics.F1Score(average="macro", **kwargs)

    @torch.no_grad()
    def update(self, logits: torch.Tensor | None, labels: torch.Tensor | None) -> None:
        if not self.classification or logits is None or labels is None:
            return
        preds = logits.argmax(-1)
        self.accuracy.update(preds.reshape(-1), labels.reshape(-1))
        self.f1.update(preds.reshape(-1), labels.reshape(-1))

    def compute(self, mean_loss: float) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.classification:
            out["accuracy"] = float(self.accuracy.compute())
            out["f1"] = float(self.f1.compute())
            self.accuracy.reset()
            self.f1.reset()
        elif self.task in {"causal-lm", "masked-lm", "seq2seq-lm"}:
            # exp of the token-weighted mean NLL: exactly torchmetrics' Perplexity, without keeping logits.
            out["perplexity"] = math.exp(mean_loss) if mean_loss < 700 else float("inf")
        return out


def build_task_metrics(task: str, num_labels: int | None) -> TaskMetrics:
    return TaskMetrics(task, num_labels)


def _gather_padded(t: torch.Tensor, pad_value: float) -> torch.Tensor:
    """All-gather tensors of unequal length on dim 1 (sequence tasks) across ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    shape = torch.tensor(list(t.shape), device=t.device)
    shapes = [torch.zeros_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    max_shape = torch.stack(shapes).max(0).values.tolist()
    padded = t.new_full(max_shape, pad_value)
    padded[tuple(slice(0, s) for s in t.shape)] = t
    out = [torch.empty_like(padded) for _ in shapes]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s[0])] for o, s in zip(out, shapes)], dim=0)


def _pad_cat(chunks: list[np.ndarray], pad_value: float) -> np.ndarray:
    """Concatenate on dim 0, padding dim 1 like HF's ``nested_concat`` (-100 for padding)."""
    if not chunks:
        return np.zeros((0,))
    if chunks[0].ndim < 2 or all(c.shape[1:] == chunks[0].shape[1:] for c in chunks):
        return np.concatenate(chunks, axis=0)
    width = max(c.shape[1] for c in chunks)
    out = []
    for c in chunks:
        pad = [(0, 0)] * c.ndim
        pad[1] = (0, width - c.shape[1])
        out.append(np.pad(c, pad, constant_values=pad_value))
    return np.concatenate(out, axis=0)


class PredictionCollector:
    """Keeps predictions/labels for a user ``compute_metrics`` (HF's EvalPrediction contract)."""

    def __init__(
        self,
        preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        include_inputs: bool = False,
    ) -> None:
        self.preprocess = preprocess_logits_for_metrics
        self.include_inputs = include_inputs
        self.reset()

    def reset(self) -> None:
        self.preds: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.inputs: list[np.ndarray] = []

    @torch.no_grad()
    def update(self, logits: Any, labels: torch.Tensor | None, inputs: torch.Tensor | None = None) -> None:
        if isinstance(logits, (tuple, list)) and len(logits) == 1:
            logits = logits[0]
        if self.preprocess is not None:
            logits = self.preprocess(logits, labels)
        if isinstance(logits, torch.Tensor):
            logits = _gather_padded(logits.detach(), IGNORE_INDEX)
            self.preds.append(logits.float().cpu().numpy() if logits.is_floating_point() else logits.cpu().numpy())
        if labels is not None:
            self.labels.append(_gather_padded(labels.detach(), IGNORE_INDEX).cpu().numpy())
        if self.include_inputs and inputs is not None:
            self.inputs.append(_gather_padded(inputs.detach(), IGNORE_INDEX).cpu().numpy())

    def eval_prediction(self) -> EvalPrediction:
        preds = _pad_cat(self.preds, IGNORE_INDEX)
        labels = _pad_cat(self.labels, IGNORE_INDEX) if self.labels else None
        inputs = _pad_cat(self.inputs, IGNORE_INDEX) if self.inputs else None
        return EvalPrediction(predictions=preds, label_ids=labels, inputs=inputs)
