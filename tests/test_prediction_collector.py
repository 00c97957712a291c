"""The collector behind ``compute_metrics`` holds predictions once, in HF's shapes.

With the evaluation set's size known it writes every batch into host arrays allocated once and hands
out views of them; the arrays must equal what transformers' own ``EvalLoopContainer`` concatenation
gives (structures, -100 padding across batches of different widths, dtypes), for an underestimated and
an overestimated size too. The end-to-end comparisons with ``transformers.Trainer`` are in
``test_trainer_evaluation.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers.trainer_pt_utils import EvalLoopContainer

from hf_lightning.evaluation import eval_rows
from hf_lightning.metrics import PredictionCollector


def _batches() -> list[tuple]:
    """(logits, hidden) tuples and (labels, second label column) of widths 3, 5, 2 and 5: padding grows once."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for rows, width in [(4, 3), (4, 5), (4, 2), (3, 5)]:
        logits = torch.randn(rows, width, 7, generator=generator)
        hidden = torch.randn(rows, width, 2, generator=generator).to(torch.bfloat16)
        labels = torch.randint(0, 7, (rows, width), generator=generator)
        out.append(((logits, hidden), (labels, torch.arange(rows))))
    return out


def _reference(batches: list[tuple]) -> tuple:
    preds, labels = EvalLoopContainer(True, -100), EvalLoopContainer(True, -100)
    for logits, label in batches:
        preds.add(logits)
        labels.add(label)
    return preds.get_arrays(), labels.get_arrays()


def _same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rows", [15, 4, 1000], ids=["exact", "underestimated", "overestimated"])
def test_preallocated_arrays_equal_transformers_concatenation(rows: int) -> None:
    batches = _batches()
    collector = PredictionCollector()
    collector.reset(rows)
    for logits, labels in batches:
        collector.update(logits, labels)
    prediction = collector.eval_prediction()
    expected_preds, expected_labels = _reference(batches)
    _same(prediction.predictions, expected_preds)
    _same(prediction.label_ids, expected_labels)
    assert prediction.predictions[0][0, 3:].tolist() == [[-100.0] * 7] * 2  # first batch padded to width 5


def test_compute_metrics_gets_views_of_one_array_per_output() -> None:
    collector = PredictionCollector()
    collector.reset(15)
    for logits, labels in _batches():
        collector.update(logits, labels)
    first = collector.eval_prediction().predictions[0]
    again = collector.eval_prediction().predictions[0]
    assert not first.flags.owndata and np.shares_memory(first, again)  # views of the host array, not copies
    assert first.base.shape == (15, 5, 7)  # allocated for the whole set, widened once


def test_preprocess_logits_shrinks_what_is_kept() -> None:
    collector = PredictionCollector(preprocess_logits_for_metrics=lambda logits, labels: logits[0].argmax(-1))
    collector.reset(15)
    for logits, labels in _batches():
        collector.update(logits, labels)
    predictions = collector.eval_prediction().predictions
    assert predictions.shape == (15, 5) and predictions.dtype == np.int64
    assert predictions.base.nbytes == 15 * 5 * 8  # only the argmax is held


def test_unknown_size_falls_back_to_transformers_container() -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(6)

    assert eval_rows(DataLoader(Stream(), batch_size=4)) is None
    assert eval_rows(DataLoader(list(range(10)), batch_size=4)) == 10
    batches = _batches()
    collector = PredictionCollector()
    collector.reset(None)
    for logits, labels in batches:
        collector.update(logits, labels)
    _same(collector.eval_prediction().predictions, _reference(batches)[0])


def test_changing_structure_between_batches_is_one_clear_error() -> None:
    collector = PredictionCollector()
    collector.reset(8)
    collector.update(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="changed shape between batches"):
        collector.update(torch.zeros(4, 3, 2), torch.zeros(4))
