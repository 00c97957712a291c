"""Multi-class softmax focal loss (Lin et al., 2017) for imbalanced classification.

Cross-entropy keeps paying for examples the model already gets right; on a skewed data set the
many easy majority-class items then dominate the gradient. Focal loss scales each item's
cross-entropy by ``(1 - p_t) ** gamma`` so confident items fade out, and optionally by a class
weight ``alpha_t``. Per scored item, with ``p_t`` the softmax probability of the true class::

    loss = -alpha_t * (1 - p_t) ** gamma * log(p_t)

``gamma=0, alpha=None`` is plain cross-entropy. Items are averaged with equal weight (not divided
by the sum of the alphas, unlike ``F.cross_entropy(weight=...)``): the result must be a mean over
``count_label_items`` items for gradient accumulation to stay exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hf_lightning.errors import ConfigError
from hf_lightning.losses._utils import check_positive, flatten_scored, masked_mean
from hf_lightning.losses.base import IGNORE_INDEX, ModelLoss

__all__ = ["AlphaSpec", "FocalLoss", "focal_loss"]

AlphaSpec = float | Sequence[float] | torch.Tensor | None
"""None (no class weight), one float (every class), or one weight per class."""


def _alpha_tensor(alpha: AlphaSpec) -> torch.Tensor | None:
    """Normalise ``alpha`` to None, a 0-d or a (C,) float tensor, refusing negative or NaN weights."""
    if alpha is None:
        return None
    if isinstance(alpha, bool):
        raise ConfigError(
            "alpha", "must be a number or a list of per-class numbers, got a bool", "use e.g. 0.25"
        )
    try:
        tensor = torch.as_tensor(alpha, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(
            "alpha", f"could not read {alpha!r} as numbers", "pass a float or a list of floats"
        ) from None
    if tensor.dim() > 1 or tensor.numel() == 0:
        raise ConfigError(
            "alpha",
            f"must be a scalar or a 1-D list, got shape {tuple(tensor.shape)}",
            "pass one weight per class",
        )
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ConfigError(
            "alpha", f"weights must be finite and >= 0, got {alpha!r}", "use non-negative class weights"
        )
    return tensor


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    alpha: AlphaSpec = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean focal loss over the non-ignored items.

    logits: (N, C) or (B, L, C), any float dtype (computed in float32).
    labels: (N,) or (B, L) class indices, ``ignore_index`` where unscored.
    gamma: focusing exponent >= 0. alpha: None, a float, or (C,) per-class weights.
    Returns a float32 scalar; 0 when no item is scored.
    """
    gamma = check_positive("gamma", gamma, allow_zero=True)
    alpha_t = _alpha_tensor(alpha)
    flat_logits, safe_labels, mask = flatten_scored(logits, labels, ignore_index)
    num_classes = flat_logits.shape[-1]
    log_p = F.log_softmax(flat_logits.float(), dim=-1)
    log_pt = log_p.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # (M,)
    per_item = -log_pt
    if gamma != 0.0:
        # -expm1(log p_t) = 1 - p_t without the cancellation of 1 - exp(.) when p_t is near 1.
        per_item = (-torch.expm1(log_pt)).clamp(min=0.0).pow(gamma) * per_item
    if alpha_t is not None:
        alpha_t = alpha_t.to(per_item.device)
        if alpha_t.dim() == 1:
            if alpha_t.numel() != num_classes:
                raise ConfigError(
                    "alpha",
                    f"has {alpha_t.numel()} weights but the logits have {num_classes} classes",
                    "give one weight per class",
                )
            alpha_t = alpha_t[safe_labels]
        per_item = alpha_t * per_item
    return masked_mean(per_item, mask)


class FocalLoss(ModelLoss):
    """Run the model, then score its logits with :func:`focal_loss` (sequence or token classification)."""

    def __init__(self, gamma: float = 2.0, alpha: AlphaSpec = None) -> None:
        super().__init__()
        self.gamma = check_positive("gamma", gamma, allow_zero=True)
        alpha_t = _alpha_tensor(alpha)
        # A buffer follows the module across devices; non-persistent because it is a hyper-parameter,
        # not trained state, and must not make checkpoints depend on how the loss was configured.
        self.register_buffer("alpha", alpha_t, persistent=False)

    def loss_from_logits(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ConfigError("labels", "the batch has no 'labels'", "focal loss needs labels in every batch")
        return focal_loss(logits, labels, self.gamma, self.alpha, IGNORE_INDEX)

    def extra_repr(self) -> str:
        alpha = None if self.alpha is None else self.alpha.tolist()
        return f"gamma={self.gamma}, alpha={alpha}"
