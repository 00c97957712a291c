"""``report_to`` -> Lightning's own loggers, plus what HF's tracker integrations log beside metrics.

The metrics themselves reach every logger through the facade's ``log`` (HF names: ``loss``,
``learning_rate``, ``grad_norm``, ``eval_*``). What transformers' integrations add, and Lightning's
loggers do not do by themselves for the facade, is done by ``TrackerExtras``: the
``TrainingArguments`` (and the model config) as hyperparameters when training starts, and for MLflow
the trained model in Hugging Face format as a run artifact when it ends (HF logs it when
``HF_MLFLOW_LOG_ARTIFACTS`` is set; here it is on by default and off with
``HF_MLFLOW_LOG_ARTIFACTS=0``, because a run whose model cannot be fetched back is half a record).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from hf_lightning.errors import ConfigError

__all__ = ["TRACKERS", "TrackerExtras", "all_trackers", "build_loggers", "run_hyperparameters"]

# report_to name -> (module that must be importable, extra that installs it). csv is Lightning's own.
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "loggers"),
    "csv": ("lightning", "loggers"),
    "mlflow": ("mlflow", "loggers"),
    "wandb": ("wandb", "loggers"),
}


def all_trackers() -> list[str]:
    """HF's ``report_to="all"``: every installed integration transformers knows, of those supported here."""
    from transformers.integrations import get_available_reporting_integrations

    return [name for name in get_available_reporting_integrations() if name in TRACKERS]


def build_loggers(args: Any) -> list[Any]:
    """``report_to`` names -> Lightning loggers (each library imported only when asked for)."""
    from lightning.pytorch import loggers

    names = args.report_to
    if isinstance(names, str):
        names = [names]
    names = [n for n in (names or []) if n not in ("none", None)]
    if "all" in names:
        names = all_trackers()
    # Absolute, so that writers flushing in background threads after a later chdir (notebooks, tests)
    # still reach the run's directory.
    output_dir = Path(args.output_dir).resolve()
    log_dir = str(Path(getattr(args, "logging_dir", None) or output_dir / "runs").resolve())
    out = []
    for name in dict.fromkeys(names):
        if name not in TRACKERS:
            raise ConfigError("report_to", f"unknown logger {name!r}", f"use {', '.join(TRACKERS)}, all or none")
        _require(*TRACKERS[name])
        if name == "tensorboard":
            out.append(loggers.TensorBoardLogger(save_dir=log_dir, name="", version=args.run_name or ""))
        elif name == "csv":
            out.append(loggers.CSVLogger(save_dir=log_dir, name="", version=args.run_name or ""))
        elif name == "mlflow":
            # MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME as in HF's MLflowCallback; else a local sqlite
            # store (MLflow 3 refuses new file stores).
            out.append(loggers.MLFlowLogger(
                experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "hf_lightning"), run_name=args.run_name,
                tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{output_dir / 'mlflow.db'}",
                artifact_location=(output_dir / "mlartifacts").as_uri(),
            ))
        elif name == "wandb":
            # WANDB_MODE=offline writes the run under <output_dir>/wandb for a later `wandb sync`.
            out.append(loggers.WandbLogger(name=args.run_name, save_dir=str(output_dir),
                                           project=os.environ.get("WANDB_PROJECT", "huggingface")))
    return out


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError("report_to", f"{module} is not installed", f"pip install 'hf-lightning[{extra}]'")


class TrackerExtras(pl.Callback):
    """Hyperparameters at fit start; for MLflow, the HF-format model as an artifact at fit end.

    Args:
        hyperparameters: what to log (the facade passes ``args.to_dict()`` plus the model config).
        save_model: writes the model in HF format into a folder (the facade's ``save_model``).
    """

    def __init__(self, hyperparameters: dict[str, Any], save_model: Callable[[str], Any] | None = None) -> None:
        self.hyperparameters = hyperparameters
        self.save_model = save_model

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.hyperparameters)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        mlflow_loggers = [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]
        if not mlflow_loggers or self.save_model is None or os.environ.get("HF_MLFLOW_LOG_ARTIFACTS") in ("0", "false"):
            return
        with tempfile.TemporaryDirectory() as folder:
            self.save_model(folder)  # a collective under FSDP2: every rank calls it
            if trainer.is_global_zero:
                for logger in mlflow_loggers:
                    logger.experiment.log_artifacts(logger.run_id, folder, artifact_path="model")


def run_hyperparameters(args: Any, model: Any) -> dict[str, Any]:
    """HF's integrations log ``args.to_dict()`` merged with the model config: the same here."""
    params = dict(args.to_dict())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        params = {**config.to_dict(), **params}
    return {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool)) or v is None}
