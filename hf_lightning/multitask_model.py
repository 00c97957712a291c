"""A reference multi-task model: one BERT encoder, a sentence head and a token head.

``MultiTaskLoss`` and ``UncertaintyWeightedLoss`` combine per-task losses that the model reports
as ``<task>_loss`` outputs. This model is the smallest real thing that reports them, so those
losses can be used (and tested) end to end, and it round-trips through ``save_pretrained`` /
``AutoModel.from_pretrained`` like any transformers model once this module is imported.

Batches carry ``labels`` (B,) for the sentence task and ``ner_labels`` (B, L) for the token task,
with -100 on unscored tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
)
from transformers.modeling_outputs import ModelOutput
from transformers.models.bert.modeling_bert import BertPreTrainedModel

__all__ = ["MULTITASK_MODEL_TYPE", "MultiTaskConfig", "MultiTaskModel", "MultiTaskOutput"]

MULTITASK_MODEL_TYPE = "hf_lightning_multitask"
# Same value as hf_lightning.losses.IGNORE_INDEX; not imported, to keep this module leaf-level.
IGNORE_INDEX = -100


@strict
class MultiTaskConfig(BertConfig):
    """BERT encoder settings plus the size of the token-classification head.

    It extends ``BertConfig`` (so every BERT field, ``num_labels`` and ``id2label`` work as usual)
    because the encoder *is* a BERT; only ``num_ner_labels`` and ``model_type`` are new.
    """

    model_type = MULTITASK_MODEL_TYPE

    num_ner_labels: int = 2


@dataclass
class MultiTaskOutput(ModelOutput):
    """What :class:`MultiTaskModel` returns.

    loss: () sum of the task losses present (None when no labels were given).
    classification_loss: () mean cross-entropy of the sentence head over the batch.
    ner_loss: () mean cross-entropy of the token head over non-ignored tokens.
    logits: (B, num_labels) sentence-head logits. ner_logits: (B, L, num_ner_labels).
    hidden_states: tuple of (B, L, H), when asked for with ``output_hidden_states=True``.
    """

    loss: torch.Tensor | None = None
    classification_loss: torch.Tensor | None = None
    ner_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    ner_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class MultiTaskModel(BertPreTrainedModel):
    """BERT encoder with a sequence-classification head and a token-classification head.

    Subclassing ``BertPreTrainedModel`` reuses BERT's weight initialisation (which also fills the
    embedding buffers when loading from a checkpoint), so saving and loading behave like BERT's.
    """

    config_class = MultiTaskConfig
    config: MultiTaskConfig

    def __init__(self, config: MultiTaskConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=True)
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.ner_classifier = nn.Linear(config.hidden_size, config.num_ner_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ner_labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> MultiTaskOutput:
        """input_ids, attention_mask, token_type_ids: (B, L). labels: (B,). ner_labels: (B, L)."""
        encoded = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )
        sequence = self.dropout(encoded.last_hidden_state)  # (B, L, H)
        pooled = self.dropout(encoded.pooler_output)  # (B, H)
        logits = self.classifier(pooled)  # (B, num_labels)
        ner_logits = self.ner_classifier(sequence)  # (B, L, num_ner_labels)

        classification_loss = None
        if labels is not None:
            classification_loss = F.cross_entropy(logits.float(), labels.view(-1), ignore_index=IGNORE_INDEX)
        ner_loss = None
        if ner_labels is not None:
            ner_loss = F.cross_entropy(
                ner_logits.float().reshape(-1, ner_logits.shape[-1]),
                ner_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        present = [x for x in (classification_loss, ner_loss) if x is not None]
        loss = sum(present[1:], present[0]) if present else None
        return MultiTaskOutput(
            loss=loss,
            classification_loss=classification_loss,
            ner_loss=ner_loss,
            logits=logits,
            ner_logits=ner_logits,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


# Registration makes ``AutoConfig``/``AutoModel``/``AutoModelForSequenceClassification`` (and so
# ``hf_lightning.models.build_model``) resolve ``model_type: hf_lightning_multitask``.
AutoConfig.register(MULTITASK_MODEL_TYPE, MultiTaskConfig, exist_ok=True)
AutoModel.register(MultiTaskConfig, MultiTaskModel, exist_ok=True)
AutoModelForSequenceClassification.register(MultiTaskConfig, MultiTaskModel, exist_ok=True)
