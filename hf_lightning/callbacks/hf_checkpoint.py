"""HF-style checkpoint folders written atomically: ``output_dir/checkpoint-<global_step>/``.

Each folder holds the model (and tokenizer) in Hugging Face format, ``trainer_state.json`` in HF's
schema, ``training_args.bin``, and ``lightning.ckpt`` with what exact resume needs (optimizer,
scheduler, precision scaler, loop position, sampler position and every rank's RNG state). Where the
strategy saves through :class:`~hf_lightning.checkpoint_interop.InteropCheckpointIO`, the optimizer,
scheduler and scaler states are HF's ``optimizer.pt``/``scheduler.pt``/``scaler.pt`` and the model
weights only the HF model files, with HF's RNG files beside them, so ``transformers.Trainer`` resumes
the folder too and no tensor is stored twice. The folder
appears under its final name only once complete (``checkpoint_io.atomic_directory``), so a process
killed at any moment never leaves a checkpoint that resume would pick but cannot load. Its bytes reach
the disk in a background thread while training goes on, and rotation waits for that
(``checkpoint_io.wait_for_durability``; the trainer waits at the end of training).
"""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from hf_lightning.checkpoint_interop import InteropCheckpointIO
from hf_lightning.checkpoint_io import atomic_directory, rotate_checkpoints, wait_for_durability
from hf_lightning.checkpoint_io_plugin import SafeLoadCheckpointIO

__all__ = ["LIGHTNING_CKPT", "TRAINER_STATE", "save_hf_checkpoint"]

LIGHTNING_CKPT = "lightning.ckpt"
TRAINER_STATE = "trainer_state.json"


def save_hf_checkpoint(
    trainer: pl.Trainer,
    module: Any,
    output_dir: str | Path,
    state: Any,
    args: Any = None,
    processing_class: Any = None,
    save_total_limit: int | None = None,
    protect: list[str | None] | None = None,
    save_only_model: bool = False,
    sync: str = "background",
) -> Path:
    """Write ``checkpoint-<step>`` (a collective: call on every rank). Returns its final path.

    ``sync="before_rename"`` makes it durable before returning (a folder handed to other code at once).
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{state.global_step}"
    rank_zero = trainer.is_global_zero
    ctx: Any = contextlib.nullcontext()
    if rank_zero:
        # The previous checkpoint may still be reaching the disk; older ones report a failure here.
        wait_for_durability(keep=1)
        rotate = None
        if save_total_limit:
            rotate = partial(rotate_checkpoints, output_dir, save_total_limit, protect=[p for p in (protect or []) if p])
        # Rotation runs once this checkpoint is durable, so a durable one always remains.
        ctx = atomic_directory(final, metadata={"step": state.global_step}, sync=sync, after_sync=rotate)
    with ctx as tmp:
        tmp = Path(trainer.strategy.broadcast(str(tmp) if rank_zero else None))
        if not save_only_model:
            io = trainer.strategy.checkpoint_io
            split = io.hf_folder(_model_prefix(module)) if isinstance(io, InteropCheckpointIO) else contextlib.nullcontext()
            # the folder is atomic: no in-memory copy for the single file's sake
            in_place = io.writing_in_place() if isinstance(io, SafeLoadCheckpointIO) else contextlib.nullcontext()
            with split, in_place:
                trainer.save_checkpoint(tmp / LIGHTNING_CKPT)
        module.save_hf_pretrained(tmp, processing_class=processing_class)
        if rank_zero:
            state.save_to_json(str(tmp / TRAINER_STATE))
            if args is not None:
                torch.save(args, tmp / "training_args.bin")
        trainer.strategy.barrier()
    trainer.strategy.barrier()
    return final


def _model_prefix(module: Any) -> str | None:
    """The state-dict prefix of the weights the folder's HF model files hold in full, or None.

    A PEFT model's folder holds only the adapter, so its weights stay in ``lightning.ckpt``.
    """
    from hf_lightning.best_model import is_peft_model

    model = getattr(module, "model", None)
    return None if model is None or is_peft_model(model) else "model."
