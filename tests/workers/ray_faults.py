"""A fault for the Ray Train tests: one worker SIGKILLs itself once, mid-run (a real crash, not an exception)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl


class KillOnce(pl.Callback):
    """SIGKILL the process of global rank ``rank`` after optimizer step ``step``, unless ``marker`` exists.

    The marker (written just before the kill) makes the restarted worker group run through; that group
    writes the step it starts from to ``<marker>.resumed``, so a test can tell a resume from a rerun.
    """

    def __init__(self, rank: int, step: int, marker: str) -> None:
        self.rank, self.step, self.marker = rank, step, Path(marker)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == self.rank and self.marker.exists():
            self.marker.with_suffix(".resumed").write_text(str(trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
