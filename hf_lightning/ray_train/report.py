"""Hand checkpoints to Ray Train, so that a restarted worker group resumes exactly where it stopped.

Ray restores a failed group from the checkpoint last passed to ``ray.train.report``; every worker
must call ``report`` at the same points (rank 0 passes the checkpoint, the others ``None``). Two
front doors, two callbacks, one report path (:func:`report_to_ray`):

* :class:`RayCheckpointReport` (Lightning, for ``hf-lightning fit``): saves with
  ``trainer.save_checkpoint`` (a collective that carries ExactResumeCallback's data position, RNG
  streams and loop state) every ``every_n_steps`` optimizer steps or at each epoch end, and once more
  at the end of fit together with the HF-format export. Ray's own ``RayTrainReportCallback`` reports
  only at epoch ends and has no place for the export, hence this one.
* :class:`RayHFCheckpointReport` (HF ``TrainerCallback``, for the ``Trainer`` facade): reports each
  ``checkpoint-N`` folder the facade has just written (it already holds ``lightning.ckpt`` with the
  exact-resume state, the HF model and ``trainer_state.json``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from transformers import TrainerCallback

__all__ = ["CHECKPOINT_FILE", "HF_MODEL_DIR", "RayCheckpointReport", "RayHFCheckpointReport", "report_to_ray"]

#: The Lightning checkpoint inside a Ray checkpoint folder reported by :class:`RayCheckpointReport`.
CHECKPOINT_FILE = "checkpoint.ckpt"
#: The HF-format model inside the final Ray checkpoint folder.
HF_MODEL_DIR = "hf_model"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def report_to_ray(metrics: dict[str, Any], folder: Path | None, name: str) -> None:
    """``ray.train.report`` from every worker; ``folder`` (rank 0's) is copied into the run's storage."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None and _rank() == 0 else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name if checkpoint is not None else None)
    if checkpoint is not None:
        rank_zero_info(f"[ray] step {metrics.get('step')}: checkpoint {name} reported to Ray")


def _scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in trainer.callback_metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value)
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    out["step"] = trainer.global_step
    out["epoch"] = trainer.current_epoch
    return out


class RayCheckpointReport(pl.Callback):
    """Report a Lightning checkpoint to Ray every ``every_n_steps`` optimizer steps (else each epoch end).

    At the end of fit it reports a last checkpoint holding also the HF-format model that
    :class:`~hf_lightning.callbacks.hf_export.HFExportCallback` wrote (put this callback after it).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def _report(self, trainer: pl.Trainer, name: str, hf_model: str | None = None) -> None:
        with tempfile.TemporaryDirectory(prefix="hf-lightning-ray-") as tmp:
            local = Path(tmp)  # rank 0 writes into its own folder; the other ranks' stay empty
            trainer.save_checkpoint(local / CHECKPOINT_FILE)  # collective: every rank's RNG/window state
            if hf_model is not None and trainer.is_global_zero and Path(hf_model).is_dir():
                shutil.copytree(hf_model, local / HF_MODEL_DIR)
            report_to_ray(_scalar_metrics(trainer), local, name)
            trainer.strategy.barrier()
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step != self._last_step and step > 0 and step % self.every_n_steps == 0:
            self._report(trainer, f"checkpoint-step{step:07d}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_steps is None and trainer.global_step != self._last_step:
            self._report(trainer, f"checkpoint-epoch{trainer.current_epoch:04d}-step{trainer.global_step:07d}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from hf_lightning.callbacks.hf_export import HFExportCallback

        exports = [cb.saved_to for cb in trainer.callbacks if isinstance(cb, HFExportCallback) and cb.saved_to]
        self._report(trainer, f"final-step{trainer.global_step:07d}", str(exports[-1]) if exports else None)


class RayHFCheckpointReport(TrainerCallback):
    """Report each ``checkpoint-N`` folder the ``Trainer`` facade saves (``on_save`` runs on every rank)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        metrics = {k: float(v) for k, v in (state.log_history[-1] if state.log_history else {}).items()
                   if isinstance(v, (int, float))}
        metrics["step"] = state.global_step
        report_to_ray(metrics, folder if folder.is_dir() else None, f"checkpoint-{state.global_step}")
