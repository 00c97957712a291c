"""Experiment trackers, read back with each tracker's own reader: HF metric names and hyperparameters."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hf_lightning.args import TrainingArguments
from hf_lightning.trainer import Trainer
from tests.conftest import REPO, tiny_bert_classifier

TRAIN_NAMES = {"loss", "learning_rate", "grad_norm"}
EVAL_NAMES = {"eval_loss", "eval_runtime"}


@pytest.fixture(scope="module")
def tracked_run(cls_dataset, demo_tokenizer, tmp_path_factory: pytest.TempPathFactory):
    """One facade run that reports to every tracker at once (each is read back by a test below)."""
    out = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=4, logging_steps=1,
                                 eval_strategy="steps", eval_steps=2, save_strategy="no", learning_rate=1e-3,
                                 report_to=["tensorboard", "csv", "mlflow", "wandb"], run_name="tracked",
                                 use_cpu=True, disable_tqdm=True, seed=0)
        trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                          eval_dataset=cls_dataset.select(range(16)), processing_class=demo_tokenizer)
        trainer.train()
        for logger in trainer._pl_trainer.loggers:
            logger.finalize("success")
        import wandb

        wandb.finish()  # flushes the offline run file (HF's callback also leaves the run open after train)
    return out, trainer


def _logged(trainer, name: str) -> list[tuple[int, float]]:
    return [(e["step"], e[name]) for e in trainer.state.log_history if name in e]


def test_tensorboard_events(tracked_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, trainer = tracked_run
    events = EventAccumulator(str(out / "runs" / "tracked"))
    events.Reload()
    assert TRAIN_NAMES | EVAL_NAMES <= set(events.Tags()["scalars"])
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("loss")] == _logged(trainer, "loss")
    hparams = (out / "runs" / "tracked" / "hparams.yaml").read_text()
    assert "learning_rate: 0.001" in hparams and "hidden_size: 32" in hparams


def test_csv_metrics(tracked_run) -> None:
    import csv

    out, trainer = tracked_run
    rows = list(csv.DictReader((out / "runs" / "tracked" / "metrics.csv").open()))
    assert TRAIN_NAMES | EVAL_NAMES <= set(rows[0])
    losses = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    assert losses == [(s, pytest.approx(v)) for s, v in _logged(trainer, "loss")]


def test_mlflow_params_metrics_and_model(tracked_run) -> None:
    from mlflow.tracking import MlflowClient

    out, trainer = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("hf_lightning").experiment_id])
    assert run.data.params["learning_rate"] == "0.001" and run.data.params["per_device_train_batch_size"] == "8"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v)) for s, v in _logged(trainer, "loss")]
    assert {"grad_norm", "learning_rate", "eval_loss"} <= set(run.data.metrics)
    # The HF-format model is an artifact that transformers loads back.
    from transformers import AutoModelForSequenceClassification

    local = client.download_artifacts(run.info.run_id, "model", str(out / "downloaded"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(local)
    for name, value in trainer.model.state_dict().items():
        assert (reloaded.state_dict()[name] == value).all(), name


def _wandb_records(path: Path):
    """The protobuf records of an offline ``.wandb`` file (LevelDB log framing after a 7-byte W&B header)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, block, chunks = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        chunks = payload if kind in (1, 2) else chunks + payload  # FULL/FIRST start a record
        if kind in (1, 4) and length:  # FULL/LAST end one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record


def test_wandb_offline_run_files(tracked_run) -> None:
    out, trainer = tracked_run
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = [], {}
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
        elif kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key or "/".join(item.nested_key): item.value_json for item in items})
    assert TRAIN_NAMES | EVAL_NAMES <= set().union(*history)
    assert [float(h["loss"]) for h in history if "loss" in h] == [pytest.approx(v) for _, v in _logged(trainer, "loss")]
    assert config["learning_rate"] == "0.001" and config["hidden_size"] == "32"


def test_report_to_all_is_every_installed_tracker(tmp_path: Path) -> None:
    """As in HF: every installed integration (the test extra installs tensorboard, mlflow and wandb)."""
    from lightning.pytorch import loggers

    from hf_lightning.loggers import build_loggers

    args = TrainingArguments(output_dir=str(tmp_path), report_to="all")
    assert sorted(args.report_to) == ["mlflow", "tensorboard", "wandb"]
    built = {type(lg) for lg in build_loggers(args)}
    assert built == {loggers.TensorBoardLogger, loggers.MLFlowLogger, loggers.WandbLogger}


def test_unknown_tracker_is_one_line(tmp_path: Path) -> None:
    from hf_lightning.errors import ConfigError
    from hf_lightning.loggers import build_loggers

    with pytest.raises(ConfigError, match="report_to.*'comet'.*Fix: use tensorboard, csv, mlflow, wandb, all or none"):
        build_loggers(TrainingArguments(output_dir=str(tmp_path), report_to=["comet"]))


def test_cli_logger_tensorboard(tmp_path: Path, demo_assets, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other front door: --trainer.logger, read back with TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hf_lightning.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    run_cli(["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--trainer.max_epochs=1",
             "--data.max_train_samples=64", "--data.max_eval_samples=32", "--trainer.log_every_n_steps=1",
             "--model.model.hidden_size=32", "--model.model.intermediate_size=64",
             "--trainer.logger=TensorBoardLogger", f"--trainer.logger.save_dir={tmp_path / 'tb'}"])
    (run_dir,) = (tmp_path / "tb" / "lightning_logs").glob("version_*")
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"loss", "learning_rate", "grad_norm", "eval_loss", "eval_accuracy"} <= set(events.Tags()["scalars"])
    assert "learning_rate: 0.0008" in (run_dir / "hparams.yaml").read_text()
