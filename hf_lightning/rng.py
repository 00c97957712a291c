"""Capture and restore every random number generator a training step can touch.

Lightning saves loop counters, optimizer and scheduler state, but no RNG state, so a resumed run
draws different dropout masks and augmentations than the uninterrupted run would have. These two
functions snapshot the process-global generators of Python, NumPy and torch (CPU and every visible
CUDA device) so that a callback can put them into the checkpoint and restore them on resume.

The snapshot is built only from plain Python types (``int``, ``float``, ``bytes``, ``tuple``,
``list``, ``dict``), because ``torch.load`` defaults to ``weights_only=True`` and refuses NumPy
arrays. Torch states are stored as ``bytes`` rather than tensors, because a tensor would follow a
``map_location="cuda"`` on load, and ``torch.set_rng_state`` only accepts a CPU byte tensor.

The state is per process: in multi-process training every rank has its own generators, so a
callback must gather one snapshot per rank and give each rank back its own on resume.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["RNG_STATE_VERSION", "capture_rng_state", "restore_rng_state"]

#: Bumped when the layout of the snapshot changes, so old checkpoints fail loudly, not subtly.
RNG_STATE_VERSION = 1


def _tensor_to_bytes(state: torch.Tensor) -> bytes:
    return bytes(state.cpu().contiguous().numpy().tobytes())


def _bytes_to_tensor(data: bytes) -> torch.Tensor:
    # bytearray gives torch a writable buffer (frombuffer warns on read-only bytes); clone detaches
    # the tensor from that buffer.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def _numpy_state_to_plain(state: Any) -> dict[str, Any]:
    if isinstance(state, dict):  # a non-default legacy bit generator returns a dict
        raise TypeError(
            "numpy's global RandomState uses a bit generator other than MT19937; capture_rng_state only "
            "supports the default"
        )
    name, keys, pos, has_gauss, cached_gaussian = state
    return {
        "bit_generator": str(name),
        "keys": np.asarray(keys, dtype=np.uint32).tobytes(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _plain_to_numpy_state(state: dict[str, Any]) -> tuple[Any, ...]:
    keys = np.frombuffer(state["keys"], dtype=np.uint32).copy()
    return (state["bit_generator"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])


def capture_rng_state() -> dict[str, Any]:
    """Snapshot the global RNGs of this process as a ``torch.load(weights_only=True)``-safe dict.

    Keys: ``version``, ``python`` (``random.getstate()``, already plain types), ``numpy`` (the
    legacy global ``np.random`` state with its key array as bytes), ``torch`` (CPU generator as
    bytes) and ``cuda`` (a list with one bytes entry per visible device; empty without CUDA).
    Framework-local generators (a ``torch.Generator`` given to a DataLoader, a NumPy
    ``default_rng``) are not global and must be saved by their owner.
    """
    cuda: list[bytes] = []
    if torch.cuda.is_available():
        cuda = [_tensor_to_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return {
        "version": RNG_STATE_VERSION,
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": _tensor_to_bytes(torch.get_rng_state()),
        "cuda": cuda,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back a snapshot made by :func:`capture_rng_state` in the current process.

    Call it as late as possible before the first training batch (Lightning: ``on_train_start``),
    because anything that draws random numbers after the restore (model init, DataLoader
    iterator creation without its own generator) shifts the stream. CUDA states are restored for
    as many devices as both the snapshot and this process have; a mismatch is warned about, not
    fatal, because resuming on a different number of visible devices is legitimate but cannot be
    bit-exact.
    """
    version = state.get("version")
    if version != RNG_STATE_VERSION:
        raise ValueError(
            f"RNG state has version {version!r}, this hf_lightning reads version {RNG_STATE_VERSION}"
        )
    python_state = state["python"]
    # torch.load may hand back lists where tuples were saved; random.setstate needs tuples.
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    np.random.set_state(_plain_to_numpy_state(state["numpy"]))
    torch.set_rng_state(_bytes_to_tensor(state["torch"]))

    saved_cuda: list[bytes] = list(state.get("cuda", []))
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if saved_cuda and available != len(saved_cuda):
        warnings.warn(
            f"the RNG snapshot has {len(saved_cuda)} CUDA device state(s) but this process sees {available}; "
            "restoring the overlap only, so GPU randomness will not match the original run exactly",
            stacklevel=2,
        )
    for device, data in enumerate(saved_cuda[:available]):
        torch.cuda.set_rng_state(_bytes_to_tensor(data), device)
