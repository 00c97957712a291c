"""``create_optimizer`` / ``create_scheduler``: HF's names, defaults and weight-decay grouping (``optim``)."""

from __future__ import annotations

from typing import Any

import torch

from hf_lightning.optim import build_optimizer, build_scheduler, decay_parameter_groups

__all__ = ["create_optimizer", "create_scheduler"]

# Parameters TrainerModule adds beside the model (the loss's and the trainer subclass's own): no decay.
_NO_DECAY_PREFIXES = ("loss_fn.", "host_params.", "host_modules.")


def create_optimizer(trainer: Any) -> torch.optim.Optimizer:
    """The optimizer for ``args`` (or from ``optimizer_cls_and_kwargs``), kept as ``trainer.optimizer``.

    Built over the ``TrainerModule``'s parameters once training started, so that trainable tensors a
    ``Trainer`` subclass owns train too; over the model's before that.
    """
    if trainer.optimizer is not None:
        return trainer.optimizer
    args = trainer.args
    owner = trainer._module if trainer._module is not None else trainer.model
    if trainer.optimizer_cls_and_kwargs is not None:
        from transformers import Trainer as HFTrainer

        cls, kwargs = trainer.optimizer_cls_and_kwargs
        decay = set(HFTrainer.get_decay_parameter_names(None, owner))
        trainer.optimizer = cls(decay_parameter_groups(owner.named_parameters(), decay, args.weight_decay), **kwargs)
    else:
        trainer.optimizer = build_optimizer(
            owner,
            optim=str(getattr(args.optim, "value", args.optim)),
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            adam_beta1=args.adam_beta1,
            adam_beta2=args.adam_beta2,
            adam_epsilon=args.adam_epsilon,
            optim_args=args.optim_args,
            model_for_optimizer=trainer.model,
            no_decay_prefixes=_NO_DECAY_PREFIXES,
            optim_target_modules=args.optim_target_modules,
            warmup_steps=args.warmup_steps,
        )
    return trainer.optimizer


def create_scheduler(trainer: Any, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
    """HF's ``lr_scheduler_type`` schedule over ``num_training_steps``, kept as ``trainer.lr_scheduler``."""
    if trainer.lr_scheduler is None:
        args = trainer.args
        trainer.lr_scheduler = build_scheduler(
            optimizer or trainer.optimizer,
            str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            num_training_steps=num_training_steps,
            warmup_steps=args.warmup_steps,
            lr_scheduler_kwargs=args.lr_scheduler_kwargs,
        )
    return trainer.lr_scheduler
