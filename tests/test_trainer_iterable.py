"""``IterableDataset`` and ``datasets`` streaming for train, evaluate and predict, beside transformers.Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch.utils.data import IterableDataset

import hf_lightning
from tests.conftest import tiny_bert_classifier

IMPLEMENTATIONS = {
    "transformers": (transformers.Trainer, transformers.TrainingArguments),
    "hf_lightning": (hf_lightning.Trainer, hf_lightning.TrainingArguments),
}
BASE = dict(report_to="none", disable_tqdm=True, use_cpu=True, seed=0, per_device_train_batch_size=4,
            per_device_eval_batch_size=4, learning_rate=1e-2, logging_steps=1, save_strategy="no")


class Rows(IterableDataset):
    """A plain torch stream over tokenised rows (no length, no indexing)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __iter__(self):
        yield from self.rows


def _streams(cls_dataset) -> dict[str, Any]:
    rows = [dict(r) for r in cls_dataset.select(range(16)).remove_columns("text")]
    return {"torch": Rows(rows), "datasets": cls_dataset.select(range(16)).to_iterable_dataset()}


@pytest.mark.parametrize("kind", ["torch", "datasets"])
def test_training_on_a_stream_matches_transformers(tmp_path: Path, cls_dataset, demo_tokenizer, kind: str) -> None:
    losses, evals, predictions = {}, {}, {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        stream = _streams(cls_dataset)[kind]
        args = args_cls(output_dir=str(tmp_path / name), max_steps=6, **BASE)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=stream,
                              processing_class=demo_tokenizer)
        trainer.train()
        losses[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        evals[name] = trainer.evaluate(_streams(cls_dataset)[kind])
        predictions[name] = trainer.predict(_streams(cls_dataset)[kind]).predictions
    assert len(losses["hf_lightning"]) == 6  # 16 rows = 4 batches: the stream is read again for steps 5-6
    assert losses["hf_lightning"] == pytest.approx(losses["transformers"], abs=1e-5)
    assert evals["hf_lightning"]["eval_loss"] == pytest.approx(evals["transformers"]["eval_loss"], abs=1e-5)
    assert predictions["hf_lightning"].shape == predictions["transformers"].shape == (16, 2)
    assert predictions["hf_lightning"] == pytest.approx(predictions["transformers"], abs=1e-5)


def test_a_stream_without_max_steps_is_refused_with_transformers_words(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    args = hf_lightning.TrainingArguments(output_dir=str(tmp_path), **BASE)
    trainer = hf_lightning.Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args,
                                   train_dataset=_streams(cls_dataset)["torch"], processing_class=demo_tokenizer)
    with pytest.raises(ValueError, match="args.max_steps must be set to a positive value if dataloader does not have a length"):
        trainer.train()


def test_unused_columns_of_a_stream_are_dropped_by_the_collator(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    """The ``text`` column is not a model input: transformers drops it in the collator, so do we."""
    stream = cls_dataset.select(range(8)).to_iterable_dataset()  # still has "text"
    args = hf_lightning.TrainingArguments(output_dir=str(tmp_path), max_steps=2, **BASE)
    trainer = hf_lightning.Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=stream,
                                   processing_class=demo_tokenizer)
    assert trainer.train().global_step == 2
    batch = next(iter(trainer.get_train_dataloader()))
    assert "text" not in batch and batch["input_ids"].shape[0] == 4
    assert isinstance(batch["input_ids"], torch.Tensor)
