"""Lightning callbacks: HF-format export, HF callbacks in Lightning runs, exact resume, preemption.

Each name is imported on first use: ``HFCallbacks`` needs ``transformers.trainer_callback`` (which
imports peft and bitsandbytes where installed), which a plain ``hf-lightning fit`` never uses.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ExactResumeCallback", "HFCallbacks", "HFExportCallback", "PreemptionCheckpoint"]

_WHERE = {
    "ExactResumeCallback": "hf_lightning.callbacks.resume",
    "HFCallbacks": "hf_lightning.callbacks.hf_bridge",
    "HFExportCallback": "hf_lightning.callbacks.hf_export",
    "PreemptionCheckpoint": "hf_lightning.callbacks.preemption",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
