"""HFLightningModule: any Hugging Face model as a LightningModule.

The module does forward, loss and logging. Accumulation, precision and strategies stay Lightning
Trainer settings; the only arithmetic we add on top is the token-exact normalisation described in
``accumulation.py``, so that every loss normalises by the items of the whole accumulation window.

Names follow HF so people coming from ``transformers.Trainer`` find what they expect: ``loss``,
``learning_rate``, ``grad_norm``, ``epoch``, ``eval_loss``, ``eval_<metric>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn

from hf_lightning.accumulation import WindowCounter, all_reduce_gradients, scale_gradients
from hf_lightning.errors import ConfigError
from hf_lightning.evaluation import PaddingTrimmer
from hf_lightning.losses.base import ModelLoss, count_batch_items, split_labels
from hf_lightning.metrics import PredictionCollector, build_task_metrics
from hf_lightning.models import build_model, save_model_weights
from hf_lightning.optim import (
    OptimName,
    SchedulerName,
    build_optimizer,
    build_scheduler,
    lightning_optimizers,
    step_plateau,
)
from hf_lightning.tasks import TaskName, task_spec

__all__ = ["HFLightningModule", "LossResult"]


@dataclass
class LossResult:
    """What one forward pass yields: the mean loss over ``items`` scored items, and the outputs."""

    loss: torch.Tensor
    outputs: Any
    items: torch.Tensor


LOSS_CLASS_KEY = "hf_lightning_loss_class"


class HFLightningModule(pl.LightningModule):
    """Wrap a Hugging Face model for training with Lightning.

    Args:
        model: a Hub id or local directory (``from_pretrained``), a config dict with ``model_type``
            (random init), or, from Python, a model instance.
        task: what the model is for; picks the Auto class, label shifting and metrics.
        model_kwargs: extra keyword arguments for ``from_pretrained`` or the config.
        loss: a loss from ``hf_lightning.losses`` (focal, distillation, ...); None uses the model's own.
        label_smoothing_factor: HF's label smoothing, applied when ``loss`` is None.
        optim: optimizer name as in ``transformers.TrainingArguments.optim``.
        optim_args: extra optimizer arguments (HF's ``optim_args``), a dict or "k=v,k=v".
        learning_rate: peak learning rate.
        weight_decay: applied to all parameters except biases and normalisation weights.
        adam_beta1: Adam beta1.
        adam_beta2: Adam beta2.
        adam_epsilon: Adam epsilon.
        lr_scheduler_type: scheduler name as in ``transformers.get_scheduler``.
        lr_scheduler_kwargs: extra scheduler arguments.
        warmup_steps: warmup optimizer steps; a value below 1 is a ratio of all steps (HF 5).
        warmup_ratio: the older HF name for a warmup ratio.
        num_labels: number of classes (linked from the data module in configs).
        id2label: class names by id (linked from the data module).
        vocab_size: tokenizer size (linked); a model built from a config gets it, a smaller
            pretrained embedding is resized to it.
        pad_token_id: the tokenizer's pad id (linked); set on the model config if it has none.
        neftune_noise_alpha: NEFTune noise scale; None switches it off.
        compute_metrics: HF's ``compute_metrics(EvalPrediction) -> dict``, merged into the evaluation
            metrics (``eval_<name>``); only then are logits kept (after ``preprocess_logits_for_metrics``).
        preprocess_logits_for_metrics: HF's ``(logits, labels) -> smaller logits``.
        adversarial: FGM settings, e.g. ``{"method": "fgm", "epsilon": 1.0}``.
        gradient_checkpointing: use the HF model's own (non-reentrant) gradient checkpointing.
        torch_compile: compile the model's forward with ``torch.compile``.
        stop_on_nonfinite_loss: stop after this many optimizer steps in a row with a non-finite
            loss (None: never stop, only keep non-finite values out of the logs).
    """

    def __init__(
        self,
        model: str | dict[str, Any] = "bert-base-uncased",
        task: TaskName = "sequence-classification",
        model_kwargs: dict[str, Any] | None = None,
        loss: ModelLoss | None = None,
        label_smoothing_factor: float = 0.0,
        optim: OptimName = "adamw_torch",
        optim_args: dict[str, Any] | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.0,
        adam_beta1: float = 0.9,
        adam_beta2: float = 0.999,
        adam_epsilon: float = 1e-8,
        lr_scheduler_type: SchedulerName = "linear",
        lr_scheduler_kwargs: dict[str, Any] | None = None,
        warmup_steps: float = 0,
        warmup_ratio: float | None = None,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        neftune_noise_alpha: float | None = None,
        adversarial: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        torch_compile: bool = False,
        stop_on_nonfinite_loss: int | None = None,
        compute_metrics: Callable[[Any], dict[str, float]] | None = None,
        preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "host", "compute_metrics", "preprocess_logits_for_metrics"]
                                  + (["model"] if isinstance(model, nn.Module) else []))
        self.task = task
        self.spec = task_spec(task)
        self.num_labels = num_labels
        self.model = self._build(model, model_kwargs, num_labels, id2label, vocab_size, pad_token_id)
        if gradient_checkpointing:
            self._enable_gradient_checkpointing()
        if label_smoothing_factor and loss is None:
            from hf_lightning.losses import LabelSmoothingLoss

            loss = LabelSmoothingLoss(label_smoothing_factor, shift_labels=self.spec.shift_labels)
        self.loss_fn = loss
        self.adversarial = self._check_adversarial(adversarial)
        if neftune_noise_alpha is not None and neftune_noise_alpha <= 0:
            raise ConfigError("neftune_noise_alpha", f"must be > 0, got {neftune_noise_alpha}", "use e.g. 5.0, or null to disable")
        self.neftune_noise_alpha = neftune_noise_alpha
        self.torch_compile = torch_compile
        self.stop_on_nonfinite_loss = stop_on_nonfinite_loss
        labels = num_labels or getattr(getattr(self.model, "config", None), "num_labels", None)
        self.task_metrics = build_task_metrics(task, labels if self.spec.has_num_labels else None)
        # A user compute_metrics (HF style, numpy in) and its collector; None keeps evaluation streaming.
        self.compute_metrics = compute_metrics
        self.prediction_collector: PredictionCollector | None = (
            PredictionCollector(preprocess_logits_for_metrics) if compute_metrics is not None else None
        )
        # When True the HF-style facade logs (on its own cadence); the module only feeds the progress bar.
        self.hf_logging = False
        self.eval_prefix = "eval"
        self.last_eval_metrics: dict[str, float] = {}
        self.last_train_log: dict[str, float] = {}
        self._train_window = WindowCounter()
        self._eval_window = WindowCounter()
        self._eval_trimmers: dict[int, PaddingTrimmer] = {}
        self._backward_done = False
        self._zero_pending = False
        self._in_own_backward = False
        self._current_items: torch.Tensor | None = None
        self._nonfinite_streak = 0
        self._sharded = False
        self._forward_model: nn.Module | None = None
        self._skip_rest_of_epoch = False
        self._grad_norm: float | None = None
        # False until an evaluation batch carries labels: a label-free loss (contrastive) must not
        # report accuracy/F1 of nothing as 0.
        self._eval_has_labels = False
        # True when training_step runs its own backward (HF-style facade): gradients are then synced
        # by us, not by DDP's reducer (see on_train_start).
        self.manual_grad_sync = self.adversarial is not None

    # ------------------------------------------------------------------ building
    def _build(self, model, model_kwargs, num_labels, id2label, vocab_size, pad_token_id) -> nn.Module:
        kwargs = dict(model_kwargs or {})
        if self.spec.has_num_labels:
            if num_labels is not None:
                kwargs.setdefault("num_labels", num_labels)
            if id2label:
                id2label = {int(k): v for k, v in id2label.items()}
                kwargs.setdefault("id2label", id2label)
                kwargs.setdefault("label2id", {v: k for k, v in id2label.items()})
        if isinstance(model, dict) and vocab_size is not None:
            model = {**model, "vocab_size": model.get("vocab_size", vocab_size)}
        built = build_model(model, self.task, kwargs)
        config = getattr(built, "config", None)
        if config is not None and self.spec.has_num_labels and num_labels is not None and config.num_labels != num_labels:
            raise ConfigError(
                "model.num_labels",
                f"the model has {config.num_labels} labels but the data has {num_labels}",
                "set num_labels to match the data, or use a checkpoint trained for these labels",
            )
        if vocab_size is not None and hasattr(built, "get_input_embeddings"):
            embeddings = built.get_input_embeddings()
            if embeddings is not None and embeddings.num_embeddings < vocab_size:
                built.resize_token_embeddings(vocab_size)
        if config is not None and pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = pad_token_id
        return built

    def _enable_gradient_checkpointing(self) -> None:
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise ConfigError("gradient_checkpointing", f"{type(self.model).__name__} does not support it", "set it to false")
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @staticmethod
    def _check_adversarial(adversarial: dict[str, Any] | None) -> dict[str, Any] | None:
        if not adversarial:
            return None
        method = adversarial.get("method", "fgm")
        if method != "fgm":
            raise ConfigError("adversarial.method", f"unknown method {method!r}", "use 'fgm'")
        unknown = set(adversarial) - {"method", "epsilon", "emb_name"}
        if unknown:
            raise ConfigError("adversarial", f"unknown keys {sorted(unknown)}", "use method, epsilon, emb_name")
        return {"epsilon": float(adversarial.get("epsilon", 1.0)), "emb_name": adversarial.get("emb_name")}

    def setup(self, stage: str) -> None:
        from hf_lightning.strategies import destroy_process_group_at_exit

        destroy_process_group_at_exit()
        if self.adversarial is not None and self.backward_deferred:
            raise ConfigError("adversarial", f"FGM needs the embedding gradient between its two backward passes, "
                              f"which {type(self.trainer.strategy).__name__} does not give inside training_step",
                              "train FGM with ddp, or fsdp on FSDP2 (ModelParallelStrategy)")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The loss object is not a hyperparameter (a distillation teacher must not be pickled into every
        # checkpoint); record its class so that a reload without it fails loudly instead of silently
        # training or evaluating with the model's plain loss.
        if self.loss_fn is not None:
            checkpoint[LOSS_CLASS_KEY] = f"{type(self.loss_fn).__module__}.{type(self.loss_fn).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trained_with = checkpoint.get(LOSS_CLASS_KEY)
        if trained_with and self.loss_fn is None:
            name = trained_with.rsplit(".", 1)[-1]
            raise ConfigError(
                "loss", f"the checkpoint was trained with {trained_with} and none was given",
                f"pass it again: HFLightningModule.load_from_checkpoint(path, loss={name}(...))",
            )

    def on_fit_start(self) -> None:
        # from_pretrained returns a model in eval mode and Lightning keeps each submodule's mode, so a
        # loaded model would fine-tune with dropout off. transformers.Trainer calls model.train(); so do
        # we, once (a distillation teacher stays in eval mode through its loss's own train()).
        self.train()

    def configure_model(self) -> None:
        """Shard with FSDP2 under ``ModelParallelStrategy``; compile if asked. Safe to call twice."""
        if self._sharded:
            return
        strategy = self._trainer.strategy if self._trainer is not None else None
        if strategy is not None and type(strategy).__name__ == "ModelParallelStrategy":
            from hf_lightning.strategies import fully_shard_hf_model

            fully_shard_hf_model(self.model, mesh=self.device_mesh["data_parallel"])
        self._sharded = True
        if self.torch_compile:
            self._forward_model = torch.compile(self.model)

    @property
    def forward_model(self) -> nn.Module:
        """The module to call for forward passes (compiled when ``torch_compile``)."""
        return self._forward_model if self._forward_model is not None else self.model

    # ------------------------------------------------------------------ forward and loss
    def forward(self, **inputs: Any) -> Any:
        return self.forward_model(**inputs)

    def count_items(self, batch: dict[str, Any]) -> torch.Tensor:
        """Scored items in a micro-batch: non-ignored labels (shifted for causal LMs), else rows."""
        if self.loss_fn is not None:
            return self.loss_fn.count_items(batch).to(self.device)
        return count_batch_items(batch, self.spec.shift_labels).to(self.device)

    def compute_loss(self, batch: dict[str, Any]) -> LossResult:
        """Mean loss over the batch's scored items, the model outputs, and the item count."""
        items = self.count_items(batch)
        if self.loss_fn is not None:
            loss, outputs = self.loss_fn(self.forward_model, batch)
        else:
            outputs = self.forward_model(**batch)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
            if loss is None:
                raise ConfigError("data", "the model returned no loss", "make sure batches carry a 'labels' column")
        return LossResult(loss, outputs, items)

    # ------------------------------------------------------------------ training
    @contextmanager
    def own_backward(self):
        """Let code inside ``training_step`` call backward itself (FGM, HF-style ``training_step``).

        Lightning would call backward again on the returned loss; ``backward`` below then skips.
        Going through ``strategy.backward`` keeps loss scaling (fp16) and DDP hooks intact.
        """
        self._in_own_backward = True
        try:
            yield
        finally:
            self._in_own_backward = False
            self._backward_done = True

    def backward_now(self, loss: torch.Tensor) -> None:
        """Backward a summed loss now, through the strategy and precision plugin.

        Lightning zeroes gradients *after* ``training_step`` (just before its own backward) on the first
        micro-batch of a window; a backward run inside ``training_step`` would be wiped. So we zero
        first here, and ``optimizer_zero_grad`` skips Lightning's zeroing for that batch.
        """
        if self._zero_pending:
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad()
            self._zero_pending = False
        with self.own_backward():
            # Lightning's closure divides by accumulate_grad_batches; do the same so that the window
            # rescale in on_before_optimizer_step is identical on both paths.
            self.trainer.strategy.backward(loss / self.trainer.accumulate_grad_batches, None)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if self._backward_done:
            return  # gradients were zeroed before this batch's own backward and now hold it
        optimizer.zero_grad()

    def _start_micro_batch(self, batch_idx: int) -> None:
        self._backward_done = False
        self._zero_pending = batch_idx % self.trainer.accumulate_grad_batches == 0

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self._backward_done and not self._in_own_backward:
            return  # training_step already ran its own backward
        super().backward(loss, *args, **kwargs)

    # DeepSpeed owns the backward, the accumulation and the gradients (partitioned under ZeRO, so there
    # is no ``param.grad`` to rescale after the fact). Under it a window's gradient is the mean of its
    # micro-batch means, as with DeepSpeed in transformers.Trainer when the loss takes no item count;
    # the logged loss stays the exact per-item mean of the window.
    @property
    def strategy_accumulates(self) -> bool:
        """True under DeepSpeed: it scales, accumulates and clips gradients itself."""
        trainer = self._trainer
        return trainer is not None and bool(getattr(trainer.strategy, "handles_gradient_accumulation", False))

    @property
    def backward_deferred(self) -> bool:
        """True where a backward inside ``training_step`` cannot run in place.

        DeepSpeed backpropagates only what ``training_step`` returns, and Lightning's FSDPStrategy runs
        ``training_step`` inside the wrapped root module's forward, where FSDP refuses a backward. There,
        backward calls made by an HF-style ``training_step`` are collected and returned instead.
        """
        trainer = self._trainer
        return trainer is not None and (self.strategy_accumulates or type(trainer.strategy).__name__ == "FSDPStrategy")

    def at_window_end(self) -> bool:
        """True when this micro-batch closes an accumulation window (an optimizer step follows)."""
        return not self.trainer.fit_loop._should_accumulate()

    def deepspeed_return(self, contribution: torch.Tensor) -> torch.Tensor:
        """What ``training_step`` returns so that DeepSpeed backpropagates exactly ``contribution``.

        Lightning divides the returned loss by the accumulation steps and DeepSpeed's engine divides
        it again; undo both.
        """
        steps = self.trainer.accumulate_grad_batches
        return contribution * steps * steps

    def item_mean_return(self, mean: torch.Tensor, items: torch.Tensor | int) -> torch.Tensor:
        """What ``training_step`` returns (or defers) for a micro-batch's per-item mean loss.

        The item-weighted sum, which the window rescale turns into a per-item mean; under DeepSpeed,
        which cannot be rescaled, the micro-batch's share of a mean of micro-batch means.
        """
        if self.strategy_accumulates:
            return self.deepspeed_return(mean / self.trainer.accumulate_grad_batches)
        return mean * items

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._start_micro_batch(batch_idx)
        result = self.compute_loss(batch)
        self._current_items = result.items
        loss_sum = result.loss * result.items
        self._train_window.add(result.items, loss_sum)
        if self.adversarial is None:  # FGM is refused in setup where backward is deferred (DeepSpeed)
            return self.item_mean_return(result.loss, result.items)
        from hf_lightning.adversarial import fgm_attack

        self.backward_now(loss_sum)
        with fgm_attack(self.model, self.adversarial["epsilon"], self.adversarial["emb_name"]):
            adv = self.compute_loss(batch)
            self.backward_now(adv.loss * adv.items)
        return loss_sum.detach()

    def on_train_start(self) -> None:
        if self.manual_grad_sync and self.trainer.world_size > 1 and not self.backward_deferred:
            ddp = getattr(self.trainer.strategy, "model", None)
            if hasattr(ddp, "require_backward_grad_sync"):
                # A backward run inside training_step happens inside DDP's forward, before its reducer
                # expects gradients; DDP would skip or break the sync. We all-reduce ourselves instead.
                ddp.require_backward_grad_sync = False
                self._grads_synced_here = True
        if self.neftune_noise_alpha:
            from hf_lightning.neftune import activate_neftune

            activate_neftune(self.model, self.neftune_noise_alpha)

    def on_train_end(self) -> None:
        if self.neftune_noise_alpha:
            from hf_lightning.neftune import deactivate_neftune

            deactivate_neftune(self.model)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Turn the window's summed gradients into a per-item mean over all ranks (see accumulation.py)."""
        if self.strategy_accumulates:
            # Called after every micro-batch under DeepSpeed; only a window's end is a step.
            if self.at_window_end():
                self._step_loss = self._train_window.close(self.device)[1]
                self._step_lr = optimizer.param_groups[0]["lr"]
                self._stepped = True
            return
        items, mean_loss = self._train_window.close(self.device)
        world = self.trainer.world_size
        if getattr(self, "_grads_synced_here", False):
            all_reduce_gradients(self.parameters())  # summed over ranks: no averaging to undo
            world = 1
        if items > 0:
            scale_gradients(self.parameters(), self.trainer.accumulate_grad_batches * world / items)
        self._step_loss = mean_loss
        self._step_lr = optimizer.param_groups[0]["lr"]
        self._stepped = True

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by norm ourselves so the pre-clip norm can be logged as ``grad_norm`` (as HF does)."""
        if self.strategy_accumulates:
            return  # DeepSpeed clips inside its step (config "gradient_clipping"); the norm is read after it
        if gradient_clip_algorithm == "value":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            self._grad_norm = None
        else:
            params = [p for p in self.parameters() if p.grad is not None]
            max_norm = gradient_clip_val if gradient_clip_val else math.inf
            root = getattr(self.trainer.strategy, "model", None)
            if type(self.trainer.strategy).__name__ == "FSDPStrategy" and hasattr(root, "clip_grad_norm_"):
                norm = root.clip_grad_norm_(max_norm)  # FSDP1: the norm over all ranks' shards
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            self._grad_norm = float(norm)
        self._notify_callbacks("on_gradients_ready", optimizer)

    def _notify_callbacks(self, hook_name: str, *args: Any) -> None:
        """Call a hook that Lightning does not have (e.g. ``on_gradients_ready``) on callbacks that define it."""
        for callback in self.trainer.callbacks:
            hook = getattr(callback, hook_name, None)
            if hook is not None:
                hook(self.trainer, self, *args)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.strategy_accumulates:
            if not self.at_window_end():
                return  # DeepSpeed's step() only counted a micro-batch
            norm = getattr(self.trainer.model, "get_global_grad_norm", lambda: None)()
            self._grad_norm = None if norm is None else float(norm)
            self._notify_callbacks("on_gradients_ready", optimizer)
        self._notify_callbacks("on_optimizer_stepped", optimizer)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        # -1 tells Lightning to skip the rest of the epoch (HF's control.should_epoch_stop).
        return -1 if self._skip_rest_of_epoch else None

    def on_train_epoch_start(self) -> None:
        self._skip_rest_of_epoch = False

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if self._skip_rest_of_epoch and not getattr(self, "_stepped", False):
            return  # Lightning still calls the scheduler for a skipped batch; no optimizer step happened
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not getattr(self, "_stepped", False):
            return
        self._stepped = False
        epoch = self.current_epoch + (batch_idx + 1) / max(self.trainer.num_training_batches, 1)
        logs = {"loss": self._step_loss, "learning_rate": self._step_lr, "epoch": epoch}
        if self._grad_norm is not None:
            logs["grad_norm"] = self._grad_norm
        self.last_train_log = logs
        self._track_nonfinite(self._step_loss)
        finite = {k: v for k, v in logs.items() if math.isfinite(v)}
        # self.log costs about a millisecond per value on the host; write only on the steps Lightning
        # passes to its loggers (log_every_n_steps). The facade logs through HF's on_log instead.
        if not self.hf_logging and self.trainer._logger_connector.should_update_logs:
            self.log_dict(finite, prog_bar=False, on_step=True, on_epoch=False, batch_size=1)
        if "loss" in finite and self.trainer.progress_bar_callback is not None:
            self.log("train_loss", finite["loss"], prog_bar=True, logger=False, on_step=True, batch_size=1)

    def _track_nonfinite(self, loss: float) -> None:
        self._nonfinite_streak = 0 if math.isfinite(loss) else self._nonfinite_streak + 1
        limit = self.stop_on_nonfinite_loss
        if limit is not None and self._nonfinite_streak >= limit:
            self.trainer.should_stop = True
            message = (
                f"stop_on_nonfinite_loss: the loss was non-finite for {self._nonfinite_streak} optimizer steps "
                f"in a row (step {self.trainer.global_step}). Fix: lower the learning rate, enable gradient "
                "clipping (max_grad_norm) or use bf16 instead of fp16"
            )
            self.nonfinite_stop_message = message
            pl.utilities.rank_zero_warn(message)

    # ------------------------------------------------------------------ evaluation
    def _trimmed(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any] | None:
        """The batch without rows repeated for even batch counts across ranks (see ``PaddingTrimmer``)."""
        trimmers = self._eval_trimmers
        if dataloader_idx not in trimmers:
            loaders = self.trainer.test_dataloaders if self.trainer.testing else self.trainer.val_dataloaders
            loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
            trimmers[dataloader_idx] = PaddingTrimmer(loader)
        return trimmers[dataloader_idx](batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor | None:
        real = self._trimmed(batch, dataloader_idx)
        if real is None:  # only repeated rows: forward in step with the other ranks (sharded models), then drop
            self.forward_model(**split_labels(self.model, batch)[0])
            return None
        batch = real
        result = self.compute_loss(batch)
        self._eval_window.add(result.items, result.loss.detach() * result.items)
        logits = getattr(result.outputs, "logits", None)
        if logits is None and isinstance(result.outputs, dict):
            logits = result.outputs.get("logits")
        labels = batch.get("labels")
        self._eval_has_labels = self._eval_has_labels or labels is not None
        self.task_metrics.update(logits, labels)
        if self.prediction_collector is not None and logits is not None:
            self.prediction_collector.update(logits, labels, batch.get("input_ids"))
        return result.loss

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self._eval_trimmers: dict[int, PaddingTrimmer] = {}
        self._eval_window.reset()
        self._eval_has_labels = False
        if self.prediction_collector is not None:
            self.prediction_collector.reset()

    on_test_epoch_start = on_validation_epoch_start

    def evaluation_metrics(self) -> dict[str, float]:
        """Close the evaluation: HF-named metrics without prefix (loss, accuracy, f1, perplexity, ...)."""
        _, mean_loss = self._eval_window.close(self.device)
        metrics: dict[str, Any] = {"loss": mean_loss}
        if self._eval_has_labels or not self.task_metrics.classification:
            metrics.update(self.task_metrics.compute(mean_loss))
        if self.compute_metrics is not None and self.prediction_collector is not None:
            metrics.update(self.compute_metrics(self.prediction_collector.eval_prediction()))
            self.prediction_collector.reset()
        return metrics

    def on_validation_epoch_end(self) -> None:
        prefix = "test" if self.trainer.testing else self.eval_prefix
        metrics = {f"{prefix}_{k}": float(v) for k, v in self.evaluation_metrics().items() if _is_number(v)}
        self.last_eval_metrics = metrics
        if not self.hf_logging:
            self.log_dict(metrics, prog_bar=True, sync_dist=False, batch_size=1)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            step_plateau(getattr(self, "_plateau", None), metrics, "eval_loss")

    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        inputs, labels = split_labels(self.model, batch)
        if labels is None and self.task == "seq2seq-lm":
            # Nothing to teacher-force with: predict what the model writes.
            keep = {"input_ids", "attention_mask"}  # tokenizer extras (token_type_ids) are not generate() inputs
            return {"generated": self.model.generate(**{k: v for k, v in inputs.items() if k in keep})}
        outputs = self.forward_model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        out = {"logits": logits}
        if self.spec.has_num_labels:
            out["predictions"] = logits.argmax(-1)
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = build_optimizer(
            self,
            optim=hp.optim,
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            adam_beta1=hp.adam_beta1,
            adam_beta2=hp.adam_beta2,
            adam_epsilon=hp.adam_epsilon,
            optim_args=hp.optim_args,
            model_for_optimizer=self.model,
            no_decay_prefixes=("loss_fn.",),
        )
        scheduler = build_scheduler(
            optimizer,
            hp.lr_scheduler_type,
            num_training_steps=max(int(self.trainer.estimated_stepping_batches), 1),
            warmup_steps=hp.warmup_steps,
            warmup_ratio=hp.warmup_ratio,
            lr_scheduler_kwargs=hp.lr_scheduler_kwargs,
        )
        self._plateau = scheduler  # stepped after each evaluation when it is a ReduceLROnPlateau
        return lightning_optimizers(optimizer, scheduler)

    # ------------------------------------------------------------------ export
    def save_hf_pretrained(self, directory: str | Path, processing_class: Any = None) -> Path | None:
        """Write the model (and tokenizer) in Hugging Face format; a collective under FSDP2.

        Returns the directory on the rank that wrote it, None on the others.
        """
        directory = Path(directory)
        sharded = self._trainer is not None and type(self.trainer.strategy).__name__ == "ModelParallelStrategy"
        state_dict = None
        if sharded:
            from hf_lightning.strategies import export_full_state_dict

            state_dict = export_full_state_dict(self.model)
        if self._trainer is not None and not self.trainer.is_global_zero:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        save_model_weights(self.model, directory, state_dict)
        if processing_class is not None:
            processing_class.save_pretrained(directory)
        return directory


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) or (hasattr(value, "item") and getattr(value, "ndim", 1) == 0)
