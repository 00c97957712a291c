"""Resuming a ``checkpoint-N`` folder that ``transformers.Trainer`` wrote: a migration path onto Lightning.

Such a folder has HF's files only (model, ``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``,
``trainer_state.json``) and no Lightning loop state. :func:`lightning_checkpoint_from_hf` builds the
checkpoint Lightning would have written at that optimizer step, from the step count and this run's
batches per epoch, as transformers derives its own position (``epochs_trained``,
``steps_trained_in_current_epoch``); the sampler position and the RNG go to the exact-resume state,
the model weights are read by the module through the model's own ``load_state_dict``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning

from hf_lightning.callbacks.hf_checkpoint import LIGHTNING_CKPT, TRAINER_STATE
from hf_lightning.callbacks.resume import STATE_KEY, STATE_VERSION
from hf_lightning.checkpoint_interop import (
    MODEL_FOLDER_KEY,
    OPTIMIZER_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    hf_rng_to_plain,
    read_hf_rng,
    rng_file_name,
)
from hf_lightning.errors import ConfigError
from hf_lightning.lightning_compat import loop_state_after_step
from hf_lightning.safe_load import safe_torch_load
from hf_lightning.sampler import ResumableSampler

__all__ = ["is_hf_checkpoint", "lightning_checkpoint_from_hf"]


def is_hf_checkpoint(folder: Path) -> bool:
    """A folder written by ``transformers.Trainer`` (its ``trainer_state.json``, no ``lightning.ckpt``)."""
    return (folder / TRAINER_STATE).is_file() and not (folder / LIGHTNING_CKPT).exists()


def _resumable_sampler(loader: Any) -> ResumableSampler | None:
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, ResumableSampler):
            return sampler
    return None


def lightning_checkpoint_from_hf(trainer: Any, loader: Any, batches_per_epoch: int, folder: Path) -> dict[str, Any]:
    """The Lightning checkpoint equivalent to the HF folder ``folder``, for this run's loader and arguments."""
    from transformers import TrainerState

    pl_trainer, args = trainer._pl_trainer, trainer.args
    state = TrainerState.load_from_json(str(folder / TRAINER_STATE))
    steps = state.global_step
    accumulation = args.gradient_accumulation_steps
    if batches_per_epoch <= 0:  # a stream (no length): one endless epoch, as transformers counts it
        batches_per_epoch = steps * accumulation + 1
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulation))
    epochs_done, steps_into_epoch = divmod(steps, steps_per_epoch)
    if steps_into_epoch == 0 and epochs_done > 0:  # saved after an epoch's last step
        epoch, batches, last = epochs_done - 1, batches_per_epoch, True
    else:
        epoch, batches, last = epochs_done, steps_into_epoch * accumulation, False
    fit_loop = loop_state_after_step(
        pl_trainer.fit_loop.state_dict(), epoch=epoch, batches_in_epoch=batches,
        batches_before=epoch * batches_per_epoch, steps=steps, steps_before_epoch=epoch * steps_per_epoch,
        last_batch=last,
    )
    checkpoint: dict[str, Any] = {
        "epoch": epoch, "global_step": steps, "pytorch-lightning_version": lightning.__version__,
        "state_dict": {}, "callbacks": {},  # without the key Lightning skips every callback's on_load_checkpoint
        MODEL_FOLDER_KEY: {"folder": str(folder), "prefix": "model."},
        "loops": {"fit_loop": fit_loop, "validate_loop": pl_trainer.validate_loop.state_dict(),
                  "test_loop": pl_trainer.test_loop.state_dict(), "predict_loop": pl_trainer.predict_loop.state_dict()},
    }
    for key, name in (("optimizer_states", OPTIMIZER_NAME), ("lr_schedulers", SCHEDULER_NAME)):
        if not (folder / name).is_file():
            raise ConfigError("resume_from_checkpoint", f"{str(folder)!r} has no {name}, so training cannot continue "
                              "where it stopped", "resume from a checkpoint saved without save_only_model")
        checkpoint[key] = [safe_torch_load(folder / name, field="resume_from_checkpoint")]
    if (folder / SCALER_NAME).is_file():
        checkpoint[type(pl_trainer.precision_plugin).__qualname__] = safe_torch_load(
            folder / SCALER_NAME, field="resume_from_checkpoint")
    checkpoint[STATE_KEY] = _exact_resume_state(pl_trainer, loader, folder, epoch, batches, last)
    return checkpoint


def _exact_resume_state(pl_trainer: Any, loader: Any, folder: Path, epoch: int, batches: int,
                        last: bool) -> dict[str, Any]:
    """The data position (as transformers skips: whole batches of this run) and every rank's HF RNG state."""
    data = None
    sampler = _resumable_sampler(loader)
    if sampler is not None:
        position = sampler.state_dict(0)
        consumed = batches * (getattr(loader, "batch_size", None) or 1)
        position.update(epoch=epoch + 1 if last else epoch, consumed_on_this_rank=0 if last else consumed)
        data = {"sampler": position, "generator": None}
    world = pl_trainer.world_size
    files = [folder / rng_file_name(rank, world) for rank in range(world)]
    ranks = None
    if all(f.is_file() for f in files):  # as transformers: without them the resume is not exact (a warning)
        ranks = [{"rng": hf_rng_to_plain(read_hf_rng(f)), "window": None, "grads": None} for f in files]
    return {"version": STATE_VERSION, "world_size": world, "mid_window": False, "data": data, "ranks": ranks}
