"""Crash-safe checkpoint directories: a checkpoint is either complete on disk or not there at all.

A run killed while saving (OOM killer, preemption, Ctrl-C twice) must not leave a ``checkpoint-N``
directory that looks valid but holds a truncated file, because ``resume_from_checkpoint=True``
would pick it as the latest and fail, or worse, load garbage. The rules used here:

* A checkpoint is written into a hidden sibling ``.tmp-<name>-<pid>``; every file and the directory
  are fsynced, then a ``.complete`` marker (JSON: step, time, a size manifest of the files) is
  written last, and only then is the directory renamed to its final name. Rename is atomic within a
  file system, so readers see either the old state or the whole new checkpoint.
* Training checkpoints (``sync="background"``) are renamed into place as soon as they are written
  and made durable by a background thread right after, as the next step trains: a killed *process*
  cannot hurt them (its writes are in the kernel's page cache), and what a *power loss* in that
  fraction of a second can leave is a file shorter than the manifest says, which resume skips.
  Anything that deletes an older checkpoint (rotation) runs in that thread only once the new one is
  durable, so a durable checkpoint always remains. :func:`wait_for_durability` waits for it (the
  trainer does at the end of training) and reports a failed fsync as :class:`CheckpointWriteError`.
* A directory counts as a checkpoint only if its marker is present and every file the manifest
  names still has the recorded size (:func:`is_complete_checkpoint`).
* Deleting is also done by renaming to a hidden ``.tmp-`` name first, so a crash mid-delete leaves
  no half-deleted directory that still carries a marker.
* :func:`cleanup_incomplete` finishes what a crash interrupted: temporary directories that are
  complete but never got renamed (the crash hit between the last two renames) are moved into
  place; everything else hidden and stale is removed.

torch is imported lazily (only :func:`atomic_torch_save` needs it) so that tools that only look
at checkpoint directories start fast.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hf_lightning.errors import ConfigError

__all__ = [
    "COMPLETE_MARKER",
    "CheckpointWriteError",
    "TMP_PREFIX",
    "atomic_directory",
    "atomic_torch_save",
    "atomic_write_bytes",
    "checkpoint_step",
    "cleanup_incomplete",
    "completeness_problem",
    "delete_checkpoints_except",
    "is_complete_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "rotate_checkpoints",
    "torch_save_file",
    "validate_resume_path",
    "wait_for_durability",
]

#: Name of the marker written last into a finished checkpoint directory.
COMPLETE_MARKER = ".complete"
#: Prefix of every temporary or being-deleted entry; :func:`cleanup_incomplete` owns these names.
TMP_PREFIX = ".tmp-"
_OLD_SUFFIX = ".old"  # a previous checkpoint moved aside while its replacement is renamed in
_DEL_SUFFIX = ".del"  # a checkpoint renamed away before it is deleted
_TMP_RE = re.compile(r"^\.tmp-(?P<name>.+)-(?P<pid>\d+)(?P<suffix>(?:\.old|\.del)\d*)?$")

PathLike = str | os.PathLike[str]


class CheckpointWriteError(OSError):
    """Writing a checkpoint (or export) folder failed midway: disk full, file size limit, I/O error.

    One line says which folder and why; nothing of the failed write is left behind and what was in
    place before (earlier checkpoints, an earlier export under the same name) is untouched. Keeps the
    underlying ``errno`` so that code catching ``OSError`` keeps working; built by :func:`write_failure`
    (the constructor is ``OSError``'s, so the error pickles across processes, e.g. out of a Ray trial).
    """

    def __str__(self) -> str:
        return str(self.strerror)


def write_failure(target: Path, cause: OSError) -> CheckpointWriteError:
    """The one-line :class:`CheckpointWriteError` for a failed write of the folder ``target``."""
    reason = cause.strerror or str(cause) or type(cause).__name__
    where = f" while writing {Path(cause.filename).name}" if cause.filename else ""
    return CheckpointWriteError(
        cause.errno,
        f"could not write {target}: {reason}{where}. Nothing of it was kept and the earlier contents of "
        f"{target.parent} are intact. Fix: free space on that disk (or raise the file size limit), then resume "
        "with resume_from_checkpoint=True (or ckpt_path='last')",
    )


# ---------------------------------------------------------------------------- fsync helpers


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (creations, renames); a no-op where directories can't be opened."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> int:
    """Fsync one file; returns the size it had when it was made durable."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        return os.fstat(handle.fileno()).st_size


def _fsync_tree(root: Path, synced: dict[Path, int] | None = None) -> dict[str, int]:
    """Fsync every file and directory under ``root``; return the manifest ``{relative path: size}``.

    ``synced`` holds files already made durable while the folder was being written (see
    :class:`_EarlySync`) with their sizes then; they are not fsynced again unless they have changed.
    The ``.complete`` marker is left out (it is written, and made durable, by its writer).
    """
    synced = synced or {}
    manifest = _sizes(root)
    for relative, size in manifest.items():
        path = root / relative
        if synced.get(path) != size:
            manifest[relative] = _fsync_file(path)
    for dirpath, _dirnames, _filenames in os.walk(root):
        _fsync_dir(Path(dirpath))
    return manifest


def _sizes(root: Path) -> dict[str, int]:
    """The manifest ``{relative path: size}`` of ``root`` without making anything durable."""
    manifest: dict[str, int] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            file_path = Path(dirpath, filename)
            if file_path != root / COMPLETE_MARKER:
                manifest[file_path.relative_to(root).as_posix()] = file_path.stat().st_size
    return manifest


class _EarlySync:
    """Fsyncs the large files of a folder being written in a background thread, as soon as each is done.

    A checkpoint's bytes are mostly one or two big files written one after another (``optimizer.pt``,
    then the model). Flushing a finished file to disk while the next one is serialised overlaps the two,
    instead of paying for every file's disk write after the last one. ``os.fsync`` releases the GIL.
    """

    def __init__(self, root: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.root = root
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf_lightning-fsync")
        self._futures: dict[Path, Any] = {}

    def submit(self, path: Path) -> None:
        if self.root in path.parents:
            self._futures[path] = self._pool.submit(_fsync_file, path)

    def finish(self) -> dict[Path, int]:
        """Wait for the background fsyncs; their sizes, or the first ``OSError`` one of them raised."""
        try:
            return {path: future.result() for path, future in self._futures.items()}
        finally:
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        """Wait for the background fsyncs without looking at their outcome (the folder is being discarded)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


_EARLY_SYNC: contextvars.ContextVar[_EarlySync | None] = contextvars.ContextVar("hf_lightning_early_sync", default=None)


def sync_soon(path: PathLike) -> None:
    """Start making ``path`` durable now, if it was written inside an :func:`atomic_directory` on this thread."""
    early = _EARLY_SYNC.get()
    if early is not None:
        early.submit(Path(path).resolve())


class _NotDurable(Exception):
    """A renamed-in-place folder whose fsync failed; carries the ``OSError`` and the folder it replaced."""

    def __init__(self, cause: OSError, old: Path | None) -> None:
        super().__init__(str(cause))
        self.cause, self.old = cause, old


def _make_durable(final: Path, old: Path | None, after: Callable[[], Any] | None) -> None:
    """The background half of a ``sync="background"`` folder: fsync it all, then drop what it replaced.

    Other code may touch the folder meanwhile (``on_save`` callbacks, a ``save_model`` override writing
    into it): a file replaced under the walk means walking again; a folder gone means nothing to sync.
    """
    for _attempt in range(5):
        try:
            _fsync_file(final / COMPLETE_MARKER)
            _fsync_tree(final)
            _fsync_dir(final.parent)
            break
        except FileNotFoundError as err:
            if not final.is_dir():
                break  # moved or deleted by other code: not a disk failure
            missing = err
        except OSError as err:
            raise _NotDurable(err, old) from err
    else:
        raise _NotDurable(missing, old)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if after is not None:
        after()


class _DurabilityQueue:
    """Checkpoint folders already in place whose bytes are still on their way to the disk, oldest first.

    One worker thread (``os.fsync`` releases the GIL), so folders become durable, and rotations run,
    in the order they were saved. Recreated after a fork: a forked child has the executor but not its
    thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: Any = None
        self._pid = -1
        self._pending: list[tuple[Path, Any]] = []

    def submit(self, final: Path, old: Path | None, after: Callable[[], Any] | None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf_lightning-durable")
                self._pid, self._pending = os.getpid(), []
            self._pending.append((final, self._pool.submit(_make_durable, final, old, after)))

    def wait(self, keep: int = 0) -> None:
        while True:
            with self._lock:
                if self._pid != os.getpid():
                    self._pending = []
                if len(self._pending) <= keep:
                    return
                final, future = self._pending.pop(0)
            try:
                future.result()
            except _NotDurable as err:
                with contextlib.suppress(OSError):  # not trusted after a failed fsync
                    if final.is_dir():
                        _remove_dir(final)
                    if err.old is not None and err.old.is_dir():
                        os.replace(err.old, final)  # the folder it replaced comes back, as write_failure says
                raise write_failure(final, err.cause) from err.cause


_DURABILITY = _DurabilityQueue()


def wait_for_durability(keep: int = 0) -> None:
    """Block until at most ``keep`` checkpoint folders saved with ``sync="background"`` are not yet durable.

    Also runs out what waits on them (rotation). A folder whose fsync failed (a dying disk) is removed
    and reported as the one-line :class:`CheckpointWriteError`; the checkpoints before it stay.
    """
    _DURABILITY.wait(keep)


def _unique_hidden(parent: Path, name: str, suffix: str) -> Path:
    base = parent / f"{TMP_PREFIX}{name}-{os.getpid()}{suffix}"
    if not base.exists():
        return base
    for attempt in range(1, 10_000):
        candidate = parent / f"{TMP_PREFIX}{name}-{os.getpid()}{suffix}{attempt}"
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free temporary name for {name} in {parent}")


def _remove_dir(path: Path) -> None:
    """Delete a directory so that no crash can leave it half-deleted under its own name."""
    doomed = _unique_hidden(path.parent, path.name, _DEL_SUFFIX)
    os.replace(path, doomed)
    _fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


# ---------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that the file holds either its old content or all of ``data``.

    Writes a hidden temporary sibling, fsyncs it, renames it over ``path`` and fsyncs the parent
    directory so the rename itself survives a power loss.
    """
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` with the same all-or-nothing guarantee as :func:`atomic_write_bytes`.

    Streams into the temporary file instead of building the bytes in memory, because model state
    can be larger than the free RAM.
    """
    import torch

    return _atomic_write(path, lambda handle: torch.save(obj, handle))


def torch_save_file(obj: Any, path: PathLike) -> None:
    """``torch.save`` streamed into the file ``path``: no copy of the bytes in memory, and a failed write
    (disk full, file size limit) raises its ``OSError``, which :func:`atomic_directory` turns into the
    one-line :class:`CheckpointWriteError`.

    Saving to a path, torch's zip writer reports a failed write as a ``RuntimeError`` without the reason;
    serialising into memory first (Lightning's way) keeps the ``OSError`` but holds a second copy of
    every tensor. For files inside an atomic folder, where the file itself need not be atomic.
    """
    import torch

    with open(path, "wb") as handle:
        writer = _ReportingWriter(handle)
        try:
            torch.save(obj, writer)
        except RuntimeError as err:
            if writer.failure is not None:
                raise writer.failure from err
            raise
    sync_soon(path)


class _ReportingWriter:
    """A binary file for ``torch.save`` that remembers the ``OSError`` of a failed write."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.failure = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.failure = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def _atomic_write(path: PathLike, write: Callable[[Any], Any], durable: bool = True) -> Path:
    """Write through ``write(handle)`` into a temporary sibling, fsync (if ``durable``), then rename into place."""
    target = Path(path)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(target.parent)
    return target


def checkpoint_step(path: PathLike, prefix: str = "checkpoint") -> int | None:
    """The ``N`` of a ``<prefix>-N`` directory name, or None when the name does not match."""
    match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def atomic_directory(
    final_path: PathLike,
    metadata: dict[str, Any] | None = None,
    sync: str = "before_rename",
    after_sync: Callable[[], Any] | None = None,
) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it to ``final_path`` only if the block succeeds.

    Yields the temporary directory to write into. On a clean exit every file is fsynced, the
    ``.complete`` marker is written (``step`` parsed from a ``-N`` name suffix unless ``metadata``
    gives one, ``time``, ``files`` manifest, plus ``metadata``), and the directory replaces
    ``final_path``; an existing ``final_path`` is moved aside first and deleted afterwards. If the
    block raises, the temporary directory is removed and ``final_path`` is untouched; a failed write
    (``OSError``: disk full, ``RLIMIT_FSIZE``) is re-raised as one-line :class:`CheckpointWriteError`.

    ``sync="background"`` (training checkpoints) renames first and fsyncs in a background thread, then
    deletes the replaced folder and runs ``after_sync`` (rotation) there: a save then costs what writing
    the bytes costs, not the disk's time to store them (see the module docstring for what stays safe).

    Only one process may write a given ``final_path`` at a time (in DDP: rank 0).
    """
    if sync not in ("before_rename", "background"):
        raise ValueError(f"sync must be 'before_rename' or 'background', not {sync!r}")
    background = sync == "background"
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():  # left by an earlier crashed attempt of a process that had our pid
        shutil.rmtree(tmp)
    tmp.mkdir()
    root = tmp.resolve()  # the paths sync_soon is handed are resolved too
    early = None if background else _EarlySync(root)
    token = _EARLY_SYNC.set(early)
    try:
        try:
            yield tmp
        except BaseException:
            if early is not None:
                early.abandon()  # the block's own error is the one to report
            raise
        finally:
            _EARLY_SYNC.reset(token)
        manifest = _sizes(root) if early is None else _fsync_tree(root, early.finish())
        step = re.search(r"-(\d+)$", final.name)
        marker: dict[str, Any] = {"step": int(step.group(1)) if step else None, "time": time.time()}
        marker.update(metadata or {})
        marker["files"] = manifest
        # Through a rename: a crash mid-write must not leave an empty marker, which would read as a
        # user vouching for the directory (see _read_marker).
        _atomic_write(tmp / COMPLETE_MARKER, lambda handle: handle.write(json.dumps(marker).encode()),
                      durable=not background)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = _os_error(err)
        if cause is None or isinstance(err, CheckpointWriteError):
            raise
        raise write_failure(final, cause) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    old: Path | None = None
    if final.exists():
        old = _unique_hidden(final.parent, final.name, _OLD_SUFFIX)
        os.replace(final, old)
    os.replace(tmp, final)
    if background:
        _DURABILITY.submit(final, old, after_sync)
        return
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if after_sync is not None:
        after_sync()


def _os_error(err: BaseException) -> OSError | None:
    """The operating-system error behind ``err``: itself, or one that safetensors reports as text."""
    if isinstance(err, OSError):
        return err
    found = re.search(r"os error (\d+)", str(err))  # safetensors' SafetensorError from a failed Rust write
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


# ---------------------------------------------------------------------------- inspection


def _read_marker(path: Path) -> dict[str, Any] | None:
    """The parsed marker; ``{}`` for an empty marker (a user vouching for a foreign checkpoint); None if bad."""
    try:
        text = (path / COMPLETE_MARKER).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return None
    if not text.strip():
        return {}
    try:
        marker = json.loads(text)
    except json.JSONDecodeError:
        return None
    return marker if isinstance(marker, dict) else None


def _check_complete(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint directory, else why not (for error messages)."""
    if not path.is_dir():
        return "is not a directory"
    marker = _read_marker(path)
    if marker is None:
        return f"has no valid {COMPLETE_MARKER} marker, so it was not completely written (or is corrupt)"
    files = marker.get("files", {})
    if not isinstance(files, dict):
        return f"has a corrupt {COMPLETE_MARKER} marker"
    for relative, size in files.items():
        file_path = path / relative
        try:
            actual = file_path.stat().st_size
        except FileNotFoundError:
            return f"is missing {relative}, which was part of the checkpoint when it was written"
        if actual != size:
            return f"has {relative} with {actual} bytes where {size} were written (truncated or changed)"
    return None


def _written_complete(path: Path) -> bool:
    """Complete and marked by :func:`atomic_directory` itself (a manifest), not an empty user marker.

    Only such temporary directories may be promoted: an empty marker inside a hidden directory is
    not a user's vouching but a write the crash interrupted (from a version without the rename).
    """
    marker = _read_marker(path)
    return bool(marker) and isinstance(marker.get("files"), dict) and _check_complete(path) is None


def completeness_problem(path: PathLike) -> str | None:
    """None if ``path`` is a complete checkpoint directory, else why not (a phrase for messages)."""
    return _check_complete(Path(path))


def is_complete_checkpoint(path: PathLike) -> bool:
    """True if ``path`` is a directory with a valid marker whose manifest files all have their sizes."""
    return _check_complete(Path(path)) is None


def list_checkpoints(
    output_dir: PathLike, prefix: str = "checkpoint", include_incomplete: bool = False
) -> list[Path]:
    """``<prefix>-N`` directories in ``output_dir``, oldest step first; complete ones unless asked."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        step = checkpoint_step(entry, prefix)
        if step is None or not entry.is_dir():
            continue
        if include_incomplete or is_complete_checkpoint(entry):
            found.append((step, entry))
    return [path for _step, path in sorted(found)]


def latest_checkpoint(output_dir: PathLike, prefix: str = "checkpoint") -> Path | None:
    """The complete checkpoint with the highest step, or None; what ``resume_from_checkpoint=True`` means."""
    checkpoints = list_checkpoints(output_dir, prefix)
    return checkpoints[-1] if checkpoints else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are stale by definition when we are cleaning up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def cleanup_incomplete(output_dir: PathLike) -> list[Path]:
    """Finish or undo what a crash interrupted in ``output_dir``; return the entries removed.

    Call it once at startup, on one rank, before listing checkpoints. Hidden entries of a process
    that is still alive on this machine are left alone (another run may be writing into the same
    directory); the pid check cannot see other machines, so on a shared file system do not run two
    jobs on one ``output_dir``. A complete temporary directory whose final name is missing is
    renamed into place instead of deleted: the crash came after it was fully written.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []

    def stale_hidden() -> list[tuple[Path, re.Match[str] | None]]:
        found = []
        for entry in sorted(root.iterdir(), key=lambda p: p.name):
            if not entry.name.startswith(TMP_PREFIX):
                continue
            match = _TMP_RE.match(entry.name)
            if match is None or not _pid_alive(int(match.group("pid"))):
                found.append((entry, match))
        return found

    # Promote first (new copies before moved-aside old ones), so that an old copy is only deleted
    # once its replacement is in place.
    for wanted in ("", _OLD_SUFFIX):
        for entry, match in stale_hidden():
            if match is None or (match.group("suffix") or "")[:4] != wanted:
                continue
            final = root / match.group("name")
            if entry.is_dir() and not final.exists() and _written_complete(entry):
                os.replace(entry, final)
                _fsync_dir(root)
    removed: list[Path] = []
    for entry, _match in stale_hidden():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# ---------------------------------------------------------------------------- policies


def rotate_checkpoints(
    output_dir: PathLike,
    save_total_limit: int | None,
    protect: Iterable[PathLike] = (),
    prefix: str = "checkpoint",
) -> list[Path]:
    """Delete the oldest complete checkpoints so that about ``save_total_limit`` remain; return the deleted.

    Follows ``transformers.TrainingArguments.save_total_limit``: ``None`` or ``<= 0`` keeps all;
    protected checkpoints (the best one, the one this run resumed from) count towards the limit but
    are never deleted, and the newest checkpoint is always kept so that the run can resume. With a
    limit of 1 and a best checkpoint that is not the newest, both stay. Incomplete directories are
    neither counted nor touched; :func:`cleanup_incomplete` deals with those.
    """
    if save_total_limit is None or save_total_limit <= 0:
        return []
    checkpoints = list_checkpoints(output_dir, prefix)
    if not checkpoints:
        return []
    protected = {Path(p).resolve() for p in protect}
    keep = {p for p in checkpoints if p.resolve() in protected}
    keep.add(checkpoints[-1])
    for candidate in reversed(checkpoints):
        if len(keep) >= save_total_limit:
            break
        keep.add(candidate)
    deleted = []
    for path in checkpoints:  # oldest first, so an interruption leaves the newest ones
        if path not in keep:
            _remove_dir(path)
            deleted.append(path)
    return deleted


def delete_checkpoints_except(output_dir: PathLike, keep: PathLike, prefix: str = "checkpoint") -> list[Path]:
    """Delete every complete checkpoint in ``output_dir`` but ``keep`` (crash-safe, like rotation); return them.

    HF's end of training with ``save_total_limit=1`` and a best checkpoint: only the best one stays.
    """
    kept = Path(keep).resolve()
    deleted = []
    for path in list_checkpoints(output_dir, prefix):
        if path.resolve() != kept:
            _remove_dir(path)
            deleted.append(path)
    return deleted


def validate_resume_path(path: PathLike) -> Path:
    """Check a ``resume_from_checkpoint`` value before any expensive work; return it as a Path.

    Accepts a complete checkpoint directory, or a file inside one (Lightning's ``ckpt_path`` is a
    file). A directory without a marker was interrupted while being written or comes from a tool
    that does not write markers; both are refused rather than guessed at.
    """
    if isinstance(path, bool):
        raise ConfigError(
            "resume_from_checkpoint",
            f"{path!r} is not a path",
            "resolve True to latest_checkpoint(output_dir) before validating",
        )
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise ConfigError(
            "resume_from_checkpoint",
            f"{str(resolved)!r} does not exist",
            "pass an existing checkpoint-N directory from output_dir, or True to resume from the latest one",
        )
    directory = resolved.parent if resolved.is_file() else resolved
    problem = _check_complete(directory)
    if problem is not None:
        raise ConfigError(
            "resume_from_checkpoint",
            f"{str(directory)!r} {problem}",
            "resume from an earlier checkpoint (latest_checkpoint(output_dir) skips incomplete ones); if a "
            f"different tool wrote this directory and you trust it, create an empty {COMPLETE_MARKER} file in it",
        )
    return resolved
