"""Lightning's profilers through both front doors: the report is logged when fit ends."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from hf_lightning.args import TrainingArguments
from hf_lightning.trainer import Trainer
from tests.conftest import REPO, tiny_bert_classifier

REPORT_TITLES = {"simple": "FIT Profiler Report", "advanced": "Profile stats for: run_training_epoch",
                 "pytorch": "FIT Profiler Report"}


@pytest.mark.parametrize("name", ["simple", "advanced"])
def test_facade_profiler(name: str, cls_dataset, demo_tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True,
                             lightning_trainer_kwargs={"profiler": name})
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                      processing_class=demo_tokenizer)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.profilers"):
        trainer.train()
    assert REPORT_TITLES[name] in caplog.text
    assert "training_step" in caplog.text  # the facade's steps are what got timed


@pytest.mark.parametrize("name", ["simple", "pytorch"])
def test_cli_profiler(name: str, tmp_path: Path, demo_assets, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from hf_lightning.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.profilers"):
        run_cli(["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--trainer.max_steps=2",
                 "--data.max_train_samples=32", "--data.max_eval_samples=16", "--model.model.hidden_size=32",
                 "--model.model.intermediate_size=64", f"--trainer.profiler={name}",
                 "--trainer.enable_progress_bar=false"])
    assert REPORT_TITLES[name] in caplog.text
