"""Checkpoints and resume for the facade: which checkpoint to resume, ``checkpoint-N`` folders, the best model.

The writing itself (atomic folders, rotation) lives in ``callbacks/hf_checkpoint.py`` and
``checkpoint_io.py``; this part decides what to write and when, with HF's rules.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from hf_lightning.callbacks.hf_checkpoint import LIGHTNING_CKPT, TRAINER_STATE, save_hf_checkpoint
from hf_lightning.checkpoint_io import (
    COMPLETE_MARKER,
    checkpoint_step,
    cleanup_incomplete,
    completeness_problem,
    delete_checkpoints_except,
    list_checkpoints,
)
from hf_lightning.errors import ConfigError
from hf_lightning.facade import hf_resume
from hf_lightning.log import get_logger
from hf_lightning.models import save_model_weights

__all__ = [
    "LIGHTNING_CKPT", "TRAINER_STATE", "keep_only_best", "load_best_model", "resolve_resume", "resume_callbacks",
    "save_during_training", "save_model", "stateful_callbacks",
]

logger = get_logger(__name__)


def resolve_resume(args: Any, resume_from_checkpoint: str | bool | None) -> str | None:
    """The checkpoint folder to resume from (``True``: the latest one in ``output_dir``), or None.

    Starting afresh in an ``output_dir`` that holds another run's checkpoints trains there, as
    transformers does (a search's trials do), with a warning naming them unless ``overwrite_output_dir``
    is set, so a forgotten ``resume_from_checkpoint`` is noticed. Resume is as lenient as
    transformers': a folder ``transformers.Trainer`` wrote counts, and one whose files changed after it
    was written (weights re-saved, sharded) resumes with a warning; what is missing raises HF's
    ``ValueError`` texts ("No valid checkpoint found in output directory", "Can't find a valid
    checkpoint at"), so scripts that match them keep working.
    """
    output_dir = Path(args.output_dir)
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        existing = list_checkpoints(output_dir) if output_dir.is_dir() else []
        if existing and not args.overwrite_output_dir:
            warnings.warn(
                f"output_dir {str(output_dir)!r} already holds {', '.join(p.name for p in existing)}: "
                "training from scratch beside them (resume_from_checkpoint=True continues the latest)",
                stacklevel=4,
            )
        return None
    if resume_from_checkpoint is True:
        if output_dir.is_dir():
            cleanup_incomplete(output_dir)
        candidates = [*list_checkpoints(output_dir), *_hf_checkpoints(output_dir)]
        if not candidates:
            raise ConfigError("resume_from_checkpoint", f"No valid checkpoint found in output directory ({output_dir})",
                              "train without resuming first, or pass the checkpoint's path")
        return str(max(candidates, key=lambda p: checkpoint_step(p) or 0))
    return str(_check_resume_folder(Path(resume_from_checkpoint).expanduser()))


def _hf_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders that ``transformers.Trainer`` wrote (no completion marker of ours)."""
    if not output_dir.is_dir():
        return []
    return [p for p in output_dir.iterdir() if checkpoint_step(p) is not None and p.is_dir()
            and not (p / COMPLETE_MARKER).exists() and hf_resume.is_hf_checkpoint(p)]


def _check_resume_folder(path: Path) -> Path:
    """The folder to resume from ``path`` (a checkpoint folder or a file in one); HF's error when there is none."""
    folder = path.parent if path.is_file() else path
    has_state = (folder / LIGHTNING_CKPT).is_file() or (folder / TRAINER_STATE).is_file()
    if not folder.is_dir() or not has_state:
        why = "it does not exist" if not path.exists() else f"no {LIGHTNING_CKPT} or {TRAINER_STATE} in it"
        raise ConfigError("resume_from_checkpoint", f"Can't find a valid checkpoint at {path} ({why})",
                          "pass a checkpoint-N folder from output_dir, or True to resume from the latest one")
    problem = completeness_problem(folder)
    if (folder / COMPLETE_MARKER).exists() and problem is not None:
        warnings.warn(f"resume_from_checkpoint: {str(folder)!r} {problem}; resuming from it anyway, as "
                      "transformers does (a partly written folder fails while loading)", stacklevel=5)
    return folder


def stateful_callbacks(trainer: Any) -> list[Any]:
    """The callbacks (and ``TrainerControl``) whose state a checkpoint carries, as HF's ``ExportableState``."""
    from transformers.trainer_callback import ExportableState

    return [cb for cb in trainer.callback_handler.callbacks + [trainer.control] if isinstance(cb, ExportableState)]


def save_during_training(trainer: Any, save_model_overridden: bool) -> None:
    """Write ``checkpoint-<global_step>`` (model, optimizer, exact resume state), rotating old ones."""
    trainer.store_flos()  # the checkpoint's trainer_state.json carries total_flos up to this step, as in HF
    state, args = trainer.state, trainer.args
    if state.best_global_step:
        # HF points at the best step's folder when that step was saved (this one, or an earlier one)
        best = Path(args.output_dir) / f"checkpoint-{state.best_global_step}"
        if state.best_global_step == state.global_step or best.is_dir():
            state.best_model_checkpoint = str(best)
    current: dict[str, list[dict]] = {}  # the checkpoint carries each callback's current state
    for callback in stateful_callbacks(trainer):
        current.setdefault(type(callback).__name__, []).append(callback.state())
    state.stateful_callbacks.update({name: s[0] if len(s) == 1 else s for name, s in current.items()})
    final = save_hf_checkpoint(
        trainer._pl_trainer, trainer._module, args.output_dir, state, args=args,
        processing_class=trainer.processing_class, save_total_limit=args.save_total_limit,
        protect=[state.best_model_checkpoint, trainer._resumed_from], save_only_model=args.save_only_model,
    )
    logger.debug("saved %s", final)
    if save_model_overridden and final.is_dir():
        # HF writes every checkpoint's model through save_model(dir, _internal_call=True); an
        # override (extra files, another format) gets the same call on the finished folder.
        trainer.save_model(str(final), _internal_call=True)


def save_model(trainer: Any, output_dir: str | None) -> None:
    """Write the model (and processing class) with ``save_pretrained``, plus ``training_args.bin``."""
    output_dir = output_dir or trainer.args.output_dir
    # Sharded weights (FSDP2, tensor parallel) stay sharded after train(): gathering them is a collective.
    sharded = any(hasattr(p, "full_tensor") for p in trainer.model.parameters())
    if trainer._module is not None and trainer._pl_trainer is not None and (trainer.is_in_train or sharded):
        written = trainer._module.save_hf_pretrained(output_dir, processing_class=trainer.processing_class)
    else:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        save_model_weights(trainer.model, output_dir)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(output_dir)
        written = output_dir
    if written is not None:  # the rank that wrote the model (a collective under FSDP2)
        torch.save(trainer.args, os.path.join(output_dir, "training_args.bin"))


def load_best_model(trainer: Any) -> None:
    """``load_best_model_at_end``: the best checkpoint's weights back into ``trainer.model``, in every save
    format (safetensors, .bin, sharded, PEFT adapter), completely or an error naming the keys."""
    from hf_lightning.best_model import load_model_weights

    best = Path(trainer.state.best_model_checkpoint)
    logger.info("Loading best model from %s (score: %s)", best, trainer.state.best_metric)
    load_model_weights(trainer.model, best)


def keep_only_best(trainer: Any) -> None:
    """HF: with ``save_total_limit=1``, the best checkpoint is what stays once training is over."""
    state = trainer.state
    if trainer.args.save_total_limit == 1 and state.best_model_checkpoint is not None and trainer.is_world_process_zero():
        delete_checkpoints_except(trainer.args.output_dir, state.best_model_checkpoint)


def resume_callbacks(trainer: Any) -> list[Any]:
    """Exact resume, and a ``checkpoint-N`` on SIGTERM / Ctrl-C that ``resume_from_checkpoint=True`` finds."""
    from hf_lightning.callbacks.preemption import PreemptionCheckpoint
    from hf_lightning.callbacks.resume import ExactResumeCallback

    class HFPreemption(PreemptionCheckpoint):
        """On SIGTERM / Ctrl-C write a ``checkpoint-N`` folder, which ``resume_from_checkpoint=True`` finds."""

        def save(self, pl_trainer: Any, pl_module: Any) -> Path:
            trainer.save_during_training()
            return Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"

    return [ExactResumeCallback(skip_consumed=not trainer.args.ignore_data_skip), HFPreemption()]
