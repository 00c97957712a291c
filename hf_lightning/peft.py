"""Parameter-efficient fine-tuning with the ``peft`` library (LoRA and the other ``PeftConfig`` kinds).

``apply_peft`` wraps a transformers model with ``peft.get_peft_model``: the base weights are frozen
(``requires_grad=False``, so the optimizer never sees them and they stay bit for bit unchanged), only
the adapters (and the task head peft keeps trainable for classification) train. Everything after
that is ordinary: Lightning checkpoints hold the whole state, ``save_pretrained`` on the wrapped
model writes an adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) that
``PeftModel.from_pretrained(base, folder)`` loads, and ``merge_and_unload()`` folds the adapters into
a plain transformers model for export.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from hf_lightning.errors import ConfigError

__all__ = ["TASK_TYPES", "apply_peft", "is_peft_model"]

# hf_lightning task -> peft TaskType (decides which head peft keeps trainable and how it saves)
TASK_TYPES = {
    "sequence-classification": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "causal-lm": "CAUSAL_LM",
    "seq2seq-lm": "SEQ_2_SEQ_LM",
}


def is_peft_model(model: nn.Module) -> bool:
    """True for a ``peft.PeftModel`` (checked without importing peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "active_adapter")


def apply_peft(model: nn.Module, peft_config: dict[str, Any] | Any, task: str | None = None) -> nn.Module:
    """``model`` wrapped for PEFT. ``peft_config`` is a ``PeftConfig`` or a dict of ``LoraConfig`` fields.

    A dict may name another method with ``peft_type`` (e.g. ``"IA3"``); ``task_type`` defaults to the
    task's (``SEQ_CLS`` for sequence classification, ...).
    """
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is in the test and peft extras
        raise ConfigError("model.peft_config", "needs the peft library", "pip install 'hf-lightning[peft]'") from None
    if is_peft_model(model):
        raise ConfigError("model.peft_config", "the model is already a PEFT model", "drop peft_config or pass the base model")
    if isinstance(peft_config, dict):
        fields = dict(peft_config)
        kind = str(fields.pop("peft_type", "LORA")).upper()
        config_class = peft.PEFT_TYPE_TO_CONFIG_MAPPING.get(kind)
        if config_class is None:
            raise ConfigError("model.peft_config.peft_type", f"unknown PEFT method {kind!r}",
                              f"use one of {sorted(peft.PEFT_TYPE_TO_CONFIG_MAPPING)}")
        if task in TASK_TYPES:
            fields.setdefault("task_type", TASK_TYPES[task])
        try:
            peft_config = config_class(**fields)
        except TypeError as err:
            raise ConfigError("model.peft_config", str(err), f"use {config_class.__name__}'s fields") from None
    try:
        return peft.get_peft_model(model, peft_config)
    except ValueError as err:  # e.g. target modules that the model does not have
        raise ConfigError("model.peft_config", str(err).splitlines()[0], "name modules the model has "
                          "(e.g. target_modules: [query, value] for BERT, [c_attn] for GPT-2)") from None
