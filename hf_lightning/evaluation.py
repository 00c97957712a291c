"""Evaluation: the module's validation/test/predict steps, and a plain loop over a DataLoader.

:class:`EvaluationMixin` is the evaluation half of :class:`~hf_lightning.module.HFLightningModule`:
streaming task metrics, the item-weighted ``eval_loss``, HF's ``compute_metrics`` when given, and the
predict step. The plain loop (:func:`eval_batches`) serves the HF-style facade, which evaluates at HF's
cadence in the middle of Lightning's training loop: running Lightning's own validation loop there
means driving private loop state; this loop needs none: it moves batches to the module's device, runs
under the precision plugin's autocast, and leaves metric reduction across ranks to the callers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn

from hf_lightning.accumulation import WindowCounter
from hf_lightning.losses.base import split_labels
from hf_lightning.metrics import PredictionCollector, TaskMetrics
from hf_lightning.optim import set_optimizer_mode, step_plateau

__all__ = ["EvaluationMixin", "PaddingTrimmer", "eval_batches", "eval_rows", "move_to_device"]


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict) or hasattr(batch, "items"):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def eval_batches(module: nn.Module, dataloader: Iterable[Any], trainer: Any = None) -> Iterator[Any]:
    """Yield device-ready batches in eval mode, under no_grad and the trainer's precision context."""
    precision_ctx: Callable[[], Any] = contextlib.nullcontext
    if trainer is not None:
        precision_ctx = trainer.precision_plugin.val_step_context
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    module.eval()
    for batch in dataloader:
        batch = move_to_device(batch, device)
        with torch.no_grad(), precision_ctx():
            yield batch


def eval_rows(dataloader: Any) -> int | None:
    """How many real rows this rank evaluates from ``dataloader``; None when its size is unknown.

    It sizes the host arrays that keep predictions for ``compute_metrics`` (``metrics.PredictionCollector``):
    the evaluation shard's real rows, else the sampler's length (an upper bound under ``drop_last``);
    an ``IterableDataset`` or an unsized sampler has none.
    """
    sampler = getattr(dataloader, "sampler", None)
    real = getattr(sampler, "real_count", None)
    if real is not None:
        return int(real)
    if isinstance(getattr(dataloader, "dataset", None), torch.utils.data.IterableDataset):
        return None
    try:
        return len(sampler)  # type: ignore[arg-type]
    except TypeError:
        return None


class PaddingTrimmer:
    """Cuts the rows a rank's evaluation shard repeated for even batch counts (``data.loaders._EvalShardSampler``).

    Call it on each batch in order: it returns the batch without repeated rows, or None for a batch
    that held nothing else. Such a batch must still go through the model once (a sharded model's
    forward is a collective) with its result thrown away. Loaders without that sampler pass through.
    """

    def __init__(self, dataloader: Any) -> None:
        self.left: int | None = getattr(getattr(dataloader, "sampler", None), "real_count", None)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any] | None:
        if self.left is None:
            return batch
        from hf_lightning.losses._utils import batch_size_of

        rows = batch_size_of(batch)
        keep = max(0, min(rows, self.left))
        self.left -= keep
        if keep == rows:
            return batch
        if keep == 0:
            return None
        return {k: v[:keep] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows else v
                for k, v in batch.items()}


class EvaluationMixin(pl.LightningModule):
    """Validation, test and predict steps of :class:`~hf_lightning.module.HFLightningModule`.

    Needs from the module: ``model``, ``forward_model``, ``compute_loss(batch)``, ``task``, ``spec``,
    ``task_metrics``, ``compute_metrics``/``prediction_collector`` and ``plateau_scheduler``. After each
    evaluation :attr:`last_eval_metrics` holds the prefixed metrics (``eval_loss``, ``eval_accuracy``, ...).
    """

    task_metrics: TaskMetrics
    prediction_collector: PredictionCollector | None
    compute_metrics: Callable[[Any], dict[str, float]] | None

    def __init__(self) -> None:
        super().__init__()
        # When True the HF-style facade logs (on its own cadence); the module only feeds the progress bar.
        self.hf_logging = False
        self.eval_prefix = "eval"
        self.last_eval_metrics: dict[str, float] = {}
        self._eval_window = WindowCounter()
        self._eval_trimmers: dict[int, PaddingTrimmer] = {}
        # False until an evaluation batch carries labels: a label-free loss (contrastive) must not
        # report accuracy/F1 of nothing as 0.
        self._eval_has_labels = False

    def _trimmed(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any] | None:
        """The batch without rows repeated for even batch counts across ranks (see ``PaddingTrimmer``)."""
        trimmers = self._eval_trimmers
        if dataloader_idx not in trimmers:
            loaders = self.trainer.test_dataloaders if self.trainer.testing else self.trainer.val_dataloaders
            loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
            trimmers[dataloader_idx] = PaddingTrimmer(loader)
        return trimmers[dataloader_idx](batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor | None:
        real = self._trimmed(batch, dataloader_idx)
        if real is None:  # only repeated rows: forward in step with the other ranks (sharded models), then drop
            self.forward_model(**split_labels(self.model, batch)[0])
            return None
        batch = real
        result = self.compute_loss(batch)
        self._eval_window.add(result.items, result.loss.detach() * result.items)
        logits = getattr(result.outputs, "logits", None)
        if logits is None and isinstance(result.outputs, dict):
            logits = result.outputs.get("logits")
        labels = batch.get("labels")
        self._eval_has_labels = self._eval_has_labels or labels is not None
        self.task_metrics.update(logits, labels)
        if self.prediction_collector is not None and logits is not None:
            self.prediction_collector.update(logits, labels, batch.get("input_ids"))
        return result.loss

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor | None:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        if self._trainer is not None:  # schedule-free optimizers evaluate their averaged weights, as in HF
            set_optimizer_mode(self.trainer.optimizers, train=False)
        self._eval_trimmers = {}
        self._eval_window.reset()
        self._eval_has_labels = False
        if self.prediction_collector is not None:
            self.prediction_collector.reset(self._eval_set_rows())

    def _eval_set_rows(self) -> int | None:
        """Rows this rank evaluates across the loop's dataloaders; None when any has no known size."""
        loaders = self.trainer.test_dataloaders if self.trainer.testing else self.trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        rows = [eval_rows(loader) for loader in loaders]
        return None if not rows or None in rows else sum(r for r in rows if r is not None)

    on_test_epoch_start = on_validation_epoch_start

    def evaluation_metrics(self) -> dict[str, float]:
        """Close the evaluation: HF-named metrics without prefix (loss, accuracy, f1, perplexity, ...)."""
        _, mean_loss = self._eval_window.close(self.device)
        metrics: dict[str, Any] = {"loss": mean_loss}
        if self._eval_has_labels or not self.task_metrics.classification:
            metrics.update(self.task_metrics.compute(mean_loss))
        if self.compute_metrics is not None and self.prediction_collector is not None:
            metrics.update(self.compute_metrics(self.prediction_collector.eval_prediction()))
            self.prediction_collector.reset()
        return metrics

    def on_validation_epoch_end(self) -> None:
        prefix = "test" if self.trainer.testing else self.eval_prefix
        metrics = {f"{prefix}_{k}": float(v) for k, v in self.evaluation_metrics().items() if _is_number(v)}
        self.last_eval_metrics = metrics
        if not self.hf_logging:
            self.log_dict(metrics, prog_bar=True, sync_dist=False, batch_size=1)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            step_plateau(self.plateau_scheduler, metrics, "eval_loss")

    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        inputs, labels = split_labels(self.model, batch)
        if labels is None and self.task == "seq2seq-lm":
            # Nothing to teacher-force with: predict what the model writes.
            keep = {"input_ids", "attention_mask"}  # tokenizer extras (token_type_ids) are not generate() inputs
            return {"generated": self.model.generate(**{k: v for k, v in inputs.items() if k in keep})}
        outputs = self.forward_model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        out = {"logits": logits}
        if self.spec.has_num_labels:
            out["predictions"] = logits.argmax(-1)
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) or (hasattr(value, "item") and getattr(value, "ndim", 1) == 0)
