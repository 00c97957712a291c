"""Translate the Trainer's parallelism flags (``fsdp``, ``deepspeed``, ``ddp_*``, ``fp16``/``bf16``) into
Lightning precision strings and strategies, and shard Hugging Face models with FSDP2.

Why this package exists: ``TrainingArguments`` describes parallelism in Accelerate's vocabulary, while
Lightning wants a ``Strategy`` object plus a precision string. Translating in one place keeps the
rules (and their one-line error messages) consistent between the Python API and the CLI.

Two facts about the pinned versions shape the design:

* Lightning's ``FSDPStrategy`` and ``DeepSpeedStrategy`` refuse the CPU. FSDP2 (``fully_shard``) does
  run on CPU under ``ModelParallelStrategy``, so ``fsdp=...`` on a CPU machine builds that strategy and
  the LightningModule shards the model in ``configure_model`` with :func:`fully_shard_hf_model`.
* DeepSpeed's ``"auto"`` placeholders are resolved with transformers' own ``HfTrainerDeepSpeedConfig``
  so that a config file written for ``transformers.Trainer`` means exactly the same thing here.

Files: ``config.py`` (JSON/boolean readers), ``devices.py`` (what hardware a run asks for),
``precision.py``, ``deepspeed.py``, ``fsdp_options.py`` (``FSDPOptions``), ``fsdp.py`` (sharding and the
FSDP strategies), ``fsdp2.py`` (``FSDP2Strategy``, ``TensorParallelStrategy``), ``tensor_parallel.py``
(tensor-parallel plans, applied in ``configure_model``), ``ddp.py`` (DDP and process-group helpers),
``build.py`` (``build_strategy``).
"""

from hf_lightning.strategies.build import build_strategy
from hf_lightning.strategies.config import load_json_config
from hf_lightning.strategies.ddp import DDP_BACKENDS, destroy_process_group_at_exit
from hf_lightning.strategies.deepspeed import resolve_deepspeed_config
from hf_lightning.strategies.fsdp import (
    export_full_state_dict,
    fully_shard_hf_model,
    save_full_pretrained,
    shard_for_strategy,
)
from hf_lightning.strategies.fsdp2 import FSDP2Strategy, TensorParallelStrategy
from hf_lightning.strategies.fsdp_options import FSDP_CONFIG_KEYS, FSDP_OPTIONS, FSDPOptions, fsdp_options
from hf_lightning.strategies.precision import precision_from_flags

__all__ = [
    "DDP_BACKENDS",
    "FSDP_CONFIG_KEYS",
    "FSDP_OPTIONS",
    "FSDP2Strategy",
    "FSDPOptions",
    "TensorParallelStrategy",
    "build_strategy",
    "destroy_process_group_at_exit",
    "export_full_state_dict",
    "fsdp_options",
    "fully_shard_hf_model",
    "load_json_config",
    "precision_from_flags",
    "resolve_deepspeed_config",
    "save_full_pretrained",
    "shard_for_strategy",
]
