"""Task metrics, computed streaming with torchmetrics, plus the bridge to HF's ``compute_metrics``.

HF's evaluation keeps every logit before calling ``compute_metrics`` (about 14 GB for 1k x 512 x 30k
vocab). Built-in metrics here update per batch and keep only counters. A user ``compute_metrics``
(which wants numpy arrays, as in HF) is still supported: then, and only then, predictions are kept,
after ``preprocess_logits_for_metrics`` has had the chance to shrink them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

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
    if t.ndim == 0:
        t = t[None]
    shape = torch.tensor(list(t.shape), device=t.device)
    shapes = [torch.zeros_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    max_shape = torch.stack(shapes).max(0).values.tolist()
    padded = t.new_full(max_shape, pad_value)
    padded[tuple(slice(0, s) for s in t.shape)] = t
    out = [torch.empty_like(padded) for _ in shapes]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s[0])] for o, s in zip(out, shapes)], dim=0)


def _to_host(tensors: Any) -> Any:
    """Detach, gather over ranks (padding with -100 as HF does) and move to CPU, through nested tuples/dicts."""
    if isinstance(tensors, (list, tuple)):
        return type(tensors)(_to_host(t) for t in tensors)
    if isinstance(tensors, dict):
        return type(tensors)({k: _to_host(v) for k, v in tensors.items()})
    if isinstance(tensors, torch.Tensor):
        return _gather_padded(tensors.detach(), IGNORE_INDEX).cpu()
    return tensors


class PredictionCollector:
    """Keeps what a user ``compute_metrics`` asks for, in HF's ``EvalPrediction`` shapes.

    Structures are kept as the model returns them (a tuple of logits and hidden states stays a tuple;
    several label columns give a tuple of label arrays), batches of different sequence lengths are
    padded with -100, ``concat=False`` keeps a list per batch (``eval_do_concat_batches``), and
    ``include`` names the extras of ``include_for_metrics`` (``inputs``, ``loss``). transformers'
    ``EvalLoopContainer`` does the nested concatenation, so the result matches HF's to the array.
    """

    def __init__(
        self,
        preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None,
        include: Sequence[str] = (),
        concat: bool = True,
    ) -> None:
        self.preprocess = preprocess_logits_for_metrics
        self.include = set(include)
        self.concat = concat
        self.reset()

    def reset(self) -> None:
        from transformers.trainer_pt_utils import EvalLoopContainer

        self._parts = {name: EvalLoopContainer(self.concat, IGNORE_INDEX) for name in ("preds", "labels", "inputs", "losses")}

    @torch.no_grad()
    def update(self, logits: Any, labels: Any, inputs: torch.Tensor | None = None, loss: torch.Tensor | None = None) -> None:
        """Add one batch; ``loss`` is the batch's mean loss, kept per sample for ``include_for_metrics=['loss']``."""
        if isinstance(logits, (tuple, list)) and len(logits) == 1:
            logits = logits[0]
        if self.preprocess is not None and logits is not None:
            logits = self.preprocess(logits, labels)
        if logits is not None:
            self._parts["preds"].add(_to_host(logits))
        if labels is not None:
            self._parts["labels"].add(_to_host(labels))
        if "inputs" in self.include and inputs is not None:
            self._parts["inputs"].add(_to_host(inputs))
        if "loss" in self.include and loss is not None and inputs is not None:
            self._parts["losses"].add(_to_host(loss.detach().reshape(1).repeat(inputs.shape[0])))

    def eval_prediction(self) -> EvalPrediction:
        arrays = {name: part.get_arrays() for name, part in self._parts.items()}
        return EvalPrediction(
            predictions=arrays["preds"], label_ids=arrays["labels"], inputs=arrays["inputs"], losses=arrays["losses"]
        )
