"""Read checkpoints a user hands in without ever running code stored in them.

A ``.ckpt`` file is a pickle: unpickled with ``torch.load(weights_only=False)`` it can call any
function (``os.system``, ``exec``) while loading, so a checkpoint from a shared folder or a download
is a program. Every load of a user-given file in hf_lightning goes through :func:`safe_torch_load`,
which always passes ``weights_only=True`` explicitly (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` in the
environment cannot switch the protection off) with the few project types checkpoints may hold
allow-listed (:data:`SAFE_GLOBALS`). A file that needs anything else is refused with one line that
names it; the payload never runs.

:func:`read_checkpoint_header` validates a checkpoint cheaply: zip-format files (everything
``torch.save`` writes since torch 1.6) are memory-mapped, so only the small pickle with the keys and
hyper-parameters is read, not the tensor data. Model weights are read through safetensors
(``best_model.py``), which stores no code at all.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from hf_lightning.errors import ConfigError

__all__ = ["SAFE_GLOBALS", "numpy_globals", "read_checkpoint_header", "safe_torch_load"]

#: Project types a checkpoint written by hf_lightning may hold besides tensors and plain data. Empty
#: today (the resume state is stored as bytes, numbers and dicts, see ``rng.py``); a type added to
#: checkpoints must be listed here, and ``tests/test_safe_load.py`` round-trips every checkpoint kind.
SAFE_GLOBALS: list[Any] = []

_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL (\S+)")


def safe_torch_load(
    path: str | os.PathLike[str], field: str = "ckpt_path", map_location: Any = "cpu", mmap: bool = False,
    extra_globals: list[Any] | None = None,
) -> Any:
    """``torch.load(path, weights_only=True)`` with the project's types allowed; bad files are one ConfigError.

    ``field`` is the argument the user gave the path in, for the error line. ``mmap=True`` maps the
    tensor data instead of reading it (zip-format files only; older formats are read normally).
    ``extra_globals`` allows a few more plain-data types for one load (transformers' ``rng_state.pth``
    holds NumPy arrays: :func:`numpy_globals`); still nothing that can run code.
    """
    import torch

    file = Path(path).expanduser()
    try:
        with torch.serialization.safe_globals([*SAFE_GLOBALS, *(extra_globals or [])]):
            return torch.load(file, map_location=map_location, weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(file))
    except pickle.UnpicklingError as err:
        found = _GLOBAL_RE.search(str(err))
        if found is None:  # an opcode the safe unpickler does not know: not a checkpoint torch wrote
            raise ConfigError(field, f"{str(file)!r} is corrupt or not a checkpoint (its pickle does not parse as"
                              " plain data; nothing in it was run)", "resume from an earlier checkpoint") from None
        what = f"it would call {found.group(1)}"
        raise ConfigError(
            field,
            f"{str(file)!r} was refused without running it: {what} while loading (a pickle payload, or a type"
            " hf_lightning does not write)",
            "load only checkpoints that hf_lightning or Lightning wrote; if you trust this file and it holds your "
            "own classes, allow them with torch.serialization.add_safe_globals([...])",
        ) from None
    except FileNotFoundError:
        raise ConfigError(field, f"{str(file)!r} does not exist", "pass an existing checkpoint file") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ConfigError(
            field,
            f"{str(file)!r} is corrupt or not a checkpoint ({type(err).__name__}: {_first_line(err)})",
            "resume from an earlier checkpoint",
        ) from None


def numpy_globals() -> list[Any]:
    """The NumPy array and dtype types transformers allows when it reads its own ``rng_state.pth``.

    Taken from transformers' ``safe_globals`` (``trainer_pt_utils``), the allow-list its ``Trainer``
    loads RNG files with: array reconstruction, ``ndarray``, ``dtype`` and the uint32 dtype class.
    None of them can call arbitrary code while unpickling.
    """
    from transformers.trainer_pt_utils import safe_globals

    return list(safe_globals().safe_globals)


def read_checkpoint_header(path: str | os.PathLike[str], field: str = "ckpt_path") -> dict[str, Any]:
    """Validate a checkpoint and return its top-level dict, reading the pickle but not the tensor data."""
    checkpoint = safe_torch_load(path, field=field, mmap=True)
    if not isinstance(checkpoint, dict):
        raise ConfigError(
            field, f"{str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dictionary",
            "pass a .ckpt file written by trainer.save_checkpoint or ModelCheckpoint",
        )
    return checkpoint


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
