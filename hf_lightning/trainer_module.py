"""The LightningModule behind the HF-style facade: HF hooks, called from Lightning's loop.

``HFLightningModule`` already does loss bookkeeping, token-exact accumulation and logging; this subclass
routes the training step through the facade's overridable ``training_step``/``compute_loss`` (with
HF's signatures), registers trainable tensors that a ``Trainer`` subclass owns (e.g. uncertainty
weights kept on the trainer, as in the seeds), and builds the optimizer through the facade's
``create_optimizer``/``create_scheduler``. It knows the facade only as a duck-typed ``host``.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
import torch.nn as nn

from hf_lightning.module import HFLightningModule

__all__ = ["LightningAccelerator", "TrainerModule", "accepts_parameter"]


def accepts_parameter(fn: Any, name: str) -> bool:
    """True if ``fn`` takes ``name`` (or ``**kwargs``): old HF overrides lack ``num_items_in_batch``."""
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
        extra = {name: p for name, p in vars(host).items() if isinstance(p, nn.Parameter)}
        self.host_params = nn.ParameterDict(extra)
        modules = {name: m for name, m in vars(host).items() if isinstance(m, nn.Module) and m is not model}
        modules = {n: m for n, m in modules.items() if any(p.requires_grad for p in m.parameters())}
        self.host_modules = nn.ModuleDict(modules)
        self._overridden_step = host.training_step_is_overridden()
        self.manual_grad_sync = True  # HF's training_step calls backward itself
        self._user_loss = 0.0

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._start_micro_batch(batch_idx)
        self.model.train()
        items = self.count_items(batch)
        self._current_items = items
        returned = self.host.call_training_step(self.forward_model, batch)
        self.host.current_flos += self.host.floating_point_ops(batch)
        if not isinstance(returned, torch.Tensor):
            returned = torch.as_tensor(returned, device=self.device, dtype=torch.float32)
        if self._overridden_step:
            self._user_loss += float(returned.detach())
        self._train_window.add(items, returned.detach() * items)
        if not self._backward_done:
            # The override returned a loss with a graph instead of calling accelerator.backward.
            return returned * items
        return returned.detach()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self._overridden_step:
            # HF logs the sum of what an overridden training_step returned over the window.
            self._step_loss = self._user_loss
            self._user_loss = 0.0

    def configure_optimizers(self) -> Any:
        optimizer = self.host.create_optimizer()
        num_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = self.host.create_scheduler(num_training_steps=num_steps, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class LightningAccelerator:
    """The slice of ``accelerate.Accelerator`` that HF ``Trainer`` subclasses call, on Lightning.

    ``backward`` goes through the strategy (loss scaling, DDP hooks) and converts the per-micro-batch
    mean the HF code computes into a sum over items, so the module's window normalisation stays exact.
    """

    def __init__(self, host: Any) -> None:
        self._host = host

    @property
    def _module(self) -> TrainerModule:
        return self._host._module

    @property
    def _trainer(self) -> Any:
        module = self._host._module
        return module._trainer if module is not None else None

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        module = self._module
        items = module._current_items if module._current_items is not None else 1
        module.backward_now(loss * items)

    def unwrap_model(self, model: nn.Module, keep_fp32_wrapper: bool = True) -> nn.Module:
        while True:
            inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
            if inner is None or not isinstance(inner, nn.Module):
                return model
            model = inner

    def autocast(self, *args: Any, **kwargs: Any) -> Any:
        trainer = self._trainer
        return trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()

    def no_sync(self, model: nn.Module | None = None) -> Any:
        return contextlib.nullcontext()  # Lightning already skips gradient sync inside a window

    def accumulate(self, *models: nn.Module) -> Any:
        return contextlib.nullcontext()

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensor
        gathered = trainer.strategy.all_gather(tensor)
        return gathered.reshape(-1, *tensor.shape[1:]) if tensor.dim() > 0 else gathered

    gather_for_metrics = gather

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        trainer = self._trainer
        if trainer is None:
            return tensor
        return trainer.strategy.reduce(tensor, reduce_op="mean" if reduction == "mean" else "sum")

    def wait_for_everyone(self) -> None:
        if self._trainer is not None:
            self._trainer.strategy.barrier()

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_main_process:
            print(*args, **kwargs)

    @property
    def sync_gradients(self) -> bool:
        trainer = self._trainer
        if trainer is None:
            return True
        return not trainer.fit_loop.epoch_loop._should_accumulate()

    @property
    def gradient_accumulation_steps(self) -> int:
        return self._host.args.gradient_accumulation_steps

    @property
    def num_processes(self) -> int:
        trainer = self._trainer
        return trainer.world_size if trainer is not None else 1

    @property
    def process_index(self) -> int:
        trainer = self._trainer
        return trainer.global_rank if trainer is not None else 0

    @property
    def local_process_index(self) -> int:
        trainer = self._trainer
        return trainer.local_rank if trainer is not None else 0

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_process_index == 0

    @property
    def device(self) -> torch.device:
        module = self._module
        return module.device if module is not None else self._host.args.device
