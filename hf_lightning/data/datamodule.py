"""``HFDataModule``: Hugging Face datasets, tokenised and batched for any task.

The properties ``num_labels``, ``id2label``, ``vocab_size`` and ``pad_token_id`` exist right after
``__init__`` so that LightningCLI can link them into the model (``link_arguments``): the user types
the tokenizer and labels once. The module composes the package's parts: ``loading`` (raw data,
tokenizer, held-out split), ``labels``, ``tokenization``, ``collators`` and ``loaders``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from hf_lightning.data.collators import CollatorName, check_collator_settings, datamodule_collator
from hf_lightning.data.labels import has_labels, infer_names
from hf_lightning.data.loaders import build_dataloader
from hf_lightning.data.loading import (
    DEMO_DATASET,
    DEMO_TOKENIZER,
    check_validation_size,
    hold_out_validation,
    load_raw,
    load_tokenizer,
)
from hf_lightning.data.tokenization import TaskTokenizer
from hf_lightning.errors import ConfigError
from hf_lightning.tasks import TaskName, task_spec

__all__ = ["HFDataModule"]


class HFDataModule(pl.LightningDataModule):
    """Load, tokenise and batch a text dataset for one task.

    Args:
        dataset: a Hub dataset name, a builder name ("csv", "json", "parquet", "text") with
            ``data_files``, or ``demo:sentiment`` (the offline quickstart data, generated on first use).
        dataset_config: the Hub dataset's configuration name (e.g. "sst2" for "glue").
        data_files: local files by split, e.g. ``{"train": "train.csv", "validation": "val.csv"}``.
        tokenizer: a Hub id or local directory, or ``demo:tokenizer``.
        task: what the batches are for; picks tokenisation and the collator.
        text_column: the text column, or two columns for sentence pairs (``two_view``: the two views).
        label_column: the label column (classification); strings are mapped to ids.
        target_column: the target text column (seq2seq).
        label_names: class names in id order; default: from the dataset features or sorted labels.
        max_length: truncation length for inputs.
        max_target_length: truncation length for seq2seq targets.
        batch_size: training batch size per device.
        eval_batch_size: evaluation batch size per device (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        group_by_length: batch similar lengths together to save padding.
        shuffle: shuffle training data (each epoch in a new, reproducible order).
        seed: seed for the data order, the held-out validation rows and ``two_view`` word dropout.
        mlm_probability: masking probability for masked LM.
        train_split: split name used for training.
        validation_split: split name used for validation (skipped if absent or null).
        test_split: split name used for testing (skipped if absent or null; GLUE hides its test
            labels as -1, so its configs set null).
        validation_size: when the data has no validation split (a single local file), hold out this
            share (below 1) or number (1 or more) of the training rows for validation.
        max_train_samples: keep only the first N training rows (quick runs).
        max_eval_samples: keep only the first N validation/test rows.
        collator: ``auto``: tokenise up front and pad with the task's HF collator. ``two_view``:
            keep the raw text and let ``TwoViewCollator`` tokenise two views per row at batch time
            (``ContrastiveLoss``); a second text column is the second view, else view two is view
            one with words dropped. Labels are not read: the pairing is the supervision.
            ``packed`` (causal-lm): padding-free packing, each batch one row with position ids
            restarting per sequence and no attention across sequences (``PackedCollator``).
        packing_length: ``packed`` only: pack each batch into rows of at most this many tokens
            (first-fit decreasing), each padded at its end to this length, instead of one row.
            A longer sequence is truncated to it.
        word_dropout: ``two_view`` only: share of words dropped to make view two from view one.
        tag_column: per-word tags for a multi-task model (``MultiTaskModel``): ``text_column`` then
            holds a list of words, ``label_column`` the sentence label (batch key ``labels``) and
            this column one tag per word (batch key ``ner_labels``, -100 on unscored tokens).
        tag_names: tag names in id order; default: from the dataset features or sorted tags.
    """

    def __init__(
        self,
        dataset: str = DEMO_DATASET,
        dataset_config: str | None = None,
        data_files: dict[str, str | list[str]] | str | None = None,
        tokenizer: str = DEMO_TOKENIZER,
        task: TaskName = "sequence-classification",
        text_column: str | list[str] = "text",
        label_column: str | None = "label",
        target_column: str | None = None,
        label_names: list[str] | None = None,
        max_length: int = 128,
        max_target_length: int = 128,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        group_by_length: bool = False,
        shuffle: bool = True,
        seed: int = 42,
        mlm_probability: float = 0.15,
        train_split: str = "train",
        validation_split: str | None = "validation",
        test_split: str | None = "test",
        validation_size: float | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        collator: CollatorName = "auto",
        packing_length: int | None = None,
        word_dropout: float = 0.1,
        tag_column: str | None = None,
        tag_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        task_spec(task)
        if batch_size < 1:
            raise ConfigError(
                "data.batch_size", f"must be >= 1, got {batch_size}", "use a positive batch size"
            )
        self.dataset_name = dataset
        self.dataset_config = dataset_config
        self.data_files = data_files
        self.task = task
        self.text_columns = [text_column] if isinstance(text_column, str) else list(text_column)
        self.collator_name = collator
        self.tag_column = tag_column
        check_collator_settings(task, collator, self.text_columns, tag_column, packing_length)
        self.packing_length = packing_length
        labelled = task in {"sequence-classification", "token-classification"} and collator == "auto"
        self.label_column = label_column if labelled else None
        self.target_column = target_column
        self.max_length = max_length
        self.max_target_length = max_target_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.shuffle = shuffle
        self.seed = seed
        self.splits = {"train": train_split, "validation": validation_split, "test": test_split}
        self.validation_size = check_validation_size(validation_size)
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.tokenizer = load_tokenizer(tokenizer)
        if self.tokenizer.pad_token is None:
            # GPT-2 style tokenizers have no pad token; padding with EOS is HF's usual answer.
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.collator = self._build_collator(mlm_probability, word_dropout)
        self._tokenize_rows = TaskTokenizer(self.tokenizer, task, self.text_columns, self.label_column,
                                            target_column, tag_column, max_length, max_target_length)
        self._label_names = list(label_names) if label_names else None
        self._tag_names = list(tag_names) if tag_names else None
        self._tokenized: dict[str, Any] | None = None

    def _build_collator(self, mlm_probability: float, word_dropout: float) -> Callable:
        return datamodule_collator(
            self.collator_name, self.task, self.tokenizer, text_columns=self.text_columns,
            tag_column=self.tag_column, max_length=self.max_length, mlm_probability=mlm_probability,
            word_dropout=word_dropout, seed=self.seed, packing_length=self.packing_length,
        )

    # ------------------------------------------------------------------ linked properties
    @functools.cached_property
    def raw(self) -> Any:
        """The raw DatasetDict (loaded once; local files and the demo set load in milliseconds)."""
        raw = load_raw(self.dataset_name, self.dataset_config, self.data_files)
        return hold_out_validation(raw, self.splits, self.validation_size, self.seed)

    @property
    def label_names(self) -> list[str] | None:
        if self.label_column is None:
            return None
        if self._label_names is None:
            self._label_names = self._infer_names(self.label_column, "data.label_column")
        return self._label_names

    @property
    def tag_names(self) -> list[str] | None:
        """Tag names in id order (``tag_column`` only): size ``num_ner_labels`` of MultiTaskModel by."""
        if self.tag_column is None:
            return None
        if self._tag_names is None:
            self._tag_names = self._infer_names(self.tag_column, "data.tag_column")
        return self._tag_names

    @property
    def num_labels(self) -> int | None:
        names = self.label_names
        return len(names) if names is not None else None

    @property
    def id2label(self) -> dict[int, str] | None:
        names = self.label_names
        return dict(enumerate(names)) if names is not None else None

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int | None:
        return self.tokenizer.pad_token_id

    # ------------------------------------------------------------------ loading
    def _split(self, which: str) -> Any | None:
        name = self.splits[which]
        return self.raw[name] if name is not None and name in self.raw else None

    def _train_split(self) -> Any:
        train = self._split("train")
        if train is None:
            raise ConfigError(
                "data.train_split",
                f"split {self.splits['train']!r} not found",
                f"use one of {list(self.raw)}",
            )
        self._check_columns(train)
        return train

    def _infer_names(self, column: str, field: str) -> list[str]:
        return infer_names(self._train_split(), column, field)

    def _check_columns(self, split: Any) -> None:
        needed = {c: "data.text_column" for c in self.text_columns}
        if self.label_column:
            needed[self.label_column] = "data.label_column"
        if self.tag_column:
            needed[self.tag_column] = "data.tag_column"
        if self.task == "seq2seq-lm" and self.target_column:
            needed[self.target_column] = "data.target_column"
        for column, field in needed.items():
            if column not in split.column_names:
                raise ConfigError(field, f"column {column!r} not found", f"use one of {split.column_names}")
        if len(split) == 0:
            raise ConfigError(
                "data.dataset", "the training split is empty", "point to data with at least one row"
            )

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the attached trainer, which is not the data's state.

        ``datasets`` fingerprints ``split.map(self._tokenize)`` by pickling ``self``: with the trainer
        (and through it the model and optimizer) in it, that took 1.7 s of the quickstart's setup.
        """
        state = dict(self.__dict__)
        state["trainer"] = None
        return state

    # ------------------------------------------------------------------ tokenisation
    def setup(self, stage: str | None = None) -> None:
        if self._tokenized is not None:
            return
        self._train_split()
        if self.task == "seq2seq-lm" and not self.target_column:
            raise ConfigError(
                "data.target_column", "seq2seq needs a target text column", "set target_column, e.g. summary"
            )
        tokenized = {}
        for which in ("train", "validation", "test"):
            split = self._split(which)
            if split is None:
                continue
            limit = self.max_train_samples if which == "train" else self.max_eval_samples
            if limit is not None:
                split = split.select(range(min(limit, len(split))))
            if len(split) == 0:
                raise ConfigError(
                    f"data.{which}_split",
                    f"split {self.splits[which]!r} is empty",
                    "provide rows or remove the split",
                )
            labelled = self._has_labels(split)
            if not labelled and which != "test":
                raise ConfigError(
                    f"data.{which}_split", f"split {self.splits[which]!r} has no labels (no values in its label column)",
                    "label it; only the test split (test/predict) may come without labels",
                )
            if self.collator_name == "two_view":
                # TwoViewCollator tokenises at batch time (view two is made from the raw words).
                tokenized[which] = split.select_columns(self.text_columns)
            else:
                tokenized[which] = split.map(self._tokenize, batched=True, remove_columns=split.column_names,
                                             fn_kwargs={"labelled": labelled})
        self._tokenized = tokenized

    def _has_labels(self, split: Any) -> bool:
        return has_labels(split, self.target_column if self.task == "seq2seq-lm" else self.label_column)

    def _tokenize(self, batch: dict[str, list[Any]], labelled: bool = True) -> dict[str, Any]:
        # Names are read only for labelled rows: an unlabelled test split never triggers label inference.
        if not labelled:
            return self._tokenize_rows(batch, labelled)
        return self._tokenize_rows(batch, labelled, self.label_names, self.tag_names)

    # ------------------------------------------------------------------ loaders
    def dataset(self, which: str) -> Any | None:
        """The tokenised split ("train", "validation", "test"), or None if the data has none.

        With ``collator: two_view`` the rows are still raw text (tokenised per batch).
        """
        self.setup()
        assert self._tokenized is not None
        return self._tokenized.get(which)

    def _lengths(self) -> list[int] | None:
        if not self.group_by_length:
            return None
        train = self.dataset("train")
        if self.collator_name == "two_view":
            return [
                len(str(text).split()) for text in train[self.text_columns[0]]
            ]  # words: close enough to sort by
        return [len(ids) for ids in train["input_ids"]]

    def train_dataloader(self) -> DataLoader:
        return build_dataloader(
            self.dataset("train"),
            self.batch_size,
            self.collator,
            train=True,
            seed=self.seed,
            shuffle=self.shuffle,
            num_workers=self.num_workers,
            group_by_length=self.group_by_length,
            lengths=self._lengths(),
        )

    def _eval_loader(self, which: str) -> DataLoader | list:
        split = self.dataset(which)
        if split is None and which == "test":  # asked for explicitly (test/predict): never an empty answer
            raise ConfigError(
                "data.test_split", f"split {self.splits['test']!r} not found (splits: {list(self.raw)})",
                "add a test file (data_files: {test: ...}) or set test_split to one of the splits",
            )
        if split is None:
            return []
        return build_dataloader(
            split, self.eval_batch_size, self.collator, train=False, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")
