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


def _detached(tensors: Any) -> Any:
    return _tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tensors)


def _on_host(tensors: Any) -> bool:
    leaves: list[Any] = []
    _tree_map(leaves.append, tensors)
    return all(not isinstance(t, torch.Tensor) or t.device.type == "cpu" for t in leaves)


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


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host numpy array of ``tensor`` (a view when it is already on the host), bfloat16 as float32 as in HF."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return np.atleast_1d(tensor.cpu().numpy())


class _HostArray:
    """One array of the evaluation's results, written batch by batch into memory allocated once.

    transformers concatenates each batch onto everything before it (and pads across batches), so the
    logits exist twice at the end of an evaluation. Here the rows go into an array sized for the whole
    evaluation set (``np.empty``: pages are taken only when rows are written, so a generous size costs
    nothing), padded with ``padding_index`` along the second axis to the widest batch so far; a wider
    batch widens the array once; more rows than expected grow it. :meth:`view` is a view, not a copy.
    """

    def __init__(self, rows: int, padding_index: int) -> None:
        self.rows, self.padding_index = rows, padding_index
        self.array: np.ndarray | None = None
        self.filled = 0

    def add(self, piece: np.ndarray) -> None:
        array = self.array
        if array is None:
            array = self.array = np.empty((max(self.rows, len(piece)), *piece.shape[1:]), piece.dtype)
        elif piece.ndim != array.ndim or piece.shape[2:] != array.shape[2:]:
            raise ValueError(f"evaluation outputs changed shape between batches: {array.shape[1:]} then "
                             f"{piece.shape[1:]}; only the second axis (sequence length) may vary")
        end = self.filled + len(piece)
        width = max(piece.shape[1], array.shape[1]) if piece.ndim > 1 else None
        if end > len(array) or (width is not None and width > array.shape[1]):
            array = self._regrown(max(end, 2 * len(array)) if end > len(array) else len(array), width)
        target = array[self.filled:end]
        if width is not None and piece.shape[1] < width:
            target[:, piece.shape[1]:] = self.padding_index
            target = target[:, : piece.shape[1]]
        target[...] = piece
        self.filled = end

    def _regrown(self, rows: int, width: int | None) -> np.ndarray:
        old = self.array
        assert old is not None
        shape = (rows, *old.shape[1:]) if width is None else (rows, width, *old.shape[2:])
        new = np.empty(shape, old.dtype)
        if width is None:
            new[: self.filled] = old[: self.filled]
        else:
            new[: self.filled, old.shape[1]:] = self.padding_index
            new[: self.filled, : old.shape[1]] = old[: self.filled]
        self.array = new
        return new

    def view(self) -> np.ndarray | None:
        return None if self.array is None else self.array[: self.filled]


def _tree_map(fn: Callable[..., Any], tree: Any, *others: Any) -> Any:
    """``fn`` on the leaves of nested tuples/lists/dicts (``others`` shaped like ``tree``)."""
    if isinstance(tree, (list, tuple)):
        if any(not isinstance(o, (list, tuple)) or len(o) != len(tree) for o in others):
            raise ValueError("evaluation outputs changed structure between batches")
        return type(tree)(_tree_map(fn, t, *(o[i] for o in others)) for i, t in enumerate(tree))
    if isinstance(tree, dict):
        if any(not isinstance(o, dict) or o.keys() != tree.keys() for o in others):
            raise ValueError("evaluation outputs changed structure between batches")
        return type(tree)({k: _tree_map(fn, v, *(o[k] for o in others)) for k, v in tree.items()})
    return fn(tree, *others)


class _Preallocated:
    """``EvalLoopContainer``'s concatenating mode, written into one :class:`_HostArray` per leaf."""

    def __init__(self, rows: int, padding_index: int) -> None:
        self.rows, self.padding_index = rows, padding_index
        self.buffers: Any = None

    def add(self, tensors: Any) -> None:
        arrays = _tree_map(_numpy, tensors)
        if self.buffers is None:
            self.buffers = _tree_map(lambda _: _HostArray(self.rows, self.padding_index), arrays)
        _tree_map(lambda buffer, array: buffer.add(array), self.buffers, arrays)

    def get_arrays(self) -> Any:
        return None if self.buffers is None else _tree_map(lambda buffer: buffer.view(), self.buffers)


class PredictionCollector:
    """Keeps what a user ``compute_metrics`` asks for, in HF's ``EvalPrediction`` shapes.

    Structures are kept as the model returns them (a tuple of logits and hidden states stays a tuple;
    several label columns give a tuple of label arrays), batches of different sequence lengths are
    padded with -100, ``concat=False`` keeps a list per batch (``eval_do_concat_batches``), and
    ``include`` names the extras of ``include_for_metrics`` (``inputs``, ``loss``).

    When the number of rows is known (:meth:`reset` with ``rows``), each batch is written into host
    arrays allocated once for the whole evaluation (:class:`_HostArray`) and ``compute_metrics`` gets
    views of them: the logits are held once, where transformers' concatenation holds them twice.
    Otherwise (an ``IterableDataset``) transformers' ``EvalLoopContainer`` does the nested
    concatenation. Either way the result matches HF's to the array. Tensors on an accelerator wait
    there and move to the host every ``accumulation_steps`` batches (HF's ``eval_accumulation_steps``;
    None: at the end); host tensors are written at once.
    """

    def __init__(
        self,
        preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None,
        include: Sequence[str] = (),
        concat: bool = True,
        accumulation_steps: int | None = None,
    ) -> None:
        self.preprocess = preprocess_logits_for_metrics
        self.include = set(include)
        self.concat = concat
        self.accumulation_steps = accumulation_steps
        self.reset()

    def reset(self, rows: int | None = None) -> None:
        """Start an evaluation of ``rows`` rows on this rank (None: unknown, e.g. an ``IterableDataset``)."""
        from transformers.trainer_pt_utils import EvalLoopContainer

        def part() -> Any:
            if rows is not None and self.concat:
                return _Preallocated(rows, IGNORE_INDEX)
            return EvalLoopContainer(self.concat, IGNORE_INDEX)

        self._parts = {name: part() for name in ("preds", "labels", "inputs", "losses")}
        self._pending: list[tuple[str, Any]] = []
        self._pending_batches = 0

    @torch.no_grad()
    def update(self, logits: Any, labels: Any, inputs: torch.Tensor | None = None, loss: torch.Tensor | None = None) -> None:
        """Add one batch; ``loss`` is the batch's mean loss, kept per sample for ``include_for_metrics=['loss']``."""
        if isinstance(logits, (tuple, list)) and len(logits) == 1:
            logits = logits[0]
        if self.preprocess is not None and logits is not None:
            logits = self.preprocess(logits, labels)
        batch = [("preds", logits), ("labels", labels)]
        if "inputs" in self.include:
            batch.append(("inputs", inputs))
        if "loss" in self.include and loss is not None and inputs is not None:
            batch.append(("losses", loss.reshape(1).repeat(inputs.shape[0])))
        self._pending.extend((name, _detached(value)) for name, value in batch if value is not None)
        self._pending_batches += 1
        on_host = all(_on_host(value) for _, value in self._pending)
        if on_host or (self.accumulation_steps and self._pending_batches >= self.accumulation_steps):
            self._to_host()

    def _to_host(self) -> None:
        for name, value in self._pending:
            part = self._parts[name]
            part.add(value if isinstance(part, _Preallocated) else _detached_cpu(value))
        self._pending, self._pending_batches = [], 0

    def eval_prediction(self) -> EvalPrediction:
        """Everything kept, from every rank (a collective: call it on all ranks, once per evaluation).

        Ranks may have evaluated different numbers of batches, so nothing is gathered per batch; the
        arrays travel once, at the end.
        """
        self._to_host()
        arrays = {name: part.get_arrays() for name, part in self._parts.items()}
        from hf_lightning.data_parallel import data_parallel_group, data_parallel_world

        world, _ = data_parallel_world()  # tensor-parallel ranks hold the same rows: gather one copy of each
        if world > 1:
            per_rank: list[Any] = [None] * world
            dist.all_gather_object(per_rank, arrays, group=data_parallel_group())
            arrays = {name: _merge_ranks([r[name] for r in per_rank], self.concat) for name in arrays}
        from transformers import EvalPrediction

        return EvalPrediction(
            predictions=arrays["preds"], label_ids=arrays["labels"], inputs=arrays["inputs"], losses=arrays["losses"]
        )
