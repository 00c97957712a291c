"""Lightning callbacks: HF-format export, the HF event bridge, exact-resume state."""

from hf_lightning.callbacks.hf_export import HFExportCallback

__all__ = ["HFExportCallback"]
