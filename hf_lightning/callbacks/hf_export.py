"""Write the trained model in Hugging Face format when fit ends.

A Lightning checkpoint is for resuming; people deploy ``save_pretrained`` folders. This callback
writes one (model + tokenizer) that ``AutoModelFor...from_pretrained`` loads without hf_lightning.
The folder is built under a hidden name and renamed into place when complete
(``checkpoint_io.atomic_directory``): a full disk or a kill mid-export leaves the previous export (or
nothing), never a half-written folder, and a failed write stops with one line naming the folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import lightning.pytorch as pl

from hf_lightning.checkpoint_io import atomic_directory
from hf_lightning.log import get_logger

__all__ = ["HFExportCallback"]

logger = get_logger(__name__)


class HFExportCallback(pl.Callback):
    """Save ``pl_module.model`` (and the data module's tokenizer) with ``save_pretrained`` after fit.

    Args:
        dirpath: where to write; default ``<log dir>/hf_model``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.saved_to: Path | None = None

    def _target(self, trainer: pl.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        base = trainer.log_dir or trainer.default_root_dir
        return Path(base) / "hf_model"

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule is not None else None
        target = trainer.strategy.broadcast(str(self._target(trainer)))
        rank_zero = trainer.is_global_zero
        with atomic_directory(target) if rank_zero else contextlib.nullcontext() as tmp:
            # save_hf_pretrained is a collective under FSDP2; only rank zero writes, into the hidden folder.
            written = pl_module.save_hf_pretrained(tmp if rank_zero else target, processing_class=tokenizer)
        self.saved_to = Path(target)
        if written is not None:
            logger.info("Saved the model in Hugging Face format to %s", Path(target).resolve())
