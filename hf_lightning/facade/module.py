"""The LightningModule behind the HF-style facade: HF hooks, called from Lightning's loop.

``HFLightningModule`` already does loss bookkeeping, token-exact accumulation and logging; this subclass
routes the training step through the facade's overridable ``training_step``/``compute_loss`` (with
HF's signatures), registers trainable tensors that a ``Trainer`` subclass owns (e.g. learnable
loss weights kept on the trainer), and builds the optimizer through the facade's
``create_optimizer``/``create_scheduler``. It knows the facade only as a duck-typed ``host``.

Two ways a backward reaches the strategy (both zero gradients at a window's start, both keep loss
scaling and DDP intact):

* **item-exact** (the facade's own ``training_step``, and overrides that take ``num_items_in_batch``,
  i.e. code written for transformers 5): the loss is a per-micro-batch mean; it is turned into a sum
  over items and the window is normalised by its item count at the optimizer step (accumulation.py).
* **literal** (``accelerator.backward`` inside a ``training_step`` override *without*
  ``num_items_in_batch``, i.e. code written for transformers 4, which scales by
  ``gradient_accumulation_steps`` itself, as an FGM adversarial-training override does): the gradient is exactly
  that of the losses passed, summed over the window and averaged over ranks, as with
  transformers >= 4.46 (whose accelerator no longer divides by the accumulation steps).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn as nn

from hf_lightning.accumulation import all_reduce_gradients, scale_gradients
from hf_lightning.module import HFLightningModule
from hf_lightning.optim import lightning_optimizers, separate_sharded_parameters

__all__ = ["TrainerModule", "accepts_parameter"]


def accepts_parameter(fn: Any, name: str) -> bool:
    """True if ``fn`` takes ``name`` (or ``**kwargs``): old HF overrides lack ``num_items_in_batch``.

    Asked on every training step; ``inspect.signature`` costs tens of microseconds, so the answer is
    kept per underlying function (a bound method is a new object on every attribute access).
    """
    target = getattr(fn, "__func__", fn)
    try:
        return _accepts(target, name)
    except TypeError:  # unhashable callable: answer without the cache
        return _accepts.__wrapped__(target, name)


@functools.lru_cache(maxsize=512)
def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


class TrainerModule(HFLightningModule):
    """HFLightningModule whose training step is the facade's HF-style ``training_step``."""

    def __init__(self, host: Any, model: nn.Module, task: str, **kwargs: Any) -> None:
        super().__init__(model=model, task=task, **kwargs)
        object.__setattr__(self, "host", host)  # not a submodule: the facade is not part of the model
        # The module's own init arguments are internal defaults here: trackers get TrainingArguments instead
        # (hf_lightning.loggers.TrackerExtras), as under transformers (what save_hyperparameters(logger=False) sets).
        self._log_hyperparams = False
        extra = {name: p for name, p in vars(host).items() if isinstance(p, nn.Parameter)}
        self.host_params = nn.ParameterDict(extra)
        self.host_modules = nn.ModuleDict(_trainable_host_modules(host, model))
        self._overridden_step = host.training_step_is_overridden()
        # An override without num_items_in_batch follows the transformers 4 contract: its
        # accelerator.backward calls are taken literally (see the module docstring).
        self.literal_backward = self._overridden_step and not accepts_parameter(host.training_step, "num_items_in_batch")
        self._literal_window = False
        self._deferred: torch.Tensor | None = None  # DeepSpeed: what backward was asked for, run by Lightning
        self.manual_grad_sync = True  # HF's training_step calls backward itself
        self._user_loss = 0.0
        # The optimizer whose gradients are cleared once Lightning stepped the scheduler (see optimizer_step).
        self._clear_after_scheduler: torch.optim.Optimizer | None = None

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.start_micro_batch(batch_idx)
        if not self.model.training:  # back from an evaluation; HF's own training_step calls train() anyway
            self.model.train()
        items = self.count_items(batch)
        self.current_items = items
        self.host._track_num_input_tokens(batch)  # include_num_input_tokens_seen (transformers' own counter)
        returned = self.host.call_training_step(self.forward_model, batch)
        self.host.current_flos += self.host.floating_point_ops(batch)
        if not isinstance(returned, torch.Tensor):
            returned = torch.as_tensor(returned, device=self.device, dtype=torch.float32)
        if self._overridden_step:
            self._user_loss += float(returned.detach())
        self.train_window.add(items, returned.detach() * items)
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            return deferred
        if not self.backward_done:
            # The override returned a loss with a graph instead of calling accelerator.backward
            # (or, under DeepSpeed, the default step's backward is Lightning's).
            return self.item_mean_return(returned, items)
        return returned.detach()

    def backward_items_mean(self, loss: torch.Tensor) -> None:
        """Backward a per-micro-batch mean so that the window's gradient is the mean over its items."""
        items = self.current_items if self.current_items is not None else 1
        if self.backward_deferred:
            self._defer(self.item_mean_return(loss, items))  # Lightning's closure runs it
        else:
            self.backward_now(self.item_sum(loss, items))

    def _defer(self, to_return: torch.Tensor) -> None:
        """Keep a backward for the single one Lightning runs on what ``training_step`` returns.

        Under DeepSpeed and FSDPStrategy a backward cannot run inside ``training_step`` (see
        ``backward_deferred``), so the backward calls of an HF-style ``training_step`` are summed and
        returned instead of run in place.
        """
        self._deferred = to_return if self._deferred is None else self._deferred + to_return

    def backward_literal(self, loss: torch.Tensor) -> None:
        """Backward exactly ``loss`` (summed over the window's calls); no item normalisation."""
        self._literal_window = True
        if self.strategy_accumulates:
            self._defer(self.deepspeed_return(loss))
            return
        if self.backward_deferred:
            self._defer(loss * self.trainer.accumulate_grad_batches)  # Lightning's closure divides by it
            return
        # backward_now divides by accumulate_grad_batches (Lightning's convention); undo it here.
        self.backward_now(loss * self.trainer.accumulate_grad_batches)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.strategy_accumulates and not self.at_window_end():
            return  # DeepSpeed: called after every micro-batch; only a window's end is a step
        if self._literal_window:
            self._finish_literal_window(optimizer)
        else:
            super().on_before_optimizer_step(optimizer)
        self._literal_window = False
        if self._overridden_step:
            # HF logs the sum of what an overridden training_step returned over the window.
            self.last_step.loss = self._user_loss
            self._user_loss = 0.0
        schedulers = self.trainer.lr_scheduler_configs
        try:
            # HF logs the scheduler's rate, not the optimizer's: a callback that sets the optimizer's
            # lr itself (a custom warm-up callback) changes training but not the logged value.
            lr = schedulers[0].scheduler.get_last_lr()[0]
        except (AttributeError, IndexError):
            return  # no scheduler, or one without get_last_lr: keep the optimizer's rate
        self.last_step.learning_rate = float(lr.item() if isinstance(lr, torch.Tensor) else lr)

    def _finish_literal_window(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer-step bookkeeping for a literal window: gradients stay as the user made them."""
        _, loss = self.train_window.close(self.device)  # resets the counter (a collective)
        if self.grads_synced_here:
            all_reduce_gradients(self.gradient_parameters())
            scale_gradients(self.gradient_parameters(), 1.0 / self.trainer.world_size)  # DDP averages over ranks
        self.record_step(loss, optimizer.param_groups[0]["lr"])

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if getattr(self.trainer.strategy, "handles_gradient_accumulation", False):
            return  # DeepSpeed clears its own
        # HF clears gradients right after the scheduler's step, before on_step_end; callbacks there (and
        # an evaluation at this step) see none, as under transformers.Trainer. Lightning steps the
        # schedulers after this hook, so with one the clearing waits for it (lr_scheduler_step):
        # transformers' AdafactorSchedule reads the rate Adafactor used from the gradients.
        if any(config.interval == "step" for config in self.trainer.lr_scheduler_configs):
            self._clear_after_scheduler = optimizer
        else:
            optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        super().lr_scheduler_step(scheduler, metric)
        optimizer, self._clear_after_scheduler = self._clear_after_scheduler, None
        if optimizer is not None:
            optimizer.zero_grad()

    def configure_optimizers(self) -> Any:
        optimizer = separate_sharded_parameters(self.host.create_optimizer())
        num_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = self.host.create_scheduler(num_training_steps=num_steps, optimizer=optimizer)
        return lightning_optimizers(optimizer, scheduler)


def _trainable_host_modules(host: Any, model: nn.Module) -> dict[str, nn.Module]:
    """Modules a Trainer subclass keeps on itself that should train with the model.

    transformers.Trainer optimizes ``self.model`` only; training what a subclass adds (learnable
    loss weights) is this facade's extension. So it stays narrow: a module in eval mode is
    taken as frozen (e.g. a distillation teacher put in ``eval()`` mode), as is one without
    trainable parameters.
    """
    found = {}
    for name, value in vars(host).items():
        if not isinstance(value, nn.Module) or value is model or not value.training:
            continue
        if any(p.requires_grad for p in value.parameters()):
            found[name] = value
    return found
