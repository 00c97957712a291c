"""HF's per-batch hooks: ``compute_loss``, ``training_step`` and ``prediction_step`` (same contracts).

Each calls back through the trainer (``trainer.compute_loss``, ``trainer._prepare_inputs``, ...) so a
subclass that overrides one hook keeps the others' default behaviour around it, as in transformers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from hf_lightning.errors import ConfigError
from hf_lightning.facade.module import accepts_parameter
from hf_lightning.losses.base import count_batch_items
from hf_lightning.optim import set_optimizer_mode
from hf_lightning.tasks import task_spec

__all__ = ["call_compute_loss", "call_training_step", "compute_loss", "prediction_step", "training_step"]


def compute_loss(
    trainer: Any, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
) -> Any:
    """HF's loss: the model's own, ``compute_loss_func`` or label smoothing; a per-item mean."""
    labels = None
    if (trainer.label_smoother is not None or trainer.compute_loss_func is not None) and "labels" in inputs:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
    outputs = model(**inputs)
    if trainer.compute_loss_func is not None:
        loss = trainer.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
    elif labels is not None:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = trainer.label_smoother.loss_from_logits(logits, labels)
    else:
        if isinstance(outputs, dict) and "loss" not in outputs:
            raise ConfigError(
                "train_dataset", f"the model returned no loss (outputs: {list(outputs.keys())})",
                "include a 'labels' column or override compute_loss",
            )
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
    return (loss, outputs) if return_outputs else loss


def training_step(trainer: Any, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
    """HF's training step: forward, loss, backward; returns the detached loss."""
    model.train()
    set_optimizer_mode(trainer.optimizer, train=True)
    inputs = trainer._prepare_inputs(inputs)
    with trainer.compute_loss_context_manager():
        loss = call_compute_loss(trainer, model, inputs, num_items_in_batch)
    if trainer._module is not None:
        trainer._module.backward_items_mean(loss)  # exact even when a transformers-4 override calls super()
    else:
        trainer.accelerator.backward(loss)
    return loss.detach()


def prediction_step(
    trainer: Any, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None
) -> tuple[torch.Tensor | None, Any, Any]:
    """Loss, logits and labels for one evaluation batch (HF's contract and structures).

    Labels are the ``label_names`` columns (a tuple when there are several, e.g. QA's start and end
    positions); logits are every output but the loss and ``ignore_keys`` (a tuple unless only one).
    """
    label_names = trainer.label_names
    has_labels = bool(label_names) and all(inputs.get(k) is not None for k in label_names)
    return_loss = inputs.get("return_loss")
    loss_without_labels = not label_names and (trainer.can_return_loss if return_loss is None else return_loss)
    inputs = trainer._prepare_inputs(inputs)
    if ignore_keys is None:
        config = getattr(trainer.model, "config", None)
        ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", ["cache"])) if config is not None else []
    # Taken before compute_loss: overrides (label smoothing written by hand) may pop "labels" from inputs.
    labels = None
    if has_labels or loss_without_labels:
        labels = tuple(inputs.get(name) for name in label_names)
        labels = labels[0] if len(labels) == 1 else labels
    with torch.no_grad(), trainer.compute_loss_context_manager():
        if has_labels or loss_without_labels:
            loss, outputs = call_compute_loss(trainer, model, inputs, None, return_outputs=True)
            loss = loss.detach().mean()
        else:
            loss, outputs = None, model(**inputs)
    if prediction_loss_only:
        return loss, None, None
    return loss, _logits_from(outputs, ignore_keys, drop_loss=loss is not None), labels


def call_compute_loss(trainer: Any, model: nn.Module, inputs: dict, num_items: Any, return_outputs: bool = False) -> Any:
    """``trainer.compute_loss`` with ``num_items_in_batch`` only if the (possibly overridden) method takes it."""
    kwargs: dict[str, Any] = {"return_outputs": return_outputs} if return_outputs else {}
    if accepts_parameter(trainer.compute_loss, "num_items_in_batch"):
        if num_items is None:
            num_items = count_batch_items(inputs, task_spec(trainer.task).shift_labels)
        kwargs["num_items_in_batch"] = num_items
    return trainer.compute_loss(model, inputs, **kwargs)


def call_training_step(trainer: Any, model: nn.Module, inputs: dict[str, Any], num_items: Any) -> torch.Tensor:
    """``trainer.training_step`` as the override was written: with ``num_items_in_batch`` or without."""
    # By keyword: overrides written as training_step(self, model, inputs, **kwargs) take it so, and
    # transformers-4 overrides without the parameter get the two-argument call.
    if accepts_parameter(trainer.training_step, "num_items_in_batch"):
        return trainer.training_step(model, inputs, num_items_in_batch=num_items)
    return trainer.training_step(model, inputs)


def _logits_from(outputs: Any, ignore_keys: list[str], drop_loss: bool) -> Any:
    """HF's rule: every output but the loss (when one was computed) and ``ignore_keys``; one alone is unwrapped."""
    if isinstance(outputs, dict):
        skip = set(ignore_keys) | ({"loss"} if drop_loss else set())
        logits = tuple(v for k, v in outputs.items() if k not in skip)
    elif isinstance(outputs, (tuple, list)):
        logits = tuple(outputs[1:]) if drop_loss else tuple(outputs)
    else:
        return outputs
    return logits[0] if len(logits) == 1 else logits
