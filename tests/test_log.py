"""The package logger: ``TrainingArguments.log_level`` / ``log_level_replica`` decide what hf_lightning emits."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import transformers

from hf_lightning import Trainer, TrainingArguments
from hf_lightning.log import get_logger, set_verbosity_from_args
from tests.conftest import tiny_bert_classifier


@pytest.fixture(autouse=True)
def _restore_levels():
    """Levels are process-wide: put the package's and transformers' back after each test."""
    package, verbosity = logging.getLogger("hf_lightning").level, transformers.logging.get_verbosity()
    yield
    logging.getLogger("hf_lightning").setLevel(package)
    transformers.logging.set_verbosity(verbosity)


def _args(tmp_path: Path, **kwargs) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, use_cpu=True,
                             per_device_eval_batch_size=16, **kwargs)


def _package_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("hf_lightning")]


@pytest.mark.parametrize(("level", "emitted", "silent"), [
    ("debug", {logging.DEBUG, logging.INFO}, set()),
    ("info", {logging.INFO}, {logging.DEBUG}),
    ("error", set(), {logging.DEBUG, logging.INFO}),
])
def test_log_level_decides_what_the_package_emits(level, emitted, silent, tmp_path, cls_dataset, demo_tokenizer,
                                                  caplog) -> None:
    caplog.set_level(logging.NOTSET)  # capture whatever the package lets through; its own level decides
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(tmp_path, log_level=level),
                      eval_dataset=cls_dataset, processing_class=demo_tokenizer)
    trainer.evaluate()
    levels = {r.levelno for r in _package_records(caplog)}
    assert emitted <= levels, f"log_level={level!r} should let {emitted} through, got {levels}"
    assert not (silent & levels), f"log_level={level!r} should hold back {silent}, got {levels}"
    if level == "info":
        assert any("Running Evaluation" in r.getMessage() for r in _package_records(caplog))
    assert transformers.logging.get_verbosity() == logging.getLevelName(level.upper()), "transformers follows too"


def test_replicas_use_log_level_replica(tmp_path, monkeypatch) -> None:
    args = _args(tmp_path, log_level="debug", log_level_replica="error")
    assert set_verbosity_from_args(args) == logging.DEBUG
    assert get_logger().getEffectiveLevel() == logging.DEBUG
    monkeypatch.setenv("LOCAL_RANK", "1")  # a second process on this node: a replica (HF's should_log)
    assert set_verbosity_from_args(args) == logging.ERROR
    assert get_logger("hf_lightning.facade.fit").getEffectiveLevel() == logging.ERROR


def test_passive_leaves_the_package_level_alone(tmp_path) -> None:
    get_logger().setLevel(logging.INFO)
    transformers.logging.set_verbosity_error()
    assert set_verbosity_from_args(_args(tmp_path)) == logging.ERROR  # passive: transformers' own verbosity
    assert get_logger().level == logging.INFO


def test_training_reports_through_the_package_logger(tmp_path, cls_dataset, demo_tokenizer, caplog) -> None:
    caplog.set_level(logging.NOTSET)
    args = _args(tmp_path, log_level="info", max_steps=1, per_device_train_batch_size=8)
    Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
            processing_class=demo_tokenizer).train()
    messages = [r.getMessage() for r in caplog.records if r.name == "hf_lightning.facade.fit"]
    assert "***** Running training *****" in messages and "  Num examples = 40" in messages, messages


def test_the_cli_shows_the_package_information_unless_a_level_was_set(monkeypatch) -> None:
    from hf_lightning.cli import run_cli

    for preset, expected in ((logging.NOTSET, logging.INFO), (logging.ERROR, logging.ERROR)):
        get_logger().setLevel(preset)
        with pytest.raises(SystemExit):
            run_cli(["--help"])
        assert get_logger().level == expected


def test_callback_information_goes_through_the_package_logger(tmp_path, demo_assets, caplog) -> None:
    import lightning.pytorch as pl

    from hf_lightning import HFDataModule, HFLightningModule
    from hf_lightning.callbacks.hf_export import HFExportCallback
    from tests.conftest import tiny_bert_config

    get_logger().setLevel(logging.INFO)
    caplog.set_level(logging.NOTSET)
    data = HFDataModule(dataset="demo:sentiment", tokenizer="demo:tokenizer", batch_size=8, max_length=32,
                        max_train_samples=16, max_eval_samples=8)
    model = HFLightningModule(model=tiny_bert_config().to_dict(), num_labels=2, vocab_size=data.vocab_size)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         use_distributed_sampler=False, default_root_dir=str(tmp_path),
                         callbacks=[HFExportCallback(dirpath=str(tmp_path / "hf"))])
    trainer.fit(model, datamodule=data)
    saved = [r for r in caplog.records if r.name == "hf_lightning.callbacks.hf_export"]
    assert [r.levelno for r in saved] == [logging.INFO]
    assert saved[0].getMessage() == f"Saved the model in Hugging Face format to {(tmp_path / 'hf').resolve()}"
