"""``torch_empty_cache_steps``: free the accelerator's cached memory every N optimizer steps, as transformers does."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["EmptyCacheCallback"]


class EmptyCacheCallback(pl.Callback):
    """After each training batch at a multiple of ``every_n_steps`` optimizer steps, empty the device cache.

    The same calls as ``transformers.Trainer``: accelerate's ``clear_device_cache`` (CUDA, XPU, MPS, ...)
    and MPS's graph cache. Lower peak memory for some slower steps; on a CPU run there is nothing to free.
    """

    def __init__(self, every_n_steps: int) -> None:
        if every_n_steps < 1:
            from hf_lightning.errors import ConfigError

            raise ConfigError("torch_empty_cache_steps", f"must be >= 1, got {every_n_steps}", "use e.g. 4, or None")
        self.every_n_steps = every_n_steps
        self.emptied = 0  # how many times the cache was emptied (for tests and curious users)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            from accelerate.utils import clear_device_cache

            clear_device_cache()
            if torch.backends.mps.is_available() and hasattr(torch.mps, "clear_graph_cache"):
                torch.mps.clear_graph_cache()
            self.emptied += 1
