"""``Trainer``: the Hugging Face ``Trainer`` API, translated onto one Lightning fit loop.

This class translates and hosts; it does not loop. Every method users override in transformers
(``compute_loss``, ``training_step``, ``prediction_step``, ``evaluation_loop``, ``create_optimizer``,
``create_scheduler``, ``get_train_dataloader``, ``save_model``, ``log``, ``_prepare_inputs``, ...) is
here with HF's signature, and its default is a call into one part under ``hf_lightning/facade/``
(data loaders, optimization, steps, evaluation loop, checkpoints, reporting, the fit driver). The
parts call back through ``self.<method>``, so an override changes exactly what it changes in
transformers. ``train()`` builds a ``TrainerModule`` (the LightningModule that calls these hooks) and a
``lightning.Trainer`` from ``TrainingArguments`` (``plan.py``) and calls ``fit``; HF's callback events
and log / evaluate / save cadence come from the bridge (``callbacks/hf_bridge.py``), which calls back
into ``log``, ``evaluate_during_training`` and ``save_during_training`` here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from transformers import (
    DefaultFlowCallback,
    EvalPrediction,
    PrinterCallback,
    ProgressCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from transformers.trainer import Trainer as _HFTrainer
from transformers.trainer_callback import CallbackHandler
from transformers.trainer_utils import EvalLoopOutput, PredictionOutput, TrainerMemoryTracker, TrainOutput

from hf_lightning.args import TrainingArguments
from hf_lightning.callbacks.hf_bridge import HFCallbackBridge, update_best_metric
from hf_lightning.errors import ConfigError
from hf_lightning.evaluation import move_to_device
from hf_lightning.facade import (
    checkpoints,
    eval_loop,
    fit,
    loaders,
    optimization,
    reporting,
    setup,
    steps,
)
from hf_lightning.facade.accelerate_shim import AccelerateShim
from hf_lightning.facade.hp_search import HyperparameterSearchMixin
from hf_lightning.facade.module import TrainerModule
from hf_lightning.log import set_verbosity_from_args

__all__ = ["Trainer"]


class Trainer(HyperparameterSearchMixin):
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
            self.args = setup.convert_args(self.args)
        set_verbosity_from_args(self.args)
        # transformers' own tracker: with skip_memory_metrics=False, *_mem_* metrics as HF reports them
        self._memory_tracker = TrainerMemoryTracker(self.args.skip_memory_metrics)
        self._memory_tracker.start()
        setup.seed(self.args)
        if model is None and model_init is None:
            raise ConfigError("model", "Trainer needs a model or a model_init", "pass model=... or model_init=...")
        self.model_init = model_init
        self.model = model if model is not None else self.call_model_init()
        self.processing_class = processing_class if processing_class is not None else tokenizer
        self.data_collator = data_collator or setup.default_collator(self.processing_class)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.compute_loss_func = compute_loss_func
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self._user_optimizers = optimizers[0] is not None
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        setup.check_construction(self)  # the argument checks of transformers' Trainer.__init__
        setup.inspect_model(self)  # task, label_names, can_return_loss, model_accepts_loss_kwargs
        self.model_preparation_time: float | None = None
        self.label_smoother = setup.label_smoother(self.args, self.task, self.model)
        self.accelerator = AccelerateShim(self)
        self.control = TrainerControl()
        self.current_flos = 0.0
        self._parameter_counts: dict[int, int] = {}  # per model, for floating_point_ops; emptied by train()
        hf_callbacks, self.lightning_callbacks = setup.split_callbacks(callbacks)
        self.callback_handler = CallbackHandler(
            [DefaultFlowCallback, *hf_callbacks], self.model, self.processing_class, self.optimizer, self.lr_scheduler
        )
        # After the user's callbacks, as in HF: PrinterCallback pops total_flos from the logs it is given,
        # so callbacks before it see total_flos and callbacks after it do not. ProgressCallback is HF's
        # progress bar (Lightning's own is off in the facade), so remove_callback(ProgressCallback) works.
        self.add_callback(PrinterCallback if self.args.disable_tqdm is not False else ProgressCallback)
        self.state = TrainerState(
            is_local_process_zero=True, is_world_process_zero=True, stateful_callbacks=checkpoints.stateful_callbacks(self)
        )
        self._module: TrainerModule | None = None  # the LightningModule of the current/last train()
        self._pl_trainer: Any = None  # the lightning.Trainer of the current/last train()
        self._bridge: HFCallbackBridge | None = None
        self._resumed_from: str | None = None
        self.hp_search_backend = None
        self.is_in_train = False
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)
        self._memory_tracker.stop_and_update_metrics()

    # ================================================================ model
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

    def call_model_init(self, trial: Any = None) -> nn.Module:
        return setup.call_model_init(self, trial)

    def _fresh_model(self, trial: Any = None) -> None:
        """Seed and rebuild the model with ``model_init`` (HF does this per ``train()`` and per trial)."""
        setup.fresh_model(self, trial)

    # ================================================================ data
    def get_train_dataloader(self) -> DataLoader:
        return loaders.train_dataloader(self)

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        """The evaluation loader for ``eval_dataset``: a dataset, the name of one in a dict ``eval_dataset``, or None."""
        return loaders.eval_dataloader(self, eval_dataset)

    def get_test_dataloader(self, test_dataset: Dataset) -> DataLoader:
        return self.get_eval_dataloader(test_dataset)

    def _remove_unused_columns(self, dataset: Any) -> Any:
        return loaders.remove_unused_columns(self, dataset)

    def num_examples(self, dataloader: DataLoader) -> int:
        """Examples behind ``dataloader`` (its dataset's length, else batches x train batch size), as in HF.

        A ``get_train_dataloader`` override may return any sized iterable (no ``.dataset``/``.batch_size``).
        """
        try:
            return len(dataloader.dataset)  # type: ignore[arg-type]
        except (NameError, AttributeError, TypeError):
            return len(dataloader) * self.args.per_device_train_batch_size

    # ================================================================ optimizer and scheduler
    def create_optimizer(self) -> torch.optim.Optimizer:
        """HF's optimizer for ``args`` (or the one passed in ``optimizers``/``optimizer_cls_and_kwargs``)."""
        return optimization.create_optimizer(self)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        return optimization.create_scheduler(self, num_training_steps, optimizer)

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.create_optimizer()
        self.create_scheduler(num_training_steps=num_training_steps, optimizer=self.optimizer)

    # ================================================================ hooks users override
    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return move_to_device(inputs, self.accelerator.device)

    def _prepare_context_parallel_inputs(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[Callable, dict]:
        """HF's context-parallel hook: a no-op context here (sequence sharding is a strategy concern)."""
        return contextlib.nullcontext, inputs

    def compute_loss_context_manager(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        ctx = self.autocast_smart_context_manager()
        if not isinstance(ctx, contextlib.nullcontext):
            stack.enter_context(ctx)
        return stack

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> Any:
        return contextlib.nullcontext()  # Lightning's precision plugin already runs training_step under autocast

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """HF's loss: the model's own, ``compute_loss_func`` or label smoothing; a per-item mean."""
        return steps.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """HF's training step: forward, loss, ``accelerator.backward``; returns the detached loss."""
        return steps.training_step(self, model, inputs, num_items_in_batch)

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """Loss, logits and labels for one evaluation batch (HF's contract and structures)."""
        return steps.prediction_step(self, model, inputs, prediction_loss_only, ignore_keys)

    @property
    def neftune_hook_handle(self) -> Any:
        """Exists (as in HF) once a run with ``neftune_noise_alpha`` started, so ``hasattr`` tells."""
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

    # called by TrainerModule -------------------------------------------------------------
    def training_step_is_overridden(self) -> bool:
        return type(self).training_step is not Trainer.training_step

    def call_training_step(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        return steps.call_training_step(self, model, inputs, self._module.current_items)

    # ================================================================ train
    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> TrainOutput:
        """Train on Lightning; returns HF's ``TrainOutput``."""
        return fit.train(self, resume_from_checkpoint, trial)

    def _load_best_model(self) -> None:
        checkpoints.load_best_model(self)

    # called by the bridge at HF's cadence -------------------------------------------------
    def evaluate_during_training(self) -> dict[str, float] | None:
        return eval_loop.evaluate_during_training(self)

    def determine_best_metric(self, metrics: dict[str, float]) -> bool:
        """HF's best-metric bookkeeping; True when this evaluation is a new best."""
        return update_best_metric(self.args, self.state, metrics)

    def save_during_training(self) -> None:
        checkpoints.save_during_training(self, save_model_overridden=type(self).save_model is not Trainer.save_model)

    # ================================================================ evaluate / predict
    def evaluate(
        self, eval_dataset: str | Dataset | dict[str, Dataset] | None = None, ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """HF's ``evaluate``: a dataset, the name of one in a dict ``eval_dataset``, a dict of them, or None."""
        return eval_loop.evaluate(self, eval_dataset, ignore_keys, metric_key_prefix)

    def evaluation_loop(
        self, dataloader: DataLoader, description: str, prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """Stream over the dataloader; predictions are kept only when asked for (HF's signature)."""
        return eval_loop.evaluation_loop(self, dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)

    def predict(
        self, test_dataset: Dataset, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ) -> PredictionOutput:
        return eval_loop.predict(self, test_dataset, ignore_keys, metric_key_prefix)

    # ================================================================ logging and saving
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Append to ``state.log_history``, send to the loggers, fire ``on_log`` (HF's contract)."""
        reporting.log(self, logs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the model (and processing class) with ``save_pretrained``."""
        checkpoints.save_model(self, output_dir)

    def floating_point_ops(self, inputs: dict[str, Any]) -> float:
        """FLOPs of one forward+backward on ``inputs`` (6 x tokens x non-embedding parameters); override to refine."""
        return reporting.floating_point_ops(self.model, inputs, self._parameter_counts)

    def store_flos(self) -> None:
        """Move the FLOPs counted since the last call into ``state.total_flos`` (summed over ranks)."""
        reporting.store_flos(self)

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

    # HF's draft model card (README.md in output_dir), written by transformers' own implementation. Bound
    # when this module is imported, so a script or test suite that later replaces ``transformers.Trainer``
    # with this class does not make the call find itself (it recursed until RecursionError).
    create_model_card = _HFTrainer.create_model_card
    # restore_callback_states_from_checkpoint: transformers' own restore (and its log messages), run on resume.
    _load_callback_state = _HFTrainer._load_callback_state
    # include_num_input_tokens_seen: transformers' own count ("all" or "non_padding"), summed over ranks.
    _track_num_input_tokens = _HFTrainer._track_num_input_tokens

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def is_local_process_zero(self) -> bool:
        return self.accelerator.is_local_main_process

    # ================================================================ callbacks
    def add_callback(self, callback: TrainerCallback | type) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: TrainerCallback | type) -> TrainerCallback | None:
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: TrainerCallback | type) -> None:
        self.callback_handler.remove_callback(callback)
