"""HFDataModule: Hugging Face datasets, tokenised and batched for any task.

The properties ``num_labels``, ``id2label``, ``vocab_size`` and ``pad_token_id`` exist right after
``__init__`` so that LightningCLI can link them into the model (``link_arguments``): the user types
the tokenizer and labels once. Training batches come from ``ResumableSampler`` so a resumed run sees
exactly the data the uninterrupted one would have seen.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from hf_lightning.errors import ConfigError
from hf_lightning.tasks import TaskName, task_spec

__all__ = [
    "FILE_BUILDERS",
    "CollatorName",
    "HFDataModule",
    "TagPaddingCollator",
    "build_collator",
    "build_dataloader",
    "load_tokenizer",
]

FILE_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
DEMO_DATASET = "demo:sentiment"
DEMO_TOKENIZER = "demo:tokenizer"
TAGS_KEY = "ner_labels"  # the batch key MultiTaskModel reads its token tags from

CollatorName = Literal["auto", "two_view"]
"""``auto``: the task's HF collator on pre-tokenised rows. ``two_view``: raw text rows batched by
``TwoViewCollator`` into two views for ``ContrastiveLoss``."""


def load_tokenizer(name: str, field: str = "data.tokenizer") -> Any:
    """Load a tokenizer from a local dir or the Hub (fail fast offline); ``demo:tokenizer`` is built in."""
    from transformers import AutoTokenizer

    from hf_lightning.models import resolve_local_or_hub

    if name == DEMO_TOKENIZER:
        from hf_lightning.demo.tokenizer import ensure_demo_assets

        name = ensure_demo_assets()["tokenizer"]
    source = (
        resolve_local_or_hub(name, field)
        if not Path(name).expanduser().is_dir()
        else str(Path(name).expanduser())
    )
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(
            field,
            f"could not load a tokenizer from {name!r} ({str(err).splitlines()[0][:120]})",
            "point to a folder written by tokenizer.save_pretrained",
        ) from None


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
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


class _EvalShardSampler(torch.utils.data.Sampler[int]):
    """Sequential evaluation order, split across ranks by stride (rank r: rows r, r+W, ...).

    Every rank gets the same number of rows, the short ones repeating their last row: a sharded model
    (FSDP, ZeRO-3) all-gathers weights in each forward, so a rank that ran out of batches early would
    leave the others waiting forever. ``real_count`` says how many rows are real;
    ``evaluation.PaddingTrimmer`` cuts the repeats before they reach a loss or a metric.
    """

    def __init__(self, n: int) -> None:
        self.n = n

    def _rank(self) -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    @property
    def real_count(self) -> int:
        rank, world = self._rank()
        return len(range(rank, self.n, world))

    def __iter__(self):
        rank, world = self._rank()
        rows = list(range(rank, self.n, world))
        if world > 1 and self.n > 0:
            rows += [rows[-1] if rows else 0] * (math.ceil(self.n / world) - len(rows))
        return iter(rows)

    def __len__(self) -> int:
        rank, world = self._rank()
        return math.ceil(self.n / world) if world > 1 else self.n


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
        self._check_modes()
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
        self.validation_size = _check_validation_size(validation_size)
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.tokenizer = load_tokenizer(tokenizer)
        if self.tokenizer.pad_token is None:
            # GPT-2 style tokenizers have no pad token; padding with EOS is HF's usual answer.
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.collator = self._build_collator(mlm_probability, word_dropout)
        self._label_names = list(label_names) if label_names else None
        self._tag_names = list(tag_names) if tag_names else None
        self._tokenized: dict[str, Any] | None = None

    def _check_modes(self) -> None:
        """Refuse combinations that would silently produce batches the model cannot use."""
        if self.collator_name == "two_view" and self.task in {"token-classification", "seq2seq-lm"}:
            raise ConfigError(
                "data.collator",
                f"two_view cannot feed a {self.task} model",
                "use task sequence-classification, masked-lm or causal-lm (an encoder or decoder)",
            )
        if self.collator_name == "two_view" and len(self.text_columns) > 2:
            raise ConfigError(
                "data.text_column",
                "two_view takes one or two text columns",
                "give the text column, or the two view columns",
            )
        if self.tag_column is not None and (
            self.task != "sequence-classification" or self.collator_name != "auto"
        ):
            raise ConfigError(
                "data.tag_column",
                "needs task sequence-classification and collator auto",
                "use it for MultiTaskModel (sentence label + word tags) only",
            )

    def _build_collator(self, mlm_probability: float, word_dropout: float) -> Callable:
        if self.collator_name == "two_view":
            from hf_lightning.losses.contrastive import TwoViewCollator

            second = self.text_columns[1] if len(self.text_columns) > 1 else "text_2"
            try:
                return TwoViewCollator(
                    self.tokenizer,
                    self.max_length,
                    text_field=self.text_columns[0],
                    second_text_field=second,
                    word_dropout=word_dropout,
                    seed=self.seed,
                )
            except ConfigError as err:
                raise ConfigError(f"data.{err.field}", err.problem, err.fix) from None
        if self.tag_column is not None:
            return TagPaddingCollator(self.tokenizer)
        return build_collator(self.task, self.tokenizer, mlm_probability)

    # ------------------------------------------------------------------ linked properties
    @functools.cached_property
    def raw(self) -> Any:
        """The raw DatasetDict (loaded once; local files and the demo set load in milliseconds)."""
        return self._hold_out_validation(self._load_raw())

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
                        raise ConfigError(
                            f"data.data_files.{split}", f"file {path!r} does not exist", "check the path"
                        )
                    if Path(path).expanduser().stat().st_size == 0:
                        # datasets' json builder raises a bare StopIteration on an empty file.
                        raise ConfigError(
                            f"data.data_files.{split}",
                            f"file {path!r} is empty",
                            "point to a file with at least one row",
                        )
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
        builder_kwargs: dict[str, Any] = {}
        if files and name == "csv" and _suffixes(files) == {".tsv"}:
            builder_kwargs["delimiter"] = "\t"  # the csv builder splits on commas unless told
        try:
            raw = datasets.load_dataset(name, self.dataset_config, data_files=files, **builder_kwargs)
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            raise _load_error(name, err) from None
        return raw

    def _hold_out_validation(self, raw: Any) -> Any:
        """Carve ``validation_size`` rows out of the training split (seeded), if asked."""
        if self.validation_size is None:
            return raw
        train_name, val_name = self.splits["train"], self.splits["validation"]
        if val_name is None:
            raise ConfigError(
                "data.validation_size",
                "is set but validation_split is null",
                "set validation_split (e.g. validation) or remove validation_size",
            )
        if val_name in raw:
            raise ConfigError(
                "data.validation_size",
                f"the data already has a {val_name!r} split",
                "remove validation_size, or point validation_split at a name the data lacks",
            )
        if train_name not in raw:
            raise ConfigError(
                "data.train_split", f"split {train_name!r} not found", f"use one of {list(raw)}"
            )
        try:
            parts = raw[train_name].train_test_split(
                test_size=self.validation_size, seed=self.seed, shuffle=True
            )
        except ValueError as err:
            raise ConfigError(
                "data.validation_size",
                f"cannot hold out {self.validation_size} rows ({str(err).splitlines()[0][:120]})",
                "use a smaller share or more data",
            ) from None
        raw[train_name], raw[val_name] = parts["train"], parts["test"]
        return raw

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
        """Class names of ``column`` in id order: the ClassLabel's names, sorted strings, or 0..max."""
        import datasets

        train = self._train_split()
        feature = train.features[column]
        inner = getattr(feature, "feature", feature)  # per-word labels: Sequence(ClassLabel)
        if isinstance(inner, datasets.ClassLabel):
            return list(inner.names)
        values = train[column]
        flat = [v for row in values for v in row] if values and isinstance(values[0], list) else list(values)
        flat = [v for v in flat if v is not None and v != -100]
        if not flat:
            raise ConfigError(field, f"column {column!r} has no labels", "check the data")
        if all(isinstance(v, str) for v in flat):
            return sorted(set(flat))
        if any(isinstance(v, float) and not float(v).is_integer() for v in flat):
            raise ConfigError(
                field, f"column {column!r} holds fractional values ({flat[0]!r}, ...): a regression target",
                "HFDataModule trains classifiers; map the values to classes, or train regression through the "
                "Trainer facade (a model with num_labels=1)",
            )
        # Integer classes are the sorted distinct values (as HF's run_glue): 1..5 stars are 5 classes
        # and -1/+1 two; a 0..K-1 column keeps its ids.
        return [str(v) for v in sorted({int(v) for v in flat})]

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

    def _label_ids(
        self, values: list[Any], names: list[str] | None = None, field: str = "data.label_column"
    ) -> list[int]:
        names = (self.label_names or []) if names is None else names
        index = {n: i for i, n in enumerate(names)}
        out = []
        for v in values:
            if v is None:
                raise ConfigError(field, "a row has no label (None)", "label every row of the split, or drop it")
            # An integer is its class's name when one matches (inferred names, or label_names: ["-1", "1"]),
            # else a position (label_names: [neg, pos] over 0/1).
            label = index.get(v) if isinstance(v, str) else index.get(str(int(v)), int(v))
            if label is None or not 0 <= label < len(names):
                raise ConfigError(
                    field,
                    f"label {v!r} is outside the {len(names)} known labels {names[:10]}",
                    "fix the data or pass label_names listing every class",
                )
            out.append(label)
        return out

    def _has_labels(self, split: Any) -> bool:
        """False for a split without the label column, or whose labels are all missing (files merged by
        ``datasets`` get the column filled with None): such a split can be predicted on, not scored."""
        column = self.target_column if self.task == "seq2seq-lm" else self.label_column
        if column is None:
            return True
        if column not in split.column_names:
            return False
        return any(v is not None for v in split[column])

    def _tokenize(self, batch: dict[str, list[Any]], labelled: bool = True) -> dict[str, Any]:
        texts = [batch[c] for c in self.text_columns]
        if self.task == "token-classification":
            enc = self.tokenizer(
                texts[0], truncation=True, max_length=self.max_length, is_split_into_words=True
            )
            if not labelled:
                return enc
            enc["labels"] = [
                self._align_word_labels(enc.word_ids(i), row)
                for i, row in enumerate(batch[self.label_column])
            ]
            return enc
        if self.tag_column is not None:
            enc = self.tokenizer(
                texts[0], truncation=True, max_length=self.max_length, is_split_into_words=True
            )
            if not labelled:
                return enc
            enc["labels"] = self._label_ids(batch[self.label_column])
            enc[TAGS_KEY] = [
                self._align_word_labels(enc.word_ids(i), row, self.tag_names, "data.tag_column")
                for i, row in enumerate(batch[self.tag_column])
            ]
            return enc
        if self.task == "seq2seq-lm":
            if not labelled:
                return self.tokenizer(texts[0], truncation=True, max_length=self.max_length)
            return self._seq2seq(texts[0], batch[self.target_column])
        enc = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
        if self.label_column is not None and labelled:
            enc["labels"] = self._label_ids(batch[self.label_column])
        return enc

    def _seq2seq(self, sources: list[str], targets: list[str]) -> dict[str, Any]:
        enc = self.tokenizer(sources, truncation=True, max_length=self.max_length)
        enc["labels"] = self.tokenizer(
            text_target=targets, truncation=True, max_length=self.max_target_length
        )["input_ids"]
        return enc

    def _align_word_labels(
        self,
        word_ids: list[int | None],
        word_labels: list[Any],
        names: list[str] | None = None,
        field: str = "data.label_column",
    ) -> list[int]:
        """One label per token: the word's label on its first sub-token, -100 elsewhere (HF's recipe)."""
        ids = self._label_ids(word_labels, names, field)
        out, previous = [], None
        for word in word_ids:
            out.append(-100 if word is None or word == previous else ids[word])
            previous = word
        return out

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


def _check_validation_size(size: float | None) -> float | int | None:
    """A share in (0, 1) stays a float; 1 or more must be a whole number of rows."""
    if size is None:
        return None
    if size <= 0 or (size >= 1 and size != int(size)):
        raise ConfigError(
            "data.validation_size",
            f"must be a share in (0, 1) or a whole number of rows, got {size}",
            "use e.g. 0.1 or 20",
        )
    return size if size < 1 else int(size)


def _load_error(name: str, err: Exception) -> ConfigError:
    """One line for a failed ``load_dataset``; a header-only csv gets a message that says so."""
    if "corresponds to no data" in str(err):
        return ConfigError(
            "data.dataset",
            "the data has no rows (a csv with only a header?)",
            "point to data with at least one row",
        )
    return ConfigError(
        "data.dataset",
        f"could not load {name!r} ({str(err).splitlines()[0][:160]})",
        "check the dataset name, config name and data_files",
    )


def _suffixes(files: dict[str, str | list[str]]) -> set[str]:
    """The lower-case file extensions across all splits of ``data_files``."""
    paths = [p for v in files.values() for p in ([v] if isinstance(v, str) else v)]
    return {Path(p).suffix.lower() for p in paths}


def _hub_offline() -> bool:
    from hf_lightning.models import hub_offline

    return hub_offline()
