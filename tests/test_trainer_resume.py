"""Exact resume through the HF-style facade: stopped at any saved step, the run ends bit-identical."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from hf_lightning import Trainer, TrainingArguments
from hf_lightning.checkpoint_io import is_complete_checkpoint, list_checkpoints
from tests.conftest import tiny_bert_classifier


def _args(out: Path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=2,
                learning_rate=5e-3, warmup_steps=2, weight_decay=0.01, logging_steps=1, save_strategy="steps",
                save_steps=1, report_to="none", use_cpu=True, disable_tqdm=True, seed=3)
    base.update(kw)
    return TrainingArguments(**base)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_is_bit_exact_at_several_stop_points(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """Shuffled data, dropout, accumulation 2 and warmup; 40 rows -> 5 steps per epoch, 10 in all."""
    full = Trainer(model=tiny_bert_classifier(len(demo_tokenizer), dropout=0.1), args=_args(tmp_path / "full"),
                   train_dataset=cls_dataset, processing_class=demo_tokenizer)
    full.train()
    expected = _weights(full.model)
    assert full.state.global_step == 10
    for stop in (3, 5, 8):  # mid-epoch, an epoch's last step, mid second epoch
        run_dir = tmp_path / f"resume-{stop}"
        run_dir.mkdir()
        shutil.copytree(tmp_path / "full" / f"checkpoint-{stop}", run_dir / f"checkpoint-{stop}")
        resumed = Trainer(model=tiny_bert_classifier(len(demo_tokenizer), dropout=0.1), args=_args(run_dir),
                          train_dataset=cls_dataset, processing_class=demo_tokenizer)
        resumed.train(resume_from_checkpoint=True)
        assert resumed.state.global_step == 10
        got = _weights(resumed.model)
        diff = max((got[k] - expected[k]).abs().max().item() for k in expected)
        assert diff == 0.0, f"resume from step {stop}: {diff}"
        steps = [e["step"] for e in resumed.state.log_history if "loss" in e]
        assert steps == list(range(1, 11)), "the log history continues where it stopped"


SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from hf_lightning import Trainer, TrainingArguments
    from tests.workers.shared import cls_dataset
    from tests.conftest import tiny_bert_classifier
    from transformers import TrainerCallback

    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            print("STEP", state.global_step, flush=True)
            time.sleep(0.1)

    data, tok = cls_dataset(32)
    args = TrainingArguments(output_dir={out!r}, per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-3,
                             save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, disable_tqdm=True,
                             seed=1, logging_steps=1)
    trainer = Trainer(model=tiny_bert_classifier(len(tok)), args=args, train_dataset=data, processing_class=tok,
                      callbacks=[Slow()])
    trainer.train(resume_from_checkpoint={resume})
    print("DONE", trainer.state.global_step, flush=True)
    """
)


def _start(out: Path, resume: bool) -> subprocess.Popen:
    code = SCRIPT.format(repo=str(Path(__file__).resolve().parents[1]), out=str(out), resume=resume)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc: subprocess.Popen, step: int) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("STEP") and int(line.split()[1]) >= step:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(proc.stderr.read()[-3000:])
    raise AssertionError("training did not reach the step in time")


def _loadable(out: Path) -> None:
    for checkpoint in list_checkpoints(out):
        assert is_complete_checkpoint(checkpoint)
        torch.load(checkpoint / "lightning.ckpt", weights_only=False, map_location="cpu")
    assert not [p for p in out.iterdir() if p.name.startswith("checkpoint-") and not is_complete_checkpoint(p)]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_completion(sig: signal.Signals, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(out, resume=False)
    _wait_for_step(proc, 5)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    _loadable(out)
    assert list_checkpoints(out), "a checkpoint exists to resume from"
    resumed = _start(out, resume=True)
    stdout, stderr = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "DONE 16" in stdout
    _loadable(out)
