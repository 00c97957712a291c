"""What hardware a run asks for, read from the arguments alone (before any process or device exists).

The strategy choice depends on it (DeepSpeed and Lightning's FSDPStrategy need CUDA, DDP is only worth
building when more than one process runs), and it must be known before ``lightning.Trainer`` starts.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_lightning.errors import ConfigError

__all__ = ["accelerator_name", "count_devices", "mps_available", "targets_cuda"]


def accelerator_name(accelerator: Any) -> str:
    """Lower-case accelerator name for both ``"gpu"`` strings and Lightning ``Accelerator`` objects."""
    if isinstance(accelerator, str):
        return accelerator.lower()
    name = type(accelerator).__name__.lower()
    return "cuda" if "cuda" in name else name.replace("accelerator", "")


def targets_cuda(accelerator: Any) -> bool:
    """Whether the run asks for CUDA: explicitly (``gpu``/``cuda``) or via ``auto`` on a CUDA machine.

    An explicit ``gpu`` counts even when no GPU is visible, because Lightning will then report the missing
    device itself; the strategy choice should follow what the user asked for.
    """
    name = accelerator_name(accelerator)
    if name in ("gpu", "cuda"):
        return True
    return name == "auto" and torch.cuda.is_available()


def mps_available() -> bool:
    """Whether Apple's MPS backend exists and works here (fp16 autocast also runs there)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def count_devices(devices: Any, cuda: bool) -> int:
    """How many processes per node Lightning will start for ``devices``, without touching the hardware.

    Needed before the Trainer exists: DDP is only worth building when more than one process will run,
    and DeepSpeed's ``train_batch_size`` depends on the world size.
    """
    if devices is None:
        return 1
    if isinstance(devices, (list, tuple)):
        if not devices:
            raise ConfigError("devices", "the device list is empty", "list at least one device index")
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text == "auto":
            return max(torch.cuda.device_count(), 1) if cuda else 1
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        try:
            devices = int(text)
        except ValueError:
            raise ConfigError(
                "devices", f"cannot read {devices!r} as a device count", 'use an integer, "auto" or "0,1"'
            ) from None
    if isinstance(devices, bool) or not isinstance(devices, int):
        raise ConfigError(
            "devices", f"unsupported value {devices!r}", 'use an integer, "auto" or a list of ids'
        )
    if devices == -1:
        if not cuda:
            raise ConfigError(
                "devices", "devices=-1 (all GPUs) was given for a CPU run", "give a number of processes"
            )
        return max(torch.cuda.device_count(), 1)
    if devices < 1:
        raise ConfigError("devices", f"must be at least 1, got {devices}", "use devices=1 or more")
    return devices
