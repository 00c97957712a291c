"""The facade's ``DataLoader``s: HF's column pruning and length grouping on the resumable loaders of ``data``."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from hf_lightning.data import build_dataloader
from hf_lightning.data.loaders import worker_options
from hf_lightning.errors import ConfigError

__all__ = ["batches_per_epoch", "eval_dataloader", "remove_unused_columns", "train_dataloader"]


def train_dataloader(trainer: Any) -> DataLoader:
    """HF's ``get_train_dataloader``: shuffled (seeded, resumable), sequential or grouped by length."""
    args = trainer.args
    if trainer.train_dataset is None:
        raise ConfigError("train_dataset", "Trainer.train() needs a train_dataset", "pass train_dataset=...")
    _check_not_empty(trainer.train_dataset, "train_dataset")
    if isinstance(trainer.train_dataset, IterableDataset):
        return _iterable_dataloader(trainer, trainer.train_dataset, args.per_device_train_batch_size)
    dataset = trainer._remove_unused_columns(trainer.train_dataset)
    strategy = args.train_sampling_strategy
    if strategy == "batch_rebalance":
        from hf_lightning.args import _warn_once

        _warn_once("no-effect:batch_rebalance", "train_sampling_strategy='batch_rebalance' has no effect on "
                   "hf_lightning: transformers' BatchRebalanceSampler is not wired in; examples are drawn at random "
                   "(use 'group_by_length' to cut padding)")
    return build_dataloader(
        dataset,
        args.per_device_train_batch_size,
        trainer.data_collator,
        train=True,
        seed=args.data_seed if args.data_seed is not None else args.seed,
        shuffle=strategy != "sequential",
        num_workers=args.dataloader_num_workers,
        drop_last=args.dataloader_drop_last,
        group_by_length=strategy == "group_by_length",
        lengths=_lengths(dataset, args.length_column_name) if strategy == "group_by_length" else None,
        **_worker_options(args),
    )


def eval_dataloader(trainer: Any, eval_dataset: str | Dataset | None = None) -> DataLoader:
    """HF's ``get_eval_dataloader``: in order, the trainer's ``eval_dataset`` unless one is passed.

    With ``dataloader_persistent_workers`` the loader of the trainer's own evaluation set (and of each
    named one) is built once and kept, as HF keeps it, so its workers live on between evaluations. A
    dataset passed in gets a loader of its own: transformers would hand back the cached loader of
    another set there.
    """
    args = trainer.args
    key = eval_dataset if isinstance(eval_dataset, str) else "eval" if eval_dataset is None else None
    cached = getattr(trainer, "_eval_dataloaders", None) or {}
    if key is not None and args.dataloader_persistent_workers and key in cached:
        return cached[key]
    loader = _eval_dataloader(trainer, eval_dataset)
    if key is not None and args.dataloader_persistent_workers:
        trainer._eval_dataloaders = {**cached, key: loader}
    return loader


def _eval_dataloader(trainer: Any, eval_dataset: str | Dataset | None) -> DataLoader:
    args = trainer.args
    if isinstance(eval_dataset, str):  # HF: a name looks the set up in a dict eval_dataset
        named = trainer.eval_dataset if isinstance(trainer.eval_dataset, dict) else {}
        if eval_dataset not in named:
            raise ConfigError("eval_dataset", f"there is no evaluation set named {eval_dataset!r}",
                              f"pass one of {sorted(named)} or a dataset" if named else "pass a dataset")
        eval_dataset = named[eval_dataset]
    dataset = eval_dataset if eval_dataset is not None else trainer.eval_dataset
    if dataset is None:
        raise ConfigError("eval_dataset", "evaluation needs an eval_dataset", "pass eval_dataset=... to Trainer")
    _check_not_empty(dataset, "eval_dataset")
    if isinstance(dataset, IterableDataset):
        return _iterable_dataloader(trainer, dataset, args.per_device_eval_batch_size)
    dataset = trainer._remove_unused_columns(dataset)
    return build_dataloader(
        dataset, args.per_device_eval_batch_size, trainer.data_collator, train=False,
        num_workers=args.dataloader_num_workers, drop_last=args.dataloader_drop_last, **_worker_options(args),
    )


def _worker_options(args: Any) -> dict[str, Any]:
    """HF's ``dataloader_*`` options for the loader processes (pinned memory only where a GPU can use it)."""
    return {
        "pin_memory": args.dataloader_pin_memory and torch.cuda.is_available(),
        "persistent_workers": args.dataloader_persistent_workers,
        "prefetch_factor": args.dataloader_prefetch_factor,
        "multiprocessing_context": args.dataloader_multiprocessing_context,
    }


def batches_per_epoch(loader: DataLoader) -> int | None:
    """``len(loader)``, or None for a stream (an ``IterableDataset`` has no length)."""
    try:
        return len(loader)
    except TypeError:
        return None


def _iterable_dataloader(trainer: Any, dataset: IterableDataset, batch_size: int) -> DataLoader:
    """HF's loader for an ``IterableDataset`` (also ``datasets`` streaming): the stream's own order, no sampler.

    As in transformers, unused columns are dropped by the collator (a stream may not know its columns)
    and, with several processes, each rank takes its share of every ``batch_size x world size`` rows
    (transformers' ``IterableDatasetShard``, built when iteration starts: the process group exists only then).
    """
    from transformers.trainer_utils import RemoveColumnsCollator

    args = trainer.args
    collator = trainer.data_collator
    if args.remove_unused_columns:
        collator = RemoveColumnsCollator(collator, _signature_columns(trainer))
    options = _worker_options(args)
    pin_memory = options.pop("pin_memory")
    return DataLoader(
        _RankShard(dataset, batch_size, args.dataloader_drop_last), batch_size=batch_size, collate_fn=collator,
        num_workers=args.dataloader_num_workers, pin_memory=pin_memory,
        **worker_options(args.dataloader_num_workers, **options),
    )


class _RankShard(IterableDataset):
    """This rank's rows of a stream, decided when iteration starts (one process: every row)."""

    def __init__(self, dataset: IterableDataset, batch_size: int, drop_last: bool) -> None:
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # a shuffled datasets stream reshuffles per epoch, as under HF

    def __iter__(self):
        from hf_lightning.data_parallel import data_parallel_world

        world, rank = data_parallel_world()  # tensor-parallel ranks read the same rows
        if world == 1:
            yield from self.dataset
            return
        from transformers.trainer_pt_utils import IterableDatasetShard

        yield from IterableDatasetShard(self.dataset, self.batch_size, self.drop_last,
                                        num_processes=world, process_index=rank)


def _signature_columns(trainer: Any) -> list[str]:
    # As HF: a PEFT model's forward takes **kwargs, so the base model's forward says which columns
    # it uses (GPT-2's token_type_ids, for one, would otherwise be dropped).
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    forward = getattr(model, "forward", model.__call__)
    return [*inspect.signature(forward).parameters, "label", "label_ids", "labels", *trainer.label_names]


def remove_unused_columns(trainer: Any, dataset: Any) -> Any:
    """HF's ``remove_unused_columns``: drop the columns the model's ``forward`` does not take."""
    if not trainer.args.remove_unused_columns or not hasattr(dataset, "column_names"):
        return dataset
    keep = set(_signature_columns(trainer))
    unused = [c for c in dataset.column_names if c not in keep]
    if unused and len(unused) == len(dataset.column_names):
        raise ConfigError(
            "train_dataset",
            f"none of its columns {dataset.column_names} are model inputs",
            "tokenize the dataset first (e.g. dataset.map(tokenizer_fn, batched=True))",
        )
    return dataset.remove_columns(unused) if unused else dataset


def _check_not_empty(dataset: Any, field: str) -> None:
    try:
        n = len(dataset)
    except TypeError:
        return  # iterable datasets have no length
    if n == 0:
        raise ConfigError(field, "is empty", "pass a dataset with at least one example")


def _lengths(dataset: Any, column: str) -> list[int]:
    """Example lengths for ``group_by_length``: the ``length_column_name`` column, else the input ids' lengths."""
    if hasattr(dataset, "column_names") and column in dataset.column_names:
        return list(dataset[column])
    return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
