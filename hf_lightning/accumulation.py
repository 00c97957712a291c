"""Token-exact gradient accumulation on top of Lightning's own ``accumulate_grad_batches``.

Lightning divides every micro-batch loss by ``accumulate_grad_batches`` (also in an epoch's short
last window) and DDP averages gradients over ranks: a mean of means, wrong whenever micro-batches
hold different numbers of tokens. We keep Lightning's machinery (no_sync, clipping, precision
plugins) and fix the arithmetic once per optimizer step instead:

    each micro-batch i returns   sum_i = mean_i * n_i          (n_i = scored items in it)
    Lightning + DDP leave        g = sum_i grad(sum_i) / (k * world)
    we multiply by               k * world / N                  (N = items in the window, all ranks)
    giving                       sum_i grad(sum_i) / N          == one big batch of the whole window

Measured against a true batch of 8 on these library versions: <= 1.3e-7 in one process, with a short
last window, with clipping, with ``limit_train_batches`` and with 2 DDP ranks.

:class:`AccumulationMixin` carries this into a LightningModule: the window's item count, backward
passes run inside ``training_step`` (FGM, HF-style steps), the rescale before the optimizer step,
clipping that logs HF's ``grad_norm``, and DeepSpeed's own-accumulation path. It records what each
optimizer step produced in :attr:`AccumulationMixin.last_step` for logging and the HF event bridge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from hf_lightning.lightning_compat import at_window_end, attached_trainer

__all__ = [
    "AccumulationMixin",
    "StepRecord",
    "WindowCounter",
    "all_reduce_gradients",
    "all_reduce_sum",
    "clip_grad_norm",
    "scale_gradients",
]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


@torch.no_grad()
def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer (used when DDP's reducer is bypassed)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def scale_gradients(parameters: Iterable[torch.nn.Parameter], factor: float) -> None:
    """Multiply each parameter's gradient once (tied weights appear once in ``module.parameters()``).

    Runs on every optimizer step: plain dense gradients are scaled with one ``_foreach_mul_`` per
    device and dtype (what ``clip_grad_norm_`` does) instead of a kernel launch per parameter.
    """
    if factor == 1.0:
        return
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in parameters:
        grad = p.grad
        if grad is None:
            continue
        if type(grad) is torch.Tensor and not grad.is_sparse:
            groups.setdefault((grad.device, grad.dtype), []).append(grad)
        else:  # sharded (DTensor) or sparse gradients: one at a time
            grad.mul_(factor)
    for grads in groups.values():
        torch._foreach_mul_(grads, factor)


@torch.no_grad()
def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also takes gradients on several device meshes, or some not sharded at all.

    Under tensor parallelism the split projections hold ``DTensor`` gradients while layer norms and
    embeddings hold ordinary ones (under 2-D parallelism: ``DTensor``s on the 2-D mesh and on its
    data-parallel axis); torch's foreach kernels refuse such a mix. The global norm is then the root of
    the groups' squared norms (each ``DTensor`` norm reduced over its mesh), and every gradient is scaled
    by the same factor as ``clip_grad_norm_`` would.
    """
    from torch.distributed.tensor import DTensor

    if not params:
        return torch.zeros(())
    groups: dict[Any, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p.grad)
    if len(groups) == 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = [torch.nn.utils.get_total_norm(grads) for grads in groups.values()]
    total = torch.stack([n.full_tensor() if isinstance(n, DTensor) else n for n in norms]).norm()
    coef = min(max_norm / (float(total) + 1e-6), 1.0)
    if coef < 1.0:
        for p in params:
            p.grad.mul_(coef)
    return total


class WindowCounter:
    """Counts items and loss mass over one accumulation window on this rank."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.items = torch.zeros((), dtype=torch.float64)
        self.loss_sum = torch.zeros((), dtype=torch.float64)

    def add(self, items: torch.Tensor, loss_sum: torch.Tensor) -> None:
        self.items += items.detach().to("cpu", torch.float64)
        self.loss_sum += loss_sum.detach().to("cpu", torch.float64)

    def close(self, device: torch.device) -> tuple[float, float]:
        """All-reduce the window's totals; returns (items, mean loss) and starts a new window."""
        totals = all_reduce_sum(torch.stack([self.items, self.loss_sum]).to(device))
        items, loss_sum = float(totals[0]), float(totals[1])
        self.reset()
        return items, (loss_sum / items if items > 0 else float("nan"))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's half-finished window, as CPU tensors (a checkpoint taken mid-window needs it)."""
        return {"items": self.items.detach().cpu().clone(), "loss_sum": self.loss_sum.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.items = state["items"].detach().to("cpu", self.items.dtype).clone()
        self.loss_sum = state["loss_sum"].detach().to("cpu", self.loss_sum.dtype).clone()


@dataclass
class StepRecord:
    """What the last optimizer step produced: the window's per-item mean loss, the rate, the pre-clip norm.

    ``pending`` is True from the step until the module has logged it at that batch's end.
    """

    loss: float = float("nan")
    learning_rate: float = float("nan")
    grad_norm: float | None = None
    pending: bool = False


class AccumulationMixin(pl.LightningModule):
    """The backward and accumulation-window machinery of :class:`~hf_lightning.module.HFLightningModule`.

    ``training_step`` adds each micro-batch to :attr:`train_window` and returns the item-weighted sum
    (:meth:`item_mean_return`); :meth:`on_before_optimizer_step` rescales the window's gradients to a
    per-item mean over all ranks. Code inside ``training_step`` may run its own backward through
    :meth:`backward_now` (Lightning's own backward is then skipped for that batch).
    :meth:`request_epoch_stop` skips the rest of an epoch without stepping (HF's ``should_epoch_stop``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_window = WindowCounter()
        self.last_step = StepRecord()
        # True when training_step runs its own backward (FGM, the HF-style facade): under DDP the
        # gradients are then all-reduced here (grads_synced_here), not by DDP's reducer.
        self.manual_grad_sync = False
        self.grads_synced_here = False
        self._current_items: torch.Tensor | None = None
        self._backward_done = False
        self._zero_pending = False
        self._in_own_backward = False
        self._skip_rest_of_epoch = False
        self._parameter_list: list[torch.nn.Parameter] | None = None

    # ------------------------------------------------------------------ the micro-batch
    def start_micro_batch(self, batch_idx: int) -> None:
        """Call first in ``training_step``: a new micro-batch, gradients due to be zeroed at a window start."""
        self._backward_done = False
        self._zero_pending = batch_idx % self.trainer.accumulate_grad_batches == 0

    @property
    def current_items(self) -> torch.Tensor | None:
        """Scored items of the micro-batch in ``training_step`` (HF's ``num_items_in_batch`` for it)."""
        return self._current_items

    @current_items.setter
    def current_items(self, items: torch.Tensor | None) -> None:
        self._current_items = items

    @property
    def backward_done(self) -> bool:
        """True once this micro-batch ran its own backward (Lightning's is then skipped)."""
        return self._backward_done

    def record_step(self, loss: float, learning_rate: float) -> None:
        """Note an optimizer step's window loss and rate; the module logs them at the batch's end."""
        self.last_step.loss = loss
        self.last_step.learning_rate = learning_rate
        self.last_step.pending = True

    # ------------------------------------------------------------------ backward inside training_step
    @contextmanager
    def own_backward(self) -> Iterator[None]:
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

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self._backward_done and not self._in_own_backward:
            return  # training_step already ran its own backward
        super().backward(loss, *args, **kwargs)

    def use_own_gradient_sync(self) -> None:
        """At train start: bypass DDP's reducer when ``training_step`` runs its own backward."""
        if self.manual_grad_sync and self.trainer.world_size > 1 and not self.backward_deferred:
            ddp = getattr(self.trainer.strategy, "model", None)
            if hasattr(ddp, "require_backward_grad_sync"):
                # A backward run inside training_step happens inside DDP's forward, before its reducer
                # expects gradients; DDP would skip or break the sync. We all-reduce ourselves instead.
                ddp.require_backward_grad_sync = False
                self.grads_synced_here = True

    # DeepSpeed owns the backward, the accumulation and the gradients (partitioned under ZeRO, so there
    # is no ``param.grad`` to rescale after the fact). Under it a window's gradient is the mean of its
    # micro-batch means, as with DeepSpeed in transformers.Trainer when the loss takes no item count;
    # the logged loss stays the exact per-item mean of the window.
    @property
    def strategy_accumulates(self) -> bool:
        """True under DeepSpeed: it scales, accumulates and clips gradients itself."""
        trainer = attached_trainer(self)
        return trainer is not None and bool(getattr(trainer.strategy, "handles_gradient_accumulation", False))

    @property
    def backward_deferred(self) -> bool:
        """True where a backward inside ``training_step`` cannot run in place.

        DeepSpeed backpropagates only what ``training_step`` returns, and Lightning's FSDPStrategy runs
        ``training_step`` inside the wrapped root module's forward, where FSDP refuses a backward. There,
        backward calls made by an HF-style ``training_step`` are collected and returned instead.
        """
        trainer = attached_trainer(self)
        return trainer is not None and (self.strategy_accumulates or type(trainer.strategy).__name__ == "FSDPStrategy")

    def at_window_end(self) -> bool:
        """True when this micro-batch closes an accumulation window (an optimizer step follows)."""
        return at_window_end(self.trainer)

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
        return self.item_sum(mean, items)

    def item_sum(self, mean: torch.Tensor, items: torch.Tensor | int) -> torch.Tensor:
        """A micro-batch's loss in the window's gradient units: its item-weighted sum, or the mean itself.

        A window of one micro-batch on one process holds exactly that micro-batch's items, so its
        per-item mean is the mean itself: backpropagating it directly (as transformers does) makes the
        rescale at the step a multiplication by one, skipped (``window_is_one_batch``).
        """
        return mean if self.window_is_one_batch else mean * items

    @property
    def window_is_one_batch(self) -> bool:
        """True when an optimizer step's window is one micro-batch on one process (no rescale needed)."""
        trainer = attached_trainer(self)
        return (
            trainer is not None
            and trainer.accumulate_grad_batches == 1
            and trainer.world_size == 1
            and not self.strategy_accumulates
        )

    def gradient_parameters(self) -> list[torch.nn.Parameter]:
        """``self.parameters()`` as a list, built once per fit (walking the module tree on every step costs).

        Refreshed at train start (:meth:`forget_parameters`), after the strategy has wrapped or sharded
        them, and whenever the first parameter is no longer the cached one (a strategy that replaced the
        parameters in a later fit of a module whose ``on_train_start`` does not call ours).
        """
        cached = self._parameter_list
        if not cached or cached[0] is not next(self.parameters(), None):
            cached = self._parameter_list = list(self.parameters())
        return cached

    def forget_parameters(self) -> None:
        """Drop the cached parameter list (call when parameters may have been replaced)."""
        self._parameter_list = None

    # ------------------------------------------------------------------ the optimizer step
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Turn the window's summed gradients into a per-item mean over all ranks (see the module docstring)."""
        if self.strategy_accumulates:
            # Called after every micro-batch under DeepSpeed; only a window's end is a step.
            if self.at_window_end():
                self.record_step(self.train_window.close(self.device)[1], optimizer.param_groups[0]["lr"])
            return
        items, mean_loss = self.train_window.close(self.device)
        world = self.trainer.world_size
        if self.grads_synced_here:
            all_reduce_gradients(self.gradient_parameters())  # summed over ranks: no averaging to undo
            world = 1
        if items > 0 and not self.window_is_one_batch:
            scale_gradients(self.gradient_parameters(), self.trainer.accumulate_grad_batches * world / items)
        self.record_step(mean_loss, optimizer.param_groups[0]["lr"])

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
            self.last_step.grad_norm = None
        else:
            params = [p for p in self.gradient_parameters() if p.grad is not None]
            max_norm = gradient_clip_val if gradient_clip_val else math.inf
            root = getattr(self.trainer.strategy, "model", None)
            if type(self.trainer.strategy).__name__ == "FSDPStrategy" and hasattr(root, "clip_grad_norm_"):
                norm = root.clip_grad_norm_(max_norm)  # FSDP1: the norm over all ranks' shards
            else:
                norm = clip_grad_norm(params, max_norm)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            self.last_step.grad_norm = float(norm)
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
            self.last_step.grad_norm = None if norm is None else float(norm)
            self._notify_callbacks("on_gradients_ready", optimizer)
        self._notify_callbacks("on_optimizer_stepped", optimizer)

    # ------------------------------------------------------------------ HF's should_epoch_stop
    # The event bridge asks; the epoch's remaining batches are skipped: no step, no scheduler step.
    def request_epoch_stop(self) -> None:
        """Skip the rest of this epoch (from the next batch on); cleared when the next epoch starts."""
        self._skip_rest_of_epoch = True

    def clear_epoch_stop(self) -> None:
        self._skip_rest_of_epoch = False

    @property
    def epoch_stop_requested(self) -> bool:
        return self._skip_rest_of_epoch

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        # -1 tells Lightning to skip the rest of the epoch (HF's control.should_epoch_stop).
        return -1 if self._skip_rest_of_epoch else None

    def on_train_epoch_start(self) -> None:
        self._skip_rest_of_epoch = False

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if self._skip_rest_of_epoch and not self.last_step.pending:
            return  # Lightning still calls the scheduler for a skipped batch; no optimizer step happened
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)
