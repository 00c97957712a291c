"""``evaluate``, ``evaluation_loop`` and ``predict``: HF's evaluation, streamed over Lightning's model.

During training the loop runs on the ``TrainerModule``'s forward model (wrapped by the strategy, every
rank in step, even batch counts from ``hf_lightning.evaluation``); outside training on the bare model.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from transformers import EvalPrediction
from transformers.trainer_utils import EvalLoopOutput, PredictionOutput, denumpify_detensorize, speed_metrics

from hf_lightning.evaluation import PaddingTrimmer, eval_batches, eval_rows
from hf_lightning.facade.reporting import all_reduce_number
from hf_lightning.log import get_logger
from hf_lightning.losses._utils import batch_size_of
from hf_lightning.losses.base import split_labels
from hf_lightning.metrics import PredictionCollector
from hf_lightning.optim import set_optimizer_mode, step_plateau

__all__ = ["evaluate", "evaluate_during_training", "evaluation_loop", "predict"]

logger = get_logger(__name__)


def evaluate(
    trainer: Any, eval_dataset: str | Dataset | dict[str, Dataset] | None, ignore_keys: list[str] | None,
    metric_key_prefix: str,
) -> dict[str, float]:
    """HF's ``evaluate``: the loop, speed metrics, ``log`` and ``on_evaluate``; a dict of datasets runs each."""
    if isinstance(eval_dataset, dict):
        out: dict[str, float] = {}
        for name, dataset in eval_dataset.items():
            out.update(trainer.evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}"))
        return out
    if eval_dataset is None and isinstance(trainer.eval_dataset, dict):  # by name, as HF (each loader is kept)
        return {k: v for name in trainer.eval_dataset
                for k, v in trainer.evaluate(name, ignore_keys, f"{metric_key_prefix}_{name}").items()}
    trainer._memory_tracker.start()  # skip_memory_metrics=False: HF's eval_mem_* metrics
    dataloader = trainer.get_eval_dataloader(eval_dataset)
    trainer.callback_handler.eval_dataloader = dataloader
    start = time.time()
    output = trainer.evaluation_loop(
        dataloader, description="Evaluation", prediction_loss_only=True if trainer.compute_metrics is None else None,
        ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix,
    )
    _add_speed_metrics(trainer, output, metric_key_prefix, start)
    trainer.log(output.metrics)
    trainer.control = trainer.callback_handler.on_evaluate(trainer.args, trainer.state, trainer.control, output.metrics)
    trainer._memory_tracker.stop_and_update_metrics(output.metrics)  # after on_evaluate, as in HF
    return output.metrics


def predict(trainer: Any, test_dataset: Dataset, ignore_keys: list[str] | None, metric_key_prefix: str) -> PredictionOutput:
    """HF's ``predict``: the loop with predictions kept, speed metrics and ``on_predict``."""
    trainer._memory_tracker.start()  # skip_memory_metrics=False: HF's test_mem_* metrics
    dataloader = trainer.get_test_dataloader(test_dataset)
    start = time.time()
    output = trainer.evaluation_loop(dataloader, description="Prediction", ignore_keys=ignore_keys,
                                     metric_key_prefix=metric_key_prefix)
    _add_speed_metrics(trainer, output, metric_key_prefix, start)
    trainer.control = trainer.callback_handler.on_predict(trainer.args, trainer.state, trainer.control, output.metrics)
    trainer._memory_tracker.stop_and_update_metrics(output.metrics)
    return PredictionOutput(predictions=output.predictions, label_ids=output.label_ids, metrics=output.metrics)


def evaluate_during_training(trainer: Any) -> dict[str, float]:
    """The bridge's evaluation at HF's cadence: every eval dataset, then a plateau scheduler's step."""
    if isinstance(trainer.eval_dataset, dict):
        metrics: dict[str, float] = {}
        for name in trainer.eval_dataset:  # by name, as HF: a persistent-worker loader is kept per name
            metrics.update(trainer.evaluate(name, metric_key_prefix=f"eval_{name}"))
    else:
        metrics = trainer.evaluate()
    step_plateau(trainer.lr_scheduler, metrics, trainer.args.metric_for_best_model)
    trainer._report_to_hp_search(trainer._trial, trainer.state.global_step, metrics)  # HF: at every evaluation
    return metrics


def evaluation_loop(
    trainer: Any, dataloader: DataLoader, description: str, prediction_loss_only: bool | None,
    ignore_keys: list[str] | None, metric_key_prefix: str,
) -> EvalLoopOutput:
    """Stream over the dataloader; predictions are kept only when asked for (HF's signature).

    ``prediction_loss_only=None`` means ``args.prediction_loss_only``, as in HF: ``evaluate`` passes
    True without ``compute_metrics`` (so nothing but the loss is kept), ``predict`` passes None.
    """
    model = _eval_model(trainer)
    set_optimizer_mode(trainer.optimizer, train=False)
    args = trainer.args
    loss_only = prediction_loss_only if prediction_loss_only is not None else args.prediction_loss_only
    logger.info("***** Running %s *****", description)
    logger.debug("  batch size = %s, prediction_loss_only = %s", dataloader.batch_size, loss_only)
    include = list(args.include_for_metrics or [])
    compute_metrics, preprocess = trainer.compute_metrics, trainer.preprocess_logits_for_metrics
    batch_metrics = bool(args.batch_eval_metrics) and compute_metrics is not None
    collector = None
    # predict() keeps the predictions also with batch_eval_metrics (HF); the batches are then preprocessed here.
    if not loss_only and (not batch_metrics or description == "Prediction"):
        collector = PredictionCollector(None if batch_metrics else preprocess, include, args.eval_do_concat_batches,
                                        args.eval_accumulation_steps)
        collector.reset(eval_rows(dataloader))
    loss_sum, samples, loss_samples = 0.0, 0, 0
    metrics: dict[str, Any] = {}
    main_input = getattr(trainer.model, "main_input_name", "input_ids")
    trim = PaddingTrimmer(dataloader)
    batches = eval_batches(model, dataloader, trainer._pl_trainer if trainer.is_in_train else None)
    upcoming = next(batches, None)
    while upcoming is not None:
        inputs, upcoming = upcoming, next(batches, None)
        real = trim(inputs)
        if real is None:  # only rows repeated for even batch counts: forward in step with the other ranks
            model(**split_labels(model, inputs)[0])
            continue
        inputs = real
        loss, logits, labels = trainer.prediction_step(model, inputs, prediction_loss_only=loss_only,
                                                       ignore_keys=ignore_keys)
        rows = batch_size_of(inputs)
        samples += rows
        if loss is not None:  # HF: the mean of per-sample copies of each batch's mean loss
            loss_sum += float(loss) * rows
            loss_samples += rows
        if batch_metrics and logits is not None and preprocess is not None:
            logits = preprocess(logits, labels)
        if batch_metrics and logits is not None and labels is not None:
            extra = {"losses": loss.repeat(rows) if "loss" in include and loss is not None else None,
                     "inputs": inputs.get(main_input) if "inputs" in include else None}
            last = upcoming is None or trim.left == 0  # what follows may be only repeated rows
            metrics = compute_metrics(EvalPrediction(logits, labels, **extra), compute_result=last)
        if collector is not None and logits is not None:
            collector.update(logits, labels, inputs.get(main_input), loss)
        trainer.control = trainer.callback_handler.on_prediction_step(args, trainer.state, trainer.control)
    model.train(False)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    samples = int(all_reduce_number(samples, device))
    loss_samples = int(all_reduce_number(loss_samples, device))
    loss_sum = all_reduce_number(loss_sum, device)
    prediction = collector.eval_prediction() if collector is not None else None
    if compute_metrics is not None and not batch_metrics and prediction is not None \
            and prediction.predictions is not None and prediction.label_ids is not None:
        metrics = compute_metrics(prediction)
    metrics = denumpify_detensorize(dict(metrics or {}))
    if loss_samples > 0:
        metrics["loss"] = loss_sum / loss_samples
    if getattr(trainer, "model_preparation_time", None) is not None:
        metrics["model_preparation_time"] = trainer.model_preparation_time
    metrics = {k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}": v
               for k, v in metrics.items()}
    return EvalLoopOutput(
        predictions=prediction.predictions if prediction is not None else None,
        label_ids=prediction.label_ids if prediction is not None else None,
        metrics=metrics,
        num_samples=samples,
    )


def _eval_model(trainer: Any) -> nn.Module:
    module = trainer._module
    if module is None:
        start = time.time()
        trainer.model.to(trainer.args.device)
        if trainer.model_preparation_time is None:  # HF reports it once it evaluated before training
            trainer.model_preparation_time = round(time.time() - start, 4)
        model = trainer.model
    else:
        model = module.forward_model
    args = trainer.args
    if not trainer.is_in_train and (args.fp16_full_eval or args.bf16_full_eval):
        # HF: evaluation outside training casts the model itself (it stays cast afterwards, as in transformers)
        model.to(dtype=torch.float16 if args.fp16_full_eval else torch.bfloat16)
    return model


def _add_speed_metrics(trainer: Any, output: EvalLoopOutput, prefix: str, start: float) -> None:
    batches = math.ceil(output.num_samples / trainer.args.per_device_eval_batch_size) if output.num_samples else 0
    output.metrics.update(speed_metrics(prefix, start, num_samples=output.num_samples, num_steps=batches))
