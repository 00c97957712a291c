"""DataLoaders for both front doors: resumable training order, even evaluation shards.

Training loaders draw their order from ``ResumableSampler`` (seed + epoch, split by rank) so a resumed
run sees exactly the data the uninterrupted one would have seen; evaluation loaders split rows across
ranks by stride with equal batch counts (see :class:`_EvalShardSampler`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["build_dataloader", "worker_options"]


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
    multiprocessing_context: str | None = None,
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
    kwargs = worker_options(num_workers, persistent_workers, prefetch_factor, multiprocessing_context)
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
        from hf_lightning.data_parallel import data_parallel_world

        world, rank = data_parallel_world()  # tensor-parallel ranks evaluate the same rows
        return rank, world

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


def worker_options(
    num_workers: int,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context: str | None = None,
) -> dict[str, Any]:
    """The ``DataLoader`` keywords that only worker processes take (torch refuses them with ``num_workers=0``)."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        if multiprocessing_context is not None:  # "spawn" / "fork" / "forkserver", as HF passes it
            kwargs["multiprocessing_context"] = multiprocessing_context
    return kwargs
