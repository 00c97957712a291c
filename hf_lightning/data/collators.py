"""Collators: the one HF would use for each task, the tag-padding one, and the choice a data module makes.

Rows are tokenised up front and padded per batch (dynamic padding, labels padded with -100), except
with ``collator: two_view``, where ``TwoViewCollator`` tokenises two views of the raw text per batch
for ``ContrastiveLoss``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from hf_lightning.data.tokenization import TAGS_KEY
from hf_lightning.errors import ConfigError

__all__ = [
    "CollatorName", "PackedCollator", "TagPaddingCollator", "build_collator", "check_collator_settings",
    "datamodule_collator",
]

CollatorName = Literal["auto", "two_view", "packed"]
"""``auto``: the task's HF collator on pre-tokenised rows. ``two_view``: raw text rows batched by
``TwoViewCollator`` into two views for ``ContrastiveLoss``. ``packed``: causal-LM rows packed into one
row without padding (``PackedCollator``)."""


class PackedCollator:
    """Padding-free packing for causal LMs: a batch becomes one row, no pad tokens.

    transformers' ``DataCollatorWithFlattening`` concatenates the rows, restarts ``position_ids`` at 0
    for each one and sets each row's first label to -100 (so no token is predicted across a
    boundary); with no ``attention_mask`` and no KV cache, transformers' masking reads the position
    ids and builds a block-diagonal causal mask (SDPA/eager on CPU, varlen kernels under flash
    attention). ``use_cache=False`` rides in the batch because with a cache (the config's default)
    transformers skips that detection and the rows would attend to each other. The loss is the
    per-token mean over the same scored tokens as the padded batch.
    """

    def __init__(self) -> None:
        from transformers import DataCollatorWithFlattening

        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [{k: v for k, v in f.items() if k in ("input_ids", "labels")} for f in features]
        batch = {**self._flatten(rows, return_tensors="pt"), "use_cache": False}
        if "token_type_ids" in features[0]:  # GPT-2 embeds them: keep them to stay equal to the padded batch
            batch["token_type_ids"] = torch.tensor([[t for f in features for t in f["token_type_ids"]]])
        return batch


def build_collator(task: str, tokenizer: Any, mlm_probability: float = 0.15) -> Callable:
    """The collator HF would use for ``task``: dynamic padding, labels padded with -100."""
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorForSeq2Seq,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
    )

    if task == "token-classification":
        return DataCollatorForTokenClassification(tokenizer)
    if task == "causal-lm":
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)
    if task == "masked-lm":
        return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)
    if task == "seq2seq-lm":
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    return DataCollatorWithPadding(tokenizer)


class TagPaddingCollator:
    """Pad a sentence-level batch that also carries per-token tags (``ner_labels``).

    ``DataCollatorWithPadding`` pads only what the tokenizer knows (ids, masks) and would choke on
    ragged tag lists, and ``DataCollatorForTokenClassification`` would pad ``labels`` (here one
    sentence label per row) as if they were tags. So: pad the inputs with the tokenizer, then pad
    the tags with -100 to the same length, so the token head ignores padding.
    """

    def __init__(self, tokenizer: Any, key: str = TAGS_KEY) -> None:
        from transformers import DataCollatorWithPadding

        self.inner = DataCollatorWithPadding(tokenizer)
        self.key = key

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        tags = [list(f[self.key]) for f in features]
        batch = self.inner([{k: v for k, v in f.items() if k != self.key} for f in features])
        length = batch["input_ids"].shape[1]
        batch[self.key] = torch.tensor([row[:length] + [-100] * (length - len(row)) for row in tags])
        return batch


def check_collator_settings(task: str, collator: str, text_columns: list[str], tag_column: str | None) -> None:
    """Refuse combinations that would silently produce batches the model cannot use."""
    if collator == "packed" and task != "causal-lm":
        raise ConfigError(
            "data.collator", f"packed needs task causal-lm, got {task}",
            "use collator auto (padding) for other tasks",
        )
    if collator == "two_view" and task in {"token-classification", "seq2seq-lm"}:
        raise ConfigError(
            "data.collator",
            f"two_view cannot feed a {task} model",
            "use task sequence-classification, masked-lm or causal-lm (an encoder or decoder)",
        )
    if collator == "two_view" and len(text_columns) > 2:
        raise ConfigError(
            "data.text_column",
            "two_view takes one or two text columns",
            "give the text column, or the two view columns",
        )
    if tag_column is not None and (task != "sequence-classification" or collator != "auto"):
        raise ConfigError(
            "data.tag_column",
            "needs task sequence-classification and collator auto",
            "use it for MultiTaskModel (sentence label + word tags) only",
        )


def datamodule_collator(
    collator: str,
    task: str,
    tokenizer: Any,
    *,
    text_columns: list[str],
    tag_column: str | None,
    max_length: int,
    mlm_probability: float,
    word_dropout: float,
    seed: int,
) -> Callable:
    """The collator ``HFDataModule`` batches with: two views, tags beside a sentence label, or the task's."""
    if collator == "two_view":
        from hf_lightning.losses.contrastive import TwoViewCollator

        second = text_columns[1] if len(text_columns) > 1 else "text_2"
        try:
            return TwoViewCollator(
                tokenizer,
                max_length,
                text_field=text_columns[0],
                second_text_field=second,
                word_dropout=word_dropout,
                seed=seed,
            )
        except ConfigError as err:
            raise ConfigError(f"data.{err.field}", err.problem, err.fix) from None
    if tag_column is not None:
        return TagPaddingCollator(tokenizer)
    if collator == "packed":
        return PackedCollator()
    return build_collator(task, tokenizer, mlm_probability)
