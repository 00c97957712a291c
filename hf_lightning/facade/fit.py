"""The fit driver behind ``Trainer.train()``: one ``lightning.Trainer.fit`` run, HF's ``TrainOutput`` back.

``train`` checks the evaluation set-up, resolves the resume point, builds the loader, the
``TrainerModule`` and the Lightning trainer from ``plan.py``, and runs ``fit``; HF's events and its
log / evaluate / save cadence come from the bridge (``callbacks/hf_bridge.py``) during ``fit``.
"""

from __future__ import annotations

import contextlib
import time
from functools import partial
from pathlib import Path
from typing import Any

from transformers import TrainerState
from transformers.trainer_utils import TrainOutput, compare_trainer_and_checkpoint_args, speed_metrics

from hf_lightning.callbacks.hf_bridge import HFCallbackBridge
from hf_lightning.checkpoint_interop import InteropCheckpointIO
from hf_lightning.checkpoint_io import wait_for_durability
from hf_lightning.checkpoint_io_plugin import use_safe_loading
from hf_lightning.errors import ConfigError
from hf_lightning.facade import checkpoints, hf_resume, loaders
from hf_lightning.facade.module import TrainerModule
from hf_lightning.log import get_logger
from hf_lightning.loggers import TrackerExtras, run_hyperparameters
from hf_lightning.models import enable_gradient_checkpointing
from hf_lightning.run_lock import RunLockCallback
from hf_lightning.tune.explore import ApplyTrialHyperparameters

__all__ = ["build_module", "check_eval_setup", "train"]

logger = get_logger(__name__)


def train(trainer: Any, resume_from_checkpoint: str | bool | None, trial: Any) -> TrainOutput:
    """Train on Lightning; returns HF's ``TrainOutput``."""
    import lightning.pytorch as pl

    from hf_lightning.plan import lightning_trainer_kwargs, total_optimizer_steps

    args = trainer.args
    trainer._memory_tracker.start()  # skip_memory_metrics=False: HF's train_mem_* metrics
    if resume_from_checkpoint is None and args.resume_from_checkpoint:
        resume_from_checkpoint = args.resume_from_checkpoint
    if trial is not None:  # a search trial: its parameters, its run folder, model_init(trial)
        trainer._hp_search_setup(trial)
    elif trainer.model_init is not None:  # HF: a fresh model for every train() call
        trainer._fresh_model()
    check_eval_setup(trainer)
    resume_dir = checkpoints.resolve_resume(args, resume_from_checkpoint)
    trainer._resumed_from = resume_dir
    train_loader = trainer.get_train_dataloader()
    batches = loaders.batches_per_epoch(train_loader)
    if batches is None and (args.max_steps is None or args.max_steps <= 0):
        raise ConfigError(  # HF's words, so scripts that match them keep working
            "max_steps", f"args.max_steps must be set to a positive value if dataloader does not have a length, "
            f"was {args.max_steps}", "set max_steps > 0 when training on an IterableDataset or a streamed dataset",
        )
    max_steps = total_optimizer_steps(args, batches or 0)
    trainer.state = TrainerState(stateful_callbacks=checkpoints.stateful_callbacks(trainer),
                                 train_batch_size=args.per_device_train_batch_size)
    trainer.current_flos = 0.0
    trainer._parameter_counts = {}  # the model may have changed since the last train() (adapters, resizing)
    if resume_dir is not None and (Path(resume_dir) / checkpoints.TRAINER_STATE).is_file():
        trainer.state = TrainerState.load_from_json(str(Path(resume_dir) / checkpoints.TRAINER_STATE))
        compare_trainer_and_checkpoint_args(args, trainer.state)  # HF's warning for changed batch size, steps
        trainer._load_callback_state()  # HF: only with restore_callback_states_from_checkpoint=True
    trainer.state.is_hyper_param_search = trial is not None
    trainer._module = build_module(trainer)
    if not trainer._user_optimizers:  # built per train() call, over the module's parameters
        trainer.optimizer, trainer.lr_scheduler = None, None
    trainer._bridge = HFCallbackBridge(trainer, drive=True)
    plan = lightning_trainer_kwargs(args, trainer.model, max_steps)
    run_lock = RunLockCallback(args.output_dir, "output_dir", keep_after_fit=True)  # one run per output_dir
    plan["callbacks"] = [run_lock, trainer._bridge,
                         *checkpoints.resume_callbacks(trainer), *trainer.lightning_callbacks,
                         *plan.get("callbacks", [])]
    if trial is not None:  # a PBT clone trains with its own explored values, not the restored donor's
        plan["callbacks"].insert(0, ApplyTrialHyperparameters(
            lambda: {"learning_rate": args.learning_rate, "weight_decay": args.weight_decay}))
    if plan["logger"]:  # HF's tracker integrations also log the arguments and (MLflow) the model
        plan["callbacks"].append(TrackerExtras(run_hyperparameters(args, trainer.model), save_model=trainer.save_model))
    trainer._pl_trainer = pl.Trainer(**plan)
    # resume_from_checkpoint never unpickles code; checkpoint folders carry HF's files, and HF's folders resume
    checkpoint_io = use_safe_loading(trainer._pl_trainer, InteropCheckpointIO())
    if isinstance(checkpoint_io, InteropCheckpointIO):
        checkpoint_io.foreign = partial(hf_resume.lightning_checkpoint_from_hf, trainer, train_loader, batches or 0)
    elif resume_dir is not None and hf_resume.is_hf_checkpoint(Path(resume_dir)):
        raise ConfigError("resume_from_checkpoint", f"{resume_dir!r} was written by transformers.Trainer, which this "
                          f"strategy ({type(trainer._pl_trainer.strategy).__name__}) cannot resume",
                          "resume it on one device or with DDP, or restart from its model weights")
    trainer.callback_handler.model = trainer.model
    _log_start(trainer, train_loader, max_steps, resume_dir)
    trainer.is_in_train = True
    start = time.time()
    ckpt_path = str(Path(resume_dir) / checkpoints.LIGHTNING_CKPT) if resume_dir else None
    try:
        try:
            trainer._pl_trainer.fit(trainer._module, train_dataloaders=train_loader, ckpt_path=ckpt_path)
        except BaseException:
            with contextlib.suppress(Exception):  # the training error is the one to report
                wait_for_durability()
            raise
        finally:
            trainer.is_in_train = False
        # Every checkpoint on disk and rotated before anything reads or prunes the folder (or the run ends).
        wait_for_durability()
        trainer.state = trainer._bridge.host.state
        trainer._bridge.begin_without_steps()  # resumed a finished run: HF still begins (and ends) training
        metrics = _train_metrics(trainer, start, trainer.num_examples(train_loader) if batches is not None else 0,
                                 max_steps)
        # HF's TrainerMemoryTracker names its stage after the calling function: "train" is this one.
        trainer._memory_tracker.stop_and_update_metrics(metrics)
        return _finish(trainer, metrics)
    finally:
        run_lock.release()  # after the best model is reloaded and the folder pruned


def check_eval_setup(trainer: Any) -> None:
    """Fail before training when evaluation is asked for but cannot produce what is needed."""
    args = trainer.args
    strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
    evaluates = str(strategy) != "no" or args.eval_on_start
    metric = args.metric_for_best_model
    # Without evaluations in training the metric is never read: transformers trains, and so do we.
    if evaluates and metric and trainer.compute_metrics is None and metric not in ("loss", "eval_loss"):
        raise ConfigError(
            "metric_for_best_model", f"{metric!r} is never produced: without compute_metrics evaluation reports only eval_loss",
            "pass compute_metrics returning it, or use metric_for_best_model='eval_loss'",
        )
    if evaluates and trainer.eval_dataset is None:
        raise ConfigError("eval_strategy", f"is {strategy!r} but no eval_dataset was given",
                          "pass eval_dataset=... or set eval_strategy='no'")


def build_module(trainer: Any) -> TrainerModule:
    """The ``TrainerModule`` for this run: the trainer's model and hooks, with HF's per-step logging."""
    args = trainer.args
    module = TrainerModule(
        trainer, trainer.model, trainer.task,
        neftune_noise_alpha=args.neftune_noise_alpha,
        gradient_checkpointing=False,
        torch_compile=_compile_settings(args),
        stop_on_nonfinite_loss=args.stop_on_nonfinite_loss,
    )
    if args.activation_checkpointing:  # transformers 5's name; gradient_checkpointing is its mirrored alias
        enable_gradient_checkpointing(trainer.model, args.activation_checkpointing_kwargs, "activation_checkpointing")
    module.hf_logging = True
    return module


def _compile_settings(args: Any) -> bool | dict[str, str]:
    """``torch.compile`` keyword arguments from HF's fields (transformers turns ``torch_compile`` on when a
    backend or mode is given and defaults the backend to inductor)."""
    if not args.torch_compile:
        return False
    kwargs = {"backend": args.torch_compile_backend, "mode": args.torch_compile_mode}
    return {k: v for k, v in kwargs.items() if v is not None} or True


def _log_start(trainer: Any, loader: Any, max_steps: int, resume_dir: str | None) -> None:
    """HF's "Running training" summary, at info level."""
    args = trainer.args
    logger.info("***** Running training *****")
    streamed = loaders.batches_per_epoch(loader) is None
    logger.info("  Num examples = %s", "unknown (a stream)" if streamed else f"{trainer.num_examples(loader):,}")
    logger.info("  Instantaneous batch size per device = %s", args.per_device_train_batch_size)
    logger.info("  Gradient accumulation steps = %s", args.gradient_accumulation_steps)
    logger.info("  Total optimization steps = %s", f"{max_steps:,}")
    if resume_dir is not None:
        logger.info("  Resuming from %s", resume_dir)
    logger.debug("  Lightning trainer: %s, strategy %s, precision %s", type(trainer._pl_trainer).__name__,
                 type(trainer._pl_trainer.strategy).__name__, trainer._pl_trainer.precision)


def _train_metrics(trainer: Any, start: float, num_samples: int, max_steps: int) -> dict[str, float]:
    """HF's train metrics: speed, ``total_flos`` and the run's mean ``train_loss``."""
    state, bridge, args = trainer.state, trainer._bridge, trainer.args
    trainer.store_flos()
    steps_run = state.global_step - bridge.initial_step
    metrics = speed_metrics(
        "train", start, num_samples=num_samples * args.num_train_epochs if args.max_steps <= 0 else
        max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps,
        num_steps=steps_run,
    )
    metrics["total_flos"] = float(state.total_flos)
    metrics["train_loss"] = bridge.training_loss()
    return metrics


def _finish(trainer: Any, metrics: dict[str, float]) -> TrainOutput:
    """HF's end of training: train metrics logged, best model reloaded, ``on_train_end``."""
    state, args = trainer.state, trainer.args
    trainer.log(metrics)  # HF's ProgressCallback (or PrinterCallback) prints this line
    logger.info("Training completed: %d optimizer steps, train_loss %s", state.global_step, metrics["train_loss"])
    if args.load_best_model_at_end and state.best_model_checkpoint is not None:
        trainer._load_best_model()
    checkpoints.keep_only_best(trainer)
    trainer.control = trainer.callback_handler.on_train_end(args, trainer.state, trainer.control)
    if trainer._module is not None and trainer._module.nonfinite_stop_message:
        metrics["stopped_nonfinite"] = 1.0
    return TrainOutput(state.global_step, metrics["train_loss"], metrics)
