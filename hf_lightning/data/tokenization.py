"""Tokenisation per task: rows of text (and labels) -> model inputs with ``labels`` as HF's scripts make them.

Sentence classification tokenises one or two text columns; token classification tokenises pre-split
words and aligns word labels to first sub-tokens; ``tag_column`` adds per-word tags (``ner_labels``)
beside a sentence label for ``MultiTaskModel``; seq2seq tokenises targets with ``text_target``.
Unlabelled rows (a test split to predict on) get inputs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hf_lightning.data.labels import align_word_labels, label_ids

__all__ = ["TAGS_KEY", "TaskTokenizer"]

TAGS_KEY = "ner_labels"  # the batch key MultiTaskModel reads its token tags from


@dataclass
class TaskTokenizer:
    """The tokenisation settings of one data module; call it on a batch of rows (``datasets.map``)."""

    tokenizer: Any
    task: str
    text_columns: list[str]
    label_column: str | None
    target_column: str | None
    tag_column: str | None
    max_length: int
    max_target_length: int

    def __call__(
        self,
        batch: dict[str, list[Any]],
        labelled: bool,
        label_names: list[str] | None = None,
        tag_names: list[str] | None = None,
    ) -> dict[str, Any]:
        """Model inputs for ``batch``; with ``labelled``, ``labels`` (and tags) as ids of the given names."""
        texts = [batch[c] for c in self.text_columns]
        names = label_names or []
        if self.task == "token-classification":
            enc = self._words(texts[0])
            if labelled:
                enc["labels"] = self._aligned(enc, batch[self.label_column], names, "data.label_column")
            return enc
        if self.tag_column is not None:
            enc = self._words(texts[0])
            if labelled:
                enc["labels"] = label_ids(batch[self.label_column], names)
                enc[TAGS_KEY] = self._aligned(enc, batch[self.tag_column], tag_names or [], "data.tag_column")
            return enc
        if self.task == "seq2seq-lm":
            if not labelled:
                return self.tokenizer(texts[0], truncation=True, max_length=self.max_length)
            return self._seq2seq(texts[0], batch[self.target_column])
        enc = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
        if self.label_column is not None and labelled:
            enc["labels"] = label_ids(batch[self.label_column], names)
        return enc

    def _words(self, words: list[list[str]]) -> Any:
        return self.tokenizer(words, truncation=True, max_length=self.max_length, is_split_into_words=True)

    @staticmethod
    def _aligned(enc: Any, rows: list[list[Any]], names: list[str], field: str) -> list[list[int]]:
        return [align_word_labels(enc.word_ids(i), row, names, field) for i, row in enumerate(rows)]

    def _seq2seq(self, sources: list[str], targets: list[str]) -> dict[str, Any]:
        enc = self.tokenizer(sources, truncation=True, max_length=self.max_length)
        enc["labels"] = self.tokenizer(
            text_target=targets, truncation=True, max_length=self.max_target_length
        )["input_ids"]
        return enc
