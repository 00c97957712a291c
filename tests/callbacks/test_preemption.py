"""Preemption: SIGTERM / Ctrl-C save a checkpoint that resumes exactly, and SIGKILL never truncates one.

Three kinds of test, all with real signals and real files:

* a training subprocess (this module run as a script) gets SIGTERM or SIGINT from the test after its
  first steps; it must exit with 128 + signal, leave ``last-preempted.ckpt``, and resuming from that
  file must end with the weights of an uninterrupted run;
* in-process runs send the signal to themselves at chosen batches (mid accumulation window, an
  epoch's last batch), which pins down where the stop lands;
* a subprocess writing checkpoints in a loop through AtomicCheckpointIO is SIGKILLed while a write is
  in flight; every ``.ckpt`` left must load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from hf_lightning.callbacks.preemption import PreemptionCheckpoint
from hf_lightning.callbacks.resume import STATE_KEY, ExactResumeCallback
from hf_lightning.checkpoint_io import TMP_PREFIX
from hf_lightning.checkpoint_io_plugin import AtomicCheckpointIO
from hf_lightning.data import HFDataModule
from hf_lightning.errors import ConfigError
from hf_lightning.module import HFLightningModule
from tests.conftest import REPO, TINY_MODELS

__all__: list[str] = []

MAX_STEPS = 8  # 24 rows in batches of 5: 5 batches, 3 optimizer steps (accumulating 2) per epoch
PREEMPTED = "last-preempted.ckpt"


class Signaller(pl.Callback):
    """Test helper: report progress to a file, optionally go slowly, optionally signal this process.

    ``at`` is ``(epoch, batch_idx)``; the signal is sent at the end of that batch, like a scheduler's
    SIGTERM arriving while the batch runs.
    """

    def __init__(self, progress: Path | None = None, delay: float = 0.0, at: tuple[int, int] | None = None,
                 signum: int = signal.SIGTERM) -> None:
        self.progress, self.delay, self.at, self.signum = progress, delay, at, signum

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.progress is not None and trainer.is_global_zero:
            self.progress.write_text(str(trainer.global_step))
        if self.at == (trainer.current_epoch, batch_idx):
            os.kill(os.getpid(), self.signum)
        time.sleep(self.delay)


def train(root: Path, data_files: dict[str, str], tokenizer: str, *, ckpt_path: Path | None = None,
          signaller: Signaller | None = None, devices: int = 1) -> dict[str, torch.Tensor]:
    """Train the tiny dropout BERT for MAX_STEPS steps with the preemption stack; return the final weights.

    ``devices=2`` runs DDP on CPU; then this must run as a script, as Lightning starts rank 1 by
    re-running the command line.
    """
    torch.set_num_threads(1)
    pl.seed_everything(1234 if ckpt_path is None else 99, verbose=False)
    data = HFDataModule(dataset="json", data_files=data_files, tokenizer=tokenizer, batch_size=5, max_length=16,
                        seed=7, label_column="label")
    model = {**TINY_MODELS["bert"], "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    module = HFLightningModule(model=model, num_labels=data.num_labels, id2label=data.id2label,
                               vocab_size=data.vocab_size, pad_token_id=data.pad_token_id, learning_rate=5e-3,
                               warmup_steps=2, lr_scheduler_type="linear")
    callbacks: list[pl.Callback] = [
        ExactResumeCallback(),
        PreemptionCheckpoint(),
        ModelCheckpoint(dirpath=Path(root) / "ckpt", every_n_train_steps=3, save_top_k=-1),
    ]
    if signaller is not None:
        callbacks.append(signaller)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=MAX_STEPS,
        accumulate_grad_batches=2, use_distributed_sampler=False,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def assert_equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert diff == 0.0


@contextmanager
def sigterm_guard() -> Iterator[None]:
    """Keep a stray SIGTERM from killing pytest: Lightning chains this no-op after its own handler."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, task_files, demo_assets) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("uninterrupted")
    weights = train(root, task_files["cls"], demo_assets["tokenizer"])
    return {"weights": weights, "files": task_files["cls"], "tokenizer": demo_assets["tokenizer"]}


# ---------------------------------------------------------------------------- signals from outside


def _script(root: Path, files: dict[str, str], tokenizer: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.callbacks.test_preemption", "train", "--root", str(root),
            "--files", json.dumps(files), "--tokenizer", tokenizer, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start(cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, so that DDP ranks it spawns can be cleaned up with it."""
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The run's output once it exits; on a timeout its whole process group is killed (no orphaned ranks)."""
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _signal_after_two_steps(proc: subprocess.Popen, progress: Path, signum: int) -> str:
    """Wait until the run reports two optimizer steps, send ``signum`` to its main process, return its output."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and progress.read_text().strip() not in ("", "0", "1"):
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signum)
    return _finish(proc)


@pytest.mark.slow  # a training subprocess: ~20-30 s on two shared cores
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_from_outside_saves_and_resumes_exactly(reference, signum: int, tmp_path: Path) -> None:
    root = tmp_path / "preempted"
    progress = tmp_path / "progress.txt"
    proc = _start(_script(root, reference["files"], reference["tokenizer"], "--progress", str(progress), "--delay", "0.3"))
    output = _signal_after_two_steps(proc, progress, signum)
    assert proc.returncode == 128 + signum, output[-3000:]
    checkpoint_file = root / "ckpt" / PREEMPTED
    assert checkpoint_file.is_file(), output[-3000:]
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    assert STATE_KEY in checkpoint
    assert 2 <= checkpoint["global_step"] < MAX_STEPS, "stopped after the first steps, before the end"
    assert not (root / "weights.pt").exists(), "fit must not have returned normally"

    resumed = train(tmp_path / "resumed", reference["files"], reference["tokenizer"], ckpt_path=checkpoint_file)
    assert_equal_weights(resumed, reference["weights"])


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_sigterm_to_rank_zero_stops_all_ranks_at_one_batch_and_resumes_exactly(reference, tmp_path: Path) -> None:
    """2-process DDP: only the launching process gets SIGTERM, as from ``kill <pid>``; both ranks must stop
    after the same batch, join in saving, exit 143, and the checkpoint must resume exactly under DDP."""
    files, tokenizer = reference["files"], reference["tokenizer"]
    ref = _start(_script(tmp_path / "ref", files, tokenizer, "--devices", "2"))
    output = _finish(ref)
    assert ref.returncode == 0, output[-3000:]

    progress = tmp_path / "progress.txt"
    proc = _start(_script(tmp_path / "pre", files, tokenizer, "--devices", "2", "--progress", str(progress),
                          "--delay", "0.3"))
    output = _signal_after_two_steps(proc, progress, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    checkpoint_file = tmp_path / "pre" / "ckpt" / PREEMPTED
    assert len(torch.load(checkpoint_file, weights_only=True)[STATE_KEY]["ranks"]) == 2

    res = _start(_script(tmp_path / "res", files, tokenizer, "--devices", "2", "--ckpt", str(checkpoint_file)))
    output = _finish(res)
    assert res.returncode == 0, output[-3000:]
    assert_equal_weights(torch.load(tmp_path / "res" / "weights.pt"), torch.load(tmp_path / "ref" / "weights.pt"))


# ---------------------------------------------------------------------------- signals at chosen batches

STOP_POINTS = {
    "mid-window": ((0, 2), signal.SIGTERM),  # first micro-batch of the second window of epoch 0
    "epoch-last-batch": ((0, 4), signal.SIGTERM),  # Lightning stops only after the epoch end
    "window-boundary": ((1, 1), signal.SIGTERM),
    "ctrl-c-mid-window": ((1, 2), signal.SIGINT),
}


@pytest.mark.parametrize("name", sorted(STOP_POINTS))
def test_signal_at_chosen_batch_resumes_exactly(reference, name: str, tmp_path: Path) -> None:
    at, signum = STOP_POINTS[name]
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a job started in the background
    with sigterm_guard(), pytest.raises(SystemExit) as stopped:
        train(tmp_path / "stopped", reference["files"], reference["tokenizer"], signaller=Signaller(at=at, signum=signum))
    assert stopped.value.code == 128 + signum
    assert signal.getsignal(signal.SIGINT) is before, "the Ctrl-C handler is put back"
    checkpoint_file = tmp_path / "stopped" / "ckpt" / PREEMPTED
    resumed = train(tmp_path / "resumed", reference["files"], reference["tokenizer"], ckpt_path=checkpoint_file)
    assert_equal_weights(resumed, reference["weights"])


def test_second_ctrl_c_stops_at_once_without_a_checkpoint(reference, tmp_path: Path) -> None:
    class DoubleCtrlC(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                 batch_idx: int) -> None:
            if trainer.global_step == 1:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # let the first handler run: pending signals of one kind do not queue up
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1.0)

    data = HFDataModule(dataset="json", data_files=reference["files"], tokenizer=reference["tokenizer"], batch_size=5)
    module = HFLightningModule(model=TINY_MODELS["bert"], num_labels=data.num_labels, vocab_size=data.vocab_size)
    preemption = PreemptionCheckpoint(dirpath=tmp_path)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, use_distributed_sampler=False, limit_val_batches=0,
                         callbacks=[ExactResumeCallback(), preemption, DoubleCtrlC()])
    try:
        with pytest.raises(SystemExit) as stopped:
            trainer.fit(module, datamodule=data)
    finally:
        # Lightning ignores further Ctrl-C while it shuts down after a KeyboardInterrupt; give pytest its own back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert stopped.value.code == 1  # Lightning's KeyboardInterrupt exit
    assert preemption.saved_path is None
    assert not (tmp_path / PREEMPTED).exists()


# ---------------------------------------------------------------------------- configuration


def test_bad_configuration_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="signals"):
        PreemptionCheckpoint(signals=("SIGHUP",))
    with pytest.raises(ConfigError, match="filename"):
        PreemptionCheckpoint(filename="a/b")


def test_checkpoint_path_follows_model_checkpoint_folder(tmp_path: Path) -> None:
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    assert PreemptionCheckpoint().checkpoint_path(trainer) == tmp_path / "checkpoints" / PREEMPTED
    assert PreemptionCheckpoint(dirpath=tmp_path / "x", filename="p").checkpoint_path(trainer) == tmp_path / "x" / "p.ckpt"
    folder = tmp_path / "mc"
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, callbacks=[ModelCheckpoint(dirpath=folder)])
    assert PreemptionCheckpoint().checkpoint_path(trainer) == folder / PREEMPTED


def test_warns_without_exact_resume(task_files, demo_assets, tmp_path: Path) -> None:
    data = HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"], batch_size=5)
    module = HFLightningModule(model=TINY_MODELS["bert"], num_labels=data.num_labels, vocab_size=data.vocab_size)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, use_distributed_sampler=False, limit_val_batches=0,
                         callbacks=[PreemptionCheckpoint(dirpath=tmp_path)])
    with pytest.warns(UserWarning, match="without ExactResumeCallback"):
        trainer.fit(module, datamodule=data)


# ---------------------------------------------------------------------------- AtomicCheckpointIO


def test_atomic_checkpoint_io_round_trip_and_errors(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "sub" / "a.ckpt"
    io.save_checkpoint({"x": torch.arange(3)}, target)
    assert torch.equal(io.load_checkpoint(target, weights_only=True)["x"], torch.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["a.ckpt"], "no temporary left behind"
    with pytest.raises(ConfigError, match="storage_options"):
        io.save_checkpoint({}, target, storage_options={"a": 1})
    with pytest.raises(ConfigError, match="tmp"):
        io.save_checkpoint({}, tmp_path / f"{TMP_PREFIX}x.ckpt")
    io.remove_checkpoint(target)
    assert not target.exists()


MEGABYTES = 32
# The writer: only torch and the plugin, so the subprocess starts in a few seconds. It overwrites two
# checkpoints forever; the known payload makes a torn file detectable.
SAVE_LOOP = """
import sys
from pathlib import Path

import torch

from hf_lightning.checkpoint_io_plugin import AtomicCheckpointIO

folder, megabytes = Path(sys.argv[1]), int(sys.argv[2])
io = AtomicCheckpointIO()
payload = torch.arange(megabytes * 2**18, dtype=torch.float32)
n = 0
while True:
    io.save_checkpoint({"n": n, "payload": payload}, folder / f"ckpt-{n % 2}.ckpt")
    n += 1
"""


@pytest.mark.slow  # a writer subprocess, killed mid-write: ~15-30 s
def test_sigkill_while_saving_leaves_only_loadable_checkpoints(tmp_path: Path) -> None:
    """Kill the writer while a temporary file is growing; the final names must still hold whole checkpoints."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    hit_mid_write = False
    for _attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(folder), str(MEGABYTES)], cwd=REPO, env=_env(),
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                finals = list(folder.glob("ckpt-*.ckpt"))
                temps = [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
                if len(finals) == 2 and any(_size(p) > 0 for p in temps):
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)
        finally:
            proc.kill()
            proc.wait()
        for path in folder.glob("*.ckpt"):
            if path.name.startswith(TMP_PREFIX):
                continue
            checkpoint = torch.load(path, weights_only=True)
            assert torch.equal(checkpoint["payload"], torch.arange(MEGABYTES * 2**18, dtype=torch.float32)), path
        leftovers = [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
        if any(not _loads(p) for p in leftovers):
            hit_mid_write = True  # the kill landed inside a write: a non-atomic writer would have torn a .ckpt
            break
    assert hit_mid_write, "never managed to kill the writer in the middle of a write"
    AtomicCheckpointIO().save_checkpoint({"n": -1}, folder / "after.ckpt")
    assert not [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)], "the dead writer's temporary is gone"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _loads(path: Path) -> bool:
    try:
        torch.load(path, weights_only=True)
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------- script entry point


def _main() -> None:
    parser = argparse.ArgumentParser(description="helpers run as subprocesses by test_preemption.py")
    parser.add_argument("mode", choices=["train"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--files")
    parser.add_argument("--tokenizer")
    parser.add_argument("--progress")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--ckpt")
    args = parser.parse_args()
    root = Path(args.root)
    signaller = Signaller(Path(args.progress) if args.progress else None, delay=args.delay)
    weights = train(root, json.loads(args.files), args.tokenizer, signaller=signaller, devices=args.devices,
                    ckpt_path=Path(args.ckpt) if args.ckpt else None)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        torch.save(weights, root / "weights.pt")


if __name__ == "__main__":
    _main()
