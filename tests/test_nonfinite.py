"""Non-finite losses: kept out of the logs (HF's logging_nan_inf_filter), optionally stop the run,
and never become the best checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_lightning import Trainer, TrainingArguments
from tests.conftest import tiny_bert_classifier


class PoisonedTrainer(Trainer):
    """From optimizer step ``poison_from`` on, every loss is NaN (as after a blow-up)."""

    poison_from = 2

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.state.global_step >= self.poison_from and model.training:
            loss = (loss[0] * float("nan"), loss[1]) if return_outputs else loss * float("nan")
        return loss


def _args(tmp_path: Path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6, learning_rate=1e-3,
                logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                train_sampling_strategy="sequential")
    base.update(kw)
    return TrainingArguments(**base)


def test_nonfinite_losses_are_filtered_from_logs(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = PoisonedTrainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(tmp_path),
                              train_dataset=cls_dataset, processing_class=demo_tokenizer)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    # HF's rule replaces a non-finite loss by the mean of the losses since the last log; logging every
    # step, there are none, so transformers.Trainer reports 0.0 there too.
    assert losses[:2] != [0.0, 0.0] and losses[2:] == [0.0] * 4

    unfiltered = PoisonedTrainer(model=tiny_bert_classifier(len(demo_tokenizer)),
                                 args=_args(tmp_path / "raw", logging_nan_inf_filter=False),
                                 train_dataset=cls_dataset, processing_class=demo_tokenizer)
    unfiltered.train()
    raw = [e["loss"] for e in unfiltered.state.log_history if "loss" in e]
    assert any(math.isnan(x) for x in raw), "with the filter off the NaN is reported"


def test_stop_on_nonfinite_loss(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = PoisonedTrainer(model=tiny_bert_classifier(len(demo_tokenizer)),
                              args=_args(tmp_path, max_steps=20, stop_on_nonfinite_loss=2),
                              train_dataset=cls_dataset, processing_class=demo_tokenizer)
    with pytest.warns(UserWarning, match="stop_on_nonfinite_loss"):
        result = trainer.train()
    assert result.global_step == 4, "steps 3 and 4 were non-finite: stop after the second"
    assert result.metrics.get("stopped_nonfinite") == 1.0


def test_nonfinite_never_becomes_best_checkpoint(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = PoisonedTrainer(
        model=tiny_bert_classifier(len(demo_tokenizer)),
        args=_args(tmp_path, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                   metric_for_best_model="eval_loss", load_best_model_at_end=True, save_total_limit=2),
        train_dataset=cls_dataset, eval_dataset=cls_dataset.select(range(8)), processing_class=demo_tokenizer,
    )
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.name in {"checkpoint-1", "checkpoint-2"}, best
    assert best.is_dir(), "rotation keeps the best checkpoint"
    weights = load_file(best / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), "load_best_model_at_end restored it"
