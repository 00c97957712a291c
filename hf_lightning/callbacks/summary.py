"""One short block at the end of a run that says what came out of it.

A user who ran ``hf-lightning fit`` should not have to open a CSV to learn the held-out accuracy or
hunt for the folders the run wrote. ``RunSummary`` prints, on rank 0 when fit ends: the final
validation metrics, the best checkpoint, the Hugging Face-format folder, the log folder and the
wall time of the fit. (The HF-style facade prints its metrics through transformers' own
``ProgressCallback``/``PrinterCallback`` instead.)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning.pytorch as pl

__all__ = ["RunSummary", "format_fit_summary"]


class RunSummary(pl.Callback):
    """Print the run's outcome when fit ends (rank 0 only; nothing if fit was interrupted)."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted:
            return
        # trainer.log_dir is a broadcast under several processes: every rank must read it, not rank 0 alone.
        log_dir = trainer.log_dir if trainer.loggers else None
        if not trainer.is_global_zero:
            return
        wall = time.monotonic() - self._start if self._start is not None else None
        print(format_fit_summary(trainer, pl_module, wall, log_dir=log_dir), flush=True)


def _export_dir(trainer: pl.Trainer) -> Path | None:
    from hf_lightning.callbacks.hf_export import HFExportCallback

    for callback in trainer.callbacks:
        if isinstance(callback, HFExportCallback) and callback.saved_to is not None:
            return callback.saved_to
    return None


def _eval_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
    metrics = getattr(pl_module, "last_eval_metrics", None)
    if not metrics:  # any LightningModule: what it logged that is not a training value
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items()
            if not k.startswith("train") and getattr(v, "numel", lambda: 1)() == 1
        }
    return {k: float(v) for k, v in sorted(metrics.items()) if math.isfinite(float(v))}


def format_fit_summary(
    trainer: pl.Trainer, pl_module: pl.LightningModule, wall_seconds: float | None, log_dir: str | None = None
) -> str:
    """The summary block: one ``label: value`` line per fact that the run has (``log_dir``: read by the caller)."""
    lines = [f"Run summary ({trainer.global_step} optimizer steps, {trainer.current_epoch} epochs)"]
    metrics = _eval_metrics(trainer, pl_module)
    if metrics:
        lines.append("  validation:       " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if best:
        lines.append(f"  best checkpoint:  {Path(best).resolve()}")
    export = _export_dir(trainer)
    if export is not None:
        lines.append(f"  Hugging Face model: {export.resolve()}")
    if log_dir is None and trainer.loggers and trainer.world_size == 1:
        log_dir = trainer.log_dir
    if log_dir:
        lines.append(f"  logs:             {Path(log_dir).resolve()}")
    if wall_seconds is not None:
        lines.append(f"  wall time:        {wall_seconds:.1f} s")
    return "\n".join(lines)
