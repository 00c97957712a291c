"""Corners of transformers.Trainer's contract, each run under both trainers and compared.

Stop flags raised at train/epoch begin, the end-of-training cleanup of ``save_total_limit=1``, and a
``training_step`` override copied from transformers 5 (it reads ``model_accepts_loss_kwargs`` and
``current_gradient_accumulation_steps``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import transformers

import hf_lightning
from tests.conftest import tiny_bert_classifier

BASE = dict(report_to="none", disable_tqdm=True, use_cpu=True, seed=0, per_device_train_batch_size=4,
            learning_rate=1e-3, train_sampling_strategy="sequential")
IMPLEMENTATIONS = {
    "transformers": (transformers.Trainer, transformers.TrainingArguments),
    "hf_lightning": (hf_lightning.Trainer, hf_lightning.TrainingArguments),
}


class StopAt(transformers.TrainerCallback):
    """Asks to stop training at one event."""

    def __init__(self, event: str) -> None:
        self.event = event

    def on_train_begin(self, args, state, control, **kwargs):
        if self.event == "on_train_begin":
            control.should_training_stop = True

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.event == "on_epoch_begin" and state.epoch and state.epoch >= 1:
            control.should_training_stop = True


@pytest.mark.parametrize("event", ["on_train_begin", "on_epoch_begin"])
def test_stop_asked_at_a_begin_event_still_runs_that_step(event, tmp_path, cls_dataset, demo_tokenizer):
    steps = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), num_train_epochs=2, save_strategy="no", **BASE)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                              processing_class=demo_tokenizer, callbacks=[StopAt(event)])
        trainer.train()
        steps[name] = trainer.state.global_step
    assert steps["hf_lightning"] == steps["transformers"]
    assert steps["transformers"] in (1, 11)  # HF checks the flag only after an optimizer step


def test_save_total_limit_one_keeps_only_the_best_at_the_end(tmp_path, cls_dataset, demo_tokenizer):
    kept = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        out = tmp_path / name
        args = args_cls(output_dir=str(out), max_steps=12, eval_strategy="steps", eval_steps=4, save_steps=4,
                        save_total_limit=1, metric_for_best_model="eval_loss", greater_is_better=True, **BASE)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                              eval_dataset=cls_dataset.select(range(8)), processing_class=demo_tokenizer)
        trainer.train()  # greater_is_better on a falling loss: the best is the first checkpoint
        kept[name] = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert kept["hf_lightning"] == kept["transformers"] == ["checkpoint-4"]


def test_training_step_copied_from_transformers_5_is_exact(tmp_path: Path, cls_dataset, demo_tokenizer):
    def training_step(self, model, inputs, num_items_in_batch=None):  # transformers 5.24's body, trimmed
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if (not self.model_accepts_loss_kwargs or num_items_in_batch is None) and self.compute_loss_func is None:
            loss = loss / self.current_gradient_accumulation_steps
        self.accelerator.backward(loss)
        return loss.detach()

    base = tiny_bert_classifier(len(demo_tokenizer))
    weights = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        subclass = type("Custom", (trainer_cls,), {"training_step": training_step})
        args = args_cls(output_dir=str(tmp_path / name), max_steps=3, gradient_accumulation_steps=3,
                        save_strategy="no", **BASE)
        trainer = subclass(model=copy.deepcopy(base), args=args, train_dataset=cls_dataset,
                           processing_class=demo_tokenizer)
        if name == "transformers":
            trainer.model_accepts_loss_kwargs = False  # HF's exact path (BERT ignores num_items_in_batch)
        trainer.train()
        weights[name] = trainer.model.state_dict()
    diff = max((weights["transformers"][k] - weights["hf_lightning"][k]).abs().max().item() for k in weights["transformers"])
    assert diff <= 1e-5, diff
    moved = max((base.state_dict()[k] - weights["hf_lightning"][k]).abs().max().item() for k in weights["transformers"])
    assert moved > 1e-3


class LoadAtSave(transformers.TrainerCallback):
    """Loads the model back from the checkpoint folder the save just wrote, inside on_save."""

    def __init__(self) -> None:
        self.loaded: list[int] = []

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
        assert model.num_labels == 2
        self.loaded.append(state.global_step)


def test_on_save_finds_the_checkpoint_and_train_returns_with_it_durable_and_rotated(
    tmp_path, cls_dataset, demo_tokenizer
):
    from hf_lightning.checkpoint_io import TMP_PREFIX, is_complete_checkpoint

    seen, kept = {}, {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        out, probe = tmp_path / name, LoadAtSave()
        args = args_cls(output_dir=str(out), max_steps=8, save_steps=2, save_total_limit=2, **BASE)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                              processing_class=demo_tokenizer, callbacks=[probe])
        trainer.train()
        seen[name] = probe.loaded
        kept[name] = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert seen["hf_lightning"] == seen["transformers"] == [2, 4, 6, 8]
    assert kept["hf_lightning"] == kept["transformers"] == ["checkpoint-6", "checkpoint-8"]
    out = tmp_path / "hf_lightning"
    assert all(is_complete_checkpoint(out / name) for name in kept["hf_lightning"])
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]  # replaced and rotated folders gone
