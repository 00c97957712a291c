"""Task metrics, computed streaming with torchmetrics, plus the bridge to HF's ``compute_metrics``.

HF's evaluation keeps every logit before calling ``compute_metrics`` (about 14 GB for 1k x 512 x 30k
vocab). Built-in metrics here update per batch and keep only counters. A user ``compute_metrics``
(which wants numpy arrays, as in HF) is still supported: then, and only then, predictions are kept,
after ``preprocess_logits_for_metrics`` has had the chance to shrink them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torchmetrics

if TYPE_CHECKING:  # transformers.trainer_utils imports peft and bitsandbytes: only when metrics are computed
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


def _detached_cpu(tensors: Any) -> Any:
    """Detach and move to CPU through nested tuples/dicts (model outputs, label tuples)."""
    if isinstance(tensors, (list, tuple)):
        return type(tensors)(_detached_cpu(t) for t in tensors)
    if isinstance(tensors, dict):
        return type(tensors)({k: _detached_cpu(v) for k, v in tensors.items()})
    if isinstance(tensors, torch.Tensor):
        return tensors.detach().cpu()
    return tensors


def _take(arrays: Any, order: np.ndarray) -> Any:
    if isinstance(arrays, (list, tuple)):
        return type(arrays)(_take(a, order) for a in arrays)
    return arrays[order] if isinstance(arrays, np.ndarray) and len(arrays) == len(order) else arrays


def _merge_ranks(per_rank: list[Any], concat: bool) -> Any:
    """One rank's arrays after another; in dataset order again where the ranks held strided shards.

    Evaluation shards are strided (rank r holds rows r, r+W, ...; see ``data.loaders._EvalShardSampler``), so
    the concatenation is permuted back; shards of any other shape are left concatenated.
    """
    from transformers.trainer_pt_utils import nested_concat

    present = [a for a in per_rank if a is not None]
    if not present:
        return None
    if not concat:
        return [batch for arrays in present for batch in arrays]
    merged = present[0]
    for arrays in present[1:]:
        merged = nested_concat(merged, arrays, padding_index=IGNORE_INDEX)
    sizes = [len(a[0] if isinstance(a, (list, tuple)) else a) for a in present]
    world, total = len(present), sum(sizes)
    if world == len(per_rank) and sizes == [len(range(r, total, world)) for r in range(world)]:
        merged = _take(merged, np.argsort(np.concatenate([np.arange(r, total, world) for r in range(world)])))
    return merged


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
            self._parts["preds"].add(_detached_cpu(logits))
        if labels is not None:
            self._parts["labels"].add(_detached_cpu(labels))
        if "inputs" in self.include and inputs is not None:
            self._parts["inputs"].add(_detached_cpu(inputs))
        if "loss" in self.include and loss is not None and inputs is not None:
            self._parts["losses"].add(_detached_cpu(loss.reshape(1).repeat(inputs.shape[0])))

    def eval_prediction(self) -> EvalPrediction:
        """Everything kept, from every rank (a collective: call it on all ranks, once per evaluation).

        Ranks may have evaluated different numbers of batches, so nothing is gathered per batch; the
        arrays travel once, at the end.
        """
        arrays = {name: part.get_arrays() for name, part in self._parts.items()}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, arrays)
            arrays = {name: _merge_ranks([r[name] for r in per_rank], self.concat) for name in arrays}
        from transformers import EvalPrediction

        return EvalPrediction(
            predictions=arrays["preds"], label_ids=arrays["labels"], inputs=arrays["inputs"], losses=arrays["losses"]
        )
