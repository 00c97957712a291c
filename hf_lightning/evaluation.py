"""A plain evaluation loop over a DataLoader, usable inside and outside ``fit``.

The HF event bridge evaluates at HF's cadence in the middle of Lightning's training loop. Running
Lightning's own validation loop there means driving private loop state; this loop needs none: it
moves batches with the strategy (or to the module's device), runs under the precision plugin's
autocast, and leaves metric reduction across ranks to the callers (which all-reduce).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

__all__ = ["PaddingTrimmer", "eval_batches", "move_to_device"]


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict) or hasattr(batch, "items"):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def eval_batches(module: nn.Module, dataloader: Iterable[Any], trainer: Any = None) -> Iterator[Any]:
    """Yield device-ready batches in eval mode, under no_grad and the trainer's precision context."""
    precision_ctx: Callable[[], Any] = contextlib.nullcontext
    if trainer is not None:
        precision_ctx = trainer.precision_plugin.val_step_context
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    module.eval()
    for batch in dataloader:
        batch = move_to_device(batch, device)
        with torch.no_grad(), precision_ctx():
            yield batch


class PaddingTrimmer:
    """Cuts the rows a rank's evaluation shard repeated for even batch counts (``data.loaders._EvalShardSampler``).

    Call it on each batch in order: it returns the batch without repeated rows, or None for a batch
    that held nothing else. Such a batch must still go through the model once (a sharded model's
    forward is a collective) with its result thrown away. Loaders without that sampler pass through.
    """

    def __init__(self, dataloader: Any) -> None:
        self.left: int | None = getattr(getattr(dataloader, "sampler", None), "real_count", None)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any] | None:
        if self.left is None:
            return batch
        from hf_lightning.losses._utils import batch_size_of

        rows = batch_size_of(batch)
        keep = max(0, min(rows, self.left))
        self.left -= keep
        if keep == rows:
            return batch
        if keep == 0:
            return None
        return {k: v[:keep] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows else v
                for k, v in batch.items()}
