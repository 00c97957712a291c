"""HF callbacks in plain Lightning runs (``HFCallbacks``) and the facade's overridable hooks.

Part one: transformers' own ``TrainerCallback``s (``EarlyStoppingCallback``, a custom one) driven by a
plain ``lightning.Trainer`` fitting an ``HFLightningModule``, with Lightning's own validation loop.
Part two: each hook a ``Trainer`` subclass overrides in transformers (``compute_loss`` with and
without ``num_items_in_batch``, ``prediction_step``, ``create_optimizer``, ``create_scheduler``,
``save_model``, ``log``, ``_prepare_inputs``, ``compute_loss_context_manager``,
``autocast_smart_context_manager``) is called by the facade where transformers calls it, and what it
returns takes effect. (``training_step`` and ``evaluation_loop`` overrides: tests/test_seed_examples.py.)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.utils.data import DataLoader
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)

from hf_lightning import HFLightningModule, Trainer, TrainingArguments
from hf_lightning.callbacks.hf_bridge import HFCallbacks
from tests.conftest import TINY_MODELS, tiny_bert_classifier


# ============================================================================ HFCallbacks in plain Lightning
class EvalRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.evals: list[tuple[int, float]] = []

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        self.evals.append((state.global_step, metrics["eval_loss"]))


def _native_fit(tmp_path: Path, tokenizer: Any, data: Any, callbacks: list[TrainerCallback], learning_rate: float,
                max_steps: int = 30) -> tuple[pl.Trainer, HFLightningModule]:
    """Fit a tiny BERT with a plain Lightning Trainer, validating every 2 optimizer steps."""
    pl.seed_everything(0, verbose=False)
    data = data.remove_columns(["text"])
    collate = DataCollatorWithPadding(tokenizer)
    module = HFLightningModule(model=TINY_MODELS["bert"], num_labels=2, vocab_size=len(tokenizer),
                               learning_rate=learning_rate, lr_scheduler_type="constant")
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, val_check_interval=2,
                         num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=str(tmp_path),
                         callbacks=[HFCallbacks(callbacks=callbacks)])
    trainer.fit(module, DataLoader(data, batch_size=4, collate_fn=collate),
                DataLoader(data.select(range(8)), batch_size=8, collate_fn=collate))
    return trainer, module


def test_hf_early_stopping_in_a_plain_lightning_run(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """transformers.EarlyStoppingCallback(patience=1) stops the Lightning run at the first validation whose
    eval_loss does not beat the best so far (the bridge keeps ``state.best_metric`` as HF does, after
    ``on_evaluate``); a learning rate this high makes eval_loss rise early."""
    recorder = EvalRecorder()
    trainer, _ = _native_fit(tmp_path, demo_tokenizer, cls_dataset,
                             [EarlyStoppingCallback(early_stopping_patience=1), recorder], learning_rate=0.3)
    best, expected = float("inf"), None
    for step, loss in recorder.evals:
        if not loss < best:
            expected = step
            break
        best = loss
    assert expected is not None and expected < 30, recorder.evals
    assert trainer.global_step == expected and recorder.evals[-1][0] == expected


class Spy(TrainerCallback):
    """Keeps (event, args, state snapshot, control, kwargs) for the events a typical callback uses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any], Any, dict[str, Any]]] = []

    def _record(self, event: str, args: Any, state: Any, control: Any, kwargs: dict[str, Any]) -> None:
        snapshot = {"global_step": state.global_step, "epoch": state.epoch, "type": type(state)}
        self.calls.append((event, args, snapshot, control, kwargs))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("on_train_begin", args, state, control, kwargs)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("on_step_end", args, state, control, kwargs)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("on_evaluate", args, state, control, kwargs)

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("on_log", args, state, control, kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("on_train_end", args, state, control, kwargs)


def test_custom_callback_gets_hf_arguments_in_a_plain_lightning_run(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    spy = Spy()
    trainer, module = _native_fit(tmp_path, demo_tokenizer, cls_dataset, [spy], learning_rate=1e-3, max_steps=4)
    events = [c[0] for c in spy.calls]
    assert events[0] == "on_train_begin" and events[-1] == "on_train_end"
    assert {"on_step_end", "on_evaluate", "on_log"} <= set(events)
    for _, args, state, control, kwargs in spy.calls:
        assert isinstance(args, transformers.TrainingArguments) and state["type"] is TrainerState
        assert isinstance(control, TrainerControl)
        assert kwargs["model"] is module.model and kwargs["optimizer"] is trainer.optimizers[0]
        assert kwargs["lr_scheduler"] is trainer.lr_scheduler_configs[0].scheduler
    assert [c[2]["global_step"] for c in spy.calls if c[0] == "on_step_end"] == [1, 2, 3, 4]
    evaluations = [c for c in spy.calls if c[0] == "on_evaluate"]
    assert [c[2]["global_step"] for c in evaluations] == [2, 4]
    assert all({"eval_loss", "epoch"} <= set(c[4]["metrics"]) for c in evaluations)
    logs = [c[4]["logs"] for c in spy.calls if c[0] == "on_log"]
    assert len(logs) == 4 and all({"loss", "learning_rate"} <= set(entry) for entry in logs)
    assert spy.calls[-1][2]["global_step"] == trainer.global_step == 4


# ============================================================================ facade hooks
def _args(out: Path, **overrides: Any) -> TrainingArguments:
    base = dict(output_dir=str(out), per_device_train_batch_size=4, per_device_eval_batch_size=8, max_steps=4,
                learning_rate=1e-3, train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
                report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    base.update(overrides)
    return TrainingArguments(**base)


def _fit(cls: type, tmp_path: Path, tokenizer: Any, data: Any, model: Any = None, **overrides: Any) -> Any:
    trainer = cls(model=model if model is not None else tiny_bert_classifier(len(tokenizer)),
                  args=_args(tmp_path, **overrides), train_dataset=data, eval_dataset=data.select(range(8)),
                  processing_class=tokenizer)
    trainer.train()
    return trainer


class OldStyleLoss(Trainer):
    """transformers-4 signature: no num_items_in_batch (passing it would be a TypeError)."""

    def compute_loss(self, model, inputs, return_outputs=False):
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


class NewStyleLoss(Trainer):
    """transformers-5 signature: normalises a summed loss by ``num_items_in_batch``."""

    seen: list[int]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        self.seen.append(int(num_items_in_batch))
        loss = F.cross_entropy(outputs.logits, labels, reduction="sum") / num_items_in_batch
        return (loss, outputs) if return_outputs else loss


def test_compute_loss_with_and_without_num_items(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """Both signatures train to the same weights. The facade passes the micro-batch's item count (4 rows)
    and makes the window exact at the optimizer step; transformers 5 passes the window's count."""
    base = tiny_bert_classifier(len(demo_tokenizer))
    old = _fit(OldStyleLoss, tmp_path / "old", demo_tokenizer, cls_dataset, copy.deepcopy(base),
               gradient_accumulation_steps=2)
    NewStyleLoss.seen = []
    new = _fit(NewStyleLoss, tmp_path / "new", demo_tokenizer, cls_dataset, copy.deepcopy(base),
               gradient_accumulation_steps=2)
    assert NewStyleLoss.seen == [4] * 8
    for a, b in zip(old.model.state_dict().values(), new.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


class ConstantEvalLoss(Trainer):
    calls = 0

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        type(self).calls += 1
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        return torch.tensor(7.0), logits, labels


def test_prediction_step_override(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = ConstantEvalLoss(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(tmp_path),
                               eval_dataset=cls_dataset.select(range(16)), processing_class=demo_tokenizer)
    metrics = trainer.evaluate()
    assert ConstantEvalLoss.calls == 2 and metrics["eval_loss"] == pytest.approx(7.0)
    assert trainer.predict(cls_dataset.select(range(16))).predictions.shape == (16, 2)


class PlainSGD(Trainer):
    def create_optimizer(self):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5)
        return self.optimizer


def test_create_optimizer_override(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    model = tiny_bert_classifier(len(demo_tokenizer))
    initial = copy.deepcopy(model)
    trainer = _fit(PlainSGD, tmp_path, demo_tokenizer, cls_dataset, model, lr_scheduler_type="constant")
    assert isinstance(trainer.optimizer, torch.optim.SGD) and trainer._pl_trainer.optimizers[0] is trainer.optimizer
    assert {e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e} == {0.5}
    assert max((a - b).abs().max().item() for a, b in zip(model.parameters(), initial.parameters())) > 1e-3


class HalfRate(Trainer):
    def create_scheduler(self, num_training_steps, optimizer=None):
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lambda step: 0.5)
        return self.lr_scheduler


def test_create_scheduler_override(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = _fit(HalfRate, tmp_path, demo_tokenizer, cls_dataset)
    assert [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e] == [5e-4] * 4
    assert trainer._pl_trainer.lr_scheduler_configs[0].scheduler is trainer.lr_scheduler


class ExtraFileOnSave(Trainer):
    calls: list[tuple[str, bool]]

    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call)
        self.calls.append((Path(output_dir).name, _internal_call))
        (Path(output_dir) / "extra.txt").write_text("written by the override")


def test_save_model_override_writes_every_checkpoint(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """As in transformers, each checkpoint's model is written through save_model(dir, _internal_call=True)."""
    ExtraFileOnSave.calls = []
    trainer = _fit(ExtraFileOnSave, tmp_path / "out", demo_tokenizer, cls_dataset, save_strategy="steps", save_steps=2)
    trainer.save_model(str(tmp_path / "final"))
    assert ExtraFileOnSave.calls == [("checkpoint-2", True), ("checkpoint-4", True), ("final", False)]
    for folder in (tmp_path / "out" / "checkpoint-2", tmp_path / "out" / "checkpoint-4", tmp_path / "final"):
        assert (folder / "extra.txt").is_file() and (folder / "config.json").is_file()


class TaggedLogs(Trainer):
    def log(self, logs):  # transformers-4 signature (no start_time)
        logs["tag"] = self.state.global_step
        super().log(logs)


def test_log_override(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = _fit(TaggedLogs, tmp_path, demo_tokenizer, cls_dataset)
    trainer.evaluate()
    history = trainer.state.log_history
    assert len(history) == 6  # 4 training logs, the train summary, one evaluation
    assert [e["tag"] for e in history] == [1, 2, 3, 4, 4, 4]


class CountingHooks(Trainer):
    """Counts the per-batch hooks; transformers calls each once per training micro-batch and per
    evaluation batch (autocast_smart_context_manager from within compute_loss_context_manager)."""

    counts: dict[str, int]

    def _prepare_inputs(self, inputs):
        self.counts["prepare"] += 1
        return super()._prepare_inputs(inputs)

    @contextlib.contextmanager
    def _count(self, name: str) -> Iterator[None]:
        self.counts[name] += 1
        yield


class CountingContext(CountingHooks):
    def compute_loss_context_manager(self):
        return self._count("loss_ctx")


class CountingAutocast(CountingHooks):
    def autocast_smart_context_manager(self, cache_enabled=True):
        return self._count("autocast")


@pytest.mark.parametrize("cls, key", [(CountingHooks, "prepare"), (CountingContext, "loss_ctx"),
                                      (CountingAutocast, "autocast")])
def test_per_batch_hook_overrides(cls: type, key: str, cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """_prepare_inputs, compute_loss_context_manager and autocast_smart_context_manager: 6 training
    micro-batches (3 steps x accumulation 2) plus 1 evaluation batch."""
    cls.counts = {"prepare": 0, "loss_ctx": 0, "autocast": 0}
    trainer = _fit(cls, tmp_path, demo_tokenizer, cls_dataset, max_steps=3, gradient_accumulation_steps=2)
    trainer.evaluate()
    assert cls.counts[key] == 7
    assert np.isfinite([e["loss"] for e in trainer.state.log_history if "loss" in e]).all()
