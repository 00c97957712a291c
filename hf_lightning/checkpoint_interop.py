"""transformers' checkpoint files beside Lightning's, so a ``checkpoint-N`` folder resumes under either trainer.

``transformers.Trainer`` resumes a folder from ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``
(``rng_state_<rank>.pth`` with several processes), ``scaler.pt`` (fp16), ``trainer_state.json`` and the
model files. hf_lightning resumes exactly from ``lightning.ckpt``, which adds the loop and sampler
position, every rank's RNG and a half-finished accumulation window. Both read the same tensors, and no
tensor is written twice: when the facade writes a folder, :class:`InteropCheckpointIO` moves the
optimizer, scheduler and scaler states out of Lightning's checkpoint into HF's files and leaves the
model weights to the HF model files; loading puts the pieces back, so Lightning sees its usual
checkpoint. The RNG files repeat the few kilobytes of RNG state that exact resume keeps per rank.

Reading HF's files never unpickles code: everything goes through
:func:`hf_lightning.safe_load.safe_torch_load` (``weights_only=True``); ``rng_state.pth`` holds NumPy
arrays and gets transformers' own allow-list of NumPy types (:func:`~hf_lightning.safe_load.numpy_globals`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH

from hf_lightning.checkpoint_io import torch_save_file
from hf_lightning.checkpoint_io_plugin import SafeLoadCheckpointIO
from hf_lightning.rng import RNG_STATE_VERSION
from hf_lightning.safe_load import numpy_globals, safe_torch_load

__all__ = [
    "FILES_KEY", "MODEL_FOLDER_KEY", "OPTIMIZER_NAME", "RNG_NAME", "SCALER_NAME", "SCHEDULER_NAME",
    "InteropCheckpointIO", "hf_rng_to_plain", "plain_rng_to_hf", "read_hf_rng", "rng_file_name",
]

OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SCALER_NAME = "scaler.pt"
RNG_NAME = "rng_state.pth"
#: Key in ``lightning.ckpt`` naming the parts that live in HF's files of the same folder.
FILES_KEY = "hf_lightning_hf_files"
#: Key set on a loaded checkpoint whose model weights are to be read from the HF model files of a folder.
MODEL_FOLDER_KEY = "hf_lightning_model_folder"
_MIXED_PRECISION = "MixedPrecision"  # Lightning's key for its GradScaler plugin state (16-mixed)
_EXACT_RESUME_KEY = "hf_lightning_exact_resume"  # callbacks.resume.STATE_KEY, not imported: no cycle


def rng_file_name(rank: int, world_size: int) -> str:
    """HF's RNG file for ``rank``: ``rng_state.pth`` alone, ``rng_state_<rank>.pth`` with several processes."""
    return RNG_NAME if world_size <= 1 else f"rng_state_{rank}.pth"


# ---------------------------------------------------------------------------- RNG formats


def plain_rng_to_hf(plain: dict[str, Any]) -> dict[str, Any]:
    """A :func:`hf_lightning.rng.capture_rng_state` snapshot in the layout of HF's ``_save_rng_state``."""
    keys = np.frombuffer(plain["numpy"]["keys"], dtype=np.uint32).copy()
    numpy_state = (plain["numpy"]["bit_generator"], keys, plain["numpy"]["pos"], plain["numpy"]["has_gauss"],
                   plain["numpy"]["cached_gaussian"])
    hf: dict[str, Any] = {
        "python": plain["python"], "numpy": numpy_state,
        "cpu": torch.frombuffer(bytearray(plain["torch"]), dtype=torch.uint8).clone(),
    }
    if plain.get("cuda"):
        hf["cuda"] = [torch.frombuffer(bytearray(s), dtype=torch.uint8).clone() for s in plain["cuda"]]
    return hf


def hf_rng_to_plain(hf: dict[str, Any]) -> dict[str, Any]:
    """HF's ``rng_state.pth`` content as a :func:`hf_lightning.rng.restore_rng_state` snapshot."""
    name, keys, pos, has_gauss, cached = hf["numpy"]
    cuda = hf.get("cuda")
    if isinstance(cuda, torch.Tensor):  # one device (HF saves get_rng_state() outside DDP)
        cuda = [cuda]
    return {
        "version": RNG_STATE_VERSION,
        "python": tuple(hf["python"]) if not isinstance(hf["python"], tuple) else hf["python"],
        "numpy": {"bit_generator": str(name), "keys": np.asarray(keys, dtype=np.uint32).tobytes(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": bytes(hf["cpu"].contiguous().numpy().tobytes()),
        "cuda": [bytes(s.cpu().contiguous().numpy().tobytes()) for s in (cuda or [])],
    }


def read_hf_rng(path: Path) -> dict[str, Any]:
    """Read an HF ``rng_state*.pth`` with ``weights_only=True`` and NumPy's array types allowed, nothing else."""
    state = safe_torch_load(path, field="resume_from_checkpoint", extra_globals=numpy_globals())
    python = state.get("python")
    if isinstance(python, list):  # the safe unpickler returns random.getstate()'s tuple as it was stored
        state["python"] = tuple(python)
    random.Random().setstate(state["python"])  # a malformed state fails here, not mid-training
    return state


# ---------------------------------------------------------------------------- the CheckpointIO


class InteropCheckpointIO(SafeLoadCheckpointIO):
    """Lightning's checkpoint IO that writes a facade folder's ``lightning.ckpt`` without repeating HF's files.

    Outside :meth:`hf_folder` it behaves as :class:`~hf_lightning.checkpoint_io_plugin.SafeLoadCheckpointIO`.
    Inside, the optimizer, scheduler and scaler states go to ``optimizer.pt``, ``scheduler.pt`` and
    ``scaler.pt``, every rank's RNG to HF's RNG files, and (given ``model_prefix``) the model's weights
    are left out, as the folder's HF model files hold them. ``foreign`` builds the checkpoint dict for a
    folder written by ``transformers.Trainer`` (no ``lightning.ckpt``); the facade sets it per run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._split: tuple[str | None] | None = None
        self.foreign: Callable[[Path], dict[str, Any]] | None = None

    @contextlib.contextmanager
    def hf_folder(self, model_prefix: str | None) -> Iterator[None]:
        """Saves inside this block write HF's files beside the checkpoint (``model_prefix``: model weights too)."""
        self._split = (model_prefix,)
        try:
            yield
        finally:
            self._split = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if self._split is None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        checkpoint = dict(checkpoint)  # a shallow copy: the trainer's own dict keeps its keys
        checkpoint[FILES_KEY] = _write_hf_files(checkpoint, Path(path).parent, self._split[0])
        super().save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's checkpoint with the parts from HF's files put back (or built from an HF-only folder)."""
        if _is_local_file_protocol(path) and not Path(path).exists() and self.foreign is not None:
            return self.foreign(Path(path).parent)
        checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        files = checkpoint.pop(FILES_KEY, None)
        if files:
            _read_hf_files(checkpoint, Path(path).parent, files, map_location)
        return checkpoint


def _save(obj: Any, path: Path) -> None:
    """``torch.save`` streamed into the file: a failed write (disk full) is an ``OSError`` that the atomic
    folder turns into its one-line error, and no second copy of the optimizer state is held in memory."""
    torch_save_file(obj, path)


def _write_hf_files(checkpoint: dict[str, Any], folder: Path, model_prefix: str | None) -> dict[str, Any]:
    """Move the parts HF's files hold out of ``checkpoint`` into them; return what went where."""
    moved: dict[str, Any] = {}
    for key, name in (("optimizer_states", OPTIMIZER_NAME), ("lr_schedulers", SCHEDULER_NAME)):
        states = checkpoint.get(key)
        if isinstance(states, list) and len(states) == 1:  # HF's files hold one optimizer and one scheduler
            _save(states[0], folder / name)
            checkpoint[key] = []
            moved[key] = name
    scaler = checkpoint.get(_MIXED_PRECISION)
    if isinstance(scaler, dict) and scaler:
        _save(scaler, folder / SCALER_NAME)
        moved[_MIXED_PRECISION] = SCALER_NAME
        del checkpoint[_MIXED_PRECISION]
    if model_prefix is not None and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(model_prefix)}
        moved["model"] = model_prefix
    ranks = (checkpoint.get(_EXACT_RESUME_KEY) or {}).get("ranks") or []
    for rank, local in enumerate(ranks):
        _save(plain_rng_to_hf(local["rng"]), folder / rng_file_name(rank, len(ranks)))
    return moved


def _read_hf_files(checkpoint: dict[str, Any], folder: Path, files: dict[str, Any], map_location: Any) -> None:
    for key, name in files.items():
        if key == "model":
            checkpoint[MODEL_FOLDER_KEY] = {"folder": str(folder), "prefix": name}
            continue
        state = safe_torch_load(folder / name, field="resume_from_checkpoint", map_location=map_location)
        checkpoint[key] = [state] if key in ("optimizer_states", "lr_schedulers") else state
