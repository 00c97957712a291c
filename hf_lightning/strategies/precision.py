"""HF's ``fp16``/``bf16`` flags -> a Lightning precision string.

transformers decides mixed precision from two booleans; Lightning from one string. fp16 autocast with a
gradient scaler only exists on CUDA (and MPS), so a CPU run asking for it is refused here with the fix.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_lightning.errors import ConfigError
from hf_lightning.strategies.devices import accelerator_name, mps_available, targets_cuda

__all__ = ["precision_from_flags"]


def precision_from_flags(
    fp16: bool = False,
    bf16: bool = False,
    accelerator: Any = "auto",
    half_precision_backend: str | None = None,
    bf16_full: bool = False,
) -> str:
    """Map HF's ``fp16``/``bf16`` flags to a Lightning precision string.

    ``bf16_full`` asks for pure bf16 weights (``"bf16-true"``), the training-time analogue of
    ``bf16_full_eval``. fp16 autocast with a gradient scaler only exists on CUDA (and MPS), so on a CPU
    run it is refused up front with the fix, rather than failing inside Lightning's precision plugin.
    """
    if half_precision_backend not in (None, "auto", "cpu_amp", "amp"):
        if half_precision_backend == "apex":
            raise ConfigError(
                "half_precision_backend",
                "apex is not supported; mixed precision runs on torch.amp",
                "remove half_precision_backend",
            )
        raise ConfigError(
            "half_precision_backend",
            f"unknown value {half_precision_backend!r}",
            'use "auto" (or leave it unset)',
        )
    if fp16 and (bf16 or bf16_full):
        raise ConfigError("fp16", "fp16 and bf16 are both set", "choose one of fp16=True or bf16=True")
    name = accelerator_name(accelerator)
    if fp16:
        cuda_ok = name in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        mps_ok = name in ("auto", "mps") and mps_available()
        if not (cuda_ok or mps_ok):
            raise ConfigError(
                "fp16", "fp16 mixed precision needs a CUDA GPU and none is in use", "use bf16=True on CPU"
            )
        return "16-mixed"
    if bf16 or bf16_full:
        if targets_cuda(accelerator) and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ConfigError("bf16", "this GPU does not support bfloat16", "use fp16=True instead")
        return "bf16-true" if bf16_full else "bf16-mixed"
    return "32-true"
