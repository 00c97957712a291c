"""NEFTune: uniform noise on the input embeddings while fine-tuning (Jain et al., 2023, arXiv:2310.05914).

Why noise on embeddings: instruction fine-tuning overfits to the exact token sequences of a small
dataset; jittering the embedding vectors by a tiny, length-normalised amount acts as a regulariser
and was shown to improve chat-quality metrics at no extra cost.

The noise for an embedding tensor of shape ``(B, L, d)`` is ``U(-1, 1) * alpha / sqrt(L * d)``, so
its expected squared norm per sequence stays ``alpha**2 / 3`` whatever the length and width.

Three layers, from pure to wired-in:

* `neftune_noise` - the maths, a pure function (seedable through a ``torch.Generator``).
* `activate_neftune` / `deactivate_neftune` - a forward hook on ``model.get_input_embeddings()``
  that adds the noise only while that module is in training mode, so evaluation and generation
  are never noisy even if someone forgets to deactivate.
* `NEFTuneCallback` - a Lightning callback that activates at the start of ``fit`` and always
  removes the hook at the end (also on exceptions), so a model saved afterwards carries no hook.

By default the behaviour is identical to transformers' ``neftune_noise_alpha``: ``L`` is the padded
length and padding positions are noised too. ``mask_aware=True`` is an opt-in refinement: each row
uses its own real length ``L_b = attention_mask[b].sum()`` and padding positions stay untouched,
so a short sequence in a long padded batch gets the noise level it would get on its own.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from hf_lightning.errors import ConfigError

__all__ = ["NEFTuneCallback", "NEFTuneHandle", "activate_neftune", "deactivate_neftune", "neftune_noise"]

# Attribute on the model that holds the active handle: one place to look, so a second activation
# replaces the first instead of stacking hooks.
_HANDLE_ATTR = "_hf_lightning_neftune_handle"


def _check_alpha(alpha: float) -> float:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ConfigError(
            "neftune_noise_alpha",
            f"must be a finite number > 0, got {alpha!r}",
            "use a value such as 5.0 (the paper tries 5, 10 and 15), or leave NEFTune off",
        )
    return float(alpha)


def _length_scale(alpha: float, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``alpha / sqrt(lengths * width)`` computed in float32.

    float32 on purpose: transformers computes its bound from a float32 tensor, and the uniform draw
    depends on the exact bound, so this keeps the default path bit-identical to its hook.
    """
    return alpha / (lengths.to(torch.float32) * width).sqrt()


def neftune_noise(
    embeddings: torch.Tensor,
    alpha: float,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return ``embeddings`` plus NEFTune noise; the input is not modified.

    Args:
        embeddings: ``(B, L, d)`` output of the input-embedding layer (any float dtype/device).
        alpha: noise strength, > 0. Each element gets ``U(-1, 1) * alpha / sqrt(L * d)``.
        attention_mask: optional ``(B, L)`` mask (1 = real token, 0 = padding). ``None`` (default)
            reproduces transformers exactly: ``L`` is the padded length and padding is noised too.
            With a mask, row ``b`` uses its real length ``L_b`` and padding positions get zero noise.
        generator: optional RNG for reproducible noise; ``None`` uses torch's default generator,
            consuming it exactly like transformers' hook does (same seed -> same tensor).

    Returns:
        ``(B, L, d)`` tensor of the same dtype and device as ``embeddings``.
    """
    alpha = _check_alpha(alpha)
    if embeddings.dim() != 3:
        raise ConfigError(
            "embeddings",
            f"expected a (B, L, d) tensor, got shape {tuple(embeddings.shape)}",
            "pass batched embeddings",
        )
    batch, length, width = embeddings.shape
    if attention_mask is None:
        # One bound for the whole tensor, drawn directly as U(-bound, bound) to match transformers.
        bound = float(_length_scale(alpha, torch.tensor(length), width))
        noise = torch.empty_like(embeddings).uniform_(-bound, bound, generator=generator)
        return embeddings + noise
    if tuple(attention_mask.shape) != (batch, length):
        raise ConfigError(
            "attention_mask",
            f"shape {tuple(attention_mask.shape)} does not match embeddings (B, L) = {(batch, length)}",
            "pass the (B, L) attention mask of the same batch, or None",
        )
    real = (attention_mask != 0).to(embeddings.device)  # (B, L) bool
    lengths = real.sum(dim=-1).clamp(min=1)  # (B,); an all-padding row gets no noise anyway
    scale = _length_scale(alpha, lengths, width).to(embeddings.dtype)[:, None, None]  # (B, 1, 1)
    unit = torch.empty_like(embeddings).uniform_(-1.0, 1.0, generator=generator)  # (B, L, d)
    return embeddings + unit * scale * real.unsqueeze(-1).to(embeddings.dtype)


class NEFTuneHandle:
    """What `activate_neftune` returns: removes every hook it installed with one `remove()` call.

    The mask-aware mode needs two hooks (one on the model to see ``attention_mask``, one on the
    embedding layer), so a single torch ``RemovableHandle`` is not enough.
    """

    def __init__(self, handles: list[RemovableHandle], alpha: float, mask_aware: bool) -> None:
        self._handles = handles
        self.alpha = alpha
        self.mask_aware = mask_aware

    def remove(self) -> None:
        """Remove the hooks; safe to call more than once."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def active(self) -> bool:
        """True until `remove` has been called."""
        return bool(self._handles)


def _input_embeddings(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if not isinstance(embeddings, nn.Module):
        raise ConfigError(
            "neftune_noise_alpha",
            f"{type(model).__name__} has no input-embedding module (get_input_embeddings() is missing or None)",
            "use a transformers PreTrainedModel, or implement get_input_embeddings() on your model",
        )
    return embeddings


def activate_neftune(model: nn.Module, alpha: float, mask_aware: bool = False) -> NEFTuneHandle:
    """Add NEFTune noise to ``model.get_input_embeddings()`` outputs while that module is training.

    Calling it again replaces the previous hook (e.g. to change ``alpha``) instead of stacking a
    second one. The handle is also stored on ``model`` so `deactivate_neftune` can find it.

    With ``mask_aware=True`` a forward pre-hook on ``model`` records the ``attention_mask`` keyword
    argument of each forward call; the first embedding call of that forward uses it (per-row length,
    no noise on padding). Calls without an ``attention_mask`` keyword treat every position as real,
    which is the default behaviour. Encoder-decoder models: only the first embedding call of a forward
    (the encoder's) is mask-aware; the decoder's uses the padded length.
    """
    alpha = _check_alpha(alpha)
    embeddings = _input_embeddings(model)
    deactivate_neftune(model)
    state: dict[str, Any] = {"mask": None}

    def add_noise(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        mask, state["mask"] = state["mask"], None  # consume: belongs to this forward only
        if not module.training or not isinstance(output, torch.Tensor) or output.dim() != 3:
            return output
        if mask is not None and not (mask.dim() == 2 and tuple(mask.shape) == tuple(output.shape[:2])):
            mask = None  # e.g. a 4D custom mask or a cached-generation step: fall back to the default
        return neftune_noise(output, alpha, attention_mask=mask)

    handles = [embeddings.register_forward_hook(add_noise)]
    if mask_aware:

        def remember_mask(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            mask = kwargs.get("attention_mask")
            state["mask"] = mask if isinstance(mask, torch.Tensor) else None

        handles.append(model.register_forward_pre_hook(remember_mask, with_kwargs=True))
    handle = NEFTuneHandle(handles, alpha, mask_aware)
    setattr(model, _HANDLE_ATTR, handle)
    return handle


def deactivate_neftune(model: nn.Module) -> None:
    """Remove the hook installed by `activate_neftune`; a no-op when none is active."""
    handle = model.__dict__.pop(_HANDLE_ATTR, None)
    if handle is not None:
        handle.remove()


class NEFTuneCallback(pl.Callback):
    """Apply NEFTune for the duration of ``trainer.fit`` and never leave the hook behind.

    Activates in ``on_train_start`` and deactivates in ``on_train_end`` and ``on_exception``, so a
    checkpoint or ``save_pretrained`` after (or after a crashed) fit gives a clean model. Validation
    inside fit is noise-free because Lightning puts the model in eval mode for it.

    The HF model is looked up as ``pl_module.model`` (where this project's LightningModule keeps it);
    a LightningModule that itself has ``get_input_embeddings`` works too.
    """

    def __init__(self, alpha: float, mask_aware: bool = False) -> None:
        self.alpha = _check_alpha(alpha)
        self.mask_aware = mask_aware

    @staticmethod
    def _hf_model(pl_module: pl.LightningModule) -> nn.Module:
        model = getattr(pl_module, "model", None)
        if isinstance(model, nn.Module) and callable(getattr(model, "get_input_embeddings", None)):
            return model
        if callable(getattr(pl_module, "get_input_embeddings", None)):
            return pl_module
        raise ConfigError(
            "neftune_noise_alpha",
            f"{type(pl_module).__name__} has no `.model` with get_input_embeddings()",
            "keep the Hugging Face model in `self.model` of your LightningModule",
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        activate_neftune(self._hf_model(pl_module), self.alpha, mask_aware=self.mask_aware)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove(pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove(pl_module)

    @staticmethod
    def _remove(pl_module: pl.LightningModule) -> None:
        for module in (getattr(pl_module, "model", None), pl_module):
            if isinstance(module, nn.Module):
                deactivate_neftune(module)
