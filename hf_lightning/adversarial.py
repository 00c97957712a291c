"""FGM adversarial training on the embedding matrix (Goodfellow et al. 2015; Miyato et al. 2017).

Why on embeddings: tokens are discrete, so the perturbation is applied in the continuous space
right after them. After the clean backward pass the embedding gradient ``g`` says which direction
increases the loss fastest; FGM moves the embedding weights by ``r = epsilon * g / ||g||_2``, runs a
second forward/backward on the same batch (its gradients add to the clean ones), then puts the
weights back before the optimizer step. Typical use inside a training step::

    loss = model(**batch).loss
    loss.backward()                      # clean gradients, needed to find the attack direction
    with fgm_attack(model, epsilon=1.0):
        model(**batch).loss.backward()   # adversarial gradients accumulate on top
    optimizer.step()                     # weights are the clean ones again here

Mixed precision: with a ``GradScaler`` the gradients are multiplied by the loss scale ``S``. FGM
divides by the norm, so ``epsilon * (S g) / ||S g|| == epsilon * g / ||g||``: the delta is unchanged
and no unscaling is needed. If the scaled gradient overflowed (inf/NaN), the attack is skipped for
that parameter (zero delta) and the scaler skips the optimizer step as usual. Norms are computed in
float32 so a large fp16 gradient cannot overflow the norm itself.

Tied weights: in models whose LM head shares the input embedding matrix (GPT-2, BERT-MLM), the
perturbation also shifts the output projection, exactly as the reference recipe does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from hf_lightning.errors import ConfigError

__all__ = ["FGM", "check_fgm_settings", "fgm_attack", "fgm_delta"]


def _check_epsilon(epsilon: float) -> float:
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, int | float)
        or not math.isfinite(epsilon)
        or epsilon < 0
    ):
        raise ConfigError(
            "adv_epsilon",
            f"must be a finite number >= 0, got {epsilon!r}",
            "use a value such as 1.0 (0 disables the attack)",
        )
    return float(epsilon)


def check_fgm_settings(adversarial: dict[str, Any] | None) -> dict[str, Any] | None:
    """The module's ``adversarial`` setting checked: ``{"epsilon", "emb_name"}`` for FGM, None when off."""
    if not adversarial:
        return None
    method = adversarial.get("method", "fgm")
    if method != "fgm":
        raise ConfigError("adversarial.method", f"unknown method {method!r}", "use 'fgm'")
    unknown = set(adversarial) - {"method", "epsilon", "emb_name"}
    if unknown:
        raise ConfigError("adversarial", f"unknown keys {sorted(unknown)}", "use method, epsilon, emb_name")
    return {"epsilon": float(adversarial.get("epsilon", 1.0)), "emb_name": adversarial.get("emb_name")}


def fgm_delta(grad: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The FGM perturbation ``epsilon * grad / ||grad||_2`` (L2 norm over all elements).

    Args:
        grad: gradient of any shape, e.g. ``(V, d)`` for an embedding matrix; may be loss-scaled.
        epsilon: L2 radius of the perturbation, >= 0.

    Returns:
        Tensor of ``grad``'s shape, dtype and device with norm ``epsilon``; all zeros when the norm is
        0 or not finite (overflowed AMP step), so adding it is the same as skipping the attack.
        No host synchronisation: the skip is decided on the device with ``torch.where``.
    """
    epsilon = _check_epsilon(epsilon)
    grad32 = grad.detach().to(torch.float32)
    norm = torch.linalg.vector_norm(grad32)  # scalar, float32 even for fp16/bf16 grads
    usable = torch.isfinite(norm) & (norm > 0)
    safe_norm = torch.where(usable, norm, torch.ones_like(norm))
    delta = torch.where(usable, grad32 * (epsilon / safe_norm), torch.zeros_like(grad32))
    return delta.to(grad.dtype)


class FGM:
    """Perturb the embedding parameters along their gradient, and undo it bit-exactly.

    Args:
        model: the model whose embeddings to attack.
        epsilon: L2 radius of the perturbation, applied per parameter.
        emb_name: ``None`` attacks ``model.get_input_embeddings().weight``. A string attacks every
            trainable parameter whose name (from ``named_parameters()``) contains it, e.g.
            ``"word_embeddings"``; each is normalised separately.

    `attack` needs gradients, so call it after the clean ``backward()``; call `restore` after the
    adversarial ``backward()`` (restoring earlier would change weights the graph still needs; torch
    then raises a version-counter error rather than computing wrong gradients).
    """

    def __init__(self, model: nn.Module, epsilon: float = 1.0, emb_name: str | None = None) -> None:
        self.model = model
        self.epsilon = _check_epsilon(epsilon)
        self.emb_name = emb_name
        self.params = self._select(model, emb_name)
        self._backup: dict[str, torch.Tensor] = {}

    @staticmethod
    def _select(model: nn.Module, emb_name: str | None) -> dict[str, nn.Parameter]:
        if emb_name is None:
            get = getattr(model, "get_input_embeddings", None)
            emb = get() if callable(get) else None
            weight = getattr(emb, "weight", None)
            if not isinstance(weight, nn.Parameter):
                raise ConfigError(
                    "emb_name",
                    f"{type(model).__name__} has no get_input_embeddings().weight to attack",
                    "pass emb_name, a substring of the embedding parameter's name (e.g. 'word_embeddings')",
                )
            return {"input_embeddings.weight": weight}
        if not isinstance(emb_name, str) or not emb_name:
            raise ConfigError(
                "emb_name", f"must be a non-empty string or None, got {emb_name!r}", "e.g. 'word_embeddings'"
            )
        params = {n: p for n, p in model.named_parameters() if p.requires_grad and emb_name in n}
        if not params:
            names = [n for n, _ in model.named_parameters()][:8]
            raise ConfigError(
                "emb_name",
                f"no trainable parameter name contains {emb_name!r}",
                f"pick a substring of one of: {', '.join(names)}",
            )
        return params

    @property
    def attacked(self) -> bool:
        """True between `attack` and `restore`."""
        return bool(self._backup)

    @torch.no_grad()
    def attack(self) -> None:
        """Add ``fgm_delta(param.grad, epsilon)`` to each selected parameter, backing it up first.

        Parameters without a gradient are left alone. Calling `attack` twice without `restore`
        adds a second delta but keeps the first backup, so `restore` still returns the clean weights.
        """
        for name, param in self.params.items():
            if param.grad is None:
                continue
            if name not in self._backup:
                self._backup[name] = param.detach().clone()
            param.add_(fgm_delta(param.grad, self.epsilon))

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the backed-up weights back (bit-exact); a no-op when nothing was attacked."""
        for name, saved in self._backup.items():
            self.params[name].copy_(saved)
        self._backup = {}


@contextmanager
def fgm_attack(model: nn.Module, epsilon: float = 1.0, emb_name: str | None = None) -> Iterator[FGM]:
    """Attack on enter, restore on exit - always, even if the block raises.

    Run the adversarial forward and ``backward()`` inside the block; yields the `FGM` object.
    """
    fgm = FGM(model, epsilon=epsilon, emb_name=emb_name)
    fgm.attack()
    try:
        yield fgm
    finally:
        fgm.restore()
