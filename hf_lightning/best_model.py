"""Load a checkpoint folder's weights into a live model, completely or not at all.

``load_best_model_at_end=True`` promises the best checkpoint's weights. transformers' Trainer loads
them with ``strict=False`` and only warns about keys it could not place, and a reload that skips a
save format silently leaves the last weights in place. Here every format that ``save_pretrained``
and the checkpoint writer produce is read through the same functions ``from_pretrained`` uses:

* ``model.safetensors`` / ``pytorch_model.bin`` (the latter with ``weights_only=True``),
* sharded saves (``*.index.json``) through transformers' ``load_sharded_checkpoint``,
* PEFT adapters (``adapter_model.safetensors`` / ``.bin``) through peft's ``load_peft_weights`` and
  ``set_peft_model_state_dict``, as ``PeftModel.from_pretrained`` does.

The key sets are compared before any tensor is copied: a missing or unexpected key is a
:class:`ConfigError` that names the keys, and the model is left untouched. Keys that
``save_pretrained`` leaves out on purpose (weights tied to a saved one, the model's
``_keys_to_ignore_on_load_*`` patterns) are not missing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hf_lightning.errors import ConfigError

__all__ = ["load_model_weights"]

SAFE_WEIGHTS = "model.safetensors"
WEIGHTS = "pytorch_model.bin"
SAFE_INDEX = "model.safetensors.index.json"
INDEX = "pytorch_model.bin.index.json"
ADAPTER_SAFE = "adapter_model.safetensors"
ADAPTER = "adapter_model.bin"


def load_model_weights(model: nn.Module, folder: str | os.PathLike[str], field: str = "load_best_model_at_end") -> None:
    """Copy the weights saved in ``folder`` into ``model``; any key mismatch is one error naming the keys."""
    folder = Path(folder)
    if is_peft_model(model):
        _load_adapter(model, folder, field)
        return
    if (folder / SAFE_INDEX).is_file() or (folder / INDEX).is_file():
        from transformers.trainer_utils import load_sharded_checkpoint

        index = folder / (SAFE_INDEX if (folder / SAFE_INDEX).is_file() else INDEX)
        saved = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
        _check_keys(model, saved, folder, field)
        load_sharded_checkpoint(model, folder, strict=False, prefer_safe=True)
        return
    if (folder / SAFE_WEIGHTS).is_file():
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(folder / SAFE_WEIGHTS), framework="pt") as handle:  # the header only
            _check_keys(model, set(handle.keys()), folder, field)
        model.load_state_dict(load_file(str(folder / SAFE_WEIGHTS), device="cpu"), strict=False)
        return
    if (folder / WEIGHTS).is_file():
        from hf_lightning.safe_load import safe_torch_load

        state_dict = safe_torch_load(folder / WEIGHTS, field=field)
        _check_keys(model, set(state_dict), folder, field)
        model.load_state_dict(state_dict, strict=False)
        return
    raise ConfigError(
        field,
        f"{str(folder)!r} holds no model weights (looked for {SAFE_WEIGHTS}, {WEIGHTS}, {SAFE_INDEX}, {INDEX})",
        "save checkpoints with the model (save_pretrained) or set load_best_model_at_end=False",
    )


def _check_keys(model: nn.Module, saved: set[str], folder: Path, field: str) -> None:
    state = model.state_dict()
    missing = [k for k in state if k not in saved and not _may_be_absent(model, k, state, saved)]
    unexpected = sorted(k for k in saved if k not in state and not _matches(model, "_keys_to_ignore_on_load_unexpected", k))
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys {_names(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_names(unexpected)}")
        raise ConfigError(
            field,
            f"the weights in {str(folder)!r} do not fit the model ({'; '.join(problems)}), so the model was left as it"
            " was instead of loading them in part",
            "load the checkpoint into the model class and configuration that wrote it",
        )


def _may_be_absent(model: nn.Module, key: str, state: dict[str, torch.Tensor], saved: set[str]) -> bool:
    """Tied to a saved tensor (save_pretrained writes shared storage once) or ignorable by the model's own rules."""
    if _matches(model, "_keys_to_ignore_on_load_missing", key) or _matches(model, "_keys_to_ignore_on_save", key):
        return True
    tensor = state[key]
    return any(other in saved and _same_storage(tensor, state[other]) for other in state if other != key)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.numel() > 0 and a.data_ptr() == b.data_ptr() and a.shape == b.shape


def _matches(model: nn.Module, attribute: str, key: str) -> bool:
    patterns = getattr(model, attribute, None) or []
    return any(re.search(pattern, key) for pattern in patterns)


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... {len(keys) - limit} more' if len(keys) > limit else ''}]"


def is_peft_model(model: nn.Module) -> bool:
    """True for a PEFT model, whose checkpoints hold only its adapter."""
    return hasattr(model, "peft_config") and hasattr(model, "active_adapter") and hasattr(model, "load_adapter")


def _load_adapter(model: Any, folder: Path, field: str) -> None:
    from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict

    if not ((folder / ADAPTER_SAFE).is_file() or (folder / ADAPTER).is_file()):
        raise ConfigError(
            field, f"{str(folder)!r} holds no adapter weights ({ADAPTER_SAFE} or {ADAPTER}) for the PEFT model",
            "save checkpoints with the model's save_pretrained (it writes the adapter)",
        )
    adapter = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapters[0]
    weights = load_peft_weights(str(folder), device="cpu")
    expected = get_peft_model_state_dict(model, adapter_name=adapter)
    missing = sorted(k for k in expected if k not in weights)
    unexpected = sorted(k for k in weights if k not in expected)
    if missing or unexpected:
        problems = [f"missing keys {_names(missing)}"] if missing else []
        problems += [f"unexpected keys {_names(unexpected)}"] if unexpected else []
        raise ConfigError(
            field, f"the adapter in {str(folder)!r} does not fit the model ({'; '.join(problems)}), so the model was "
            "left as it was", "load the adapter into the base model and PEFT config that wrote it",
        )
    set_peft_model_state_dict(model, weights, adapter_name=adapter)
