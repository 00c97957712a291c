"""Save a resumable checkpoint when the job is preempted (SIGTERM) or stopped with Ctrl-C (SIGINT).

How Lightning 2.6 already handles SIGTERM, which this callback builds on: during ``fit`` its signal
connector installs a SIGTERM handler that only sets ``trainer.received_sigterm`` (and forwards the
signal to DDP child processes). The loops check the flag at safe points (after a training batch has
fully finished, after an epoch end, between validation batches) and raise ``SIGTERMException``, a
``SystemExit`` with no code. ``Trainer.fit`` catches it, calls every callback's ``on_exception``,
tears down and re-raises. Two things are missing for preemption: no checkpoint is written, and the
process exits with status 0, so a scheduler thinks the job finished and does not requeue it.

:class:`PreemptionCheckpoint` fills both gaps in ``on_exception``: it saves with
``trainer.save_checkpoint`` (all ranks call it, as Lightning requires; the state is consistent
because the loops stop only between batches), then sets the exception's exit code to ``128 + signal``
(143 for SIGTERM, 130 for SIGINT, the shell convention for "killed by signal").

Ctrl-C would otherwise raise ``KeyboardInterrupt`` wherever the main thread happens to be, possibly in
the middle of ``optimizer.step()``, where no consistent checkpoint exists. During training the first
Ctrl-C is therefore turned into the same request as SIGTERM (stop at the next safe point, save,
exit 130); a second Ctrl-C raises ``KeyboardInterrupt`` at once and saves nothing.

Under DDP (more than one process) Lightning's SIGTERM path does not hold up, measured with 2 CPU
ranks: its handler runs a ``broadcast`` *inside* the signal handler, at whatever point the main thread
was interrupted, and each rank raises at the end of a batch as soon as its *own* flag is set, while the
others learn of it only at the start of the next batch. Rank 0 then waits in the checkpoint's
collectives while rank 1 waits in the next batch's broadcast: the job hangs instead of saving. For
the duration of a multi-process ``fit`` this callback therefore puts its own SIGTERM handler in place
of Lightning's (restored at the end): the handler only records the signal, and at every
``on_train_batch_end`` the ranks all-reduce (max) what they received, so all of them set Lightning's
flag after the same batch and stop, save and exit together. A single process keeps Lightning's handler.

The checkpoint resumes exactly when :class:`~hf_lightning.callbacks.resume.ExactResumeCallback` is in
the same trainer (it adds the data position, RNG streams and any half-accumulated window to every
checkpoint). By default it is written next to ModelCheckpoint's files as ``last-preempted.ckpt``,
a name ``ckpt_path="last"`` picks up when it is the newest ``last*`` checkpoint there.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hf_lightning.errors import ConfigError
from hf_lightning.lightning_compat import request_graceful_stop
from hf_lightning.log import get_logger, log_on_rank_zero

__all__ = ["PreemptionCheckpoint"]

_SUPPORTED = ("SIGTERM", "SIGINT")

logger = get_logger(__name__)


class PreemptionCheckpoint(pl.Callback):
    """On SIGTERM or Ctrl-C during ``fit``: stop after the current batch, save a checkpoint, exit non-zero.

    Args:
        dirpath: folder for the checkpoint. Default: the ModelCheckpoint callback's folder if the
            trainer has one, else ``<default_root_dir>/checkpoints``.
        filename: file name without extension. The default starts with ``last`` so that
            ``ckpt_path="last"`` finds it in a ModelCheckpoint folder.
        signals: which of ``"SIGTERM"`` and ``"SIGINT"`` trigger a save.

    After a save, :attr:`saved_path` is the file written and :attr:`received_signal` the signal.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "last-preempted",
        signals: tuple[str, ...] | list[str] = _SUPPORTED,
    ) -> None:
        if not filename or "/" in filename or os.sep in filename:
            raise ConfigError(
                "filename", f"must be a plain file name, got {filename!r}", "use e.g. 'last-preempted'; set dirpath"
            )
        unknown = [s for s in signals if s not in _SUPPORTED]
        if unknown or not signals:
            raise ConfigError(
                "signals",
                f"{list(signals)!r} is not a non-empty subset of {list(_SUPPORTED)}",
                "use ['SIGTERM', 'SIGINT'] or one of them",
            )
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self.signals = tuple(signals)
        self.saved_path: Path | None = None
        self.received_signal: signal.Signals | None = None
        self._trainer: pl.Trainer | None = None
        self._previous: dict[signal.Signals, Any] = {}

    # ------------------------------------------------------------------ where

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """The file a preemption writes (the same on every rank)."""
        if self.dirpath is not None:
            folder = self.dirpath
        elif isinstance(trainer.checkpoint_callback, ModelCheckpoint) and trainer.checkpoint_callback.dirpath:
            folder = Path(trainer.checkpoint_callback.dirpath)
        else:
            folder = Path(trainer.default_root_dir) / "checkpoints"
        return folder / f"{self.filename}{self.FILE_EXTENSION}"

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from hf_lightning.callbacks.resume import ExactResumeCallback

        if stage == TrainerFn.FITTING and not any(isinstance(cb, ExactResumeCallback) for cb in trainer.callbacks):
            rank_zero_warn(
                "PreemptionCheckpoint without ExactResumeCallback: the preemption checkpoint lacks the data "
                "position and RNG state, so resuming from it will not continue the run exactly"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the signal handlers: Ctrl-C always, SIGTERM only under DDP (see the module docstring)."""
        self.saved_path = None
        self.received_signal = None
        self._trainer = trainer
        if threading.current_thread() is not threading.main_thread():
            return  # Python only lets the main thread set handlers; Lightning's SIGTERM path still works
        if "SIGINT" in self.signals:
            self._install(signal.SIGINT)
        if "SIGTERM" in self.signals and trainer.world_size > 1:
            self._install(signal.SIGTERM)  # in place of Lightning's handler, for this fit only

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Under DDP: agree whether any rank got a signal, so that every rank stops after this same batch."""
        if not self._previous or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        flag = torch.tensor([int(self.received_signal or 0)], device=trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        received = int(flag.item())
        if received:
            self.received_signal = signal.Signals(received)
            self._request_stop()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()
        self._trainer = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Save and set a non-zero exit code when the loops stopped for SIGTERM (or our Ctrl-C request)."""
        self._restore_handlers()
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        received = self.received_signal or signal.SIGTERM
        if received.name not in self.signals:
            return
        self.received_signal = received
        path = self.save(trainer, pl_module)
        self.saved_path = path
        # SystemExit without a code exits with status 0; a scheduler would take that for success.
        exception.code = 128 + int(received)
        log_on_rank_zero(
            logger, logging.WARNING,
            "Stopped by %s: saved a checkpoint to %s. Resume with ckpt_path=%r "
            "(or 'last' if it is the newest last*.ckpt in the ModelCheckpoint folder).", received.name, path, str(path),
        )

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Write the preemption checkpoint (a collective); subclasses change the format."""
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        return path

    # ------------------------------------------------------------------ signal handling

    def _install(self, signum: signal.Signals) -> None:
        self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Record the signal; stop at the next safe point (single process) or after the agreement (DDP)."""
        if self.received_signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user wants out now, without a checkpoint
                self._restore_handlers()
                raise KeyboardInterrupt
            return
        self.received_signal = signal.Signals(signum)
        if signum == signal.SIGINT:
            log_on_rank_zero(
                logger, logging.WARNING,
                "Ctrl-C: stopping after the current batch to save a checkpoint; press Ctrl-C again to stop at "
                "once without one",
            )
        if self._trainer is not None and self._trainer.world_size <= 1:
            self._request_stop()
        # Under DDP the flag is set in on_train_batch_end, on every rank at the same batch: a rank that
        # stopped on its own would wait in the checkpoint collective while the others train on.

    def _request_stop(self) -> None:
        """Ask Lightning's loops to stop at their next safe point, as its own SIGTERM handler does."""
        request_graceful_stop(self._trainer)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
