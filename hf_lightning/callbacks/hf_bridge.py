"""The bridge: Lightning hooks in, HF ``TrainerCallback`` events and ``TrainerControl`` out.

transformers' own ``CallbackHandler`` dispatches the events (so HF's flag resets, argument passing and
built-in callbacks such as ``EarlyStoppingCallback`` behave exactly as in HF) and its
``DefaultFlowCallback`` decides when to log, evaluate and save. This module only says *when* each
event happens on Lightning's loop (see ``hf_events.py``) and carries out the control flags.

A *host* does the HF work the flags ask for: the HF-style ``Trainer`` facade is one (it evaluates,
logs to ``log_history`` and writes ``checkpoint-N`` folders); ``NativeHost`` serves plain Lightning
runs, where Lightning's own validation and checkpointing stay in charge.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import lightning.pytorch as pl
import numpy as np
from transformers import DefaultFlowCallback, TrainerCallback, TrainerControl, TrainerState
from transformers.trainer_callback import CallbackHandler
from transformers.trainer_utils import SaveStrategy

from hf_lightning.accumulation import StepRecord
from hf_lightning.errors import ConfigError
from hf_lightning.module import HFLightningModule

__all__ = ["BridgeHost", "HFCallbackBridge", "HFCallbacks", "NativeHost", "update_best_metric"]


def update_best_metric(args: Any, state: TrainerState, metrics: dict[str, float]) -> bool:
    """HF's best-metric bookkeeping after an evaluation; True when ``metrics`` hold a new best.

    It runs *after* ``on_evaluate``, as in HF: ``EarlyStoppingCallback`` compares the new value with
    the best of the evaluations before it. A non-finite value never becomes the best (HF would keep a
    NaN out too, but an ``inf`` could win with ``greater_is_better``).
    """
    name = args.metric_for_best_model
    if name is None:
        return False
    key = name if name.startswith("eval_") else f"eval_{name}"
    if key not in metrics:
        raise ConfigError(
            "metric_for_best_model", f"{name!r} is not produced by evaluation (got {sorted(metrics)})",
            "use one of those keys, or add it in compute_metrics",
        )
    value = float(metrics[key])
    if not math.isfinite(value):
        return False
    better = np.greater if args.greater_is_better else np.less
    if state.best_metric is not None and not better(value, state.best_metric):
        return False
    state.best_metric = value
    if args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST):
        state.best_global_step = state.global_step  # HF records the step only when checkpoints are kept
    return True


# Events fired on every step or micro-batch whose CallbackHandler method only dispatches to the
# callbacks; skipped when no callback overrides them. (``on_step_begin`` is not here: the handler also
# clears the log/evaluate/save flags, and is always called so that its own code runs, whatever it
# becomes. tests/test_event_order.py checks that these handler methods leave control untouched.)
SKIPPABLE_STEP_EVENTS = frozenset({"on_pre_optimizer_step", "on_optimizer_step", "on_substep_end"})


def _any_overrides(callbacks: list[Any], name: str) -> bool:
    """True if some callback defines ``name`` differently from ``TrainerCallback``'s no-op."""
    base = getattr(TrainerCallback, name)
    return any(getattr(type(cb), name, base) is not base or name in vars(cb) for cb in callbacks)


class BridgeHost(Protocol):
    """What the bridge needs from whoever owns the HF state."""

    args: Any
    state: TrainerState
    control: TrainerControl
    callback_handler: CallbackHandler

    #: a metric scheduler (ReduceLROnPlateau, GreedyLR) that evaluations step (Lightning does not hold it)
    lr_scheduler: Any

    def log(self, logs: dict[str, float]) -> None: ...

    def evaluate_during_training(self) -> dict[str, float] | None: ...

    def determine_best_metric(self, metrics: dict[str, float]) -> bool: ...

    def save_during_training(self) -> None: ...

    def store_flos(self) -> None: ...


class HFCallbackBridge(pl.Callback):
    """Translate Lightning hooks into HF events for ``host``; with ``drive`` also log/evaluate/save."""

    def __init__(self, host: BridgeHost, drive: bool = True) -> None:
        self.host = host
        self.drive = drive
        self.began = False  # on_train_begin fired in this fit
        self._reset_loss_tracking()

    def _reset_loss_tracking(self) -> None:
        self.tr_loss = 0.0
        self.total_loss = 0.0
        self.last_logged = 0
        self.seen_step = 0
        self.initial_step = 0
        self.start_time = time.time()

    # ---------------------------------------------------------------- helpers
    def _event(self, name: str, **kwargs: Any) -> None:
        host = self.host
        handler = host.callback_handler
        if name in SKIPPABLE_STEP_EVENTS and not _any_overrides(handler.callbacks, name):
            return  # nothing listens: skip HF's dispatch (a call per callback with nine keyword arguments)
        host.control = getattr(handler, name)(host.args, host.state, host.control, **kwargs)

    def _refs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        handler = self.host.callback_handler
        handler.model = getattr(pl_module, "model", pl_module)
        handler.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        configs = trainer.lr_scheduler_configs
        # A metric scheduler is stepped by evaluations, not by Lightning: take it from its owner.
        handler.lr_scheduler = configs[0].scheduler if configs else self.host.lr_scheduler
        handler.train_dataloader = trainer.train_dataloader

    def _apply_control(self, trainer: pl.Trainer, pl_module: pl.LightningModule, after_step: bool = True) -> None:
        """Carry HF's stop flags over to Lightning.

        HF looks at ``should_training_stop`` only once a batch has run, so a stop asked for at
        train/epoch begin still lets one step run (``after_step=False`` there); ``should_epoch_stop``
        acts at once.
        """
        control = self.host.control
        stop_training = control.should_training_stop and after_step
        if stop_training:
            trainer.should_stop = True
        if (control.should_epoch_stop or stop_training) and isinstance(pl_module, HFLightningModule):
            pl_module.request_epoch_stop()

    # ---------------------------------------------------------------- train
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self.host.state
        state.max_steps = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else int(
            trainer.estimated_stepping_batches
        )
        batches = max(int(trainer.num_training_batches), 1) if math.isfinite(trainer.num_training_batches) else 1
        updates_per_epoch = max(math.ceil(batches / trainer.accumulate_grad_batches), 1)
        state.num_train_epochs = math.ceil(state.max_steps / updates_per_epoch)
        state.compute_steps(self.host.args, state.max_steps)
        state.is_world_process_zero = trainer.is_global_zero
        state.is_local_process_zero = trainer.local_rank == 0
        state.global_step = trainer.global_step
        self.seen_step = self.initial_step = self.last_logged = trainer.global_step
        self.tr_loss = 0.0
        self.total_loss = 0.0
        self.start_time = time.time()
        self._refs(trainer, pl_module)
        self.began = True
        self._event("on_train_begin")
        if self.drive and getattr(self.host.args, "eval_on_start", False) and trainer.global_step == 0:
            self.host.evaluate_during_training()
        self._apply_control(trainer, pl_module, after_step=False)

    def begin_without_steps(self) -> None:
        """``on_train_begin`` for a fit that had nothing left to train (resumed at ``max_steps``).

        Lightning skips its training loop, and with it ``on_train_start``; transformers still fires
        ``on_train_begin`` before its final log and ``on_train_end``, which callbacks rely on.
        """
        if self.began:
            return
        self.seen_step = self.initial_step = self.last_logged = self.host.state.global_step
        self.began = True
        self._event("on_train_begin")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(pl_module, HFLightningModule):
            pl_module.clear_epoch_stop()
        self._event("on_epoch_begin")
        self._apply_control(trainer, pl_module, after_step=False)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if isinstance(pl_module, HFLightningModule) and pl_module.epoch_stop_requested:
            return  # the module answers -1 and Lightning ends the epoch: HF never begins this step
        if batch_idx % trainer.accumulate_grad_batches == 0:
            self._event("on_step_begin")

    def on_gradients_ready(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._event("on_pre_optimizer_step")

    def on_optimizer_stepped(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._event("on_optimizer_step")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        state = self.host.state
        if trainer.global_step > self.seen_step:
            self.seen_step = trainer.global_step
            state.global_step = trainer.global_step
            state.epoch = trainer.current_epoch + (batch_idx + 1) / max(trainer.num_training_batches, 1)
            self._track_loss(_last_step(pl_module).loss)
            self._event("on_step_end")
            if self.drive:
                self.maybe_log_save_evaluate(pl_module)
        else:
            self._event("on_substep_end")
        self._apply_control(trainer, pl_module)  # HF checks after every micro-batch too

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._event("on_epoch_end")
        if self.drive:
            self.maybe_log_save_evaluate(pl_module)
            if trainer.current_epoch + 1 >= self.host.state.num_train_epochs:
                # HF runs a fixed number of epochs besides max_steps: after a callback's should_epoch_stop
                # shortened them, HF ends below max_steps. (Not max_epochs in the plan: a finite
                # max_epochs changes how Lightning restarts from a checkpoint.)
                trainer.should_stop = True
        self._apply_control(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.drive:  # the facade fires on_train_end itself, after its final log (HF's order)
            self._event("on_train_end")

    # ---------------------------------------------------------------- HF's decisions (drive mode)
    def _track_loss(self, loss: float) -> None:
        if math.isfinite(loss) or not getattr(self.host.args, "logging_nan_inf_filter", True):
            self.tr_loss += loss
        else:  # HF: replace a non-finite loss by the average of the losses since the last log
            steps = 1 + self.host.state.global_step - self.last_logged
            self.tr_loss += self.tr_loss / max(steps - 1, 1) if steps > 1 else 0.0

    def training_loss(self) -> float:
        """Mean loss over the optimizer steps of this ``train()`` call (HF's ``train_loss``)."""
        steps = self.host.state.global_step - self.initial_step
        return (self.total_loss + self.tr_loss) / max(steps, 0.001)

    def log_training(self, pl_module: pl.LightningModule) -> None:
        """HF's training log: mean loss since the last log, grad_norm of this step, learning rate."""
        host, state = self.host, self.host.state
        logs: dict[str, float] = {"loss": self.tr_loss / max(state.global_step - self.last_logged, 1)}
        step = _last_step(pl_module)
        if step.grad_norm is not None:
            logs["grad_norm"] = step.grad_norm
        logs["learning_rate"] = step.learning_rate
        self.total_loss += self.tr_loss
        self.tr_loss = 0.0
        self.last_logged = state.global_step
        host.store_flos()
        host.log(logs)

    def maybe_log_save_evaluate(self, pl_module: pl.LightningModule) -> None:
        host, state, control = self.host, self.host.state, self.host.control
        if control.should_log and state.global_step > self.last_logged:
            self.log_training(pl_module)
        if host.control.should_evaluate:
            metrics = host.evaluate_during_training()
            is_new_best = host.determine_best_metric(metrics) if metrics is not None else False
            if host.args.save_strategy == SaveStrategy.BEST:
                host.control.should_save = is_new_best
        if host.control.should_save:
            host.save_during_training()
            self._event("on_save")

    # ---------------------------------------------------------------- state in Lightning checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "trainer_state": _state_json(self.host.state) if self.host is not None else None,
            "tr_loss": self.tr_loss,
            "total_loss": self.total_loss,
            "last_logged": self.last_logged,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import json

        if state_dict.get("trainer_state"):
            fields = json.loads(state_dict["trainer_state"])
            restored = TrainerState(**{k: v for k, v in fields.items() if k in TrainerState.__dataclass_fields__})
            restored.stateful_callbacks = self.host.state.stateful_callbacks
            self.host.state = restored
        self.tr_loss = state_dict.get("tr_loss", 0.0)


def _last_step(pl_module: pl.LightningModule) -> StepRecord:
    """What the module's last optimizer step produced (nothing known for other LightningModules)."""
    return pl_module.last_step if isinstance(pl_module, HFLightningModule) else StepRecord()


def _state_json(state: TrainerState) -> str:
    import dataclasses
    import json

    data = {k: v for k, v in dataclasses.asdict(state).items() if k != "stateful_callbacks"}
    return json.dumps(data, default=str)


class NativeHost:
    """Host for plain Lightning runs: HF events and control, Lightning does evaluation and saving."""

    def __init__(self, callbacks: list[TrainerCallback], args: Any, processing_class: Any = None) -> None:
        self.args = args
        self.state = TrainerState()
        self.control = TrainerControl()
        self.lr_scheduler = None
        self.callback_handler = CallbackHandler(callbacks, None, processing_class, None, None)
        if not any(isinstance(cb, DefaultFlowCallback) for cb in self.callback_handler.callbacks):
            self.callback_handler.add_callback(DefaultFlowCallback)

    def log(self, logs: dict[str, float]) -> None:
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch  # callbacks get it in ``logs``, as from HF's Trainer.log
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def evaluate_during_training(self) -> dict[str, float] | None:
        return None

    def determine_best_metric(self, metrics: dict[str, float]) -> bool:
        return update_best_metric(self.args, self.state, metrics)

    def save_during_training(self) -> None:
        return None

    def store_flos(self) -> None:
        return None


class HFCallbacks(HFCallbackBridge):
    """Use HF ``TrainerCallback``s in a plain Lightning run or a LightningCLI config.

    ``trainer.callbacks: [{class_path: hf_lightning.callbacks.hf_bridge.HFCallbacks, init_args: {callbacks:
    [{class_path: transformers.EarlyStoppingCallback, init_args: {early_stopping_patience: 2}}]}}]``

    Events fire at the same points as in HF; ``on_evaluate`` fires after each Lightning validation
    with the module's ``eval_*`` metrics (and ``state.best_metric`` follows ``metric_for_best_model``
    afterwards, which ``EarlyStoppingCallback`` relies on), ``on_log`` every ``log_every_n_steps``
    optimizer steps, ``on_save`` after each Lightning checkpoint; ``should_training_stop`` /
    ``should_epoch_stop`` stop the run. ``args`` defaults to a TrainingArguments derived from the
    Lightning trainer (``metric_for_best_model="eval_loss"``).
    """

    def __init__(self, callbacks: list[TrainerCallback] | None = None, args: Any = None) -> None:
        self._callbacks = list(callbacks or [])
        self._args = args
        super().__init__(host=None, drive=False)  # type: ignore[arg-type]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.host is not None:
            return
        args = self._args or _args_from_lightning(trainer, pl_module)
        self.host = NativeHost(self._callbacks, args)
        self._event("on_init_end")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[override]
        stepped = trainer.global_step > self.seen_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # Built from what the module recorded at this optimizer step: the module's own last_train_log
        # is written after the callbacks' on_train_batch_end, so it would lag one step behind.
        if stepped and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self.log_training(pl_module)
            self._apply_control(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.host is None:
            return
        metrics = dict(pl_module.last_eval_metrics) if isinstance(pl_module, HFLightningModule) else {}
        if self.host.state.epoch is not None:
            metrics["epoch"] = self.host.state.epoch  # as HF's evaluate() passes them (log() adds it)
        self._event("on_evaluate", metrics=metrics)
        if trainer.state.fn == "fit":
            # best_metric feeds EarlyStoppingCallback's next comparison; HF updates it after on_evaluate
            self.host.determine_best_metric(metrics)
        self._apply_control(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.host is not None:
            self._event("on_save")


def _args_from_lightning(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """TrainingArguments mirroring the Lightning run, for callbacks that read ``args``."""
    from hf_lightning.args import TrainingArguments

    hp = getattr(pl_module, "hparams", {})
    return TrainingArguments(
        output_dir=trainer.default_root_dir,
        learning_rate=hp.get("learning_rate", 5e-5),
        max_steps=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else -1,
        num_train_epochs=trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1,
        gradient_accumulation_steps=trainer.accumulate_grad_batches,
        logging_steps=trainer.log_every_n_steps,
        eval_strategy="epoch",
        save_strategy="no",
        metric_for_best_model="eval_loss",
        report_to="none",
        use_cpu=True,
    )
