"""Magnitude pruning during training, to a target sparsity (``torch.nn.utils.prune``).

The smallest-magnitude weights of every ``nn.Linear`` (globally ranked, so layers that matter less
give up more) are masked in steps: after each of ``steps`` evenly spaced optimizer steps the sparsity
rises along the cubic schedule of Zhu & Gupta (2017) until it reaches ``target_sparsity``, and the
training in between lets the remaining weights compensate. At fit end the masks are folded into the
weights (``prune.remove``, at train end, before the HF-format export), so the saved model is a plain transformers model with zeros in it.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch.nn as nn
from torch.nn.utils import prune

from hf_lightning.errors import ConfigError

__all__ = ["MagnitudePruning", "linear_sparsity"]


def _linears(module: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in module.modules() if isinstance(m, nn.Linear)]


def linear_sparsity(module: nn.Module) -> float:
    """The fraction of zero weights over all ``nn.Linear`` layers."""
    weights = [m.weight.detach() for m, _ in _linears(module)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


class MagnitudePruning(pl.Callback):
    """Prune ``nn.Linear`` weights by global L1 magnitude to ``target_sparsity`` during training.

    Args:
        target_sparsity: fraction of Linear weights that are zero at the end (0 <= s < 1).
        steps: how many pruning rounds; they are spread evenly over the run's optimizer steps.
        exclude: names of submodules left dense (e.g. the classifier head ``"classifier"``).
    """

    def __init__(self, target_sparsity: float = 0.5, steps: int = 4, exclude: tuple[str, ...] = ()) -> None:
        if not 0 <= target_sparsity < 1:
            raise ConfigError("target_sparsity", f"must be in [0, 1), got {target_sparsity}", "use e.g. 0.5")
        if steps < 1:
            raise ConfigError("steps", f"must be >= 1, got {steps}", "use 1 or more pruning rounds")
        self.target_sparsity, self.steps, self.exclude = target_sparsity, steps, tuple(exclude)
        self._rounds_done = 0

    def sparsity_after_round(self, round_: int) -> float:
        """Cubic schedule: fast early pruning, gentle near the target (round 1..steps)."""
        return self.target_sparsity * (1 - (1 - round_ / self.steps) ** 3)

    def _parameters(self, pl_module: pl.LightningModule) -> list[tuple[nn.Module, str]]:
        model = getattr(pl_module, "model", pl_module)
        skipped = {id(m) for name, sub in model.named_modules() if name in self.exclude for m in sub.modules()}
        return [(m, p) for m, p in _linears(model) if id(m) not in skipped]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        total = max(int(trainer.estimated_stepping_batches), 1)
        due = min(self.steps, trainer.global_step * self.steps // total)
        while self._rounds_done < due:
            self._rounds_done += 1
            self._prune_to(pl_module, self.sparsity_after_round(self._rounds_done))

    def _prune_to(self, pl_module: pl.LightningModule, sparsity: float) -> None:
        params = self._parameters(pl_module)
        # global_unstructured prunes `amount` of what is still unpruned; masks compose, so ask for the
        # fraction that brings the total to `sparsity`.
        kept = sum(int(m.weight_mask.sum()) if hasattr(m, "weight_mask") else m.weight.numel() for m, _ in params)
        already = 1 - kept / sum(m.weight.numel() for m, _ in params)
        amount = (sparsity - already) / (1 - already) if already < 1 else 0.0
        if amount > 0:
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(amount))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before on_fit_end, where the HF-format export runs: the export must see plain weights.
        for module, name in self._parameters(pl_module):
            if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
                prune.remove(module, name)  # weights keep their zeros; no masks left in the state dict

    def state_dict(self) -> dict[str, Any]:
        return {"rounds_done": self._rounds_done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rounds_done = int(state_dict.get("rounds_done", 0))
