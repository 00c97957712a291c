"""TrainingArguments: transformers' own dataclass, with Lightning owning the devices.

Subclassing ``transformers.TrainingArguments`` gives every field name, default, help text, enum
conversion and validation of HF by construction, and ``isinstance(args, transformers.TrainingArguments)``
stays true for third-party callbacks. What we change:

* device setup: HF's ``_setup_devices`` builds an accelerate ``PartialState`` and may initialise
  ``torch.distributed`` itself; under Lightning the strategy does that, and HF's version crashes in
  Lightning-spawned DDP children. Devices here are read, never set up.
* older names that scripts written for transformers 4 still use (``evaluation_strategy``, ``warmup_ratio``,
  ``overwrite_output_dir``) are accepted with a one-time deprecation warning.
* Lightning-only fields (``accelerator``, ``devices``, ``num_nodes``, ``strategy``,
  ``lightning_trainer_kwargs``, ``stop_on_nonfinite_loss``) and transformers 4.5x's ``tp_size`` with a
  ``tp_plan`` (tensor parallelism, which transformers 5 moved into ``parallelism_config``).
* fields that cannot take effect on this engine warn once instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import transformers
from transformers.training_args import ParallelMode

from hf_lightning.errors import ConfigError

__all__ = ["NO_EFFECT", "SUPPORTED", "Seq2SeqTrainingArguments", "TrainingArguments"]

# Every transformers.TrainingArguments field is either mapped onto Lightning (SUPPORTED) or warns
# when set away from its default (NO_EFFECT). tests/test_args.py checks the two cover all fields.
SUPPORTED = frozenset(
    """
    output_dir per_device_train_batch_size num_train_epochs max_steps learning_rate lr_scheduler_type
    lr_scheduler_kwargs warmup_steps optim optim_args weight_decay adam_beta1 adam_beta2 adam_epsilon
    optim_target_modules gradient_accumulation_steps max_grad_norm activation_checkpointing log_on_each_node
    activation_checkpointing_kwargs torch_empty_cache_steps include_num_input_tokens_seen
    dataloader_multiprocessing_context ddp_static_graph
    label_smoothing_factor bf16 fp16 bf16_full_eval fp16_full_eval tf32 gradient_checkpointing
    gradient_checkpointing_kwargs torch_compile torch_compile_backend torch_compile_mode neftune_noise_alpha
    logging_strategy logging_steps logging_first_step logging_nan_inf_filter log_level log_level_replica
    disable_tqdm report_to run_name eval_strategy eval_steps eval_delay per_device_eval_batch_size
    prediction_loss_only eval_on_start eval_accumulation_steps include_for_metrics save_only_model
    save_strategy save_steps save_total_limit load_best_model_at_end metric_for_best_model greater_is_better
    ignore_data_skip restore_callback_states_from_checkpoint full_determinism seed data_seed use_cpu
    dataloader_drop_last dataloader_num_workers dataloader_pin_memory dataloader_persistent_workers
    dataloader_prefetch_factor remove_unused_columns label_names train_sampling_strategy length_column_name
    ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers ddp_backend ddp_timeout fsdp
    fsdp_config deepspeed do_train do_eval do_predict resume_from_checkpoint local_rank skip_memory_metrics
    eval_do_concat_batches use_cache batch_eval_metrics
    """.split()
)

NO_EFFECT: dict[str, str] = {
    "average_tokens_across_devices": "gradients are always normalised by the items of all ranks (token-exact, "
                                     "transformers' default True); a per-rank mean is not reproduced",
    "use_liger_kernel": "Liger's Triton GPU kernels are not wired into the Lightning engine",
    "liger_kernel_config": "Liger's Triton GPU kernels are not wired into the Lightning engine",
    "auto_find_batch_size": "use Lightning's Tuner (scale_batch_size) instead",
    "project": "tracker projects are set on the logger (trainer loggers)",
    "trackio_space_id": "trackio is not a supported logger",
    "trackio_bucket_id": "trackio is not a supported logger",
    "trackio_static_space_id": "trackio is not a supported logger",
    "eval_use_gather_object": "predictions are gathered as tensors",
    "save_on_each_node": "checkpoints are written by global rank 0",
    "enable_jit_checkpoint": "use SIGTERM handling: a checkpoint is saved on preemption",
    "push_to_hub": "Hub uploads are not wired in; save_model and checkpoint-N write the folder "
                   "huggingface_hub.upload_folder takes",
    "hub_token": "Hub uploads are not available",
    "hub_private_repo": "Hub uploads are not available",
    "hub_model_id": "Hub uploads are not available",
    "hub_strategy": "Hub uploads are not available",
    "hub_always_push": "Hub uploads are not available",
    "hub_revision": "Hub uploads are not available",
    "accelerator_config": "accelerate is not the engine; use lightning_trainer_kwargs",
    "parallelism_config": "use fsdp / deepspeed / strategy",
    "dataloader_in_order": "not applicable: loaders are not wrapped by accelerate",
    "debug": "HF debug options are not available; use Lightning's profiler",
}

_WARNED: set[str] = set()


def _warn_once(key: str, message: str, category: type[Warning] = UserWarning) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, category, stacklevel=3)


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """``transformers.TrainingArguments`` for the Lightning engine (same fields and defaults)."""

    evaluation_strategy: str | None = field(default=None, metadata={"help": "Deprecated: use eval_strategy."})
    warmup_ratio: float | None = field(default=None, metadata={"help": "Deprecated: use warmup_steps < 1."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into an output_dir that already holds checkpoints without a warning."}
    )
    # The Lightning-only fields are typed as HfArgumentParser can read them from a command line, a JSON
    # or a YAML file: one type per field (``devices`` is a ``str`` there and normalised below, a dict
    # field is ``dict | str`` and decoded from JSON text by HF's ``_VALID_DICT_FIELDS`` pass).
    accelerator: str = field(
        default="auto", metadata={"help": "Lightning-only. Lightning accelerator: auto, cpu, gpu, mps, ..."}
    )
    devices: str = field(
        default="auto",
        metadata={"help": 'Lightning-only. Devices per machine: a count ("2"), ids ("0,1" or "[0, 1]") or "auto". '
                          "Python callers may also pass an int or a list."},
    )
    num_nodes: int = field(
        default=1, metadata={"help": "Lightning-only. Number of machines (torchrun/SLURM set the rest)."}
    )
    strategy: str | None = field(
        default=None, metadata={"help": "Lightning-only. Lightning strategy name (ddp, fsdp, deepspeed, ...)."}
    )
    lightning_trainer_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Lightning-only. Extra keyword arguments for lightning.Trainer (a dict, or JSON text "
                          "on the command line)."},
    )
    tp_size: int = field(
        default=1,
        metadata={"help": "Tensor-parallel size (as transformers 4.5x): processes that split each layer; the data "
                          "are split over devices x num_nodes / tp_size data-parallel groups."},
    )
    tp_plan: dict | str | None = field(
        default=None,
        metadata={"help": "Tensor-parallel plan: 'auto' (the model's own, or the BERT plan) or a dict of module-name "
                          "patterns to 'colwise'/'rowwise' (JSON text on the command line)."},
    )
    stop_on_nonfinite_loss: int | None = field(
        default=None,
        metadata={"help": "Lightning-only. Stop after this many optimizer steps in a row with a non-finite loss."},
    )

    _VALID_DICT_FIELDS = [*transformers.TrainingArguments._VALID_DICT_FIELDS, "lightning_trainer_kwargs", "tp_plan"]

    def __post_init__(self) -> None:
        if self.evaluation_strategy is not None:
            _warn_once("evaluation_strategy", "evaluation_strategy is deprecated; use eval_strategy", FutureWarning)
            if self.eval_strategy in ("no", None) or str(self.eval_strategy) == "IntervalStrategy.NO":
                self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            _warn_once("warmup_ratio", "warmup_ratio is deprecated; use warmup_steps below 1", FutureWarning)
            if self.warmup_ratio and not self.warmup_steps:
                self.warmup_steps = float(self.warmup_ratio)
        self._check_names_and_lengths()
        if self.gradient_accumulation_steps < 1:
            raise ConfigError(
                "gradient_accumulation_steps", f"must be >= 1, got {self.gradient_accumulation_steps}", "use 1 or more"
            )
        if self.output_dir is None:
            self.output_dir = "trainer_output"
        self.devices = _parse_devices(self.devices)
        self._warn_no_effect()  # before HF converts dicts into config objects
        deepspeed = self.deepspeed
        if deepspeed:
            # HF would build accelerate's DeepSpeed plugin here (and need deepspeed installed); the
            # Lightning strategy gets the resolved config instead. Validate the JSON now, in one line.
            from hf_lightning.strategies import load_json_config

            load_json_config(deepspeed, "deepspeed")
            self.deepspeed = None
        if self.report_to == "all" or self.report_to == ["all"]:
            # HF expands "all" to every installed integration it knows; keep the ones with a Lightning logger.
            from hf_lightning.loggers import all_trackers

            self.report_to = all_trackers()
        super().__post_init__()
        self.deepspeed = deepspeed
        # Older scripts read self.args.evaluation_strategy: keep the old name in step with the new one.
        self.evaluation_strategy = self.eval_strategy

    def _check_names_and_lengths(self) -> None:
        """One-line errors for the mistakes HF reports with an enum traceback or not at all."""
        from hf_lightning.optim import check_name, optimizer_names, scheduler_names

        check_name("optim", str(getattr(self.optim, "value", self.optim)), optimizer_names(), "optimizer")
        check_name(
            "lr_scheduler_type",
            str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)),
            scheduler_names(),
            "scheduler",
        )
        if (self.max_steps is None or self.max_steps <= 0) and self.num_train_epochs <= 0:
            raise ConfigError(
                "num_train_epochs",
                f"is {self.num_train_epochs} and max_steps is {self.max_steps}: nothing would train",
                "set num_train_epochs > 0 or max_steps > 0",
            )
        if self.per_device_train_batch_size < 1:
            raise ConfigError("per_device_train_batch_size", f"must be >= 1, got {self.per_device_train_batch_size}",
                              "use a positive batch size")
        if self.learning_rate < 0:
            raise ConfigError("learning_rate", f"must be >= 0, got {self.learning_rate}", "use e.g. 5e-5")
        if not 0 <= self.label_smoothing_factor < 1:
            raise ConfigError("label_smoothing_factor", f"must be in [0, 1), got {self.label_smoothing_factor}",
                              "use e.g. 0.1")

    def _warn_no_effect(self) -> None:
        defaults = {f.name: f for f in dataclasses.fields(transformers.TrainingArguments)}
        for name, reason in NO_EFFECT.items():
            f = defaults.get(name)
            if f is None:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            )
            value = getattr(self, name, default)
            if value != default and (value or default):  # None, "" and {} read as "not set" when the default is
                _warn_once(f"no-effect:{name}", f"TrainingArguments.{name} has no effect on hf_lightning: {reason}")

    def to_dict(self) -> dict[str, Any]:
        """HF's ``to_dict`` (what ``to_json_string``, loggers and ``training_args.bin`` readers see).

        The Lightning-only dict field is kept as a dict, so ``parse_dict``/``parse_json_file`` read the
        output back into equal arguments.
        """
        out = super().to_dict()
        out.pop("evaluation_strategy", None)  # a mirror of eval_strategy for old scripts; reading it back warns
        for name in ("lightning_trainer_kwargs", "tp_plan"):
            if isinstance(getattr(self, name), dict):
                out[name] = dict(getattr(self, name))
        return out

    # ---- devices: read, never set up (Lightning's strategy owns torch.distributed) ----
    @cached_property
    def _setup_devices(self) -> torch.device:
        self.distributed_state = None
        cpu = self.use_cpu or self.accelerator == "cpu"
        if not cpu and torch.cuda.is_available():
            self._n_gpu = 1
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self._n_gpu = 0
        return torch.device("cpu")

    @property
    def n_gpu(self) -> int:
        _ = self._setup_devices
        return self._n_gpu

    @property
    def parallel_mode(self) -> ParallelMode:
        return ParallelMode.DISTRIBUTED if self.world_size > 1 else ParallelMode.NOT_PARALLEL

    @property
    def world_size(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return int(os.environ.get("WORLD_SIZE", 1))

    @property
    def process_index(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return int(os.environ.get("RANK", 0))

    @property
    def local_process_index(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))


@dataclass
class Seq2SeqTrainingArguments(TrainingArguments, transformers.Seq2SeqTrainingArguments):
    """``transformers.Seq2SeqTrainingArguments`` for the Lightning engine (same fields and defaults).

    ``predict_with_generate``, ``generation_max_length``, ``generation_num_beams`` and
    ``generation_config`` act as in transformers; ``sortish_sampler`` warns: transformers 5 ignores it
    too (use ``train_sampling_strategy="group_by_length"``).
    """

    def __post_init__(self) -> None:
        if self.sortish_sampler:
            _warn_once(
                "no-effect:sortish_sampler",
                "Seq2SeqTrainingArguments.sortish_sampler has no effect (transformers 5 ignores it as well); "
                "use train_sampling_strategy='group_by_length'",
            )
        super().__post_init__()


def _parse_devices(value: Any) -> Any:
    """``devices`` as Lightning takes it: "auto", an int count, or a list of ids (command-line text too)."""
    if not isinstance(value, str):
        return list(value) if isinstance(value, tuple) else value
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text.startswith("[") or "," in text:
        try:
            return [int(v) for v in text.strip("[]").split(",") if v.strip()]
        except ValueError:
            raise ConfigError(
                "devices", f"cannot read {value!r} as device ids", 'use a count ("2"), ids ("0,1") or "auto"'
            ) from None
    return text
