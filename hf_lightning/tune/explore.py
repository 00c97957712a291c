"""A trial restored from another trial's checkpoint trains with its own learning rate and weight decay.

PBT's exploit step restarts a weak trial from a strong trial's checkpoint with perturbed values
("explore"). Lightning restores the optimizer and scheduler state from that checkpoint, and with it the
donor's learning rate and weight decay: the trial's own values (in its config and ``hparams``) would be
silently ignored (measured: a clone configured with lr 0.0024 trained at the donor's 0.003). Ray's own
PBT examples set the new values on the optimizer after loading its state; this callback does that for
a Lightning fit, keeping the schedule's shape (warm-up, decay) by scaling it.

Where the values do not live in the module's ``hparams`` (``Trainer.hyperparameter_search``: they are
``TrainingArguments`` fields that HF's ``_hp_search_setup`` sets per trial), pass ``values``: the callback
then saves them with each checkpoint (its Lightning state) and compares the restoring trial's with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl

__all__ = ["ApplyTrialHyperparameters"]


class ApplyTrialHyperparameters(pl.Callback):
    """After a checkpoint restore, rescale lr (and the scheduler's base lrs) and reset weight decay to ``hparams``."""

    def __init__(self, values: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """``values``: this trial's ``learning_rate``/``weight_decay``; None reads them from ``pl_module.hparams``."""
        self.values = values
        self.restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The values this run trains with, saved in its checkpoints for a trial that restores one."""
        return dict(self.values()) if self.values is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:  # runs after on_load_checkpoint: the saved values win over hparams
            self.restored = dict(state_dict)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.restored = dict(checkpoint.get("hyper_parameters") or {})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restored is None:  # a fresh fit: the optimizer was built from this trial's values
            return
        new = self.values() if self.values is not None else pl_module.hparams
        old = self.restored
        lr_new, lr_old = new.get("learning_rate"), old.get("learning_rate")
        ratio = float(lr_new) / float(lr_old) if lr_new and lr_old and lr_new != lr_old else None
        wd_new, wd_old = new.get("weight_decay"), old.get("weight_decay")
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if ratio is not None:
                    group["lr"] *= ratio
                    if "initial_lr" in group:
                        group["initial_lr"] *= ratio
                if wd_old and wd_new is not None and wd_new != wd_old and group.get("weight_decay") == wd_old:
                    # the no-decay groups (0.0) stay; from a donor without decay the groups cannot be told apart
                    group["weight_decay"] = wd_new
        if ratio is not None:
            for config in trainer.lr_scheduler_configs:
                scheduler = config.scheduler
                if hasattr(scheduler, "base_lrs"):
                    scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
                if getattr(scheduler, "_last_lr", None):  # what get_last_lr() reports (and HF logs) until its next step
                    scheduler._last_lr = [lr * ratio for lr in scheduler._last_lr]
