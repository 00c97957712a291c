"""One run per output folder: a second run pointed at the same folder is refused, not interleaved.

Two runs writing ``checkpoint-N`` folders into one ``output_dir`` rotate each other's checkpoints
away (``save_total_limit``), overwrite each other's ``checkpoint-N`` and make ``resume=True`` pick a
foreign run. :class:`RunLock` puts a lock file (``.hf_lightning.lock``: JSON with the owner's pid,
host and start time) into the folder for the run's lifetime:

* taken atomically (``O_CREAT | O_EXCL``): of two runs starting together exactly one gets it;
* released on exit, also when the run raises or stops on SIGTERM / Ctrl-C;
* stale locks are recovered: a lock whose owner pid no longer exists on this host (the run was
  killed with SIGKILL, the OOM killer struck) is removed and taken over. A lock held by another
  host cannot be checked from here; the error names that host and the file to delete once it is gone.

:class:`RunLockCallback` takes the lock on the global-zero rank only when ``fit`` starts (other DDP
ranks are the same run and must not be refused) and shares the verdict with every rank, so a refused
run stops everywhere. Locks cover the exact folder: hyperparameter trials in ``output_dir/run-<id>``
sub-folders are separate runs and each takes its own.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from hf_lightning.errors import ConfigError

__all__ = ["LOCK_NAME", "RunLock", "RunLockCallback"]

#: File name of the lock inside the locked folder.
LOCK_NAME = ".hf_lightning.lock"
_UNREADABLE_GRACE_S = 2.0  # an owner may have created the file and not yet written its pid


class RunLock:
    """An exclusive, crash-recoverable lock on ``directory``; use as a context manager or acquire/release.

    Args:
        directory: the folder the run writes (created if missing).
        field: the argument the folder came from, for the error line (``output_dir``, ``default_root_dir``).
    """

    def __init__(self, directory: str | os.PathLike[str], field: str = "output_dir") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.field = field
        self.held = False
        self._owner = {"pid": os.getpid(), "host": socket.gethostname()}

    def acquire(self) -> None:
        """Take the lock or raise a one-line ConfigError naming the run that holds it."""
        if self.held:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        first_unreadable: float | None = None
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read(self.path)
                if owner == {}:  # released between our open and our read: try again
                    continue
                if owner is None:  # being written right now, or left empty by a crash
                    first_unreadable = first_unreadable or time.monotonic()
                    if time.monotonic() - first_unreadable < _UNREADABLE_GRACE_S:
                        time.sleep(0.05)
                        continue
                    self.path.unlink(missing_ok=True)
                    continue
                if self._is_stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._refusal(owner) from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({**self._owner, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            self.held = True
            return

    def release(self) -> None:
        """Remove the lock if this process still owns it (never another run's)."""
        if not self.held:
            return
        self.held = False
        owner = _read(self.path)
        if owner is not None and owner.get("pid") == self._owner["pid"] and owner.get("host") == self._owner["host"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _is_stale(self, owner: dict[str, Any]) -> bool:
        if owner.get("host") != self._owner["host"]:
            return False  # another machine's process: cannot be checked from here
        pid = owner.get("pid")
        if not isinstance(pid, int) or pid == self._owner["pid"]:
            return True  # our own leftover (a run in this process that ended without releasing)
        return not _pid_alive(pid)

    def _refusal(self, owner: dict[str, Any]) -> ConfigError:
        since = f", started {owner['started']}" if owner.get("started") else ""
        return ConfigError(
            self.field,
            f"{str(self.directory)!r} is in use by another run (pid {owner.get('pid')} on {owner.get('host')}{since});"
            " two runs in one folder would delete and overwrite each other's checkpoints",
            f"wait for that run to end or give this run another {self.field}; if that run is gone, delete {self.path}",
        )


class RunLockCallback(pl.Callback):
    """Hold a :class:`RunLock` on ``directory`` (default: the trainer's ``default_root_dir``) while ``fit`` runs.

    ``keep_after_fit=True`` keeps it past ``fit`` until :meth:`release` (the ``Trainer`` facade still
    reloads the best checkpoint and prunes the folder after ``fit``); an exception releases it anyway.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, field: str = "default_root_dir",
                 keep_after_fit: bool = False) -> None:
        self.directory = directory
        self.field = field
        self.keep_after_fit = keep_after_fit
        self.lock: RunLock | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        problem = None
        if trainer.is_global_zero:
            self.lock = RunLock(self.directory if self.directory is not None else trainer.default_root_dir, self.field)
            try:
                self.lock.acquire()
            except ConfigError as err:
                self.lock, problem = None, (err.field, err.problem, err.fix)
        problem = trainer.strategy.broadcast(problem)  # every rank stops, not only the one that was refused
        if problem is not None:
            raise ConfigError(*problem)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.keep_after_fit:
            self.release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.release()

    def release(self) -> None:
        """Release the lock if this rank holds it (a no-op elsewhere and when called twice)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
