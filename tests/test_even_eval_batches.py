"""Even evaluation batch counts across ranks: the repeated rows are cut before any loss or metric.

The multi-process behaviour (no FSDP2 hang, same metrics as one process) is in test_distributed.py;
this checks the trimming rule itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from hf_lightning.evaluation import PaddingTrimmer


def _batch(rows: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.arange(rows * 3).reshape(rows, 3), "labels": torch.arange(rows),
            "scalar": torch.tensor(1.0)}


def test_trimmer_keeps_real_rows_cuts_repeats_and_flags_pure_padding() -> None:
    trim = PaddingTrimmer(SimpleNamespace(sampler=SimpleNamespace(real_count=5)))
    assert trim(_batch(2))["labels"].tolist() == [0, 1]
    assert trim(_batch(2))["labels"].tolist() == [0, 1]
    cut = trim(_batch(2))  # one real row, one repeated
    assert cut["labels"].tolist() == [0] and cut["input_ids"].shape == (1, 3) and cut["scalar"].dim() == 0
    assert trim(_batch(2)) is None  # only repeated rows: forwarded by the caller, never scored


def test_loaders_without_the_shard_sampler_pass_through() -> None:
    trim = PaddingTrimmer(SimpleNamespace(sampler=None))
    batch = _batch(3)
    assert trim(batch) is batch
