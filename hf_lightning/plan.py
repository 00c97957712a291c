"""TrainingArguments -> a Lightning plan: the keyword arguments of ``lightning.Trainer``.

Only translation lives here; nothing runs. The HF-style facade switches off Lightning's own
validation scheduling and checkpointing because the HF event bridge makes HF's log/evaluate/save
decisions at each optimizer step (that matched transformers.Trainer event for event; static
``val_check_interval`` counts batches, not optimizer steps, and cannot follow a callback).
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn as nn

from hf_lightning.errors import ConfigError
from hf_lightning.loggers import build_loggers

__all__ = ["build_loggers", "lightning_trainer_kwargs", "total_optimizer_steps"]


def total_optimizer_steps(args: Any, batches_per_epoch: int) -> int:
    """HF's max_steps: ``max_steps`` if positive, else ceil(epochs * updates per epoch)."""
    if args.max_steps is not None and args.max_steps > 0:
        return int(args.max_steps)
    if args.num_train_epochs <= 0:
        raise ConfigError("num_train_epochs", f"must be > 0 when max_steps is not set, got {args.num_train_epochs}",
                          "set num_train_epochs >= 1 or max_steps > 0")
    updates_per_epoch = max(math.ceil(batches_per_epoch / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * updates_per_epoch)


def lightning_trainer_kwargs(args: Any, model: nn.Module | None, max_steps: int) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer`` that carry out ``args``."""
    from hf_lightning.strategies import build_strategy, precision_from_flags

    accelerator = "cpu" if args.use_cpu else args.accelerator
    precision = precision_from_flags(fp16=args.fp16, bf16=args.bf16, accelerator=accelerator)
    strategy = build_strategy(
        fsdp=args.fsdp or None, fsdp_config=args.fsdp_config, deepspeed=args.deepspeed, args=args, model=model,
        num_training_steps=max_steps, accelerator=accelerator, devices=args.devices, num_nodes=args.num_nodes,
        ddp_find_unused_parameters=args.ddp_find_unused_parameters, ddp_bucket_cap_mb=args.ddp_bucket_cap_mb,
        ddp_broadcast_buffers=args.ddp_broadcast_buffers, ddp_timeout=args.ddp_timeout,
        ddp_backend=args.ddp_backend, strategy=args.strategy, tp_size=args.tp_size, tp_plan=args.tp_plan,
    )
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": args.devices,
        "num_nodes": args.num_nodes,
        "strategy": strategy,
        "precision": precision,
        "max_steps": max_steps,
        "max_epochs": -1,
        "accumulate_grad_batches": args.gradient_accumulation_steps,
        "gradient_clip_val": args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None,
        "default_root_dir": args.output_dir,
        "logger": build_loggers(args) or False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        # HF's ProgressCallback (in trainer.callback_handler unless disable_tqdm) draws the bar and writes the
        # logs under it, as in transformers; a second bar from Lightning would repeat it.
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,
        "log_every_n_steps": 1,
        "deterministic": bool(args.full_determinism),
    }
    if args.torch_empty_cache_steps is not None:
        from hf_lightning.callbacks.empty_cache import EmptyCacheCallback

        kwargs["callbacks"] = [EmptyCacheCallback(args.torch_empty_cache_steps)]
    extra = dict(args.lightning_trainer_kwargs or {})
    if "callbacks" in extra and "callbacks" in kwargs:
        extra["callbacks"] = [*kwargs["callbacks"], *extra["callbacks"]]
    kwargs.update(extra)
    return kwargs
