"""Two runs in one folder: the second is refused in one line; killed owners' locks are recovered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers import TrainerCallback

from hf_lightning import Trainer, TrainingArguments
from hf_lightning.errors import ConfigError
from hf_lightning.run_lock import LOCK_NAME, RunLock
from tests.conftest import REPO, tiny_bert_classifier

HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from hf_lightning.run_lock import RunLock
    lock = RunLock({folder!r})
    lock.acquire()
    print("HELD", flush=True)
    time.sleep(120)
    """
)


class _Holder:
    """Another process holding the lock on ``folder`` (a real process: its pid is alive until killed)."""

    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO), folder=str(folder))],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "HELD"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def holder(tmp_path: Path):
    started: list[_Holder] = []

    def start(folder: Path) -> _Holder:
        started.append(_Holder(folder))
        return started[-1]

    yield start
    for h in started:
        if h.proc.poll() is None:
            h.kill()


def _args(out: Path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=2, save_strategy="steps", save_steps=1,
                report_to="none", use_cpu=True, disable_tqdm=True, overwrite_output_dir=True)
    base.update(kw)
    return TrainingArguments(**base)


def test_lock_is_exclusive_and_a_killed_owners_lock_is_recovered(tmp_path: Path, holder) -> None:
    other = holder(tmp_path)
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert owner["pid"] == other.proc.pid and owner["host"]
    with pytest.raises(ConfigError) as info:
        RunLock(tmp_path).acquire()
    message = str(info.value)
    assert message.startswith("output_dir: ") and f"pid {other.proc.pid} on {owner['host']}" in message
    assert "\n" not in message and str(tmp_path / LOCK_NAME) in message
    other.kill()  # SIGKILL: no chance to release; the lock file stays behind
    assert (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path) as lock:  # stale: its owner is dead, so it is taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists(), "released on exit"


def test_release_never_removes_another_runs_lock(tmp_path: Path, holder) -> None:
    lock = RunLock(tmp_path)
    lock.acquire()
    (tmp_path / LOCK_NAME).unlink()  # someone deleted our lock by hand, and another run took the folder
    other = holder(tmp_path)
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == other.proc.pid


def test_trainer_holds_the_lock_while_training_and_a_second_run_is_refused(cls_dataset, demo_tokenizer,
                                                                        tmp_path: Path, holder) -> None:
    seen: list[int] = []

    class LookAtLock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"])

    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(tmp_path / "run"),
                      train_dataset=cls_dataset, processing_class=demo_tokenizer, callbacks=[LookAtLock()])
    trainer.train()
    assert seen == [os.getpid(), os.getpid()]
    assert not (tmp_path / "run" / LOCK_NAME).exists(), "released when train() returns"

    other = holder(tmp_path / "run")
    second = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(tmp_path / "run", max_steps=3),
                     train_dataset=cls_dataset, processing_class=demo_tokenizer)
    with pytest.raises(ConfigError, match=rf"output_dir: .* is in use by another run \(pid {other.proc.pid} on "):
        second.train()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_trial_subfolders_are_not_refused_by_a_lock_on_the_parent(cls_dataset, demo_tokenizer, tmp_path: Path,
                                                                   holder) -> None:
    """Hyperparameter trials write to ``output_dir/run-<id>``: separate runs, separate locks."""
    holder(tmp_path)
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(tmp_path / "run-0", max_steps=1),
                      train_dataset=cls_dataset, processing_class=demo_tokenizer)
    trainer.train()
    assert (tmp_path / "run-0" / "checkpoint-1").is_dir()


def test_cli_second_run_in_the_same_root_dir_is_one_line(tmp_path: Path, demo_assets, capsys, holder,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_lightning.cli import run_cli

    other = holder(tmp_path / "root")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    with pytest.raises(SystemExit) as info:
        run_cli(["fit", "--config", str(REPO / "configs/quickstart.yaml"), f"--trainer.default_root_dir={tmp_path / 'root'}",
                 "--trainer.max_steps=1", "--data.max_train_samples=16", "--data.max_eval_samples=8",
                 '--model.model={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, '
                 '"num_attention_heads": 2, "intermediate_size": 64}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert err[-1].startswith("error: default_root_dir: ") and f"pid {other.proc.pid}" in err[-1], err[-3:]
