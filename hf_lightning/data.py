"""HFDataModule: Hugging Face datasets, tokenised and batched for any task.

The properties ``num_labels``, ``id2label``, ``vocab_size`` and ``pad_token_id`` exist right after
``__init__`` so that LightningCLI can link them into the model (``link_arguments``): the user types
the tokenizer and labels once. Training batches come from ``ResumableSampler`` so a resumed run sees
exactly the data the uninterrupted one would have seen.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from hf_lightning.errors import ConfigError
from hf_lightning.tasks import TaskName, task_spec

__all__ = ["FILE_BUILDERS", "HFDataModule", "build_collator", "build_dataloader", "load_tokenizer"]

FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
DEMO_DATASET = "demo:sentiment"
DEMO_TOKENIZER = "demo:tokenizer"


def load_tokenizer(name: str, field: str = "data.tokenizer") -> Any:
    """Load a tokenizer from a local dir or the Hub (fail fast offline); ``demo:tokenizer`` is built in."""
    from transformers import AutoTokenizer

    from hf_lightning.models import resolve_local_or_hub

    if name == DEMO_TOKENIZER:
        from hf_lightning.demo.tokenizer import ensure_demo_assets

        name = ensure_demo_assets()["tokenizer"]
    source = resolve_local_or_hub(name, field) if not Path(name).expanduser().is_dir() else str(Path(name).expanduser())
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(field, f"could not load a tokenizer from {name!r} ({str(err).splitlines()[0][:120]})",
                          "point to a folder written by tokenizer.save_pretrained") from None


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


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable | None,
    *,
    train: bool,
    seed: int = 42,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    group_by_length: bool = False,
    lengths: list[int] | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """One DataLoader recipe for both front doors.

    Training loaders draw their order from a ``ResumableSampler`` (seed + epoch, split by rank) and
    own a generator, so nothing here consumes the global RNG and a resume can skip consumed samples.
    """
    from hf_lightning.sampler import ResumableSampler

    sampler = None
    if train:
        sampler = ResumableSampler(
            len(dataset),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            lengths=lengths,
            group_by_length=group_by_length,
            batch_size=batch_size,
        )
    else:
        sampler = _EvalShardSampler(len(dataset))
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=drop_last and train,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


class _EvalShardSampler(torch.utils.data.Sampler[int]):
    """Sequential evaluation order, split across ranks without padding (no duplicated samples)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def _rank(self) -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __iter__(self):
        rank, world = self._rank()
        return iter(range(rank, self.n, world))

    def __len__(self) -> int:
        rank, world = self._rank()
        return len(range(rank, self.n, world))


class HFDataModule(pl.LightningDataModule):
    """Load, tokenise and batch a text dataset for one task.

    Args:
        dataset: a Hub dataset name, a builder name ("csv", "json", "parquet", "text") with
            ``data_files``, or ``demo:sentiment`` (the offline quickstart data, generated on first use).
        dataset_config: the Hub dataset's configuration name (e.g. "sst2" for "glue").
        data_files: local files by split, e.g. ``{"train": "train.csv", "validation": "val.csv"}``.
        tokenizer: a Hub id or local directory, or ``demo:tokenizer``.
        task: what the batches are for; picks tokenisation and the collator.
        text_column: the text column, or two columns for sentence pairs.
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
        seed: seed for the data order.
        mlm_probability: masking probability for masked LM.
        train_split: split name used for training.
        validation_split: split name used for validation (skipped if absent).
        test_split: split name used for testing (skipped if absent).
        max_train_samples: keep only the first N training rows (quick runs).
        max_eval_samples: keep only the first N validation/test rows.
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
        validation_split: str = "validation",
        test_split: str = "test",
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
    ) -> None:
        super().__init__()
        task_spec(task)
        if batch_size < 1:
            raise ConfigError("data.batch_size", f"must be >= 1, got {batch_size}", "use a positive batch size")
        self.dataset_name = dataset
        self.dataset_config = dataset_config
        self.data_files = data_files
        self.task = task
        self.text_columns = [text_column] if isinstance(text_column, str) else list(text_column)
        self.label_column = label_column if task in {"sequence-classification", "token-classification"} else None
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
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.tokenizer = load_tokenizer(tokenizer)
        if self.tokenizer.pad_token is None:
            # GPT-2 style tokenizers have no pad token; padding with EOS is HF's usual answer.
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.collator = build_collator(task, self.tokenizer, mlm_probability)
        self._label_names = list(label_names) if label_names else None
        self._tokenized: dict[str, Any] | None = None

    # ------------------------------------------------------------------ linked properties
    @functools.cached_property
    def raw(self) -> Any:
        """The raw DatasetDict (loaded once; local files and the demo set load in milliseconds)."""
        return self._load_raw()

    @property
    def label_names(self) -> list[str] | None:
        if self.label_column is None:
            return None
        if self._label_names is None:
            self._label_names = self._infer_label_names()
        return self._label_names

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
    def _load_raw(self) -> Any:
        import datasets

        name, files = self.dataset_name, self.data_files
        if name == DEMO_DATASET:
            from hf_lightning.demo.tokenizer import ensure_demo_assets

            assets = ensure_demo_assets()
            name, files = "csv", {s: assets[s] for s in ("train", "validation", "test")}
        if isinstance(files, str):
            files = {"train": files}
        if files:
            for split, paths in files.items():
                for path in [paths] if isinstance(paths, str) else paths:
                    suffix = Path(path).suffix.lower()
                    if suffix not in FILE_BUILDERS:
                        raise ConfigError(
                            f"data.data_files.{split}",
                            f"unsupported file format {suffix or '(none)'!r} for {path!r}",
                            f"use one of {', '.join(sorted(FILE_BUILDERS))}",
                        )
                    if not Path(path).expanduser().is_file():
                        raise ConfigError(f"data.data_files.{split}", f"file {path!r} does not exist", "check the path")
            if name in (None, "", "auto") or name not in {"csv", "json", "parquet", "text"}:
                first = next(iter(files.values()))
                first = first if isinstance(first, str) else first[0]
                name = FILE_BUILDERS[Path(first).suffix.lower()]
        elif _hub_offline() and not Path(name).expanduser().exists():
            raise ConfigError(
                "data.dataset",
                f"{name!r} would be downloaded from the Hub, which is offline here",
                "save it locally and pass data_files (csv/json/parquet), or unset HF_HUB_OFFLINE",
            )
        try:
            raw = datasets.load_dataset(name, self.dataset_config, data_files=files)
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            raise ConfigError("data.dataset", f"could not load {name!r} ({str(err).splitlines()[0][:160]})",
                              "check the dataset name, config name and data_files") from None
        return raw

    def _split(self, which: str) -> Any | None:
        name = self.splits[which]
        return self.raw[name] if name in self.raw else None

    def _infer_label_names(self) -> list[str]:
        import datasets

        train = self._split("train")
        if train is None:
            raise ConfigError("data.train_split", f"split {self.splits['train']!r} not found", f"use one of {list(self.raw)}")
        self._check_columns(train)
        feature = train.features[self.label_column]
        inner = getattr(feature, "feature", feature)  # token classification: Sequence(ClassLabel)
        if isinstance(inner, datasets.ClassLabel):
            return list(inner.names)
        values = train[self.label_column]
        flat = [v for row in values for v in row] if values and isinstance(values[0], list) else list(values)
        flat = [v for v in flat if v is not None and v != -100]
        if not flat:
            raise ConfigError("data.label_column", f"column {self.label_column!r} has no labels", "check the data")
        if all(isinstance(v, str) for v in flat):
            return sorted(set(flat))
        return [str(i) for i in range(int(max(flat)) + 1)]

    def _check_columns(self, split: Any) -> None:
        needed = list(self.text_columns) + ([self.label_column] if self.label_column else [])
        needed += [self.target_column] if self.task == "seq2seq-lm" and self.target_column else []
        for column in needed:
            if column not in split.column_names:
                field = "data.label_column" if column == self.label_column else "data.text_column"
                raise ConfigError(field, f"column {column!r} not found", f"use one of {split.column_names}")
        if len(split) == 0:
            raise ConfigError("data.dataset", "the training split is empty", "point to data with at least one row")

    # ------------------------------------------------------------------ tokenisation
    def setup(self, stage: str | None = None) -> None:
        if self._tokenized is not None:
            return
        train = self._split("train")
        if train is None:
            raise ConfigError("data.train_split", f"split {self.splits['train']!r} not found", f"use one of {list(self.raw)}")
        self._check_columns(train)
        if self.task == "seq2seq-lm" and not self.target_column:
            raise ConfigError("data.target_column", "seq2seq needs a target text column", "set target_column, e.g. summary")
        tokenized = {}
        for which in ("train", "validation", "test"):
            split = self._split(which)
            if split is None:
                continue
            limit = self.max_train_samples if which == "train" else self.max_eval_samples
            if limit is not None:
                split = split.select(range(min(limit, len(split))))
            if len(split) == 0:
                raise ConfigError(f"data.{which}_split", f"split {self.splits[which]!r} is empty", "provide rows or remove the split")
            tokenized[which] = split.map(self._tokenize, batched=True, remove_columns=split.column_names)
        self._tokenized = tokenized

    def _label_ids(self, values: list[Any]) -> list[int]:
        names = self.label_names or []
        index = {n: i for i, n in enumerate(names)}
        out = []
        for v in values:
            label = index.get(v) if isinstance(v, str) else int(v)
            if label is None or not 0 <= label < len(names):
                raise ConfigError(
                    "data.label_column",
                    f"label {v!r} is outside the {len(names)} known labels {names[:10]}",
                    "fix the data or pass label_names listing every class",
                )
            out.append(label)
        return out

    def _tokenize(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [batch[c] for c in self.text_columns]
        if self.task == "token-classification":
            enc = self.tokenizer(texts[0], truncation=True, max_length=self.max_length, is_split_into_words=True)
            enc["labels"] = [self._align_word_labels(enc.word_ids(i), row) for i, row in enumerate(batch[self.label_column])]
            return enc
        if self.task == "seq2seq-lm":
            return self._seq2seq(texts[0], batch[self.target_column])
        enc = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
        if self.label_column is not None:
            enc["labels"] = self._label_ids(batch[self.label_column])
        return enc

    def _seq2seq(self, sources: list[str], targets: list[str]) -> dict[str, Any]:
        enc = self.tokenizer(sources, truncation=True, max_length=self.max_length)
        enc["labels"] = self.tokenizer(text_target=targets, truncation=True, max_length=self.max_target_length)["input_ids"]
        return enc

    def _align_word_labels(self, word_ids: list[int | None], word_labels: list[Any]) -> list[int]:
        ids = self._label_ids(word_labels)
        out, previous = [], None
        for word in word_ids:
            out.append(-100 if word is None or word == previous else ids[word])
            previous = word
        return out

    # ------------------------------------------------------------------ loaders
    def dataset(self, which: str) -> Any | None:
        """The tokenised split ("train", "validation", "test"), or None if the data has none."""
        self.setup()
        assert self._tokenized is not None
        return self._tokenized.get(which)

    def _lengths(self) -> list[int] | None:
        if not self.group_by_length:
            return None
        return [len(ids) for ids in self.dataset("train")["input_ids"]]

    def train_dataloader(self) -> DataLoader:
        return build_dataloader(
            self.dataset("train"), self.batch_size, self.collator, train=True, seed=self.seed,
            shuffle=self.shuffle, num_workers=self.num_workers, group_by_length=self.group_by_length,
            lengths=self._lengths(),
        )

    def _eval_loader(self, which: str) -> DataLoader | list:
        split = self.dataset(which)
        if split is None:
            return []
        return build_dataloader(split, self.eval_batch_size, self.collator, train=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")


def _hub_offline() -> bool:
    from hf_lightning.models import hub_offline

    return hub_offline()
