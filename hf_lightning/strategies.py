"""Translate the Trainer's parallelism flags (``fsdp``, ``deepspeed``, ``ddp_*``, ``fp16``/``bf16``) into
Lightning precision strings and strategies, and shard Hugging Face models with FSDP2.

Why this module exists: ``TrainingArguments`` describes parallelism in Accelerate's vocabulary, while
Lightning wants a ``Strategy`` object plus a precision string. Translating in one place keeps the
rules (and their one-line error messages) consistent between the Python API and the CLI.

Two facts about the pinned versions shape the design:

* Lightning's ``FSDPStrategy`` and ``DeepSpeedStrategy`` refuse the CPU. FSDP2 (``fully_shard``) does
  run on CPU under ``ModelParallelStrategy``, so ``fsdp=...`` on a CPU machine builds that strategy and
  the LightningModule shards the model in ``configure_model`` with :func:`fully_shard_hf_model`.
* DeepSpeed's ``"auto"`` placeholders are resolved with transformers' own ``HfTrainerDeepSpeedConfig``
  so that a config file written for ``transformers.Trainer`` means exactly the same thing here.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_lightning.errors import ConfigError

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy
    from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "DDP_BACKENDS",
    "FSDP_CONFIG_KEYS",
    "FSDP_OPTIONS",
    "build_strategy",
    "export_full_state_dict",
    "fsdp_options",
    "fully_shard_hf_model",
    "precision_from_flags",
    "resolve_deepspeed_config",
    "save_full_pretrained",
]

#: Words accepted in HF's legacy ``fsdp="full_shard auto_wrap offload"`` string.
FSDP_OPTIONS: tuple[str, ...] = (
    "full_shard",
    "shard_grad_op",
    "no_shard",
    "hybrid_shard",
    "hybrid_shard_zero2",
    "offload",
    "auto_wrap",
)
_SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2")
_WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")
_BACKWARD_PREFETCH = ("BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH")

#: ``fsdp_config`` keys understood here (after HF's ``fsdp_`` prefix is stripped). The ``xla*`` keys are
#: accepted because ``transformers.TrainingArguments`` inserts them as defaults; enabling XLA is refused.
FSDP_CONFIG_KEYS: frozenset[str] = frozenset(
    {
        "version",
        "reshard_after_forward",
        "cpu_offload",
        "activation_checkpointing",
        "cpu_ram_efficient_loading",
        "state_dict_type",
        "auto_wrap_policy",
        "transformer_layer_cls_to_wrap",
        "min_num_params",
        "forward_prefetch",
        "backward_prefetch",
        "use_orig_params",
        "sync_module_states",
        "limit_all_gathers",
        "xla",
        "xla_fsdp_v2",
        "xla_fsdp_grad_ckpt",
        "xla_fsdp_settings",
    }
)

#: Process-group backends ``TrainingArguments.ddp_backend`` accepts.
DDP_BACKENDS: tuple[str, ...] = ("nccl", "gloo", "mpi", "xccl", "hccl", "cncl", "mccl")

# Lightning strategy names that mean "DDP, launched this way"; we build DDPStrategy ourselves for them so
# that the ddp_* arguments are not silently dropped.
_DDP_START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


# --------------------------------------------------------------------------------------------- helpers


def _closest(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix, so a typo costs one glance instead of a docs search."""
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _accelerator_name(accelerator: Any) -> str:
    """Lower-case accelerator name for both ``"gpu"`` strings and Lightning ``Accelerator`` objects."""
    if isinstance(accelerator, str):
        return accelerator.lower()
    name = type(accelerator).__name__.lower()
    return "cuda" if "cuda" in name else name.replace("accelerator", "")


def _targets_cuda(accelerator: Any) -> bool:
    """Whether the run asks for CUDA: explicitly (``gpu``/``cuda``) or via ``auto`` on a CUDA machine.

    An explicit ``gpu`` counts even when no GPU is visible, because Lightning will then report the missing
    device itself; the strategy choice should follow what the user asked for.
    """
    name = _accelerator_name(accelerator)
    if name in ("gpu", "cuda"):
        return True
    return name == "auto" and torch.cuda.is_available()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _as_bool(value: Any, field: str) -> bool:
    """Parse HF-style booleans, which arrive as real bools or as ``"true"``/``"false"`` strings from JSON/CLI."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(field, f"expected true or false, got {value!r}", f"set {field} to true or false")


def _count_devices(devices: Any, cuda: bool) -> int:
    """How many processes per node Lightning will start for ``devices``, without touching the hardware.

    Needed before the Trainer exists: DDP is only worth building when more than one process will run,
    and DeepSpeed's ``train_batch_size`` depends on the world size.
    """
    if devices is None:
        return 1
    if isinstance(devices, (list, tuple)):
        if not devices:
            raise ConfigError("devices", "the device list is empty", "list at least one device index")
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text == "auto":
            return max(torch.cuda.device_count(), 1) if cuda else 1
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        try:
            devices = int(text)
        except ValueError:
            raise ConfigError(
                "devices", f"cannot read {devices!r} as a device count", 'use an integer, "auto" or "0,1"'
            ) from None
    if isinstance(devices, bool) or not isinstance(devices, int):
        raise ConfigError(
            "devices", f"unsupported value {devices!r}", 'use an integer, "auto" or a list of ids'
        )
    if devices == -1:
        if not cuda:
            raise ConfigError(
                "devices", "devices=-1 (all GPUs) was given for a CPU run", "give a number of processes"
            )
        return max(torch.cuda.device_count(), 1)
    if devices < 1:
        raise ConfigError("devices", f"must be at least 1, got {devices}", "use devices=1 or more")
    return devices


def _timeout(ddp_timeout: Any) -> timedelta:
    if ddp_timeout is None:
        return timedelta(seconds=1800)
    if isinstance(ddp_timeout, timedelta):
        return ddp_timeout
    if isinstance(ddp_timeout, bool) or not isinstance(ddp_timeout, (int, float)) or ddp_timeout <= 0:
        raise ConfigError(
            "ddp_timeout", f"must be a positive number of seconds, got {ddp_timeout!r}", "e.g. 1800"
        )
    return timedelta(seconds=ddp_timeout)


def _backend(ddp_backend: str | None, cuda: bool) -> str | None:
    """Validate ``ddp_backend``; default to gloo on CPU because Lightning's default guess is wrong there."""
    if ddp_backend is None:
        return None if cuda else "gloo"
    backend = ddp_backend.lower()
    if backend not in DDP_BACKENDS:
        raise ConfigError(
            "ddp_backend",
            f"unknown backend {ddp_backend!r}{_closest(backend, DDP_BACKENDS)}",
            f"use one of {', '.join(DDP_BACKENDS)}",
        )
    if backend == "nccl" and not cuda:
        raise ConfigError(
            "ddp_backend", "nccl needs CUDA GPUs but this run is on the CPU", 'use ddp_backend="gloo"'
        )
    return backend


# ------------------------------------------------------------------------------------------- precision


def precision_from_flags(
    fp16: bool = False,
    bf16: bool = False,
    accelerator: Any = "auto",
    half_precision_backend: str | None = None,
    bf16_full: bool = False,
) -> str:
    """Map HF's ``fp16``/``bf16`` flags to a Lightning precision string.

    ``bf16_full`` asks for pure bf16 weights (``"bf16-true"``), the training-time analogue of
    ``bf16_full_eval``. fp16 autocast with a gradient scaler only exists on CUDA (and MPS), so on a CPU
    run it is refused up front with the fix, rather than failing inside Lightning's precision plugin.
    """
    if half_precision_backend not in (None, "auto", "cpu_amp", "amp"):
        if half_precision_backend == "apex":
            raise ConfigError(
                "half_precision_backend",
                "apex is not supported; mixed precision runs on torch.amp",
                "remove half_precision_backend",
            )
        raise ConfigError(
            "half_precision_backend",
            f"unknown value {half_precision_backend!r}",
            'use "auto" (or leave it unset)',
        )
    if fp16 and (bf16 or bf16_full):
        raise ConfigError("fp16", "fp16 and bf16 are both set", "choose one of fp16=True or bf16=True")
    name = _accelerator_name(accelerator)
    if fp16:
        cuda_ok = name in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        mps_ok = name in ("auto", "mps") and _mps_available()
        if not (cuda_ok or mps_ok):
            raise ConfigError(
                "fp16", "fp16 mixed precision needs a CUDA GPU and none is in use", "use bf16=True on CPU"
            )
        return "16-mixed"
    if bf16 or bf16_full:
        if _targets_cuda(accelerator) and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ConfigError("bf16", "this GPU does not support bfloat16", "use fp16=True instead")
        return "bf16-true" if bf16_full else "bf16-mixed"
    return "32-true"


# ------------------------------------------------------------------------------------------- DeepSpeed


def _load_json_config(source: str | os.PathLike[str] | Mapping[str, Any], field: str) -> dict[str, Any]:
    """Read a JSON config given as a dict, a file path or an inline JSON string (as HF accepts).

    Errors name the field and the file in one line, because a JSON syntax error otherwise surfaces as a
    bare ``JSONDecodeError`` far away from the argument that caused it.
    """
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(
            field, f"expected a JSON file path or a dict, got {type(source).__name__}", "pass a path"
        )
    text_source = os.fspath(source)
    if os.path.isfile(text_source):
        try:
            with open(text_source, encoding="utf-8") as handle:
                loaded = json.load(handle)
        except json.JSONDecodeError as err:
            raise ConfigError(
                field,
                f"{text_source} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})",
                f"fix the JSON syntax in {text_source}",
            ) from None
    elif text_source.lstrip().startswith("{"):
        try:
            loaded = json.loads(text_source)
        except json.JSONDecodeError as err:
            raise ConfigError(
                field, f"the inline JSON is invalid ({err.msg} at column {err.colno})", "fix the JSON syntax"
            ) from None
    elif os.path.exists(text_source):
        raise ConfigError(
            field, f"{text_source} is a directory, not a JSON file", "pass the path of a JSON file"
        )
    else:
        raise ConfigError(
            field, f"file {text_source} does not exist", "pass the path of an existing JSON file"
        )
    if not isinstance(loaded, dict):
        raise ConfigError(
            field, f"{text_source} must hold a JSON object, not {type(loaded).__name__}", "wrap it in {}"
        )
    return loaded


def _warmup_steps(args: Any, num_training_steps: int) -> int:
    """``args.get_warmup_steps`` when available; otherwise HF's rule (an int count, or a ratio below 1)."""
    getter = getattr(args, "get_warmup_steps", None)
    if callable(getter):
        return int(getter(num_training_steps))
    warmup = getattr(args, "warmup_steps", 0) or 0
    ratio = getattr(args, "warmup_ratio", 0) or 0
    if warmup >= 1:
        return int(warmup)
    if warmup > 0:
        return math.ceil(num_training_steps * warmup)
    return math.ceil(num_training_steps * ratio)


def _args_view(args: Any, world_size: int | None, num_training_steps: int) -> Any:
    """A plain snapshot of exactly the fields HF's DeepSpeed processing reads.

    Why not pass ``args`` itself: ``TrainingArguments.world_size`` consults the distributed state, which is
    not set up (or is Lightning's, not Accelerate's) when strategies are built. Taking the world size from
    Lightning's ``devices * num_nodes`` and everything else from ``args`` avoids that, and lets tests pass a
    ``SimpleNamespace``.
    """
    from types import SimpleNamespace

    warmup = _warmup_steps(args, num_training_steps)
    return SimpleNamespace(
        world_size=world_size if world_size is not None else int(getattr(args, "world_size", 1) or 1),
        per_device_train_batch_size=getattr(args, "per_device_train_batch_size", 8),
        gradient_accumulation_steps=getattr(args, "gradient_accumulation_steps", 1),
        max_grad_norm=getattr(args, "max_grad_norm", 1.0),
        learning_rate=getattr(args, "learning_rate", 5e-5),
        adam_beta1=getattr(args, "adam_beta1", 0.9),
        adam_beta2=getattr(args, "adam_beta2", 0.999),
        adam_epsilon=getattr(args, "adam_epsilon", 1e-8),
        weight_decay=getattr(args, "weight_decay", 0.0),
        save_on_each_node=getattr(args, "save_on_each_node", False),
        fp16=bool(getattr(args, "fp16", False)),
        fp16_full_eval=bool(getattr(args, "fp16_full_eval", False)),
        bf16=bool(getattr(args, "bf16", False)),
        bf16_full_eval=bool(getattr(args, "bf16_full_eval", False)),
        auto_find_batch_size=bool(getattr(args, "auto_find_batch_size", False)),
        get_warmup_steps=lambda _steps: warmup,
    )


def _detached_hf_deepspeed_config(config: dict[str, Any]) -> Any:
    """An ``HfTrainerDeepSpeedConfig`` that neither needs the deepspeed package nor registers the global.

    transformers only gives ``HfTrainerDeepSpeedConfig`` its config-query methods (inherited from
    Accelerate) when deepspeed is installed, yet resolving ``"auto"`` is pure dict work. This subclass
    supplies those few queries so CPU-only installs can still check and resolve a DeepSpeed config, while
    the fill rules themselves stay transformers' own.
    """
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    class _Detached(HfTrainerDeepSpeedConfig):
        def __init__(self, cfg: dict[str, Any]) -> None:  # no super(): that would set the global
            self.config = cfg
            self._dtype = None
            self.mismatches = []
            self._stage = self.get_value("zero_optimization.stage", -1)

        def find_config_node(self, ds_key_long: str) -> tuple[Any, str]:
            *parents, key = ds_key_long.split(".")
            node: Any = self.config
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
                if node is None:
                    return None, key
            return node, key

        def get_value(self, ds_key_long: str, default: Any = None) -> Any:
            node, key = self.find_config_node(ds_key_long)
            return default if node is None else node.get(key, default)

        def is_true(self, ds_key_long: str) -> bool:
            value = self.get_value(ds_key_long)
            return False if value is None else bool(value)

        def is_zero3(self) -> bool:
            return self._stage == 3

    return _Detached(config)


def _find_auto(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every value still equal to ``"auto"``."""
    if isinstance(node, dict):
        return [path for key, value in node.items() for path in _find_auto(value, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [path for i, value in enumerate(node) for path in _find_auto(value, f"{prefix}{i}.")]
    return [prefix[:-1]] if node == "auto" else []


def _fill_deepspeed(
    config: dict[str, Any], view: Any, model: Any, num_training_steps: int, detached: bool
) -> Any:
    """Run transformers' two-stage ``"auto"`` resolution, restoring its module-level global afterwards.

    The global (a weakref read by ``is_deepspeed_zero3_enabled``) must not outlive this call: left set, it
    would make every later ``from_pretrained`` in the process believe ZeRO-3 is active.
    """
    import transformers.integrations.deepspeed as hf_ds

    previous = hf_ds._hf_deepspeed_config_weak_ref
    try:
        if detached:
            hf_config = _detached_hf_deepspeed_config(config)
        else:
            hf_config = hf_ds.HfTrainerDeepSpeedConfig(config)
        hf_config.trainer_config_process(view, auto_find_batch_size=view.auto_find_batch_size)
        hf_config.trainer_config_finalize(view, model, num_training_steps)
        return hf_config
    except ValueError as err:
        message = " ".join(str(err).split())
        if "mismatch" in message:
            raise ConfigError(
                "deepspeed",
                f"config values disagree with the training arguments: {message}",
                'set those DeepSpeed values to "auto" or make them match',
            ) from None
        raise ConfigError("deepspeed", message, 'replace the "auto" values it names with numbers') from None
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = previous


def resolve_deepspeed_config(
    deepspeed: str | os.PathLike[str] | Mapping[str, Any],
    args: Any,
    model: nn.Module | None,
    num_training_steps: int,
    *,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Load a DeepSpeed config and replace its ``"auto"`` values the way ``transformers.Trainer`` does.

    Batch sizes, gradient accumulation and clipping, optimizer and scheduler parameters, fp16/bf16 and the
    ``hidden_size``-based ZeRO bucket sizes are filled from ``args``/``model``; explicit values that
    contradict ``args`` are reported. Works on CPU and without the deepspeed package, so configs can be
    validated anywhere. ``world_size`` defaults to ``args.world_size``; pass Lightning's
    ``devices * num_nodes`` when building a strategy before the processes exist.

    Returns a plain dict (JSON-serialisable) with no ``"auto"`` left; the input is never mutated.
    """
    from transformers.integrations.deepspeed import is_deepspeed_available

    config = _load_json_config(deepspeed, "deepspeed")
    if (
        isinstance(num_training_steps, bool)
        or not isinstance(num_training_steps, int)
        or num_training_steps < 0
    ):
        raise ConfigError(
            "max_steps",
            f"the number of training steps must be a non-negative integer, got {num_training_steps!r}",
            "set max_steps or num_train_epochs",
        )
    view = _args_view(args, world_size, num_training_steps)
    hf_config = _fill_deepspeed(
        config, view, model, num_training_steps, detached=not is_deepspeed_available()
    )
    resolved: dict[str, Any] = hf_config.config
    leftover = _find_auto(resolved)
    if leftover:
        raise ConfigError(
            "deepspeed",
            f'no value is known for the "auto" entries {", ".join(leftover)}',
            'replace these "auto" values with numbers',
        )
    if "optimizer" not in resolved:
        # The optimizer is the one TrainingArguments.optim names (built in configure_optimizers), as
        # transformers.Trainer does; DeepSpeed's ZeRO refuses such a client optimizer without this flag.
        resolved.setdefault("zero_allow_untested_optimizer", True)
    return resolved


# ------------------------------------------------------------------------------------------------ FSDP


def _fsdp_items(fsdp: Any) -> list[str] | None:
    """The words of HF's legacy ``fsdp`` value, or None when FSDP is off."""
    if fsdp is None or fsdp is False:
        return None
    if fsdp is True:
        return []
    if isinstance(fsdp, str):
        words = fsdp.replace(",", " ").split()
        if not words or [w.lower() for w in words] in (["false"], ["none"]):
            return None
        return [] if [w.lower() for w in words] == ["true"] else [w.lower() for w in words]
    if isinstance(fsdp, (list, tuple)):
        if not fsdp:
            return None
        return [str(getattr(item, "value", item)).lower() for item in fsdp]
    raise ConfigError("fsdp", f"unsupported value {fsdp!r}", 'use fsdp="full_shard auto_wrap" or fsdp=True')


def _names_list(value: Any, field: str) -> list[str]:
    if isinstance(value, str):
        names = value.replace(",", " ").split()
    elif isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        names = [name.strip() for name in value]
    else:
        raise ConfigError(field, f"expected class names, got {value!r}", 'e.g. ["BertLayer"]')
    if not names:
        raise ConfigError(
            field, "the list of class names is empty", "name at least one layer class or drop the key"
        )
    return names


def fsdp_options(
    fsdp: bool | str | list[str] | None, fsdp_config: Mapping[str, Any] | str | None = None
) -> dict[str, Any]:
    """Normalise HF's ``fsdp`` and ``fsdp_config`` into one flat, validated dict.

    Accepts both the legacy spelling (``fsdp="full_shard auto_wrap offload"``) and the transformers 5
    spelling (``fsdp=True`` plus ``fsdp_config``, which is what ``TrainingArguments.__post_init__`` leaves
    behind). Keys may carry HF's optional ``fsdp_`` prefix. Unknown words and keys raise ``ConfigError``
    instead of being ignored, because a silently dropped ``offload`` is an out-of-memory crash hours later.

    The result has ``enabled`` plus: ``sharding_strategy`` (``FULL_SHARD``...), ``reshard_after_forward``,
    ``cpu_offload``, ``auto_wrap_policy``, ``transformer_layer_cls_to_wrap`` (None = use the model's
    ``_no_split_modules``), ``min_num_params``, ``activation_checkpointing``, ``cpu_ram_efficient_loading``,
    ``sync_module_states``, ``forward_prefetch``, ``backward_prefetch``, ``limit_all_gathers``,
    ``use_orig_params``, ``state_dict_type`` and ``version``.
    """
    items = _fsdp_items(fsdp)
    raw = {} if fsdp_config is None else _load_json_config(fsdp_config, "fsdp_config")
    config: dict[str, Any] = {}
    for key, value in raw.items():
        name = key[5:] if key.startswith("fsdp_") else key
        if name not in FSDP_CONFIG_KEYS:
            raise ConfigError(
                f"fsdp_config.{key}",
                f"unknown key{_closest(name, FSDP_CONFIG_KEYS)}",
                f"use one of {', '.join(sorted(FSDP_CONFIG_KEYS))}",
            )
        config[name] = value

    for xla_key in ("xla", "xla_fsdp_v2", "xla_fsdp_grad_ckpt"):
        if xla_key in config and _as_bool(config[xla_key], f"fsdp_config.{xla_key}"):
            raise ConfigError(
                f"fsdp_config.{xla_key}", "XLA FSDP is not supported", f"remove fsdp_config.{xla_key}"
            )

    version = config.get("version", 2)
    if version not in (1, 2, "1", "2"):
        raise ConfigError("fsdp_config.version", f"must be 1 or 2, got {version!r}", "use 2 (FSDP2)")

    # Sharding strategy: from the fsdp words, or from reshard_after_forward (bool in FSDP2, name in FSDP1).
    word_strategy: str | None = None
    cpu_offload = False
    for word in items or []:
        if word.upper() in _SHARDING_STRATEGIES:
            if word_strategy is not None and word_strategy != word.upper():
                raise ConfigError(
                    "fsdp", f"two sharding strategies given ({word_strategy.lower()}, {word})", "keep one"
                )
            word_strategy = word.upper()
        elif word == "offload":
            cpu_offload = True
        elif word != "auto_wrap":
            raise ConfigError(
                "fsdp",
                f"unknown option {word!r}{_closest(word, FSDP_OPTIONS)}",
                f"use words from {', '.join(FSDP_OPTIONS)}",
            )

    config_strategy: str | None = None
    if "reshard_after_forward" in config:
        value = config["reshard_after_forward"]
        if isinstance(value, str) and value.upper() in _SHARDING_STRATEGIES:
            config_strategy = value.upper()
        else:
            reshard = _as_bool(value, "fsdp_config.reshard_after_forward")
            config_strategy = "FULL_SHARD" if reshard else "SHARD_GRAD_OP"
    if word_strategy and config_strategy and word_strategy != config_strategy:
        raise ConfigError(
            "fsdp",
            f"fsdp says {word_strategy.lower()} but fsdp_config.reshard_after_forward says {config_strategy.lower()}",
            "drop one of them",
        )
    strategy = word_strategy or config_strategy or "FULL_SHARD"

    if "cpu_offload" in config:
        cpu_offload = cpu_offload or _as_bool(config["cpu_offload"], "fsdp_config.cpu_offload")

    min_num_params = config.get("min_num_params", 0)
    if isinstance(min_num_params, bool) or not isinstance(min_num_params, int) or min_num_params < 0:
        raise ConfigError(
            "fsdp_config.min_num_params",
            f"must be a non-negative integer, got {min_num_params!r}",
            "e.g. 1000000",
        )
    layer_names = None
    if config.get("transformer_layer_cls_to_wrap") is not None:
        layer_names = _names_list(
            config["transformer_layer_cls_to_wrap"], "fsdp_config.transformer_layer_cls_to_wrap"
        )
    if min_num_params > 0 and layer_names:
        raise ConfigError(
            "fsdp_config.min_num_params",
            "min_num_params (size-based wrapping) and transformer_layer_cls_to_wrap exclude each other",
            "keep one of them",
        )
    policy = str(
        config.get("auto_wrap_policy", "SIZE_BASED_WRAP" if min_num_params > 0 else "TRANSFORMER_BASED_WRAP")
    )
    if policy.upper() not in _WRAP_POLICIES:
        raise ConfigError(
            "fsdp_config.auto_wrap_policy",
            f"unknown policy {policy!r}{_closest(policy.upper(), _WRAP_POLICIES)}",
            f"use one of {', '.join(_WRAP_POLICIES)}",
        )
    policy = policy.upper()
    if policy == "SIZE_BASED_WRAP" and min_num_params == 0:
        raise ConfigError(
            "fsdp_config.min_num_params", "SIZE_BASED_WRAP needs min_num_params > 0", "set e.g. 1000000"
        )

    prefetch = config.get("backward_prefetch")
    if prefetch is not None:
        prefetch = str(prefetch).upper()
        if prefetch not in _BACKWARD_PREFETCH:
            raise ConfigError(
                "fsdp_config.backward_prefetch",
                f"unknown value {config['backward_prefetch']!r}",
                f"use one of {', '.join(_BACKWARD_PREFETCH)}",
            )
        prefetch = None if prefetch == "NO_PREFETCH" else prefetch

    state_dict_type = str(config.get("state_dict_type", "FULL_STATE_DICT")).upper()
    state_dict_type = {"FULL": "FULL_STATE_DICT", "SHARDED": "SHARDED_STATE_DICT"}.get(
        state_dict_type, state_dict_type
    )
    if state_dict_type not in ("FULL_STATE_DICT", "SHARDED_STATE_DICT"):
        raise ConfigError(
            "fsdp_config.state_dict_type",
            f"unknown value {config['state_dict_type']!r}",
            "use FULL_STATE_DICT or SHARDED_STATE_DICT",
        )

    def flag(key: str, default: bool) -> bool:
        return _as_bool(config[key], f"fsdp_config.{key}") if key in config else default

    return {
        "enabled": items is not None,
        "version": int(version),
        "sharding_strategy": strategy,
        "reshard_after_forward": strategy in ("FULL_SHARD", "HYBRID_SHARD"),
        "cpu_offload": cpu_offload,
        "auto_wrap_policy": policy,
        "transformer_layer_cls_to_wrap": layer_names,
        "min_num_params": min_num_params,
        "activation_checkpointing": flag("activation_checkpointing", False),
        "cpu_ram_efficient_loading": flag("cpu_ram_efficient_loading", False),
        "sync_module_states": flag("sync_module_states", True),
        "forward_prefetch": flag("forward_prefetch", False),
        "backward_prefetch": prefetch,
        "limit_all_gathers": flag("limit_all_gathers", True),
        "use_orig_params": flag("use_orig_params", True),
        "state_dict_type": state_dict_type,
    }


_EXIT_HOOK_REGISTERED = False


def destroy_process_group_at_exit() -> None:
    """Tear down an open process group before the interpreter does.

    Lightning registers this only for NCCL. A gloo group left for interpreter shutdown is destroyed in
    arbitrary order with its worker threads, and about one CPU run in ten then aborts with
    ``terminate called without an active exception`` *after* training finished and outputs were written:
    the exit code says "crashed" although nothing did. ``atexit`` runs before that shutdown.
    """
    global _EXIT_HOOK_REGISTERED
    if _EXIT_HOOK_REGISTERED or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    import atexit

    def _destroy() -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(_destroy)
    _EXIT_HOOK_REGISTERED = True


def _owners_by_param(model: nn.Module) -> dict[int, list[str]]:
    """Every qualified name under which each parameter is reachable (tied weights have several)."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    return owners


def _shares_params_outside(prefix: str, module: nn.Module, owners: dict[int, list[str]]) -> bool:
    """Whether ``module`` owns a parameter that is also used outside it (e.g. an embedding tied to a LM head).

    FSDP (1 and 2) cannot put one parameter in two sharding units, so such a module must stay with its
    parent instead of getting its own unit; the root unit then holds the tied weight once.
    """
    inside = prefix + "."
    return any(
        not name.startswith(inside) for param in module.parameters() for name in owners.get(id(param), ())
    )


def _layer_classes(
    model: nn.Module, names: Iterable[str] | None, field: str = "fsdp_config.transformer_layer_cls_to_wrap"
) -> set[type[nn.Module]]:
    """Module classes to wrap: user-named ones (must exist) or the model's ``_no_split_modules``.

    Classes whose instances hold tied weights are left out (see :func:`_shares_params_outside`).
    """
    explicit = names is not None
    wanted = set(names) if names is not None else set(getattr(model, "_no_split_modules", None) or ())
    owners = _owners_by_param(model)
    found: dict[str, type[nn.Module]] = {}
    excluded: set[str] = set()
    for prefix, module in model.named_modules():
        cls_name = type(module).__name__
        if cls_name not in wanted or module is model:
            continue
        if _shares_params_outside(prefix, module, owners):
            excluded.add(cls_name)
        found.setdefault(cls_name, type(module))
    missing = wanted - set(found)
    if explicit and missing:
        present = sorted({type(m).__name__ for m in model.modules()})
        raise ConfigError(
            field,
            f"{type(model).__name__} has no module of class {', '.join(sorted(missing))}",
            f"use class names that occur in the model, e.g. {', '.join(present[:8])}",
        )
    return {cls for name, cls in found.items() if name not in excluded}


def _data_parallel_mesh(mesh: DeviceMesh | None) -> DeviceMesh | None:
    """Accept Lightning's 2-D ``(data_parallel, tensor_parallel)`` mesh and shard over its data axis."""
    if mesh is None or mesh.ndim == 1:
        return mesh
    dim_names = mesh.mesh_dim_names or ()
    if "data_parallel" in dim_names:
        return mesh["data_parallel"]
    raise ValueError(
        f"fully_shard_hf_model needs a 1-D mesh or one with a 'data_parallel' axis, got {dim_names}"
    )


def fully_shard_hf_model(
    model: nn.Module,
    mesh: DeviceMesh | None = None,
    layer_cls_names: Iterable[str] | None = None,
    offload: bool = False,
    *,
    reshard_after_forward: bool = True,
    mp_policy: Any = None,
) -> nn.Module:
    """Shard a Hugging Face model with FSDP2: one unit per transformer block, then the root.

    Blocks are the model's ``_no_split_modules`` classes (or ``layer_cls_names``), the same granularity
    transformers uses for device maps. A block that owns a weight tied elsewhere (a tied input embedding)
    is left to the root unit, since FSDP refuses to split a shared parameter. Safe to call twice (Lightning
    may call ``configure_model`` again): an already sharded model is returned unchanged. ``mesh`` may be
    1-D or Lightning's ModelParallelStrategy mesh; ``offload`` keeps parameters on CPU between uses (a no-op
    in spirit on CPU runs, so it is ignored there). Collective: every rank must call it.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

    if isinstance(model, FSDPModule):
        return model
    mesh = _data_parallel_mesh(mesh)
    classes = _layer_classes(model, layer_cls_names)
    on_cpu = mesh.device_type == "cpu" if mesh is not None else not torch.cuda.is_available()
    kwargs: dict[str, Any] = {"reshard_after_forward": reshard_after_forward}
    if mesh is not None:
        kwargs["mesh"] = mesh
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    kwargs["offload_policy"] = (
        CPUOffloadPolicy(pin_memory=True) if offload and not on_cpu else OffloadPolicy()
    )
    # Children before parents, so a nested block is sharded before the block around it.
    for _, module in reversed(list(model.named_modules())):
        if module is not model and isinstance(module, tuple(classes)) and not isinstance(module, FSDPModule):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


def export_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Gather a (possibly FSDP2-sharded) model into one full CPU state dict for ``save_pretrained``.

    Collective: every rank must call it, since the gather is an all-gather. Only rank 0 gets the dict
    (others get None) so that only one process holds, and writes, the full weights. Without an
    initialised process group this is simply the model's state dict moved to CPU.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else None


def save_full_pretrained(
    model: nn.Module, save_directory: str | os.PathLike[str], **save_kwargs: Any
) -> bool:
    """Collective ``save_pretrained`` for a sharded model: gather on all ranks, write on rank 0.

    Returns True on the rank that wrote. ``model`` must be a ``PreTrainedModel`` (sharding keeps its class).
    """
    state = export_full_state_dict(model)
    if state is None:
        return False
    model.save_pretrained(save_directory, state_dict=state, **save_kwargs)  # type: ignore[operator]
    return True


# -------------------------------------------------------------------------------------------- strategy


def _find_unused(model: Any, args: Any, explicit: bool | None) -> bool:
    """HF's default for ``ddp_find_unused_parameters``: on, except for activation-checkpointed HF models.

    Checkpointing re-runs forward inside backward, which breaks DDP's unused-parameter search; otherwise
    HF stays on the safe side because many heads leave parameters unused (e.g. BERT's pooler).
    """
    if explicit is not None:
        return bool(explicit)
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return True
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return not (bool(checkpointing) or bool(getattr(args, "activation_checkpointing", False)))


def _fsdp1_strategy(
    options: dict[str, Any], model: nn.Module | None, timeout: timedelta, backend: str | None
) -> Strategy:
    """Lightning's (CUDA-only) FSDPStrategy with HF's wrap and checkpointing policies."""
    from lightning.pytorch.strategies import FSDPStrategy

    classes: set[type[nn.Module]] = set()
    if options["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" or options["activation_checkpointing"]:
        if model is None:
            raise ConfigError(
                "model", "FSDP needs the model to find its layer classes", "pass model= (not only model_init)"
            )
        classes = _layer_classes(model, options["transformer_layer_cls_to_wrap"])
        if not classes:
            raise ConfigError(
                "fsdp_config.transformer_layer_cls_to_wrap",
                f"{type(model).__name__} declares no _no_split_modules to wrap",
                "name the transformer block class, e.g. transformer_layer_cls_to_wrap=['BertLayer']",
            )
    wrap_policy: Any = None
    if options["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP":
        wrap_policy = classes
    elif options["auto_wrap_policy"] == "SIZE_BASED_WRAP":
        from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

        wrap_policy = partial(size_based_auto_wrap_policy, min_num_params=options["min_num_params"])
    extra: dict[str, Any] = {
        "limit_all_gathers": options["limit_all_gathers"],
        "forward_prefetch": options["forward_prefetch"],
        "sync_module_states": options["sync_module_states"],
        "use_orig_params": options["use_orig_params"],
    }
    if options["backward_prefetch"] is not None:
        from torch.distributed.fsdp import BackwardPrefetch

        extra["backward_prefetch"] = BackwardPrefetch[options["backward_prefetch"]]
    return FSDPStrategy(
        sharding_strategy=options["sharding_strategy"],
        auto_wrap_policy=wrap_policy,
        cpu_offload=options["cpu_offload"],
        activation_checkpointing_policy=classes if options["activation_checkpointing"] else None,
        state_dict_type="sharded" if options["state_dict_type"] == "SHARDED_STATE_DICT" else "full",
        timeout=timeout,
        process_group_backend=backend,
        **extra,
    )


def build_strategy(
    *,
    fsdp: bool | str | list[str] | None = None,
    fsdp_config: Mapping[str, Any] | str | None = None,
    deepspeed: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    args: Any = None,
    model: nn.Module | None = None,
    num_training_steps: int = 0,
    accelerator: Any = "auto",
    devices: Any = "auto",
    num_nodes: int = 1,
    ddp_find_unused_parameters: bool | None = None,
    ddp_bucket_cap_mb: int | None = None,
    ddp_broadcast_buffers: bool | None = None,
    ddp_timeout: int | float | timedelta | None = 1800,
    ddp_backend: str | None = None,
    strategy: str | Strategy | None = None,
) -> str | Strategy:
    """Pick the Lightning strategy that realises HF's parallelism arguments.

    Order of precedence: ``deepspeed`` → ``fsdp`` → an explicit ``strategy`` → DDP when more than one process
    runs → ``"auto"``. DeepSpeed and Lightning's FSDPStrategy need CUDA, so on CPU ``fsdp`` becomes FSDP2 under
    ``ModelParallelStrategy`` (the LightningModule must then call :func:`fully_shard_hf_model` in
    ``configure_model``; :func:`fsdp_options` gives it the layer names and offload setting) and ``deepspeed``
    is refused with the fix. DDP gets HF's ``ddp_*`` knobs and the gloo backend on CPU.
    """
    from lightning.pytorch.strategies import DDPStrategy

    options = fsdp_options(fsdp, fsdp_config)
    explicit = strategy if not (isinstance(strategy, str) and strategy.lower() == "auto") else None
    if deepspeed and options["enabled"]:
        raise ConfigError("deepspeed", "deepspeed and fsdp are both set", "choose one of them")
    if explicit is not None and (deepspeed or options["enabled"]):
        chosen = "deepspeed" if deepspeed else "fsdp"
        raise ConfigError(
            "strategy", f"strategy={strategy!r} conflicts with {chosen}", f"drop strategy or {chosen}"
        )
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ConfigError(
            "num_nodes", f"must be a positive integer, got {num_nodes!r}", "use num_nodes=1 or more"
        )

    cuda = _targets_cuda(accelerator)
    world = _count_devices(devices, cuda) * num_nodes
    timeout = _timeout(ddp_timeout)
    backend = _backend(ddp_backend, cuda)

    if deepspeed:
        if not cuda:
            raise ConfigError(
                "deepspeed",
                "DeepSpeed needs a GPU but this run is on the CPU",
                'use fsdp="full_shard auto_wrap" instead, which runs on CPU via FSDP2',
            )
        config = resolve_deepspeed_config(deepspeed, args, model, num_training_steps, world_size=world)
        from lightning.pytorch.strategies import DeepSpeedStrategy
        from lightning.pytorch.utilities.exceptions import MisconfigurationException

        # Lightning sets the accumulation itself (from accumulate_grad_batches) and refuses a config that has it.
        config = {key: value for key, value in config.items() if key != "gradient_accumulation_steps"}
        try:
            return DeepSpeedStrategy(config=config, timeout=timeout, process_group_backend=backend)
        except MisconfigurationException as err:
            raise ConfigError("deepspeed", " ".join(str(err).split()), "pip install deepspeed") from None

    if options["enabled"]:
        if cuda:
            return _fsdp1_strategy(options, model, timeout, backend)
        if options["sharding_strategy"] not in ("FULL_SHARD", "SHARD_GRAD_OP"):
            raise ConfigError(
                "fsdp",
                f"{options['sharding_strategy'].lower()} is not available on CPU (FSDP2)",
                "use full_shard or shard_grad_op",
            )
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(
            data_parallel_size=world, tensor_parallel_size=1, timeout=timeout, process_group_backend=backend
        )

    if explicit is not None and not (isinstance(explicit, str) and explicit.lower() in _DDP_START_METHODS):
        return explicit
    if explicit is not None or world > 1:
        start_method = _DDP_START_METHODS[explicit.lower()] if isinstance(explicit, str) else "popen"
        ddp_kwargs: dict[str, Any] = {
            "find_unused_parameters": _find_unused(model, args, ddp_find_unused_parameters)
        }
        if ddp_bucket_cap_mb is not None:
            ddp_kwargs["bucket_cap_mb"] = ddp_bucket_cap_mb
        if ddp_broadcast_buffers is not None:
            ddp_kwargs["broadcast_buffers"] = ddp_broadcast_buffers
        return DDPStrategy(
            start_method=start_method, timeout=timeout, process_group_backend=backend, **ddp_kwargs
        )
    return "auto"
