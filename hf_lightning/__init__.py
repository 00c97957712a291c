"""hf_lightning: the Hugging Face Trainer API on a PyTorch Lightning engine.

Importing the package stays cheap and never imports optional integrations (ray, deepspeed, mlflow,
wandb), nor torch or transformers: public names are resolved lazily on first access.

Beside ``Trainer`` and ``TrainingArguments`` the package re-exports the names a Hugging Face training
script imports next to them (``TRANSFORMERS_REEXPORTS``), so switching a script is one changed import
line. They are transformers' own objects, not copies: callbacks, states and collators built from either
import are interchangeable.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from hf_lightning.quiet import install_filters as _install_filters  # noqa: E402

_install_filters()  # unused optional libraries print nothing into a run

_EXPORTS = {
    "Trainer": "hf_lightning.trainer",
    "TrainingArguments": "hf_lightning.args",
    "Seq2SeqTrainer": "hf_lightning.seq2seq_trainer",
    "Seq2SeqTrainingArguments": "hf_lightning.args",
    "HFCallbacks": "hf_lightning.callbacks.hf_bridge",
    "HFLightningModule": "hf_lightning.module",
    "HFDataModule": "hf_lightning.data",
    "HFExportCallback": "hf_lightning.callbacks.hf_export",
    "ConfigError": "hf_lightning.errors",
    "build_model": "hf_lightning.models",
}

# Names an HF script imports beside Trainer, served from transformers itself (README: "One import line").
TRANSFORMERS_REEXPORTS = (
    # callbacks and the objects they receive
    "TrainerCallback", "TrainerState", "TrainerControl", "EarlyStoppingCallback", "DefaultFlowCallback",
    "PrinterCallback", "ProgressCallback",
    # evaluation and strategy types
    "EvalPrediction", "IntervalStrategy", "SchedulerType",
    # script plumbing
    "HfArgumentParser", "set_seed", "enable_full_determinism", "get_scheduler",
    # data collators
    "DataCollator", "DefaultDataCollator", "default_data_collator", "DataCollatorWithPadding",
    "DataCollatorForTokenClassification", "DataCollatorForSeq2Seq", "DataCollatorForLanguageModeling",
    "DataCollatorForPermutationLanguageModeling", "DataCollatorForMultipleChoice", "DataCollatorWithFlattening",
)
_EXPORTS.update({name: "transformers" for name in TRANSFORMERS_REEXPORTS})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
