"""HF's ``fsdp`` and ``fsdp_config`` arguments, validated into one :class:`FSDPOptions`.

Both spellings are accepted: the legacy words (``fsdp="full_shard auto_wrap offload"``) and the
transformers 5 form (``fsdp=True`` plus ``fsdp_config``, which is what ``TrainingArguments.__post_init__``
leaves behind). Keys may carry HF's optional ``fsdp_`` prefix. Unknown words and keys raise
``ConfigError`` instead of being ignored, because a silently dropped ``offload`` is an out-of-memory
crash hours later. Each field has one small reader below, run in a fixed order so that the first
problem reported is always the same one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hf_lightning.errors import ConfigError
from hf_lightning.strategies.config import as_bool, closest, load_json_config

__all__ = ["FSDP_CONFIG_KEYS", "FSDP_OPTIONS", "FSDPOptions", "fsdp_options"]

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
_LAYERS_FIELD = "fsdp_config.transformer_layer_cls_to_wrap"

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


@dataclass(frozen=True)
class FSDPOptions:
    """FSDP settings after validation; the defaults are transformers' defaults.

    ``transformer_layer_cls_to_wrap`` None means "the model's ``_no_split_modules``";
    ``backward_prefetch`` None means no prefetch; ``reshard_after_forward`` follows the sharding
    strategy (FULL_SHARD and HYBRID_SHARD free the gathered weights after each forward).
    """

    enabled: bool = False
    version: int = 2
    sharding_strategy: str = "FULL_SHARD"
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    auto_wrap_policy: str = "TRANSFORMER_BASED_WRAP"
    transformer_layer_cls_to_wrap: list[str] | None = None
    min_num_params: int = 0
    activation_checkpointing: bool = False
    cpu_ram_efficient_loading: bool = False
    sync_module_states: bool = True
    forward_prefetch: bool = False
    backward_prefetch: str | None = None
    limit_all_gathers: bool = True
    use_orig_params: bool = True
    state_dict_type: str = "FULL_STATE_DICT"

    @classmethod
    def from_hf(
        cls, fsdp: bool | str | list[str] | None, fsdp_config: Mapping[str, Any] | str | None = None
    ) -> FSDPOptions:
        """Read HF's two arguments (see the module docstring); raise ``ConfigError`` on the first problem."""
        items = _fsdp_items(fsdp)
        config = _config_keys(fsdp_config)
        _refuse_xla(config)
        version = _version(config)
        word_strategy, word_offload = _read_words(items or [])
        strategy = _sharding_strategy(word_strategy, config)
        cpu_offload = word_offload or _flag(config, "cpu_offload", False)
        min_num_params = _min_num_params(config)
        layer_names = _layer_names(config)
        policy = _wrap_policy(config, min_num_params, layer_names)
        prefetch = _backward_prefetch(config)
        state_dict_type = _state_dict_type(config)
        return cls(
            enabled=items is not None,
            version=version,
            sharding_strategy=strategy,
            reshard_after_forward=strategy in ("FULL_SHARD", "HYBRID_SHARD"),
            cpu_offload=cpu_offload,
            auto_wrap_policy=policy,
            transformer_layer_cls_to_wrap=layer_names,
            min_num_params=min_num_params,
            activation_checkpointing=_flag(config, "activation_checkpointing", False),
            cpu_ram_efficient_loading=_flag(config, "cpu_ram_efficient_loading", False),
            sync_module_states=_flag(config, "sync_module_states", True),
            forward_prefetch=_flag(config, "forward_prefetch", False),
            backward_prefetch=prefetch,
            limit_all_gathers=_flag(config, "limit_all_gathers", True),
            use_orig_params=_flag(config, "use_orig_params", True),
            state_dict_type=state_dict_type,
        )

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (the shape :func:`fsdp_options` has always returned)."""
        return dataclasses.asdict(self)


def fsdp_options(
    fsdp: bool | str | list[str] | None, fsdp_config: Mapping[str, Any] | str | None = None
) -> dict[str, Any]:
    """Normalise HF's ``fsdp`` and ``fsdp_config`` into one flat, validated dict.

    The result has ``enabled`` plus every field of :class:`FSDPOptions`: ``sharding_strategy``
    (``FULL_SHARD``...), ``reshard_after_forward``, ``cpu_offload``, ``auto_wrap_policy``,
    ``transformer_layer_cls_to_wrap`` (None = use the model's ``_no_split_modules``), ``min_num_params``,
    ``activation_checkpointing``, ``cpu_ram_efficient_loading``, ``sync_module_states``,
    ``forward_prefetch``, ``backward_prefetch``, ``limit_all_gathers``, ``use_orig_params``,
    ``state_dict_type`` and ``version``.
    """
    return FSDPOptions.from_hf(fsdp, fsdp_config).as_dict()


# ----------------------------------------------------------------------------- one reader per field


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


def _config_keys(fsdp_config: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """``fsdp_config`` loaded, with HF's ``fsdp_`` prefix stripped and unknown keys refused."""
    raw = {} if fsdp_config is None else load_json_config(fsdp_config, "fsdp_config")
    config: dict[str, Any] = {}
    for key, value in raw.items():
        name = key[5:] if key.startswith("fsdp_") else key
        if name not in FSDP_CONFIG_KEYS:
            raise ConfigError(
                f"fsdp_config.{key}",
                f"unknown key{closest(name, FSDP_CONFIG_KEYS)}",
                f"use one of {', '.join(sorted(FSDP_CONFIG_KEYS))}",
            )
        config[name] = value
    return config


def _flag(config: dict[str, Any], key: str, default: bool) -> bool:
    return as_bool(config[key], f"fsdp_config.{key}") if key in config else default


def _refuse_xla(config: dict[str, Any]) -> None:
    for xla_key in ("xla", "xla_fsdp_v2", "xla_fsdp_grad_ckpt"):
        if _flag(config, xla_key, False):
            raise ConfigError(
                f"fsdp_config.{xla_key}", "XLA FSDP is not supported", f"remove fsdp_config.{xla_key}"
            )


def _version(config: dict[str, Any]) -> int:
    version = config.get("version", 2)
    if version not in (1, 2, "1", "2"):
        raise ConfigError("fsdp_config.version", f"must be 1 or 2, got {version!r}", "use 2 (FSDP2)")
    return int(version)


def _read_words(words: list[str]) -> tuple[str | None, bool]:
    """The sharding strategy named by the legacy words (if any) and whether ``offload`` is among them."""
    strategy: str | None = None
    offload = False
    for word in words:
        if word.upper() in _SHARDING_STRATEGIES:
            if strategy is not None and strategy != word.upper():
                raise ConfigError(
                    "fsdp", f"two sharding strategies given ({strategy.lower()}, {word})", "keep one"
                )
            strategy = word.upper()
        elif word == "offload":
            offload = True
        elif word != "auto_wrap":
            raise ConfigError(
                "fsdp",
                f"unknown option {word!r}{closest(word, FSDP_OPTIONS)}",
                f"use words from {', '.join(FSDP_OPTIONS)}",
            )
    return strategy, offload


def _sharding_strategy(word_strategy: str | None, config: dict[str, Any]) -> str:
    """From the words, or from ``reshard_after_forward`` (a bool in FSDP2, a strategy name in FSDP1)."""
    config_strategy: str | None = None
    if "reshard_after_forward" in config:
        value = config["reshard_after_forward"]
        if isinstance(value, str) and value.upper() in _SHARDING_STRATEGIES:
            config_strategy = value.upper()
        else:
            reshard = as_bool(value, "fsdp_config.reshard_after_forward")
            config_strategy = "FULL_SHARD" if reshard else "SHARD_GRAD_OP"
    if word_strategy and config_strategy and word_strategy != config_strategy:
        raise ConfigError(
            "fsdp",
            f"fsdp says {word_strategy.lower()} but fsdp_config.reshard_after_forward says {config_strategy.lower()}",
            "drop one of them",
        )
    return word_strategy or config_strategy or "FULL_SHARD"


def _min_num_params(config: dict[str, Any]) -> int:
    value = config.get("min_num_params", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            "fsdp_config.min_num_params", f"must be a non-negative integer, got {value!r}", "e.g. 1000000"
        )
    return value


def _layer_names(config: dict[str, Any]) -> list[str] | None:
    """``transformer_layer_cls_to_wrap`` as a list of class names (a string may list them with commas)."""
    value = config.get("transformer_layer_cls_to_wrap")
    if value is None:
        return None
    if isinstance(value, str):
        names = value.replace(",", " ").split()
    elif isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        names = [name.strip() for name in value]
    else:
        raise ConfigError(_LAYERS_FIELD, f"expected class names, got {value!r}", 'e.g. ["BertLayer"]')
    if not names:
        raise ConfigError(
            _LAYERS_FIELD, "the list of class names is empty", "name at least one layer class or drop the key"
        )
    return names


def _wrap_policy(config: dict[str, Any], min_num_params: int, layer_names: list[str] | None) -> str:
    """The auto-wrap policy; size-based wrapping when ``min_num_params`` is set, else per transformer layer."""
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
            f"unknown policy {policy!r}{closest(policy.upper(), _WRAP_POLICIES)}",
            f"use one of {', '.join(_WRAP_POLICIES)}",
        )
    policy = policy.upper()
    if policy == "SIZE_BASED_WRAP" and min_num_params == 0:
        raise ConfigError(
            "fsdp_config.min_num_params", "SIZE_BASED_WRAP needs min_num_params > 0", "set e.g. 1000000"
        )
    return policy


def _backward_prefetch(config: dict[str, Any]) -> str | None:
    prefetch = config.get("backward_prefetch")
    if prefetch is None:
        return None
    prefetch = str(prefetch).upper()
    if prefetch not in _BACKWARD_PREFETCH:
        raise ConfigError(
            "fsdp_config.backward_prefetch",
            f"unknown value {config['backward_prefetch']!r}",
            f"use one of {', '.join(_BACKWARD_PREFETCH)}",
        )
    return None if prefetch == "NO_PREFETCH" else prefetch


def _state_dict_type(config: dict[str, Any]) -> str:
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
    return state_dict_type
