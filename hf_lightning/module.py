"""HFLightningModule: any Hugging Face model as a LightningModule.

The module does forward, loss and logging. Accumulation, precision and strategies stay Lightning
Trainer settings; the only arithmetic we add on top is the token-exact normalisation described in
``accumulation.py``, so that every loss normalises by the items of the whole accumulation window.

It is composed of three parts with one job each: model building (``models.build_task_model``), the
backward/accumulation-window machinery (``accumulation.AccumulationMixin``) and the evaluation and
predict steps (``evaluation.EvaluationMixin``); this file holds the training step, the optimizer and
the HF-format export.

Names follow HF so people coming from ``transformers.Trainer`` find what they expect: ``loss``,
``learning_rate``, ``grad_norm``, ``epoch``, ``eval_loss``, ``eval_<metric>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn

from hf_lightning.accumulation import AccumulationMixin
from hf_lightning.adversarial import check_fgm_settings
from hf_lightning.errors import ConfigError
from hf_lightning.evaluation import EvaluationMixin
from hf_lightning.lightning_compat import attached_trainer, logs_this_step
from hf_lightning.losses.base import ModelLoss, count_batch_items
from hf_lightning.metrics import PredictionCollector, build_task_metrics
from hf_lightning.models import build_task_model, enable_gradient_checkpointing, save_model_weights
from hf_lightning.optim import (
    OptimName,
    SchedulerName,
    build_optimizer,
    build_scheduler,
    lightning_optimizers,
    resolve_warmup_steps,
    separate_sharded_parameters,
    set_optimizer_mode,
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


class HFLightningModule(EvaluationMixin, AccumulationMixin, pl.LightningModule):
    """Wrap a Hugging Face model for training with Lightning.

    The settings come in five groups (``hf-lightning fit --help`` lists them in this order); in a
    config they are all plain keys under ``model:``.

    Args:
        model: (model) a local directory or Hub id (``from_pretrained``), a config dict with
            ``model_type`` (random init), or, from Python, a model instance. Required.
        task: (model) what the model is for; picks the Auto class, label shifting and metrics.
        model_kwargs: (model) extra keyword arguments for ``from_pretrained`` or the config.
        num_labels: (model) number of classes (linked from the data module in configs).
        id2label: (model) class names by id (linked from the data module).
        vocab_size: (model) tokenizer size (linked); a model built from a config gets it, a smaller
            pretrained embedding is resized to it.
        pad_token_id: (model) the tokenizer's pad id (linked); set on the model config if it has none.
        peft_config: (model) parameter-efficient fine-tuning: ``LoraConfig`` fields (``r``,
            ``lora_alpha``, ``target_modules``, ``lora_dropout``; another method with ``peft_type``).
            Only the adapters train; the HF export is an adapter folder (``hf_lightning/peft.py``).
        loss: (loss) a loss from ``hf_lightning.losses`` (focal, distillation, ...); None uses the
            model's own.
        label_smoothing_factor: (loss) HF's label smoothing, applied when ``loss`` is None.
        neftune_noise_alpha: (loss) NEFTune noise scale; None switches it off.
        adversarial: (loss) FGM settings, e.g. ``{"method": "fgm", "epsilon": 1.0}``.
        optim: (optimizer) optimizer name as in ``transformers.TrainingArguments.optim``.
        optim_args: (optimizer) extra optimizer arguments (HF's ``optim_args``), a dict or "k=v,k=v".
        optim_target_modules: (optimizer) modules GaLore/Apollo project: names, a regex or "all-linear".
        learning_rate: (optimizer) peak learning rate.
        weight_decay: (optimizer) applied to all parameters except biases and normalisation weights.
        adam_beta1: (optimizer) Adam beta1.
        adam_beta2: (optimizer) Adam beta2.
        adam_epsilon: (optimizer) Adam epsilon.
        lr_scheduler_type: (optimizer) scheduler name as in ``transformers.get_scheduler``.
        lr_scheduler_kwargs: (optimizer) extra scheduler arguments.
        warmup_steps: (optimizer) warmup optimizer steps; a value below 1 is a ratio of all steps (HF 5).
        warmup_ratio: (optimizer) the older HF name for a warmup ratio.
        stop_on_nonfinite_loss: (optimizer) stop after this many optimizer steps in a row with a
            non-finite loss (None: never stop, only keep non-finite values out of the logs).
        compute_metrics: (evaluation) HF's ``compute_metrics(EvalPrediction) -> dict``, merged into the
            evaluation metrics (``eval_<name>``); only then are logits kept (after
            ``preprocess_logits_for_metrics``).
        preprocess_logits_for_metrics: (evaluation) HF's ``(logits, labels) -> smaller logits``.
        gradient_checkpointing: (scale-out) use the HF model's own (non-reentrant) gradient checkpointing.
        torch_compile: (scale-out) compile the model's forward with ``torch.compile``: True, or the keyword
            arguments for it (``{"backend": "inductor", "mode": "max-autotune"}``, HF's ``torch_compile_*``).
    """

    def __init__(
        self,
        model: str | dict[str, Any] | None = None,
        task: TaskName = "sequence-classification",
        model_kwargs: dict[str, Any] | None = None,
        *,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        peft_config: dict[str, Any] | None = None,
        loss: ModelLoss | None = None,
        label_smoothing_factor: float = 0.0,
        neftune_noise_alpha: float | None = None,
        adversarial: dict[str, Any] | None = None,
        optim: OptimName = "adamw_torch_fused",
        optim_args: dict[str, Any] | None = None,
        optim_target_modules: list[str] | str | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.0,
        adam_beta1: float = 0.9,
        adam_beta2: float = 0.999,
        adam_epsilon: float = 1e-8,
        lr_scheduler_type: SchedulerName = "linear",
        lr_scheduler_kwargs: dict[str, Any] | None = None,
        warmup_steps: float = 0,
        warmup_ratio: float | None = None,
        stop_on_nonfinite_loss: int | None = None,
        compute_metrics: Callable[[Any], dict[str, float]] | None = None,
        preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None,
        gradient_checkpointing: bool = False,
        torch_compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "host", "compute_metrics", "preprocess_logits_for_metrics"]
                                  + (["model"] if isinstance(model, nn.Module) else []))
        self.task = task
        self.spec = task_spec(task)
        self.num_labels = num_labels
        self.model = build_task_model(model, task, model_kwargs, num_labels, id2label, vocab_size, pad_token_id)
        if peft_config:  # LoRA etc.: only the adapters train (hf_lightning/peft.py)
            from hf_lightning.peft import apply_peft

            self.model = apply_peft(self.model, peft_config, task)
        if gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        if label_smoothing_factor and loss is None:
            from hf_lightning.losses import LabelSmoothingLoss

            loss = LabelSmoothingLoss(label_smoothing_factor, shift_labels=self.spec.shift_labels)
        self.loss_fn = loss
        self.adversarial = check_fgm_settings(adversarial)
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
        self.last_train_log: dict[str, float] = {}
        # Set when stop_on_nonfinite_loss stopped the run: the reason, for the caller's report.
        self.nonfinite_stop_message: str | None = None
        # The scheduler, when it steps on a metric (ReduceLROnPlateau, GreedyLR): after each evaluation, not by Lightning.
        self.plateau_scheduler: Any = None
        self._nonfinite_streak = 0
        self._sharded = False
        self._forward_model: nn.Module | None = None
        self.manual_grad_sync = self.adversarial is not None

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
        self._load_model_from_folder(checkpoint)
        trained_with = checkpoint.get(LOSS_CLASS_KEY)
        if trained_with and self.loss_fn is None:
            name = trained_with.rsplit(".", 1)[-1]
            raise ConfigError(
                "loss", f"the checkpoint was trained with {trained_with} and none was given",
                f"pass it again: HFLightningModule.load_from_checkpoint(path, loss={name}(...))",
            )

    def _load_model_from_folder(self, checkpoint: dict[str, Any]) -> None:
        """Weights kept in a checkpoint folder's HF model files go in through the model's own ``load_state_dict``.

        As transformers' ``_load_from_checkpoint`` does: a model that overrides ``load_state_dict`` (extra
        buffers, renamed keys) or whose folder was re-saved sharded resumes like any other. Lightning then
        loads the module's state dict as usual, completed here with the weights just loaded.
        """
        from hf_lightning.best_model import load_model_weights
        from hf_lightning.checkpoint_interop import MODEL_FOLDER_KEY

        found = checkpoint.pop(MODEL_FOLDER_KEY, None)
        if found is None:
            return
        load_model_weights(self.model, found["folder"], field="resume_from_checkpoint")
        state = checkpoint.setdefault("state_dict", {})
        for key, value in self.state_dict().items():
            state.setdefault(key, value)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None, strict: bool | None = None,
        weights_only: bool | None = None, **kwargs: Any,
    ) -> HFLightningModule:
        """Lightning's ``load_from_checkpoint``, but the file is never unpickled as code.

        ``weights_only`` is always True (a checkpoint is data; ``weights_only=False`` would let a shared or
        downloaded file run anything). The file is validated first from its keys alone (memory-mapped),
        so a corrupt or code-carrying checkpoint is one line naming it.
        """
        from hf_lightning.safe_load import SAFE_GLOBALS, read_checkpoint_header

        if isinstance(checkpoint_path, (str, Path)) and "://" not in str(checkpoint_path):
            read_checkpoint_header(checkpoint_path, field="checkpoint_path")
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                                strict=strict, weights_only=True, **kwargs)

    def on_fit_start(self) -> None:
        # from_pretrained returns a model in eval mode and Lightning keeps each submodule's mode, so a
        # loaded model would fine-tune with dropout off. transformers.Trainer calls model.train(); so do
        # we, once (a distillation teacher stays in eval mode through its loss's own train()).
        self.train()

    def configure_model(self) -> None:
        """Tensor-parallel and/or FSDP2-shard under ``ModelParallelStrategy``; compile if asked. Safe to call twice."""
        if self._sharded:
            return
        trainer = attached_trainer(self)
        strategy = trainer.strategy if trainer is not None else None
        if isinstance(strategy, pl.strategies.ModelParallelStrategy):
            from hf_lightning.strategies.tensor_parallel import parallelize_for_strategy

            parallelize_for_strategy(self.model, strategy, self.device_mesh)
        self._sharded = True
        if self.torch_compile:
            kwargs = self.torch_compile if isinstance(self.torch_compile, dict) else {}
            self._forward_model = torch.compile(self.model, **kwargs)

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
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.start_micro_batch(batch_idx)
        result = self.compute_loss(batch)
        self.current_items = result.items
        loss_sum = result.loss.detach() * result.items
        self.train_window.add(result.items, loss_sum)
        if self.adversarial is None:  # FGM is refused in setup where backward is deferred (DeepSpeed)
            return self.item_mean_return(result.loss, result.items)
        from hf_lightning.adversarial import fgm_attack

        self.backward_now(self.item_sum(result.loss, result.items))
        with fgm_attack(self.model, self.adversarial["epsilon"], self.adversarial["emb_name"]):
            adv = self.compute_loss(batch)
            self.backward_now(self.item_sum(adv.loss, adv.items))
        return loss_sum

    def on_train_start(self) -> None:
        self.forget_parameters()  # the strategy may have wrapped or sharded them since the last fit
        self.use_own_gradient_sync()
        if self.neftune_noise_alpha:
            from hf_lightning.neftune import activate_neftune

            activate_neftune(self.model, self.neftune_noise_alpha)

    def on_train_end(self) -> None:
        if self.neftune_noise_alpha:
            from hf_lightning.neftune import deactivate_neftune

            deactivate_neftune(self.model)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        set_optimizer_mode(self.trainer.optimizers, train=True)  # schedule-free: back from eval mode, as HF
        return super().on_train_batch_start(batch, batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.last_step
        if not step.pending:
            return
        step.pending = False
        epoch = self.current_epoch + (batch_idx + 1) / max(self.trainer.num_training_batches, 1)
        logs = {"loss": step.loss, "learning_rate": step.learning_rate, "epoch": epoch}
        if step.grad_norm is not None:
            logs["grad_norm"] = step.grad_norm
        self.last_train_log = logs
        self._track_nonfinite(step.loss)
        # self.log costs about a millisecond per value on the host; write only on the steps Lightning
        # passes to its loggers (log_every_n_steps), the progress bar's loss included. The facade logs
        # through HF's on_log instead.
        if not logs_this_step(self.trainer):
            return
        finite = {k: v for k, v in logs.items() if math.isfinite(v)}
        if not self.hf_logging:
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

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        num_training_steps = max(int(self.trainer.estimated_stepping_batches), 1)
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
            optim_target_modules=hp.optim_target_modules,
            warmup_steps=resolve_warmup_steps(hp.warmup_steps, hp.warmup_ratio, num_training_steps),
        )
        separate_sharded_parameters(optimizer)  # tensor parallel: fused kernels take no DTensor/Tensor mix
        scheduler = build_scheduler(
            optimizer,
            hp.lr_scheduler_type,
            num_training_steps=num_training_steps,
            warmup_steps=hp.warmup_steps,
            warmup_ratio=hp.warmup_ratio,
            lr_scheduler_kwargs=hp.lr_scheduler_kwargs,
        )
        self.plateau_scheduler = scheduler  # step_plateau acts only on a metric scheduler
        return lightning_optimizers(optimizer, scheduler)

    # ------------------------------------------------------------------ export
    def save_hf_pretrained(self, directory: str | Path, processing_class: Any = None) -> Path | None:
        """Write the model (and tokenizer) in Hugging Face format; a collective under FSDP2.

        Returns the directory on the rank that wrote it, None on the others.
        """
        directory = Path(directory)
        trainer = attached_trainer(self)
        sharded = trainer is not None and isinstance(trainer.strategy, pl.strategies.ModelParallelStrategy)
        state_dict = None
        if sharded:
            from hf_lightning.strategies import export_full_state_dict

            state_dict = export_full_state_dict(self.model)
        if trainer is not None and not trainer.is_global_zero:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        save_model_weights(self.model, directory, state_dict)
        if processing_class is not None:
            processing_class.save_pretrained(directory)
        return directory
