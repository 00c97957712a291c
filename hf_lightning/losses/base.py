"""The contract every loss in ``hf_lightning.losses`` follows.

A loss runs the model itself (distillation runs a teacher, contrastive runs two views), and returns
the **mean over the micro-batch's items** together with the model outputs. The module multiplies
that mean by the item count (``count_items``) and normalises the gradients once per optimizer step
by the item count of the whole accumulation window over all ranks. That is what makes 4 micro-batches
of 2 equal one batch of 8 for every loss here, padding included.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["IGNORE_INDEX", "ModelLoss", "count_batch_items", "count_label_items"]

IGNORE_INDEX = -100


def count_label_items(labels: torch.Tensor | None, shift: bool = False, batch_size: int = 1) -> torch.Tensor:
    """Number of scored items in a micro-batch.

    labels: (B,) or (B, L) with IGNORE_INDEX on unscored positions, or None (then ``batch_size``).
    With ``shift`` (causal LM) the first position of each row is never scored.
    """
    if labels is None:
        return torch.tensor(batch_size)
    if shift and labels.dim() > 1:
        labels = labels[..., 1:]
    return (labels != IGNORE_INDEX).sum()


def count_batch_items(batch: dict[str, Any], shift: bool = False) -> torch.Tensor:
    """Scored items in a batch dict: its non-ignored labels, or its rows when it has no labels."""
    from hf_lightning.losses._utils import batch_size_of

    return count_label_items(batch.get("labels"), shift, batch_size_of(batch))


def split_labels(model: nn.Module, batch: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The model inputs with ``labels`` taken out, and the labels.

    An encoder-decoder model derives its decoder inputs from ``labels`` when it gets them; a loss
    that scores the logits itself (or a prediction) calls the model without them, so the decoder
    inputs are prepared here the same way (HF's ``DataCollatorForSeq2Seq(model=...)`` does this).
    """
    inputs = dict(batch)
    labels = inputs.pop("labels", None)
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if prepare is not None and labels is not None and "decoder_input_ids" not in inputs and labels.dim() > 1:
        inputs["decoder_input_ids"] = prepare(labels=labels)
    return inputs, labels


class ModelLoss(nn.Module):
    """Base class: run the model on a batch and return ``(mean_loss, outputs)``.

    Subclasses override ``loss_from_logits`` for the common "logits vs labels" case, or ``forward``
    when they need more than one forward pass.
    """

    shift_labels: bool = False

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        inputs, labels = split_labels(model, batch)
        outputs = model(**inputs)
        loss = self.loss_from_logits(outputs.logits, labels)
        return loss, outputs

    def loss_from_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def count_items(self, batch: dict[str, Any]) -> torch.Tensor:
        """How many items ``forward``'s mean is over (non-ignored labels by default)."""
        return count_batch_items(batch, self.shift_labels)
