"""Behaviours a ``transformers.Trainer`` user relies on, each run side by side with transformers.

Every case builds the same model, data and arguments for ``transformers.Trainer`` and for ours and
compares what a script sees: logged learning rates, warnings, returned predictions, loaders.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
import transformers
from transformers.optimization import Adafactor, AdafactorSchedule

import hf_lightning
from tests.conftest import tiny_bert_classifier

BASE = dict(report_to="none", disable_tqdm=True, use_cpu=True, seed=0, per_device_train_batch_size=4,
            per_device_eval_batch_size=4, train_sampling_strategy="sequential")
IMPLEMENTATIONS = {
    "transformers": (transformers.Trainer, transformers.TrainingArguments),
    "hf_lightning": (hf_lightning.Trainer, hf_lightning.TrainingArguments),
}


def _learning_rates(trainer: Any) -> list[float]:
    return [round(e["learning_rate"], 10) for e in trainer.state.log_history if "learning_rate" in e]


def test_greedy_scheduler_is_stepped_with_the_evaluation_metric(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    """``lr_scheduler_type="greedy"`` (transformers' GreedyLR) reads ``metric_for_best_model`` after each evaluation."""
    histories = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), max_steps=6, learning_rate=1e-3, lr_scheduler_type="greedy",
                        lr_scheduler_kwargs={"patience": 0, "factor": 0.5, "threshold": 10.0}, eval_strategy="steps",
                        eval_steps=1, logging_steps=1, **BASE)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                              eval_dataset=cls_dataset.select(range(8)), processing_class=demo_tokenizer)
        trainer.train()
        histories[name] = _learning_rates(trainer)
    assert histories["hf_lightning"] == histories["transformers"]
    assert len(set(histories["transformers"])) > 1, "the evaluations must have changed the learning rate"


def test_adafactor_schedule_reports_the_rate_adafactor_used(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    """``AdafactorSchedule`` reads the rate from the gradients: they must still be there when it steps."""
    histories, weights = {}, {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        model = tiny_bert_classifier(len(demo_tokenizer))
        optimizer = Adafactor(model.parameters(), scale_parameter=True, relative_step=True, warmup_init=True, lr=None)
        args = args_cls(output_dir=str(tmp_path / name), max_steps=4, logging_steps=1, **BASE)
        trainer = trainer_cls(model=model, args=args, train_dataset=cls_dataset, processing_class=demo_tokenizer,
                              optimizers=(optimizer, AdafactorSchedule(optimizer)))
        trainer.train()
        histories[name] = _learning_rates(trainer)
        weights[name] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert histories["hf_lightning"] == pytest.approx(histories["transformers"], rel=1e-6)
    assert all(lr > 0 for lr in histories["transformers"][1:])  # the first step logs the schedule's initial 0
    assert torch.allclose(weights["hf_lightning"], weights["transformers"], atol=1e-6)


def _multi_label_dataset(cls_dataset: datasets.Dataset) -> datasets.Dataset:
    labels = [[float(y), float(i % 3 == 0)] for i, y in enumerate(cls_dataset["label"])]
    return cls_dataset.remove_columns("label").add_column("labels", labels)


def test_label_smoothing_is_turned_off_for_multi_label_models(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    dataset = _multi_label_dataset(cls_dataset)
    losses, caught = {}, {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        model = tiny_bert_classifier(len(demo_tokenizer))
        model.config.problem_type = "multi_label_classification"
        args = args_cls(output_dir=str(tmp_path / name), max_steps=3, label_smoothing_factor=0.1, **BASE)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=demo_tokenizer)
        caught[name] = [str(w.message) for w in record if "multi-label" in str(w.message)]
        losses[name] = trainer.train().training_loss
    assert caught["transformers"] and caught["hf_lightning"] == caught["transformers"]
    assert losses["hf_lightning"] == pytest.approx(losses["transformers"], abs=1e-6)


def test_predict_with_batch_eval_metrics_returns_predictions(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    def compute_metrics(p: Any, compute_result: bool = False) -> dict[str, float]:
        return {"rows": float(len(p.label_ids))}

    outputs = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), batch_eval_metrics=True, **BASE)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args,
                              processing_class=demo_tokenizer, compute_metrics=compute_metrics)
        outputs[name] = trainer.predict(cls_dataset.select(range(10)))
    hf, ours = outputs["transformers"], outputs["hf_lightning"]
    assert hf.predictions.shape == ours.predictions.shape == (10, 2)
    np.testing.assert_allclose(ours.predictions, hf.predictions, atol=1e-5)
    np.testing.assert_array_equal(ours.label_ids, hf.label_ids)
    assert ours.metrics["test_rows"] == hf.metrics["test_rows"]


class _Batches:
    """A train loader that is only iterable and sized: no ``.dataset``, no ``.batch_size``."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def test_get_train_dataloader_override_without_dataset_attributes(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    collator = transformers.DataCollatorWithPadding(demo_tokenizer)
    rows = cls_dataset.remove_columns("text").rename_column("label", "labels")
    batches = [collator([rows[i] for i in range(start, start + 4)]) for start in range(0, 16, 4)]
    results = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        class OwnLoader(trainer_cls):
            def get_train_dataloader(self):
                return _Batches(batches)

        args = args_cls(output_dir=str(tmp_path / name), num_train_epochs=2, logging_steps=1, **BASE)
        trainer = OwnLoader(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=rows,
                            processing_class=demo_tokenizer)
        output = trainer.train()
        results[name] = (trainer.state.global_step, output.training_loss)
    assert results["hf_lightning"][0] == results["transformers"][0] == 8
    assert results["hf_lightning"][1] == pytest.approx(results["transformers"][1], abs=1e-5)


def test_metric_for_best_model_without_evaluation(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    """transformers accepts ``metric_for_best_model`` with ``eval_strategy="no"``: it trains and tracks no best."""
    states = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), max_steps=2, metric_for_best_model="accuracy",
                        eval_strategy="no", **BASE)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                              processing_class=demo_tokenizer)
        trainer.train()
        states[name] = (args.greater_is_better, trainer.state.best_metric, trainer.state.best_model_checkpoint)
    assert states["hf_lightning"] == states["transformers"] == (True, None, None)


def test_persistent_worker_eval_loaders_are_cached(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    """With ``dataloader_persistent_workers`` HF builds each evaluation loader once (its workers live on)."""
    eval_sets = {"a": cls_dataset.select(range(8)), "b": cls_dataset.select(range(8, 12))}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        for persistent in (True, False):
            args = args_cls(output_dir=str(tmp_path / name), dataloader_num_workers=1,
                            dataloader_persistent_workers=persistent, **BASE)
            trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, eval_dataset=eval_sets,
                                  processing_class=demo_tokenizer)
            first = {key: trainer.get_eval_dataloader(key) for key in eval_sets}
            again = {key: trainer.get_eval_dataloader(key) for key in eval_sets}
            assert first["a"] is not first["b"], name
            assert all((first[k] is again[k]) == persistent for k in eval_sets), (name, persistent)
            assert len(first["b"]) == 1
            if persistent:
                metrics = trainer.evaluate()
                assert trainer.get_eval_dataloader("a") is first["a"], name
                assert {"eval_a_loss", "eval_b_loss"} <= set(metrics), name
    # Ours only (transformers 5.25 returns its kept "eval" loader here): a dataset passed in is evaluated itself.
    args = hf_lightning.TrainingArguments(output_dir=str(tmp_path / "own"), dataloader_num_workers=1,
                                          dataloader_persistent_workers=True, **BASE)
    trainer = hf_lightning.Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args,
                                   eval_dataset=eval_sets["a"], processing_class=demo_tokenizer)
    kept = trainer.get_eval_dataloader()
    assert trainer.get_eval_dataloader() is kept
    assert len(trainer.get_eval_dataloader(eval_sets["b"])) == 1 != len(kept)
