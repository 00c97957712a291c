"""Small helpers shared by the loss functions: flatten, mask, average.

Every loss here scores "items" (a sequence for classification, a token for token tasks) and
returns the mean over the scored ones. Doing the flatten/mask/mean in one place keeps the item
definition identical to ``count_label_items``, which is what makes the module's
``mean * count / window_total`` normalisation exact.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_lightning.errors import ConfigError

__all__ = ["batch_size_of", "check_positive", "flatten_scored", "masked_mean"]


def flatten_scored(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    shift_labels: bool = False,
    field: str = "labels",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten ``(..., C)`` logits and ``(...)`` labels to rows, and say which rows are scored.

    logits: (N, C) or (B, L, C); labels: (N,) or (B, L).
    With ``shift_labels`` (causal LM) position t's logits are scored against label t+1, so the
    last logit and the first label of each row are dropped before flattening.

    Returns ``(logits (M, C), safe_labels (M,), mask (M,) bool)`` where ``safe_labels`` has the
    ignored positions replaced by 0 so that ``gather`` never sees ``ignore_index``.
    """
    if shift_labels:
        if logits.dim() < 3:
            raise ConfigError(
                "shift_labels", "needs (B, L, C) logits and (B, L) labels", "set shift_labels=False"
            )
        logits = logits[..., :-1, :]
        labels = labels[..., 1:]
    if logits.shape[:-1] != labels.shape:
        raise ConfigError(
            field,
            f"shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}",
            "labels must have the logits' shape without the class dimension",
        )
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    mask = flat_labels != ignore_index
    safe_labels = torch.where(mask, flat_labels, torch.zeros_like(flat_labels))
    return flat_logits, safe_labels, mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (M,) over ``mask`` (M,) rows; 0 (with zero gradient) when nothing is scored.

    Returning 0 rather than NaN matters: a micro-batch whose labels are all padding contributes
    ``0 * 0`` to the accumulated window instead of poisoning it.
    """
    values = torch.where(mask, values, torch.zeros_like(values))
    return values.sum() / mask.sum().clamp(min=1)


def check_positive(field: str, value: float, allow_zero: bool = False) -> float:
    """Validate a scalar hyper-parameter once, at construction, with a one-line error."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok or value != value or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(field, f"must be a finite number {bound}, got {value!r}", f"pass a value {bound}")
    return float(value)


def batch_size_of(batch: dict[str, Any]) -> int:
    """Leading dimension of the batch (``input_ids`` first, else the first tensor; 1 if none)."""
    first = batch.get("input_ids")
    if not isinstance(first, torch.Tensor):
        first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else 1
