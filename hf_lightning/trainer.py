"""``Trainer``: the Hugging Face ``Trainer`` API, translated onto one Lightning fit loop.

This class translates and hosts; it does not loop. ``train()`` builds a ``TrainerModule`` (the
LightningModule that calls this class's overridable hooks) and a ``lightning.Trainer`` from
``TrainingArguments`` (``plan.py``), then calls ``fit``. HF's callback events and its log / evaluate /
save cadence come from the bridge (``callbacks/hf_bridge.py``), which calls back into ``log``,
``evaluate`` and the checkpoint writer here. Users override the same methods as in transformers:
``compute_loss``, ``training_step``, ``prediction_step``, ``evaluation_loop``, ``create_optimizer``,
``create_scheduler``, ``save_model``, ``log``, ``_prepare_inputs``, ``compute_loss_context_manager``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from transformers import (
    DataCollatorWithPadding,
    DefaultFlowCallback,
    EvalPrediction,
    PrinterCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    default_data_collator,
)
from transformers.trainer_callback import CallbackHandler, ExportableState
from transformers.trainer_utils import EvalLoopOutput, PredictionOutput, TrainOutput, set_seed, speed_metrics

from hf_lightning.args import TrainingArguments
from hf_lightning.callbacks.hf_bridge import HFCallbackBridge, update_best_metric
from hf_lightning.callbacks.hf_checkpoint import LIGHTNING_CKPT, TRAINER_STATE, save_hf_checkpoint
from hf_lightning.checkpoint_io import (
    cleanup_incomplete,
    delete_checkpoints_except,
    latest_checkpoint,
    list_checkpoints,
    validate_resume_path,
)
from hf_lightning.data import build_dataloader
from hf_lightning.errors import ConfigError
from hf_lightning.evaluation import PaddingTrimmer, eval_batches, move_to_device
from hf_lightning.losses._utils import batch_size_of
from hf_lightning.losses.base import count_batch_items, split_labels
from hf_lightning.metrics import PredictionCollector
from hf_lightning.models import save_model_weights
from hf_lightning.optim import build_optimizer, build_scheduler, step_plateau
from hf_lightning.tasks import infer_task, task_spec
from hf_lightning.trainer_module import LightningAccelerator, TrainerModule, accepts_parameter

__all__ = ["Trainer"]


class Trainer:
    """Drop-in for ``transformers.Trainer`` (same constructor, methods and attributes)."""

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        model_init: Callable[..., nn.Module] | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        optimizer_cls_and_kwargs: tuple[type, dict] | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.args = args if args is not None else TrainingArguments(output_dir="trainer_output")
        if not isinstance(self.args, TrainingArguments):
            self.args = _convert_args(self.args)
        set_seed(self.args.seed) if not self.args.full_determinism else _full_determinism(self.args.seed)
        if model is None and model_init is None:
            raise ConfigError("model", "Trainer needs a model or a model_init", "pass model=... or model_init=...")
        self.model_init = model_init
        self.model = model if model is not None else self.call_model_init()
        self.processing_class = processing_class if processing_class is not None else tokenizer
        self.data_collator = data_collator or self._default_collator()
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_loss_func = compute_loss_func
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self._user_optimizers = optimizers[0] is not None
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        self.task = infer_task(self.model)
        self._inspect_model()
        self.model_preparation_time: float | None = None
        self.label_smoother = None
        if self.args.label_smoothing_factor:
            from hf_lightning.losses.label_smoothing import LabelSmoothingLoss

            self.label_smoother = LabelSmoothingLoss(self.args.label_smoothing_factor, task_spec(self.task).shift_labels)
        self.accelerator = LightningAccelerator(self)
        self.control = TrainerControl()
        self.current_flos = 0.0
        hf_callbacks = [cb for cb in (callbacks or []) if not _is_lightning_callback(cb)]
        self.lightning_callbacks = [cb for cb in (callbacks or []) if _is_lightning_callback(cb)]
        self.callback_handler = CallbackHandler(
            [DefaultFlowCallback, *hf_callbacks], self.model, self.processing_class, self.optimizer, self.lr_scheduler
        )
        if self.args.disable_tqdm is not False:
            # After the user's callbacks, as in HF: PrinterCallback pops total_flos from the logs it is
            # given, so callbacks before it see total_flos and callbacks after it do not.
            self.add_callback(PrinterCallback)
        self.state = TrainerState(
            is_local_process_zero=True, is_world_process_zero=True, stateful_callbacks=self._stateful_callbacks()
        )
        self._module: TrainerModule | None = None
        self._pl_trainer: Any = None
        self._bridge: HFCallbackBridge | None = None
        self._resumed_from: str | None = None
        self.hp_search_backend = None
        self.is_in_train = False
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)

    # ================================================================ set-up helpers
    def _stateful_callbacks(self) -> list[Any]:
        return [cb for cb in self.callback_handler.callbacks + [self.control] if isinstance(cb, ExportableState)]

    def _inspect_model(self) -> None:
        """HF's defaults read off the model class: which inputs are labels, whether it returns a loss without them."""
        from transformers.utils import can_return_loss, find_labels

        if getattr(self.model, "config", None) is not None:
            self.model.config.use_cache = self.args.use_cache  # HF: no KV cache while training and evaluating
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.label_names = find_labels(type(model)) if self.args.label_names is None else list(self.args.label_names)
        self.can_return_loss = can_return_loss(type(model))
        forward = getattr(model, "forward", None)
        self.model_accepts_loss_kwargs = forward is not None and any(
            p.kind is p.VAR_KEYWORD for p in __import__("inspect").signature(forward).parameters.values()
        )

    @property
    def current_gradient_accumulation_steps(self) -> int:
        """What a ``training_step`` override should divide its loss by before ``accelerator.backward``: 1.

        transformers' own ``training_step`` divides by the window's micro-batch count when the model
        ignores ``num_items_in_batch``; here every loss handed to ``backward`` is taken as its
        micro-batch's mean and normalised over the whole window by the engine (token-exact), so an
        override copied from transformers stays exact. Dividing by ``args.gradient_accumulation_steps``
        yourself would divide twice.
        """
        return 1

    def _fresh_model(self, trial: Any = None) -> None:
        """Seed, build the model with ``model_init`` and re-read what depends on it (HF does this per train())."""
        set_seed(self.args.seed) if not self.args.full_determinism else _full_determinism(self.args.seed)
        self.model = self.call_model_init(trial)
        self.task = infer_task(self.model)
        self._inspect_model()

    def call_model_init(self, trial: Any = None) -> nn.Module:
        if self.model_init is None:
            raise ConfigError("model_init", "is required here", "pass model_init=... to Trainer")
        takes_trial = len(__import__("inspect").signature(self.model_init).parameters) == 1
        model = self.model_init(trial) if takes_trial else self.model_init()
        if model is None:
            raise ConfigError("model_init", "returned None", "return a model instance")
        return model

    def _default_collator(self) -> Callable:
        tokenizer = self.processing_class
        if tokenizer is not None and hasattr(tokenizer, "pad"):
            return DataCollatorWithPadding(tokenizer)
        return default_data_collator

    def _signature_columns(self) -> list[str]:
        import inspect

        forward = getattr(self.model, "forward", self.model.__call__)
        columns = list(inspect.signature(forward).parameters)
        return columns + ["label", "label_ids", "labels"] + list(self.label_names)

    def _remove_unused_columns(self, dataset: Any) -> Any:
        if not self.args.remove_unused_columns or not hasattr(dataset, "column_names"):
            return dataset
        keep = set(self._signature_columns())
        unused = [c for c in dataset.column_names if c not in keep]
        if unused and len(unused) == len(dataset.column_names):
            raise ConfigError(
                "train_dataset",
                f"none of its columns {dataset.column_names} are model inputs",
                "tokenize the dataset first (e.g. dataset.map(tokenizer_fn, batched=True))",
            )
        return dataset.remove_columns(unused) if unused else dataset

    def _check_dataset(self, dataset: Any, field: str) -> None:
        if dataset is None:
            return
        try:
            n = len(dataset)
        except TypeError:
            return
        if n == 0:
            raise ConfigError(field, "is empty", "pass a dataset with at least one example")

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ConfigError("train_dataset", "Trainer.train() needs a train_dataset", "pass train_dataset=...")
        self._check_dataset(self.train_dataset, "train_dataset")
        dataset = self._remove_unused_columns(self.train_dataset)
        strategy = self.args.train_sampling_strategy
        lengths = None
        if strategy == "group_by_length":
            lengths = self._lengths(dataset)
        return build_dataloader(
            dataset,
            self.args.per_device_train_batch_size,
            self.data_collator,
            train=True,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            shuffle=strategy != "sequential",
            num_workers=self.args.dataloader_num_workers,
            drop_last=self.args.dataloader_drop_last,
            group_by_length=strategy == "group_by_length",
            lengths=lengths,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )

    def _lengths(self, dataset: Any) -> list[int]:
        column = self.args.length_column_name
        if hasattr(dataset, "column_names") and column in dataset.column_names:
            return list(dataset[column])
        return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]

    def get_eval_dataloader(self, eval_dataset: Dataset | None = None) -> DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ConfigError("eval_dataset", "evaluation needs an eval_dataset", "pass eval_dataset=... to Trainer")
        self._check_dataset(dataset, "eval_dataset")
        dataset = self._remove_unused_columns(dataset)
        return build_dataloader(
            dataset, self.args.per_device_eval_batch_size, self.data_collator, train=False,
            num_workers=self.args.dataloader_num_workers, drop_last=self.args.dataloader_drop_last,
        )

    def get_test_dataloader(self, test_dataset: Dataset) -> DataLoader:
        return self.get_eval_dataloader(test_dataset)

    # ================================================================ optimizer and scheduler
    def create_optimizer(self) -> torch.optim.Optimizer:
        """HF's optimizer for ``args`` (or the one passed in ``optimizers``/``optimizer_cls_and_kwargs``)."""
        if self.optimizer is None:
            owner = self._module if self._module is not None else self.model
            if self.optimizer_cls_and_kwargs is not None:
                from transformers import Trainer as HFTrainer

                from hf_lightning.optim import decay_parameter_groups

                cls, kwargs = self.optimizer_cls_and_kwargs
                decay = set(HFTrainer.get_decay_parameter_names(None, owner))
                self.optimizer = cls(decay_parameter_groups(owner.named_parameters(), decay, self.args.weight_decay), **kwargs)
            else:
                self.optimizer = build_optimizer(
                    owner,
                    optim=str(getattr(self.args.optim, "value", self.args.optim)),
                    learning_rate=self.args.learning_rate,
                    weight_decay=self.args.weight_decay,
                    adam_beta1=self.args.adam_beta1,
                    adam_beta2=self.args.adam_beta2,
                    adam_epsilon=self.args.adam_epsilon,
                    optim_args=self.args.optim_args,
                    model_for_optimizer=self.model,
                    no_decay_prefixes=("loss_fn.", "host_params.", "host_modules."),
                )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        if self.lr_scheduler is None:
            self.lr_scheduler = build_scheduler(
                optimizer or self.optimizer,
                str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)),
                num_training_steps=num_training_steps,
                warmup_steps=self.args.warmup_steps,
                lr_scheduler_kwargs=self.args.lr_scheduler_kwargs,
            )
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.create_optimizer()
        self.create_scheduler(num_training_steps=num_training_steps, optimizer=self.optimizer)

    # ================================================================ hooks users override
    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        device = self.accelerator.device
        return move_to_device(inputs, device)

    def _prepare_context_parallel_inputs(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[Callable, dict]:
        """HF's context-parallel hook: a no-op context here (sequence sharding is a strategy concern)."""
        return contextlib.nullcontext, inputs

    @property
    def neftune_hook_handle(self) -> Any:
        """Exists (as in HF) once a run with ``neftune_noise_alpha`` started; seeds test ``hasattr``."""
        if self.args.neftune_noise_alpha is None or self._module is None:
            raise AttributeError("neftune_hook_handle")
        from hf_lightning.neftune import _HANDLE_ATTR

        return getattr(self.model, _HANDLE_ATTR, None)

    def _activate_neftune(self, model: nn.Module) -> nn.Module:
        """Put NEFTune back on ``model`` (while training only: outside fit no hook is left behind)."""
        if self.args.neftune_noise_alpha is not None and self.is_in_train:
            from hf_lightning.neftune import activate_neftune

            activate_neftune(self.accelerator.unwrap_model(model), self.args.neftune_noise_alpha)
        return model

    def _deactivate_neftune(self, model: nn.Module) -> None:
        from hf_lightning.neftune import deactivate_neftune

        deactivate_neftune(self.accelerator.unwrap_model(model))

    def compute_loss_context_manager(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        ctx = self.autocast_smart_context_manager()
        if not isinstance(ctx, contextlib.nullcontext):
            stack.enter_context(ctx)
        return stack

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> Any:
        # Lightning's precision plugin already runs training_step under autocast.
        return contextlib.nullcontext()

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """HF's loss: the model's own, ``compute_loss_func`` or label smoothing; a per-item mean."""
        labels = None
        if (self.label_smoother is not None or self.compute_loss_func is not None) and "labels" in inputs:
            inputs = dict(inputs)
            labels = inputs.pop("labels")
        outputs = model(**inputs)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        elif labels is not None:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            loss = self.label_smoother.loss_from_logits(logits, labels)
        else:
            if isinstance(outputs, dict) and "loss" not in outputs:
                raise ConfigError(
                    "train_dataset", f"the model returned no loss (outputs: {list(outputs.keys())})",
                    "include a 'labels' column or override compute_loss",
                )
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """HF's training step: forward, loss, ``accelerator.backward``; returns the detached loss."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self._call_compute_loss(model, inputs, num_items_in_batch)
        if self._module is not None:
            self._module.backward_items_mean(loss)  # exact even when a transformers-4 override calls super()
        else:
            self.accelerator.backward(loss)
        return loss.detach()

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """Loss, logits and labels for one evaluation batch (HF's contract and structures).

        Labels are the ``label_names`` columns (a tuple when there are several, e.g. QA's start and end
        positions); logits are every output but the loss and ``ignore_keys`` (a tuple unless only one).
        """
        has_labels = bool(self.label_names) and all(inputs.get(k) is not None for k in self.label_names)
        return_loss = inputs.get("return_loss")
        loss_without_labels = not self.label_names and (self.can_return_loss if return_loss is None else return_loss)
        inputs = self._prepare_inputs(inputs)
        if ignore_keys is None:
            config = getattr(self.model, "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", ["cache"])) if config is not None else []
        # Taken before compute_loss: overrides (the seeds' label smoothing) pop "labels" from inputs.
        labels = None
        if has_labels or loss_without_labels:
            labels = tuple(inputs.get(name) for name in self.label_names)
            labels = labels[0] if len(labels) == 1 else labels
        with torch.no_grad(), self.compute_loss_context_manager():
            if has_labels or loss_without_labels:
                loss, outputs = self._call_compute_loss(model, inputs, None, return_outputs=True)
                loss = loss.detach().mean()
            else:
                loss, outputs = None, model(**inputs)
        if prediction_loss_only:
            return loss, None, None
        return loss, _logits_from(outputs, ignore_keys, drop_loss=loss is not None), labels

    def _call_compute_loss(self, model: nn.Module, inputs: dict, num_items: Any, return_outputs: bool = False) -> Any:
        kwargs: dict[str, Any] = {"return_outputs": return_outputs} if return_outputs else {}
        if accepts_parameter(self.compute_loss, "num_items_in_batch"):
            items = num_items if num_items is not None else self._items(inputs)
            kwargs["num_items_in_batch"] = items
        return self.compute_loss(model, inputs, **kwargs)

    def _items(self, inputs: dict[str, Any]) -> torch.Tensor:
        return count_batch_items(inputs, task_spec(self.task).shift_labels)

    # called by TrainerModule -------------------------------------------------------------
    def training_step_is_overridden(self) -> bool:
        return type(self).training_step is not Trainer.training_step

    def call_training_step(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        # By keyword: overrides written as training_step(self, model, inputs, **kwargs) (seed 000) take it
        # so, and transformers-4 overrides without the parameter get the two-argument call.
        if accepts_parameter(self.training_step, "num_items_in_batch"):
            return self.training_step(model, inputs, num_items_in_batch=self._module._current_items)
        return self.training_step(model, inputs)

    # ================================================================ train
    def _build_module(self) -> TrainerModule:
        args = self.args
        module = TrainerModule(
            self, self.model, self.task,
            neftune_noise_alpha=args.neftune_noise_alpha,
            gradient_checkpointing=False,
            torch_compile=args.torch_compile,
            stop_on_nonfinite_loss=args.stop_on_nonfinite_loss,
        )
        if args.gradient_checkpointing:
            kwargs = args.gradient_checkpointing_kwargs or {"use_reentrant": False}
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        module.hf_logging = True
        return module

    def _resolve_resume(self, resume_from_checkpoint: str | bool | None) -> str | None:
        output_dir = Path(self.args.output_dir)
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            if (
                output_dir.is_dir() and list_checkpoints(output_dir) and not self.args.overwrite_output_dir
            ):
                raise ConfigError(
                    "output_dir",
                    f"{str(output_dir)!r} already holds checkpoints of another run",
                    "pass resume_from_checkpoint=True to continue it, overwrite_output_dir=True, or a new output_dir",
                )
            return None
        if resume_from_checkpoint is True:
            if output_dir.is_dir():
                cleanup_incomplete(output_dir)
            latest = latest_checkpoint(output_dir) if output_dir.is_dir() else None
            if latest is None:
                raise ConfigError("resume_from_checkpoint", f"no valid checkpoint found in {str(output_dir)!r}",
                                  "train without resuming first, or pass the checkpoint's path")
            return str(latest)
        return str(validate_resume_path(resume_from_checkpoint))

    def _check_eval_setup(self) -> None:
        args = self.args
        metric = args.metric_for_best_model
        if metric and self.compute_metrics is None and metric not in ("loss", "eval_loss"):
            raise ConfigError(
                "metric_for_best_model", f"{metric!r} is never produced: without compute_metrics evaluation reports only eval_loss",
                "pass compute_metrics returning it, or use metric_for_best_model='eval_loss'",
            )
        evaluating = str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "no" or args.eval_on_start
        if evaluating and self.eval_dataset is None:
            raise ConfigError("eval_strategy", f"is {getattr(args.eval_strategy, 'value', args.eval_strategy)!r} but no eval_dataset was given",
                              "pass eval_dataset=... or set eval_strategy='no'")

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> TrainOutput:
        """Train on Lightning; returns HF's ``TrainOutput``."""
        import lightning.pytorch as pl

        from hf_lightning.plan import lightning_trainer_kwargs, total_optimizer_steps

        args = self.args
        if resume_from_checkpoint is None and args.resume_from_checkpoint:
            resume_from_checkpoint = args.resume_from_checkpoint
        self._check_eval_setup()
        resume_dir = self._resolve_resume(resume_from_checkpoint)
        self._resumed_from = resume_dir
        if self.model_init is not None and trial is None:  # HF: a fresh model for every train() call
            self._fresh_model()
        if trial is not None:
            self._hp_search_setup(trial)
        train_loader = self.get_train_dataloader()
        max_steps = total_optimizer_steps(args, len(train_loader))
        self.state = TrainerState(stateful_callbacks=self._stateful_callbacks(), train_batch_size=args.per_device_train_batch_size)
        self.current_flos = 0.0
        if resume_dir is not None and (Path(resume_dir) / TRAINER_STATE).is_file():
            self.state = TrainerState.load_from_json(str(Path(resume_dir) / TRAINER_STATE))
        self.state.is_hyper_param_search = trial is not None
        self._module = self._build_module()
        if not self._user_optimizers:  # built per train() call, over the module's parameters
            self.optimizer, self.lr_scheduler = None, None
        self._bridge = HFCallbackBridge(self, drive=True)
        plan = lightning_trainer_kwargs(args, self.model, max_steps)
        plan["callbacks"] = [self._bridge, *_resume_callbacks(self), *self.lightning_callbacks, *plan.get("callbacks", [])]
        self._pl_trainer = pl.Trainer(**plan)
        self.callback_handler.model = self.model
        self.is_in_train = True
        start = time.time()
        ckpt_path = str(Path(resume_dir) / LIGHTNING_CKPT) if resume_dir else None
        try:
            self._pl_trainer.fit(self._module, train_dataloaders=train_loader, ckpt_path=ckpt_path)
        finally:
            self.is_in_train = False
        self.state = self._bridge.host.state
        return self._finish_training(start, len(train_loader.dataset), max_steps)

    def _finish_training(self, start: float, num_samples: int, max_steps: int) -> TrainOutput:
        state, bridge = self.state, self._bridge
        self.store_flos()
        steps_run = state.global_step - bridge.initial_step
        metrics = speed_metrics(
            "train", start, num_samples=num_samples * self.args.num_train_epochs if self.args.max_steps <= 0 else
            max_steps * self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps,
            num_steps=steps_run,
        )
        metrics["total_flos"] = float(state.total_flos)
        metrics["train_loss"] = bridge.training_loss()
        self.log(metrics)
        if self.args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self._load_best_model()
        if self.args.save_total_limit == 1 and state.best_model_checkpoint is not None and self.is_world_process_zero():
            # HF: with room for one checkpoint, the best one is what stays once training is over.
            delete_checkpoints_except(self.args.output_dir, state.best_model_checkpoint)
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        nonfinite = getattr(self._module, "nonfinite_stop_message", None)
        if nonfinite:
            metrics["stopped_nonfinite"] = 1.0
        return TrainOutput(state.global_step, metrics["train_loss"], metrics)

    def _load_best_model(self) -> None:
        from transformers.modeling_utils import load_state_dict as hf_load

        best = Path(self.state.best_model_checkpoint)
        weights = best / "model.safetensors"
        if not weights.is_file():
            return
        self.model.load_state_dict(hf_load(str(weights)), strict=False)

    # ================================================================ bridge host
    def evaluate_during_training(self) -> dict[str, float] | None:
        if isinstance(self.eval_dataset, dict):
            metrics: dict[str, float] = {}
            for name, dataset in self.eval_dataset.items():
                metrics.update(self.evaluate(dataset, metric_key_prefix=f"eval_{name}"))
        else:
            metrics = self.evaluate()
        step_plateau(self.lr_scheduler, metrics, self.args.metric_for_best_model)
        return metrics

    def determine_best_metric(self, metrics: dict[str, float]) -> bool:
        """HF's best-metric bookkeeping; True when this evaluation is a new best."""
        return update_best_metric(self.args, self.state, metrics)

    def save_during_training(self) -> None:
        self.store_flos()  # the checkpoint's trainer_state.json carries total_flos up to this step, as in HF
        state = self.state
        if state.best_global_step:
            # HF points at the best step's folder when that step was saved (this one, or an earlier one)
            best = Path(self.args.output_dir) / f"checkpoint-{state.best_global_step}"
            if state.best_global_step == state.global_step or best.is_dir():
                state.best_model_checkpoint = str(best)
        current: dict[str, list[dict]] = {}  # the checkpoint carries each callback's current state
        for callback in self._stateful_callbacks():
            current.setdefault(type(callback).__name__, []).append(callback.state())
        state.stateful_callbacks.update({name: s[0] if len(s) == 1 else s for name, s in current.items()})
        final = save_hf_checkpoint(
            self._pl_trainer, self._module, self.args.output_dir, state, args=self.args,
            processing_class=self.processing_class, save_total_limit=self.args.save_total_limit,
            protect=[state.best_model_checkpoint, self._resumed_from], save_only_model=self.args.save_only_model,
        )
        if type(self).save_model is not Trainer.save_model and final.is_dir():
            # HF writes every checkpoint's model through save_model(dir, _internal_call=True); an
            # override (extra files, another format) gets the same call on the finished folder.
            self.save_model(str(final), _internal_call=True)

    # ================================================================ evaluate / predict
    def evaluate(
        self, eval_dataset: Dataset | dict[str, Dataset] | None = None, ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        if isinstance(eval_dataset, dict):
            out: dict[str, float] = {}
            for name, dataset in eval_dataset.items():
                out.update(self.evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}"))
            return out
        if eval_dataset is None and isinstance(self.eval_dataset, dict):
            return self.evaluate(self.eval_dataset, ignore_keys, metric_key_prefix)
        dataloader = self.get_eval_dataloader(eval_dataset)
        self.callback_handler.eval_dataloader = dataloader
        start = time.time()
        output = self.evaluation_loop(
            dataloader, description="Evaluation", prediction_loss_only=True if self.compute_metrics is None else None,
            ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix,
        )
        batches = math.ceil(output.num_samples / self.args.per_device_eval_batch_size) if output.num_samples else 0
        output.metrics.update(speed_metrics(metric_key_prefix, start, num_samples=output.num_samples, num_steps=batches))
        self.log(output.metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, output.metrics)
        return output.metrics

    def _eval_model(self) -> nn.Module:
        module = self._module
        if module is None:
            start = time.time()
            self.model.to(self.args.device)
            if self.model_preparation_time is None:  # HF reports it once it evaluated before training
                self.model_preparation_time = round(time.time() - start, 4)
            return self.model
        return module.forward_model

    def evaluation_loop(
        self, dataloader: DataLoader, description: str, prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """Stream over the dataloader; predictions are kept only when asked for (HF's signature).

        ``prediction_loss_only=None`` means ``args.prediction_loss_only``, as in HF: ``evaluate`` passes
        True without ``compute_metrics`` (so nothing but the loss is kept), ``predict`` passes None.
        """
        from transformers.trainer_utils import denumpify_detensorize

        model = self._eval_model()
        args = self.args
        loss_only = prediction_loss_only if prediction_loss_only is not None else args.prediction_loss_only
        include = list(args.include_for_metrics or [])
        batch_metrics = bool(args.batch_eval_metrics) and self.compute_metrics is not None
        collector = None
        if not loss_only and not batch_metrics:
            collector = PredictionCollector(self.preprocess_logits_for_metrics, include, args.eval_do_concat_batches)
        loss_sum, samples, loss_samples = 0.0, 0, 0
        metrics: dict[str, Any] = {}
        main_input = getattr(self.model, "main_input_name", "input_ids")
        trainer = self._pl_trainer if self.is_in_train else None
        trim = PaddingTrimmer(dataloader)
        batches = eval_batches(model, dataloader, trainer)
        upcoming = next(batches, None)
        while upcoming is not None:
            inputs, upcoming = upcoming, next(batches, None)
            real = trim(inputs)
            if real is None:  # only rows repeated for even batch counts: forward in step with the other ranks
                model(**split_labels(model, inputs)[0])
                continue
            inputs = real
            loss, logits, labels = self.prediction_step(model, inputs, prediction_loss_only=loss_only,
                                                        ignore_keys=ignore_keys)
            rows = batch_size_of(inputs)
            samples += rows
            if loss is not None:  # HF: the mean of per-sample copies of each batch's mean loss
                loss_sum += float(loss) * rows
                loss_samples += rows
            if batch_metrics and logits is not None and labels is not None:
                if self.preprocess_logits_for_metrics is not None:
                    logits = self.preprocess_logits_for_metrics(logits, labels)
                extra = {"losses": loss.repeat(rows) if "loss" in include and loss is not None else None,
                         "inputs": inputs.get(main_input) if "inputs" in include else None}
                last = upcoming is None or trim.left == 0  # what follows may be only repeated rows
                metrics = self.compute_metrics(EvalPrediction(logits, labels, **extra), compute_result=last)
            elif collector is not None and logits is not None:
                collector.update(logits, labels, inputs.get(main_input), loss)
            self.control = self.callback_handler.on_prediction_step(args, self.state, self.control)
        model.train(False)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        samples = int(_all_reduce_int(samples, device))
        loss_samples = int(_all_reduce_int(loss_samples, device))
        loss_sum = _all_reduce_int(loss_sum, device)
        prediction = collector.eval_prediction() if collector is not None else None
        if self.compute_metrics is not None and prediction is not None and prediction.predictions is not None \
                and prediction.label_ids is not None:
            metrics = self.compute_metrics(prediction)
        metrics = denumpify_detensorize(dict(metrics or {}))
        if loss_samples > 0:
            metrics["loss"] = loss_sum / loss_samples
        if getattr(self, "model_preparation_time", None) is not None:
            metrics["model_preparation_time"] = self.model_preparation_time
        metrics = {k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}": v
                   for k, v in metrics.items()}
        return EvalLoopOutput(
            predictions=prediction.predictions if prediction is not None else None,
            label_ids=prediction.label_ids if prediction is not None else None,
            metrics=metrics,
            num_samples=samples,
        )

    def predict(
        self, test_dataset: Dataset, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ) -> PredictionOutput:
        dataloader = self.get_test_dataloader(test_dataset)
        start = time.time()
        output = self.evaluation_loop(dataloader, description="Prediction", ignore_keys=ignore_keys,
                                      metric_key_prefix=metric_key_prefix)
        batches = math.ceil(output.num_samples / self.args.per_device_eval_batch_size) if output.num_samples else 0
        output.metrics.update(speed_metrics(metric_key_prefix, start, num_samples=output.num_samples, num_steps=batches))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, output.metrics)
        return PredictionOutput(predictions=output.predictions, label_ids=output.label_ids, metrics=output.metrics)

    # ================================================================ logging and saving
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Append to ``state.log_history``, send to the loggers, fire ``on_log`` (HF's contract)."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        output = {**logs, "step": self.state.global_step}
        self.state.log_history.append(output)
        trainer = self._pl_trainer
        if trainer is not None and trainer.loggers:
            numeric = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
            for logger in trainer.loggers:
                logger.log_metrics(numeric, step=self.state.global_step)
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the model (and processing class) with ``save_pretrained``."""
        output_dir = output_dir or self.args.output_dir
        if self._module is not None and self._pl_trainer is not None and self.is_in_train:
            written = self._module.save_hf_pretrained(output_dir, processing_class=self.processing_class)
        else:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            save_model_weights(self.model, output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            written = output_dir
        if written is not None:  # the rank that wrote the model (a collective under FSDP2)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def floating_point_ops(self, inputs: dict[str, Any]) -> float:
        """FLOPs of one forward+backward on ``inputs``: 6 x input tokens x non-embedding parameters.

        The usual transformer estimate, as HF reports it in ``total_flos``; 0 for models that are not
        ``PreTrainedModel``s or batches without the model's main input. Override for a better count.
        """
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0.0
        return 6.0 * inputs[main_input].numel() * self.model.num_parameters(exclude_embeddings=True)

    def store_flos(self) -> None:
        """Move the FLOPs counted since the last call into ``state.total_flos`` (summed over ranks)."""
        flos = self.current_flos
        if self._module is not None:
            flos = _all_reduce_int(flos, self._module.device)
        self.state.total_flos += flos
        self.current_flos = 0.0

    # The helpers HF's example scripts end with (log_metrics, save_metrics, save_state, ...): transformers
    # binds these plain functions as methods, and so do we; they only need args, state and the optimizer.
    from transformers.trainer_pt_utils import (  # noqa: E402
        get_learning_rates,
        get_num_trainable_parameters,
        get_optimizer_group,
        log_metrics,
        metrics_format,
        save_metrics,
        save_state,
    )

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """HF's draft model card (README.md in output_dir), written by transformers' own implementation."""
        import transformers

        transformers.Trainer.create_model_card(self, *args, **kwargs)  # type: ignore[arg-type]

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def is_local_process_zero(self) -> bool:
        return self.accelerator.is_local_main_process

    def num_examples(self, dataloader: DataLoader) -> int:
        """Examples behind ``dataloader`` (its dataset's length, else batches x batch size), as in HF."""
        try:
            return len(dataloader.dataset)  # type: ignore[arg-type]
        except (NameError, AttributeError, TypeError):
            return len(dataloader) * (dataloader.batch_size or 1)

    # ================================================================ callbacks
    def add_callback(self, callback: TrainerCallback | type) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: TrainerCallback | type) -> TrainerCallback | None:
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: TrainerCallback | type) -> None:
        self.callback_handler.remove_callback(callback)

    # ================================================================ hyperparameter search
    def _hp_search_setup(self, trial: Any) -> None:
        params = trial if isinstance(trial, dict) else getattr(trial, "params", {})
        for key, value in params.items():
            if not hasattr(self.args, key):
                raise ConfigError("hp_space", f"unknown TrainingArguments field {key!r}", "use TrainingArguments field names")
            old = getattr(self.args, key)
            setattr(self.args, key, type(old)(value) if old is not None and not isinstance(old, bool) else value)
        if self.model_init is not None:
            self._fresh_model(trial)


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


def _all_reduce_int(value: float, device: torch.device) -> float:
    from hf_lightning.accumulation import all_reduce_sum

    return float(all_reduce_sum(torch.tensor(float(value), device=device)))


def _resume_callbacks(host: Trainer) -> list[Any]:
    from hf_lightning.callbacks.preemption import PreemptionCheckpoint
    from hf_lightning.callbacks.resume import ExactResumeCallback

    class HFPreemption(PreemptionCheckpoint):
        """On SIGTERM / Ctrl-C write a ``checkpoint-N`` folder, which ``resume_from_checkpoint=True`` finds."""

        def save(self, trainer: Any, pl_module: Any) -> Path:
            host.save_during_training()
            return Path(host.args.output_dir) / f"checkpoint-{host.state.global_step}"

    return [ExactResumeCallback(), HFPreemption()]


def _is_lightning_callback(callback: Any) -> bool:
    import lightning.pytorch as pl

    return isinstance(callback, pl.Callback)


def _full_determinism(seed: int) -> None:
    from transformers.trainer_utils import enable_full_determinism

    enable_full_determinism(seed)


def _convert_args(args: Any) -> TrainingArguments:
    """Accept a plain ``transformers.TrainingArguments`` too (scripts that import it from transformers)."""
    import dataclasses

    import transformers

    if not isinstance(args, transformers.TrainingArguments):
        raise ConfigError("args", f"expected TrainingArguments, got {type(args).__name__}", "pass hf_lightning.TrainingArguments")
    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init}
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    for key, value in list(values.items()):
        if hasattr(value, "value") and not isinstance(value, (int, float, str)):
            values[key] = value.value
        if hasattr(value, "to_dict") and key in {"accelerator_config"}:
            values[key] = None
    values = {k: v for k, v in values.items() if k not in {"parallelism_config", "accelerator_config"}}
    return TrainingArguments(**json.loads(json.dumps(values, default=lambda o: getattr(o, "value", str(o)))))
