"""Setting a ``Trainer`` up: arguments, seeding, ``model_init``, and what HF reads off the model class."""

from __future__ import annotations

import dataclasses
import inspect
import json
import warnings
from collections.abc import Callable
from typing import Any

import torch.nn as nn
from transformers import DataCollatorWithPadding, default_data_collator
from transformers.trainer_utils import enable_full_determinism, set_seed
from transformers.utils import can_return_loss, find_labels

from hf_lightning.args import Seq2SeqTrainingArguments, TrainingArguments
from hf_lightning.errors import ConfigError
from hf_lightning.tasks import infer_task, task_spec

__all__ = [
    "call_model_init", "check_construction", "convert_args", "default_collator", "fresh_model", "inspect_model", "label_smoother",
    "seed", "split_callbacks",
]


def convert_args(args: Any) -> TrainingArguments:
    """Accept a plain ``transformers.TrainingArguments`` too (scripts that import it from transformers)."""
    import transformers

    if not isinstance(args, transformers.TrainingArguments):
        raise ConfigError("args", f"expected TrainingArguments, got {type(args).__name__}", "pass hf_lightning.TrainingArguments")
    # transformers' Seq2SeqTrainingArguments become ours, keeping predict_with_generate and generation_*
    seq2seq = isinstance(args, transformers.Seq2SeqTrainingArguments)
    source = transformers.Seq2SeqTrainingArguments if seq2seq else transformers.TrainingArguments
    names = {f.name for f in dataclasses.fields(source) if f.init}
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    generation_config = values.pop("generation_config", None)  # an object: kept as it is
    for key, value in list(values.items()):
        if hasattr(value, "value") and not isinstance(value, (int, float, str)):
            values[key] = value.value
        if hasattr(value, "to_dict") and key in {"accelerator_config"}:
            values[key] = None
    values = {k: v for k, v in values.items() if k not in {"parallelism_config", "accelerator_config"}}
    values = json.loads(json.dumps(values, default=lambda o: getattr(o, "value", str(o))))
    if seq2seq:
        return Seq2SeqTrainingArguments(**values, generation_config=generation_config)
    return TrainingArguments(**values)


def seed(args: TrainingArguments) -> None:
    """HF's seeding: ``set_seed``, or ``enable_full_determinism`` when ``full_determinism`` is on."""
    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


def call_model_init(trainer: Any, trial: Any = None) -> nn.Module:
    """``model_init()`` or ``model_init(trial)``, whichever it takes; None is an error."""
    if trainer.model_init is None:
        raise ConfigError("model_init", "is required here", "pass model_init=... to Trainer")
    takes_trial = len(inspect.signature(trainer.model_init).parameters) == 1
    model = trainer.model_init(trial) if takes_trial else trainer.model_init()
    if model is None:
        raise ConfigError("model_init", "returned None", "return a model instance")
    return model


def inspect_model(trainer: Any) -> None:
    """HF's defaults read off the model class: which inputs are labels, whether it returns a loss without them."""
    model, args = trainer.model, trainer.args
    trainer.task = infer_task(model)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = args.use_cache  # HF: no KV cache while training and evaluating
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trainer.label_names = find_labels(type(base)) if args.label_names is None else list(args.label_names)
    trainer.can_return_loss = can_return_loss(type(base))
    forward = getattr(base, "forward", None)
    trainer.model_accepts_loss_kwargs = forward is not None and any(
        p.kind is p.VAR_KEYWORD for p in inspect.signature(forward).parameters.values()
    )


def fresh_model(trainer: Any, trial: Any = None) -> None:
    """Seed, build the model with ``model_init`` and re-read what depends on it (HF does this per train())."""
    seed(trainer.args)
    trainer.model = trainer.call_model_init(trial)
    inspect_model(trainer)


def label_smoother(args: TrainingArguments, task: str, model: Any = None) -> Any:
    """HF's ``label_smoother`` for ``label_smoothing_factor`` (None when it is 0).

    As in transformers, a multi-label model (``problem_type="multi_label_classification"``) gets none,
    with transformers' warning: smoothing class indices does not apply to its 0/1 label vectors.
    """
    if not args.label_smoothing_factor:
        return None
    if getattr(getattr(model, "config", None), "problem_type", None) == "multi_label_classification":
        warnings.warn("Label smoothing is not compatible with multi-label classification. "
                      "Disabling label smoothing for this training run.", UserWarning, stacklevel=3)
        return None
    from hf_lightning.losses.label_smoothing import LabelSmoothingLoss

    return LabelSmoothingLoss(args.label_smoothing_factor, task_spec(task).shift_labels)


def default_collator(processing_class: Any) -> Callable:
    """HF's default: pad with the tokenizer when there is one, else ``default_data_collator``."""
    if processing_class is not None and hasattr(processing_class, "pad"):
        return DataCollatorWithPadding(processing_class)
    return default_data_collator


def split_callbacks(callbacks: list[Any] | None) -> tuple[list[Any], list[Any]]:
    """(transformers ``TrainerCallback``s, Lightning ``Callback``s): both kinds may be passed to ``Trainer``."""
    import lightning.pytorch as pl

    callbacks = list(callbacks or [])
    lightning = [cb for cb in callbacks if isinstance(cb, pl.Callback)]
    return [cb for cb in callbacks if not isinstance(cb, pl.Callback)], lightning


def check_construction(trainer: Any) -> None:
    """transformers' argument checks in ``Trainer.__init__`` (same exception types), one line each.

    Caught at construction, as transformers catches them, not after a model was built and data loaded.
    """
    args = trainer.args
    if args.batch_eval_metrics and trainer.compute_metrics is not None \
            and "compute_result" not in inspect.signature(trainer.compute_metrics).parameters:
        raise ConfigError("batch_eval_metrics", "needs a compute_metrics that takes a compute_result argument "
                          "(True after the last batch)", "add compute_result: bool = False to compute_metrics")
    if str(getattr(args.save_strategy, "value", args.save_strategy)) == "best" and args.metric_for_best_model is None:
        raise ConfigError("metric_for_best_model", "must be provided when using 'best' save_strategy",
                          "set metric_for_best_model (e.g. 'eval_loss')")
    if trainer.optimizer_cls_and_kwargs is not None and trainer.optimizer is not None:
        raise RuntimeError("optimizers: passing both `optimizers` and `optimizer_cls_and_kwargs` arguments is "
                           "incompatible. Fix: pass one of them")
    if trainer.model_init is not None and (trainer.optimizer is not None or trainer.lr_scheduler is not None):
        raise RuntimeError("optimizers: passing a `model_init` is incompatible with providing the `optimizers` "
                           "argument. Fix: subclass Trainer and override create_optimizer_and_scheduler")
