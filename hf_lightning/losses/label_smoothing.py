"""Label-smoothed cross-entropy: the ``label_smoothing_factor`` of the HF Trainer as a loss object.

Smoothing moves ``epsilon`` of the target mass from the true class to a uniform distribution over
all C classes, so the model is never pushed towards infinitely confident logits. Per scored item::

    loss = (1 - epsilon) * (-log p[y]) + epsilon * mean_c(-log p[c])

which is what both the HF Trainer's label smoother and ``F.cross_entropy(label_smoothing=...)``
compute. The mean is over non-ignored items, matching ``count_label_items``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_lightning.errors import ConfigError
from hf_lightning.losses._utils import flatten_scored, masked_mean
from hf_lightning.losses.base import IGNORE_INDEX, ModelLoss

__all__ = ["LabelSmoothingLoss", "label_smoothed_cross_entropy"]


def _check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0.0 <= epsilon <= 1.0:
        raise ConfigError("epsilon", f"must be a number in [0, 1], got {epsilon!r}", "use e.g. 0.1")
    return float(epsilon)


def label_smoothed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: bool = False,
) -> torch.Tensor:
    """Mean label-smoothed cross-entropy over the non-ignored items.

    logits: (N, C) or (B, L, C), any float dtype (computed in float32).
    labels: (N,) or (B, L) class indices, ``ignore_index`` where unscored.
    shift_labels: score logits[:, t] against labels[:, t + 1] (causal LM).
    Returns a float32 scalar; 0 when no item is scored.
    """
    epsilon = _check_epsilon(epsilon)
    flat_logits, safe_labels, mask = flatten_scored(logits, labels, ignore_index, shift_labels)
    neg_log_probs = -F.log_softmax(flat_logits.float(), dim=-1)  # (M, C)
    nll = neg_log_probs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # (M,)
    uniform = neg_log_probs.mean(dim=-1)  # (M,) cross-entropy against the uniform distribution
    per_item = (1.0 - epsilon) * nll + epsilon * uniform
    return masked_mean(per_item, mask)


class LabelSmoothingLoss(ModelLoss):
    """Run the model, then score its logits with label-smoothed cross-entropy.

    ``shift_labels=True`` is for causal LMs whose batch carries unshifted labels (the collator
    copies ``input_ids``); ``count_items`` then skips each row's first label, as the loss does.
    """

    def __init__(self, epsilon: float = 0.1, shift_labels: bool = False) -> None:
        super().__init__()
        self.epsilon = _check_epsilon(epsilon)
        self.shift_labels = bool(shift_labels)

    def loss_from_logits(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ConfigError(
                "labels", "the batch has no 'labels'", "label smoothing needs labels in every batch"
            )
        return label_smoothed_cross_entropy(logits, labels, self.epsilon, IGNORE_INDEX, self.shift_labels)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, shift_labels={self.shift_labels}"
