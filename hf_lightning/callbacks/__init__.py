"""Lightning callbacks: HF-format export, HF callbacks in Lightning runs, exact resume, preemption."""

from hf_lightning.callbacks.hf_bridge import HFCallbacks
from hf_lightning.callbacks.hf_export import HFExportCallback
from hf_lightning.callbacks.preemption import PreemptionCheckpoint
from hf_lightning.callbacks.resume import ExactResumeCallback

__all__ = ["ExactResumeCallback", "HFCallbacks", "HFExportCallback", "PreemptionCheckpoint"]
