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
row without padding, or into fixed-length rows with ``packing_length`` (``PackedCollator``)."""


class PackedCollator:
    """Padding-free packing for causal LMs: a batch becomes one row, or rows of ``max_length`` tokens.

    transformers' ``DataCollatorWithFlattening`` concatenates the rows, restarts ``position_ids`` at 0
    for each one and sets each row's first label to -100 (so no token is predicted across a
    boundary); with no ``attention_mask`` and no KV cache, transformers' masking reads the position
    ids and builds a block-diagonal causal mask (SDPA/eager on CPU, varlen kernels under flash
    attention). ``use_cache=False`` rides in the batch because with a cache (the config's default)
    transformers skips that detection and the rows would attend to each other. The loss is the
    per-token mean over the same scored tokens as the padded batch.

    With ``max_length`` (TRL-style packing into fixed-length rows) the batch's sequences are binned
    first-fit decreasing into rows of at most ``max_length`` tokens, each row flattened as above and
    padded at its end to ``max_length`` (a fixed shape, the same for every batch). transformers finds
    the sequences per row (``find_packed_sequence_indices`` works on every row of a batch), so rows
    do not attend to each other either. The padding gets its own position ids from 0 and labels -100:
    causal attention keeps real tokens from seeing it and the loss does not score it. A sequence
    longer than ``max_length`` is truncated to it (set ``max_length`` of the data at most this long
    to lose nothing).
    """

    def __init__(self, max_length: int | None = None, pad_token_id: int = 0) -> None:
        from transformers import DataCollatorWithFlattening

        if max_length is not None and max_length < 2:
            raise ConfigError("max_length", f"must be >= 2, got {max_length}", "use the row length in tokens, e.g. 512")
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if self.max_length is None:
            return self._pack(features)
        rows = [self._pad(self._pack(group)) for group in self._bins(features)]
        batch = {key: torch.cat([row[key] for row in rows]) for key in rows[0] if key != "use_cache"}
        return {**batch, "use_cache": False}

    def _pack(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [{k: v for k, v in f.items() if k in ("input_ids", "labels")} for f in features]
        batch = {**self._flatten(rows, return_tensors="pt"), "use_cache": False}
        if "token_type_ids" in features[0]:  # GPT-2 embeds them: keep them to stay equal to the padded batch
            batch["token_type_ids"] = torch.tensor([[t for f in features for t in f["token_type_ids"]]])
        return batch

    def _bins(self, features: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """First-fit decreasing: longest first, each into the first row with room (truncated to a row)."""
        limit = self.max_length
        assert limit is not None
        cut = [{k: list(v)[:limit] for k, v in f.items() if k in ("input_ids", "labels", "token_type_ids")}
               for f in features]
        bins: list[list[dict[str, Any]]] = []
        room: list[int] = []
        for f in sorted(cut, key=lambda f: len(f["input_ids"]), reverse=True):
            size = len(f["input_ids"])
            slot = next((i for i, free in enumerate(room) if free >= size), None)
            if slot is None:
                bins.append([])
                room.append(limit)
                slot = len(bins) - 1
            bins[slot].append(f)
            room[slot] -= size
        return bins

    def _pad(self, row: dict[str, Any]) -> dict[str, Any]:
        """Pad one packed row at its end to ``max_length``: pad ids, fresh positions, labels -100."""
        missing = self.max_length - row["input_ids"].shape[1]
        fill = {"input_ids": torch.full((1, missing), self.pad_token_id), "labels": torch.full((1, missing), -100),
                "position_ids": torch.arange(missing).unsqueeze(0), "token_type_ids": torch.zeros(1, missing)}
        return {k: torch.cat([v, fill[k].to(v.dtype)], dim=1) if k in fill else v for k, v in row.items()}


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


def check_collator_settings(
    task: str, collator: str, text_columns: list[str], tag_column: str | None, packing_length: int | None = None
) -> None:
    """Refuse combinations that would silently produce batches the model cannot use."""
    if packing_length is not None and collator != "packed":
        raise ConfigError(
            "data.packing_length", f"needs collator packed, got {collator}",
            "set data.collator to packed, or leave packing_length unset",
        )
    if packing_length is not None and packing_length < 2:
        raise ConfigError(
            "data.packing_length", f"must be >= 2, got {packing_length}", "use the row length in tokens, e.g. 512"
        )
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
    packing_length: int | None = None,
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
        return PackedCollator(packing_length, tokenizer.pad_token_id or 0)
    return build_collator(task, tokenizer, mlm_probability)
