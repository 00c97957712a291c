"""hf_lightning: the Hugging Face Trainer API on a PyTorch Lightning engine.

Importing the package stays cheap and never imports optional integrations (ray, deepspeed, mlflow,
wandb): public names are resolved lazily on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Trainer": "hf_lightning.trainer",
    "TrainingArguments": "hf_lightning.args",
    "HFCallbacks": "hf_lightning.callbacks.hf_bridge",
    "HFLightningModule": "hf_lightning.module",
    "HFDataModule": "hf_lightning.data",
    "HFExportCallback": "hf_lightning.callbacks.hf_export",
    "ConfigError": "hf_lightning.errors",
    "build_model": "hf_lightning.models",
}

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
