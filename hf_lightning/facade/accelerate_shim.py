"""``AccelerateShim``: the slice of ``accelerate.Accelerator`` that HF ``Trainer`` subclasses call.

``trainer.accelerator`` in transformers is an ``accelerate.Accelerator``; scripts written for it call
``self.accelerator.backward(loss)``, ``unwrap_model``, ``gather``, ``is_main_process``, ... This shim
answers those calls from the Lightning trainer and ``TrainerModule`` behind the facade. It is not a
Lightning ``Accelerator`` (device backend): it only has accelerate's method names.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn

from hf_lightning.facade.module import TrainerModule
from hf_lightning.lightning_compat import attached_trainer

__all__ = ["AccelerateShim"]


class AccelerateShim:
    """accelerate's ``Accelerator`` methods that HF ``Trainer`` code calls, answered by Lightning.

    ``backward`` goes through the strategy (loss scaling, DDP hooks): literally inside a transformers-4
    style ``training_step`` override, item-exact otherwise (see the module docstring).
    """

    def __init__(self, host: Any) -> None:
        self._host = host

    @property
    def _module(self) -> TrainerModule:
        return self._host._module

    @property
    def _trainer(self) -> Any:
        module = self._host._module
        return attached_trainer(module) if module is not None else None

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """HF's ``accelerator.backward``: literal for transformers-4 style overrides, else item-exact."""
        module = self._module
        if module.literal_backward:
            module.backward_literal(loss)
        else:
            module.backward_items_mean(loss)

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

    def clear(self) -> None:
        """accelerate's ``clear()``: free what the last run left (a search calls it between trials)."""
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def wait_for_everyone(self) -> None:
        if self._trainer is not None:
            self._trainer.strategy.barrier()

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_main_process:
            print(*args, **kwargs)

    @property
    def sync_gradients(self) -> bool:
        if self._trainer is None:
            return True
        return self._module.at_window_end()

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
