"""Crash safety of checkpoint directories, tested by SIGKILLing a real writer process at random moments."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from hf_lightning.checkpoint_io import (
    COMPLETE_MARKER,
    TMP_PREFIX,
    atomic_directory,
    atomic_torch_save,
    atomic_write_bytes,
    cleanup_incomplete,
    is_complete_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    rotate_checkpoints,
    validate_resume_path,
)
from hf_lightning.errors import ConfigError

__all__: list[str] = []

# Writes checkpoints forever: every name twice (so replacing an existing checkpoint is exercised),
# rotating down to 3 with checkpoint-0 protected, and a pointer file written with atomic_write_bytes.
# sys.argv[3] is atomic_directory's sync mode; "background" rotates as training checkpoints do (after the
# new folder is durable, in the background thread, with one earlier folder allowed to be still in flight).
_WRITER = r"""
import functools, hashlib, json, os, random, sys
from pathlib import Path
from hf_lightning.checkpoint_io import atomic_directory, atomic_write_bytes, rotate_checkpoints, wait_for_durability

out, i, sync = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(i)
print("ready", flush=True)
while True:
    step = i // 2
    payload = os.urandom(rng.randint(1, 512) * 1024)
    rotate = functools.partial(rotate_checkpoints, out, 3, protect=[out / "checkpoint-0"])
    wait_for_durability(keep=1)
    with atomic_directory(out / f"checkpoint-{step}", metadata={"writer": os.getpid()}, sync=sync,
                          after_sync=rotate) as tmp:
        (tmp / "weights.bin").write_bytes(payload)
        (tmp / "nested").mkdir()
        (tmp / "nested" / "meta.json").write_text(
            json.dumps({"step": step, "sha": hashlib.sha256(payload).hexdigest()})
        )
    atomic_write_bytes(out / "last_step.txt", str(step).encode())
    i += 1
"""


def _assert_loadable(checkpoint: Path) -> int:
    assert is_complete_checkpoint(checkpoint), checkpoint
    meta = json.loads((checkpoint / "nested" / "meta.json").read_text())
    assert hashlib.sha256((checkpoint / "weights.bin").read_bytes()).hexdigest() == meta["sha"]
    marker = json.loads((checkpoint / COMPLETE_MARKER).read_text())
    assert marker["step"] == meta["step"] == int(checkpoint.name.split("-")[1])
    return meta["step"]


def _hidden(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.mark.parametrize("sync", ["before_rename", "background"])
def test_sigkill_at_random_moments_never_leaves_a_half_written_checkpoint(tmp_path, sync):
    rng = random.Random(1234)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    next_i = 0
    leftovers_seen = 0
    for iteration in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(next_i), sync],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.05, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()  # type: ignore[union-attr]

        # Before any cleanup: every checkpoint-* directory that exists is complete and intact.
        for checkpoint in list_checkpoints(tmp_path, include_incomplete=True):
            _assert_loadable(checkpoint)
        latest = latest_checkpoint(tmp_path)
        if latest is not None:
            _assert_loadable(latest)
        pointer = tmp_path / "last_step.txt"
        if pointer.exists():
            int(pointer.read_text())  # never a torn write

        # Every other run cleans up first, so the next writer also meets leftovers from a dead one.
        if iteration % 2:
            leftovers_seen += bool(_hidden(tmp_path))
            cleanup_incomplete(tmp_path)
            assert _hidden(tmp_path) == []
            for checkpoint in list_checkpoints(tmp_path, include_incomplete=True):
                _assert_loadable(checkpoint)
        latest = latest_checkpoint(tmp_path)
        next_i = 0 if latest is None else (_assert_loadable(latest) + 1) * 2

    assert next_i > 0, "the writer never finished a checkpoint; the test did not exercise anything"
    assert (tmp_path / "checkpoint-0").is_dir(), "rotation deleted the protected checkpoint"
    # limit 3, plus possibly the protected one beyond it; in the background, the rotations of the last two
    # saves may not have run when the writer was killed
    assert len(list_checkpoints(tmp_path)) <= (4 if sync == "before_rename" else 6)


def test_exception_inside_the_block_leaves_no_trace(tmp_path):
    with atomic_directory(tmp_path / "checkpoint-1") as tmp:
        (tmp / "a.bin").write_bytes(b"old")

    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(tmp_path / "checkpoint-1") as tmp:
            (tmp / "a.bin").write_bytes(b"new")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(tmp_path / "checkpoint-2") as tmp:
            (tmp / "a.bin").write_bytes(b"x")
            raise RuntimeError("boom")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert (tmp_path / "checkpoint-1" / "a.bin").read_bytes() == b"old"
    assert is_complete_checkpoint(tmp_path / "checkpoint-1")


def test_replacing_a_checkpoint_writes_marker_with_manifest(tmp_path):
    for content in (b"first", b"second!"):
        with atomic_directory(tmp_path / "checkpoint-7", metadata={"epoch": 2}) as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "w.bin").write_bytes(content)
    assert (tmp_path / "checkpoint-7" / "sub" / "w.bin").read_bytes() == b"second!"
    marker = json.loads((tmp_path / "checkpoint-7" / COMPLETE_MARKER).read_text())
    assert marker["step"] == 7 and marker["epoch"] == 2 and marker["files"] == {"sub/w.bin": 7}
    assert _hidden(tmp_path) == []


def test_completeness_detects_missing_marker_and_truncated_files(tmp_path):
    with atomic_directory(tmp_path / "checkpoint-3") as tmp:
        (tmp / "w.bin").write_bytes(b"12345")
    good = tmp_path / "checkpoint-3"
    assert is_complete_checkpoint(good)
    (good / "w.bin").write_bytes(b"12")
    assert not is_complete_checkpoint(good)

    foreign = tmp_path / "checkpoint-4"
    foreign.mkdir()
    assert not is_complete_checkpoint(foreign)
    (foreign / COMPLETE_MARKER).write_text("")  # a user vouching for a checkpoint written elsewhere
    assert is_complete_checkpoint(foreign)
    (foreign / COMPLETE_MARKER).write_text("{not json")
    assert not is_complete_checkpoint(foreign)


def _make(root: Path, *steps: int) -> None:
    for step in steps:
        with atomic_directory(root / f"checkpoint-{step}") as tmp:
            (tmp / "w.bin").write_bytes(str(step).encode())


def test_listing_is_numeric_and_skips_incomplete(tmp_path):
    _make(tmp_path, 10, 9, 100)
    (tmp_path / "checkpoint-200").mkdir()  # incomplete
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "run-5").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10", "checkpoint-100"]
    assert list_checkpoints(tmp_path, include_incomplete=True)[-1].name == "checkpoint-200"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-100"
    assert latest_checkpoint(tmp_path / "missing") is None


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(proc.stdout)


def test_cleanup_removes_stale_promotes_finished_and_spares_live_writers(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f"{TMP_PREFIX}checkpoint-5-{dead}"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    (tmp_path / f"{TMP_PREFIX}last_step.txt-{dead}").write_bytes(b"1")
    # A complete temporary directory whose rename never happened: the crash came after it was written.
    with atomic_directory(tmp_path / "staging") as tmp:
        (tmp / "w.bin").write_bytes(b"done")
    (tmp_path / "staging").rename(tmp_path / f"{TMP_PREFIX}checkpoint-6-{dead}")
    live = tmp_path / f"{TMP_PREFIX}checkpoint-7-{os.getppid()}"  # our parent process is alive
    live.mkdir()
    # Killed while the marker was being written: an empty marker inside a hidden directory is a
    # torn write, not a user vouching for it, so it is removed rather than promoted.
    torn = tmp_path / f"{TMP_PREFIX}checkpoint-8-{dead}"
    torn.mkdir()
    (torn / "w.bin").write_bytes(b"done")
    (torn / COMPLETE_MARKER).write_text("")

    removed = cleanup_incomplete(tmp_path)

    assert sorted(p.name for p in removed) == sorted(
        [stale.name, torn.name, f"{TMP_PREFIX}last_step.txt-{dead}"]
    )
    assert not (tmp_path / "checkpoint-8").exists()
    assert (tmp_path / "checkpoint-6" / "w.bin").read_bytes() == b"done"
    assert live.is_dir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-6"


def test_rotation_keeps_newest_and_protected(tmp_path):
    _make(tmp_path, 1, 2, 3, 4, 5)
    best = tmp_path / "checkpoint-2"
    deleted = rotate_checkpoints(tmp_path, 2, protect=[best])
    assert [p.name for p in deleted] == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-5"]
    assert _hidden(tmp_path) == []


def test_rotation_limit_one_keeps_best_and_latest_and_resumed(tmp_path):
    _make(tmp_path, 1, 2, 3, 4)
    kept = {"checkpoint-1", "checkpoint-3", "checkpoint-4"}
    rotate_checkpoints(tmp_path, 1, protect=[tmp_path / "checkpoint-3", str(tmp_path / "checkpoint-1")])
    assert {p.name for p in list_checkpoints(tmp_path)} == kept
    assert rotate_checkpoints(tmp_path, None) == [] and rotate_checkpoints(tmp_path, 0) == []
    rotate_checkpoints(tmp_path, 1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4"]


def test_validate_resume_path(tmp_path):
    with pytest.raises(ConfigError) as missing:
        validate_resume_path(tmp_path / "checkpoint-9")
    assert missing.value.field == "resume_from_checkpoint"

    half = tmp_path / "checkpoint-8"
    half.mkdir()
    with pytest.raises(ConfigError, match="marker") as incomplete:
        validate_resume_path(half)
    assert incomplete.value.field == "resume_from_checkpoint"

    _make(tmp_path, 3)
    assert validate_resume_path(str(tmp_path / "checkpoint-3")) == tmp_path / "checkpoint-3"
    assert validate_resume_path(tmp_path / "checkpoint-3" / "w.bin") == tmp_path / "checkpoint-3" / "w.bin"
    (tmp_path / "checkpoint-3" / "w.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="truncated"):
        validate_resume_path(tmp_path / "checkpoint-3")


def test_atomic_file_writes(tmp_path):
    target = tmp_path / "state.pt"
    atomic_torch_save({"w": torch.arange(4)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(4))
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        atomic_torch_save({"f": lambda: 0}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(4))

    atomic_write_bytes(tmp_path / "x.txt", b"one")
    atomic_write_bytes(tmp_path / "x.txt", b"two")
    assert (tmp_path / "x.txt").read_bytes() == b"two"
    assert _hidden(tmp_path) == []


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch, fail_on: str | None = None) -> list[tuple[str, str]]:
    """Wrap os.fsync to note (file name, thread name) of each call; optionally fail like a full disk."""
    import errno
    import threading

    calls: list[tuple[str, str]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        calls.append((name, threading.current_thread().name))
        if fail_on is not None and name == fail_on:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_a_finished_file_is_made_durable_in_the_background_while_the_folder_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hf_lightning.checkpoint_io import torch_save_file

    calls = _record_fsyncs(monkeypatch)
    final = tmp_path / "checkpoint-3"
    with atomic_directory(final) as tmp:
        torch_save_file({"w": torch.ones(1000)}, tmp / "optimizer.pt")  # synced at once, in the background
        torch_save_file({"w": torch.ones(10)}, tmp / "scheduler.pt")
        (tmp / "scheduler.pt").write_bytes(b"rewritten after its early fsync")  # synced again if it ran before
        (tmp / "config.json").write_text("{}")  # not written by torch_save_file: synced at the end
    by_file = {name: [thread for n, thread in calls if n == name] for name, _ in calls}
    assert len(by_file["optimizer.pt"]) == 1 and by_file["optimizer.pt"][0].startswith("hf_lightning-fsync")
    assert len(by_file["scheduler.pt"]) in (1, 2) and len(by_file["config.json"]) == 1
    marker = json.loads((final / ".complete").read_text())
    assert marker["files"]["scheduler.pt"] == len(b"rewritten after its early fsync")
    assert is_complete_checkpoint(final)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_a_failed_background_fsync_is_a_one_line_write_error_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hf_lightning.checkpoint_io import CheckpointWriteError, torch_save_file

    _record_fsyncs(monkeypatch, fail_on="optimizer.pt")
    final = tmp_path / "checkpoint-3"
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        with atomic_directory(final) as tmp:
            torch_save_file({"w": torch.ones(1000)}, tmp / "optimizer.pt")
    assert not final.exists() and not list(tmp_path.iterdir())


def _blocked_fsyncs(monkeypatch: pytest.MonkeyPatch, fail_on: str | None = None) -> tuple[list[tuple[str, str]], Any]:
    """Like _record_fsyncs, but the background durability thread waits for the returned event first."""
    import threading

    release = threading.Event()
    calls = _record_fsyncs(monkeypatch, fail_on=fail_on)
    recording = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread().name.startswith("hf_lightning-durable"):
            assert release.wait(timeout=30), "the test never released the background fsyncs"
        recording(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls, release


def _checkpoint(path: Path, **kwargs: Any) -> Path:
    with atomic_directory(path, **kwargs) as tmp:
        (tmp / "optimizer.pt").write_bytes(os.urandom(4096))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    return path


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_a_background_folder_is_in_place_at_once_and_rotation_waits_until_it_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functools import partial

    from hf_lightning.checkpoint_io import wait_for_durability

    for step in (1, 2):
        _checkpoint(tmp_path / f"checkpoint-{step}")
    calls, release = _blocked_fsyncs(monkeypatch)
    rotate = partial(rotate_checkpoints, tmp_path, 1)
    final = _checkpoint(tmp_path / "checkpoint-3", sync="background", after_sync=rotate)
    # In place and complete before any of its bytes was fsynced; the older checkpoints are still there.
    assert is_complete_checkpoint(final) and latest_checkpoint(tmp_path) == final
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert not [c for c in calls if c[1].startswith("hf_lightning-durable")]
    assert not [c for c in calls if c[0] in ("optimizer.pt", "config.json", COMPLETE_MARKER)]

    release.set()
    wait_for_durability()
    synced = {name for name, thread in calls if thread.startswith("hf_lightning-durable")}
    assert {"optimizer.pt", "config.json", COMPLETE_MARKER, "sub", "checkpoint-3", tmp_path.name} <= synced
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3"]  # rotated only once durable
    assert _hidden(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_a_failed_background_fsync_is_reported_by_the_wait_and_the_earlier_checkpoints_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functools import partial

    from hf_lightning.checkpoint_io import CheckpointWriteError, wait_for_durability

    earlier = _checkpoint(tmp_path / "checkpoint-1")
    _calls, release = _blocked_fsyncs(monkeypatch, fail_on="optimizer.pt")
    final = _checkpoint(tmp_path / "checkpoint-2", sync="background", after_sync=partial(rotate_checkpoints, tmp_path, 1))
    release.set()
    with pytest.raises(CheckpointWriteError, match=r"^could not write .*checkpoint-2: No space left on device") as err:
        wait_for_durability()
    assert "\n" not in str(err.value)
    assert not final.exists() and _hidden(tmp_path) == []  # not trusted after a failed fsync
    assert list_checkpoints(tmp_path) == [earlier]  # and the rotation that waited on it never ran
    wait_for_durability()  # reported once


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_a_background_folder_that_other_code_deletes_before_it_is_durable_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from hf_lightning.checkpoint_io import wait_for_durability

    _calls, release = _blocked_fsyncs(monkeypatch)
    final = _checkpoint(tmp_path / "checkpoint-5", sync="background")
    shutil.rmtree(final)  # e.g. an on_save callback that uploads the folder and removes it
    release.set()
    wait_for_durability()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_names_its_sync_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync must be 'before_rename' or 'background'"):
        with atomic_directory(tmp_path / "x", sync="later"):
            pass


def test_a_file_replaced_while_the_background_thread_walks_the_folder_is_walked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save_model override may rewrite files in a folder being made durable; rotation still waits for it."""
    from functools import partial

    import hf_lightning.checkpoint_io as checkpoint_io

    earlier = _checkpoint(tmp_path / "checkpoint-1")
    real, synced, vanished = checkpoint_io._fsync_file, [], []

    def fsync_file(path: Path) -> int:
        if path.name == "optimizer.pt" and not vanished:  # as if replaced between the listing and the fsync
            vanished.append(path)
            raise FileNotFoundError(2, "No such file or directory", str(path))
        synced.append(path.name)
        return real(path)

    monkeypatch.setattr(checkpoint_io, "_fsync_file", fsync_file)
    final = _checkpoint(tmp_path / "checkpoint-2", sync="background", after_sync=partial(rotate_checkpoints, tmp_path, 1))
    checkpoint_io.wait_for_durability()
    assert vanished and "optimizer.pt" in synced and "config.json" in synced
    assert list_checkpoints(tmp_path) == [final] and not earlier.exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_a_failed_background_fsync_of_a_replacement_brings_the_replaced_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hf_lightning.checkpoint_io import CheckpointWriteError, wait_for_durability

    with atomic_directory(tmp_path / "checkpoint-4") as tmp:
        (tmp / "optimizer.pt").write_bytes(b"the first save")
    _calls, release = _blocked_fsyncs(monkeypatch, fail_on="optimizer.pt")
    _checkpoint(tmp_path / "checkpoint-4", sync="background")  # the same step saved again
    release.set()
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        wait_for_durability()
    assert (tmp_path / "checkpoint-4" / "optimizer.pt").read_bytes() == b"the first save"
    assert is_complete_checkpoint(tmp_path / "checkpoint-4") and _hidden(tmp_path) == []
