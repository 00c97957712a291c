"""HF's ``log`` and FLOP counting: ``state.log_history``, the Lightning loggers, ``on_log``."""

from __future__ import annotations

import math
from typing import Any

import torch

from hf_lightning.accumulation import all_reduce_sum

__all__ = ["all_reduce_number", "floating_point_ops", "log", "store_flos"]


def log(trainer: Any, logs: dict[str, float]) -> None:
    """Append to ``state.log_history``, send to the loggers, fire ``on_log`` (HF's contract)."""
    state = trainer.state
    if state.epoch is not None:
        logs["epoch"] = state.epoch
    if trainer.args.include_num_input_tokens_seen not in ("no", False, None):
        logs["num_input_tokens_seen"] = state.num_input_tokens_seen
    state.log_history.append({**logs, "step": state.global_step})
    pl_trainer = trainer._pl_trainer
    if pl_trainer is not None and pl_trainer.loggers:
        numeric = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        for logger in pl_trainer.loggers:
            logger.log_metrics(numeric, step=state.global_step)
    trainer.control = trainer.callback_handler.on_log(trainer.args, state, trainer.control, logs)


def floating_point_ops(model: Any, inputs: dict[str, Any], counts: dict[int, int] | None = None) -> float:
    """FLOPs of one forward+backward on ``inputs``: 6 x input tokens x non-embedding parameters.

    The usual transformer estimate, as HF reports it in ``total_flos``; 0 for models that are not
    ``PreTrainedModel``s or batches without the model's main input. Counting the parameters walks
    every module, so it is done once per model and kept in ``counts`` (the caller empties it when
    the model may have changed: at each ``train()``).
    """
    main_input = getattr(model, "main_input_name", "input_ids")
    if main_input not in inputs or not hasattr(model, "num_parameters"):
        return 0.0
    if counts is None:
        return 6.0 * inputs[main_input].numel() * model.num_parameters(exclude_embeddings=True)
    if id(model) not in counts:
        counts[id(model)] = model.num_parameters(exclude_embeddings=True)
    return 6.0 * inputs[main_input].numel() * counts[id(model)]


def store_flos(trainer: Any) -> None:
    """Move the FLOPs counted since the last call into ``state.total_flos`` (summed over ranks)."""
    flos = trainer.current_flos
    if trainer._module is not None:
        flos = all_reduce_number(flos, trainer._module.device)
    trainer.state.total_flos += flos
    trainer.current_flos = 0.0


def all_reduce_number(value: float, device: torch.device) -> float:
    """``value`` summed over all ranks (itself on one process)."""
    return float(all_reduce_sum(torch.tensor(float(value), device=device)))
