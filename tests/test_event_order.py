"""HF callback events fire in transformers.Trainer's order, with its state and control values.

A recorder callback logs every ``TrainerCallback`` event of the same tiny run under
``transformers.Trainer`` and ``hf_lightning.Trainer``: the event name, ``global_step``, ``epoch``, the
five control flags as the callback sees them, the log/metric keys, which objects the event passed
(model, optimizer, ...) and a snapshot of ``TrainerState``. The two sequences must be identical, for
each configuration below (accumulation with a short last window, every log/eval/save strategy,
``eval_on_start``, ``max_steps`` mid-epoch, and callbacks that set each control flag themselves).

Numerics are not the point here (``tests/test_trainer.py`` covers them), but ``best_metric`` and
``save_strategy="best"`` depend on eval losses, so transformers gets ``model_accepts_loss_kwargs =
False`` (its exact accumulation path for BERT classification; see test_trainer.py).
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import pytest
import transformers
from transformers import EarlyStoppingCallback, TrainerCallback

from hf_lightning import Trainer, TrainingArguments
from hf_lightning.callbacks.hf_events import HF_EVENTS
from tests.conftest import tiny_bert_classifier

FLAGS = ("should_training_stop", "should_epoch_stop", "should_save", "should_evaluate", "should_log")
EVENTS = sorted(name for name in vars(TrainerCallback) if name.startswith("on_"))
TIMING = ("runtime", "per_second")


class Recorder(TrainerCallback):
    """Appends one tuple per event; every ``on_*`` method of TrainerCallback is overridden below."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def record(self, event: str, args: Any, state: Any, control: Any, kwargs: dict[str, Any]) -> None:
        payload = kwargs.get("logs") if event == "on_log" else kwargs.get("metrics")
        keys = tuple(sorted(k for k in payload or {} if not any(t in k for t in TIMING)))
        passed = tuple(sorted(k for k, v in kwargs.items() if v is not None and k not in ("logs", "metrics")))
        snapshot = (
            state.max_steps, state.num_train_epochs, state.logging_steps, state.eval_steps, state.save_steps,
            state.train_batch_size, state.best_global_step, os.path.basename(state.best_model_checkpoint or ""),
            len(state.log_history), sorted(state.stateful_callbacks or {}), state.total_flos > 0,
        )
        epoch = None if state.epoch is None else round(state.epoch, 6)
        flags = tuple(int(getattr(control, f)) for f in FLAGS)
        self.events.append((event, state.global_step, epoch, flags, keys, passed, snapshot))


def _recording_method(event: str):
    def method(self: Recorder, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.record(event, args, state, control, kwargs)

    method.__name__ = event
    return method


for _event in EVENTS:
    setattr(Recorder, _event, _recording_method(_event))


class SetFlag(TrainerCallback):
    """Sets ``control.<flag>`` at ``on_step_end`` (or ``on_substep_end``) of the given global step."""

    def __init__(self, flag: str, step: int, event: str = "on_step_end", every_epoch: bool = False) -> None:
        self.flag, self.step, self.event, self.every_epoch = flag, step, event, every_epoch

    def _maybe_set(self, event: str, state: Any, control: Any) -> None:
        step = state.global_step % 10 if self.every_epoch else state.global_step  # 10 steps per epoch at GA 1
        if event == self.event and step == self.step:
            setattr(control, self.flag, True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._maybe_set("on_step_end", state, control)

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._maybe_set("on_substep_end", state, control)


# 40 rows, batch 4: 10 micro-batches per epoch; GA 3 gives windows of 3, 3, 3 and a short 1.
CASES: dict[str, tuple[list[TrainerCallback], dict[str, Any]]] = {
    "ga1_eval_save_steps": ([], dict(eval_strategy="steps", eval_steps=4, save_strategy="steps", save_steps=5)),
    "ga3_short_window_epoch": ([], dict(gradient_accumulation_steps=3, eval_strategy="epoch", save_strategy="epoch",
                                        logging_steps=2)),
    "ga3_steps_first_step_limit": ([], dict(gradient_accumulation_steps=3, eval_strategy="steps", eval_steps=3,
                                            save_strategy="steps", save_steps=2, save_total_limit=2,
                                            logging_first_step=True, logging_steps=1)),
    "save_best": ([], dict(eval_strategy="steps", eval_steps=3, save_strategy="best", metric_for_best_model="eval_loss")),
    "eval_on_start_log_epoch": ([], dict(eval_strategy="epoch", eval_on_start=True, logging_strategy="epoch")),
    "eval_delay": ([], dict(eval_strategy="steps", eval_steps=2, eval_delay=7)),
    "max_steps_mid_epoch": ([], dict(max_steps=6, eval_strategy="steps", eval_steps=4)),
    "max_steps_ga3": ([], dict(max_steps=5, gradient_accumulation_steps=3, logging_steps=1)),
    "callback_stops_training": ([SetFlag("should_training_stop", 5)], dict(eval_strategy="steps", eval_steps=5)),
    "callback_stops_mid_window": ([SetFlag("should_training_stop", 1, "on_substep_end")],
                                  dict(gradient_accumulation_steps=3)),
    "callback_stops_epochs": ([SetFlag("should_epoch_stop", 3, every_epoch=True)], dict(eval_strategy="epoch")),
    "callback_stops_epoch_mid_window": ([SetFlag("should_epoch_stop", 1, "on_substep_end")],
                                        dict(gradient_accumulation_steps=3, eval_strategy="epoch")),
    "callback_evaluates": ([SetFlag("should_evaluate", 2)], {}),
    "callback_saves": ([SetFlag("should_save", 2)], {}),
    "callback_logs": ([SetFlag("should_log", 2)], dict(logging_steps=5)),
    "hf_early_stopping": ([EarlyStoppingCallback(early_stopping_patience=1)],
                          dict(eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, learning_rate=0.05,
                               metric_for_best_model="eval_loss", load_best_model_at_end=True, save_total_limit=2)),
}


def _run(trainer_cls: type, args_cls: type, out: Path, data: Any, tokenizer: Any,
         callbacks: list[TrainerCallback], overrides: dict[str, Any]) -> tuple[list[tuple], Any]:
    """Train, evaluate and predict once; return the recorded events and the trainer."""
    args = dict(output_dir=str(out), per_device_train_batch_size=4, per_device_eval_batch_size=8, num_train_epochs=2,
                learning_rate=1e-3, train_sampling_strategy="sequential", logging_steps=3, save_strategy="no",
                report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    args.update(overrides)
    recorder = Recorder()
    trainer = trainer_cls(model=tiny_bert_classifier(len(tokenizer)), args=args_cls(**args), train_dataset=data,
                          eval_dataset=data.select(range(8)), processing_class=tokenizer,
                          callbacks=[recorder, *copy.deepcopy(callbacks)])
    if trainer_cls is transformers.Trainer:
        trainer.model_accepts_loss_kwargs = False
    trainer.train()
    trainer.evaluate()
    trainer.predict(data.select(range(8)))
    return recorder.events, trainer


def _diff(expected: list[tuple], got: list[tuple]) -> str:
    lines = difflib.unified_diff([repr(e) for e in expected], [repr(e) for e in got], "transformers", "hf_lightning",
                                 lineterm="", n=2)
    return "\n".join(list(lines)[:40])


@pytest.mark.parametrize("case", list(CASES))
def test_event_sequence_matches_transformers(case: str, cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    callbacks, overrides = CASES[case]
    hf_events, hf = _run(transformers.Trainer, transformers.TrainingArguments, tmp_path / "hf", cls_dataset,
                         demo_tokenizer, callbacks, overrides)
    our_events, ours = _run(Trainer, TrainingArguments, tmp_path / "ours", cls_dataset, demo_tokenizer,
                            callbacks, overrides)
    assert our_events == hf_events, _diff(hf_events, our_events)
    assert ours.state.global_step == hf.state.global_step
    assert ours.state.epoch == pytest.approx(hf.state.epoch)
    assert ours.state.total_flos == hf.state.total_flos
    if hf.state.best_metric is not None:
        assert ours.state.best_metric == pytest.approx(hf.state.best_metric, rel=1e-4)
    if case == "hf_early_stopping":
        # transformers' own EarlyStoppingCallback: eval_loss rises at this learning rate, so both stop
        # at the same step, well before max_steps (20).
        assert ours.state.global_step < 20 and ours.state.best_global_step == hf.state.best_global_step
    fired = {e[0] for e in hf_events}
    assert {"on_init_end", "on_train_begin", "on_step_end", "on_log", "on_train_end", "on_predict"} <= fired


def test_event_table_covers_every_trainer_callback_event() -> None:
    assert set(HF_EVENTS) == set(EVENTS), set(EVENTS) ^ set(HF_EVENTS)
    assert all(HF_EVENTS.values()), "every event says where it fires"


def test_skipped_step_events_only_dispatch_in_transformers() -> None:
    """The bridge skips these events when no callback overrides them; that is only right while
    transformers' CallbackHandler does nothing of its own in them (as it does in on_step_begin)."""
    from transformers import TrainerControl, TrainerState
    from transformers.trainer_callback import CallbackHandler

    from hf_lightning.callbacks.hf_bridge import SKIPPABLE_STEP_EVENTS

    assert "on_step_begin" not in SKIPPABLE_STEP_EVENTS
    handler = CallbackHandler([TrainerCallback()], None, None, None, None)
    for name in sorted(SKIPPABLE_STEP_EVENTS):
        control = TrainerControl(should_log=True, should_evaluate=True, should_save=True, should_epoch_stop=True)
        before = copy.deepcopy(control)
        state = TrainerState()
        returned = getattr(handler, name)(None, state, control)
        assert returned == before, f"CallbackHandler.{name} now changes control: remove it from SKIPPABLE_STEP_EVENTS"
        assert state == TrainerState(), f"CallbackHandler.{name} now changes state"
