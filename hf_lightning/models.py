"""Build a Hugging Face model from whatever the user has: a name, a directory, a config, an instance.

Loading is where offline machines hurt most: a Hub name without network retries for ~26 s and
then fails with a long traceback. We check up front and fail in one line instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.nn as nn
import transformers
from transformers import AutoConfig, PretrainedConfig

from hf_lightning.errors import ConfigError
from hf_lightning.tasks import task_spec

__all__ = [
    "ModelSpec",
    "build_model",
    "build_task_model",
    "check_config_keys",
    "enable_gradient_checkpointing",
    "hub_offline",
    "resolve_local_or_hub",
    "save_model_weights",
]

ModelSpec = str | dict[str, Any] | PretrainedConfig | nn.Module


def hub_offline() -> bool:
    """True when the Hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set)."""
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_local_or_hub(name: str, field: str = "model") -> str:
    """Return ``name`` if it is a usable local directory or a Hub id we may fetch; else fail fast.

    A path-looking string (starts with '/', '.', '~' or has an OS separator and exists nowhere)
    is a missing directory, not a Hub id: say so instead of asking the Hub for it.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(field, f"directory {name!r} has no config.json", "point to a folder written by save_pretrained")
        return str(path)
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or path.suffix in {".json", ".bin"}
    if looks_like_path:
        raise ConfigError(field, f"local path {name!r} does not exist", "check the path, or give a Hub id like 'bert-base-uncased'")
    if hub_offline():
        raise ConfigError(
            field,
            f"{name!r} is not a local directory and the Hub is offline (HF_HUB_OFFLINE=1)",
            "download it once with save_pretrained into a local folder and pass that folder",
        )
    return name


def check_config_keys(config_cls: type[PretrainedConfig], keys: dict[str, Any], field: str = "model") -> None:
    """Refuse keys the config class does not know: HF configs silently accept typos (``hiden_size``)."""
    import inspect

    known = set(config_cls().to_dict()) | set(getattr(config_cls, "attribute_map", {}))
    for cls in config_cls.__mro__:
        if isinstance(cls, type) and issubclass(cls, PretrainedConfig):
            known |= set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    # Generation and special-token ids are accepted by every config, though not always in to_dict().
    known |= {"num_labels", "decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
              "tie_word_embeddings", "torch_dtype", "use_cache", "is_decoder", "add_cross_attention"}
    unknown = sorted(k for k in keys if k not in known and k != "model_type")
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(k, known, n=1) for k in unknown]
        hint = "; ".join(f"rename {k!r} to {h[0]!r}" for k, h in zip(unknown, hints) if h) or "remove them"
        raise ConfigError(field, f"unknown {config_cls.__name__} keys {unknown}", hint)


def _config_from_dict(spec: dict[str, Any], field: str) -> PretrainedConfig:
    spec = dict(spec)
    model_type = spec.pop("model_type", None)
    if model_type is None:
        raise ConfigError(field, "a config dict needs 'model_type'", "add e.g. model_type: bert")
    try:
        config_cls = AutoConfig.for_model(model_type).__class__
    except ValueError:
        raise ConfigError(field, f"unknown model_type {model_type!r}", "use a transformers model type such as bert, gpt2, t5") from None
    check_config_keys(config_cls, spec, field)
    return config_cls(**spec)


def build_model(
    model: ModelSpec,
    task: str,
    model_kwargs: dict[str, Any] | None = None,
    field: str = "model",
) -> nn.Module:
    """Return a model for ``task``.

    ``model`` may be (a) a Hub id or local directory, loaded with ``from_pretrained``; (b) a config
    dict with ``model_type`` or a ``PretrainedConfig``, randomly initialised (tests, from-scratch);
    (c) a model instance, returned as is. ``model_kwargs`` go to ``from_pretrained``/the config
    (``num_labels``, ``id2label``, ...).
    """
    kwargs = dict(model_kwargs or {})
    if isinstance(model, nn.Module):
        return model
    import hf_lightning.multitask_model  # noqa: F401  (registers model_type hf_lightning_multitask with the Auto classes)

    auto_cls = getattr(transformers, task_spec(task).auto_class)
    if isinstance(model, dict):
        model = _config_from_dict(model, field)
    if isinstance(model, PretrainedConfig):
        config_kwargs = {k: v for k, v in kwargs.items() if k not in {"torch_dtype", "dtype", "attn_implementation"}}
        for key, value in config_kwargs.items():
            setattr(model, key, value)
        return auto_cls.from_config(model)
    if isinstance(model, str):
        source = resolve_local_or_hub(model, field)
        try:
            return auto_cls.from_pretrained(source, **kwargs)
        except RuntimeError as err:
            if "ignore_mismatched_sizes" not in str(err):
                raise
            got = kwargs.get("num_labels")
            raise ConfigError(
                f"{field}.num_labels",
                f"the checkpoint's head does not fit {got} labels" if got else "the checkpoint's weights do not fit the model",
                "set num_labels to match the checkpoint, or pass model_kwargs: {ignore_mismatched_sizes: true} for a new head",
            ) from None
        except OSError as err:
            raise ConfigError(field, f"could not load {model!r} ({str(err).splitlines()[0]})", "check the name or directory") from None
    raise ConfigError(field, f"unsupported model spec of type {type(model).__name__}", "pass a name, a directory, a config dict or a model")


def build_task_model(
    model: ModelSpec | None,
    task: str,
    model_kwargs: dict[str, Any] | None = None,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
) -> nn.Module:
    """:func:`build_model` fitted to the data: labels, vocabulary size and pad id (linked from the data module).

    A model built from a config gets the tokenizer's ``vocab_size``; a smaller pretrained embedding is
    resized to it. A checkpoint whose head has another number of labels than the data is refused.
    """
    if model is None:
        raise ConfigError(
            "model", "no model given",
            "pass a local folder written by save_pretrained, a Hub id, a config dict with model_type, or a model",
        )
    spec = task_spec(task)
    kwargs = dict(model_kwargs or {})
    if spec.has_num_labels:
        if num_labels is not None:
            kwargs.setdefault("num_labels", num_labels)
        if id2label:
            id2label = {int(k): v for k, v in id2label.items()}
            kwargs.setdefault("id2label", id2label)
            kwargs.setdefault("label2id", {v: k for k, v in id2label.items()})
    if isinstance(model, dict) and vocab_size is not None:
        model = {**model, "vocab_size": model.get("vocab_size", vocab_size)}
    built = build_model(model, task, kwargs)
    config = getattr(built, "config", None)
    if config is not None and spec.has_num_labels and num_labels is not None and config.num_labels != num_labels:
        raise ConfigError(
            "model.num_labels",
            f"the model has {config.num_labels} labels but the data has {num_labels}",
            "set num_labels to match the data, or use a checkpoint trained for these labels",
        )
    if vocab_size is not None and hasattr(built, "get_input_embeddings"):
        embeddings = built.get_input_embeddings()
        if embeddings is not None and embeddings.num_embeddings < vocab_size:
            built.resize_token_embeddings(vocab_size)
    if config is not None and pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_token_id
    return built


def enable_gradient_checkpointing(
    model: nn.Module, kwargs: dict[str, Any] | None = None, field: str = "gradient_checkpointing"
) -> None:
    """The HF model's own activation (gradient) checkpointing, set up as ``transformers.Trainer`` does.

    ``every_n_layers`` and ``offload`` are read out of ``kwargs`` (transformers 5's
    ``activation_checkpointing_kwargs``), the rest go to ``torch.utils.checkpoint``: non-reentrant unless
    asked, which also works with frozen embeddings such as a LoRA model's. Refused, naming ``field``,
    for models without it.
    """
    if getattr(model, "supports_gradient_checkpointing", None) is False or not hasattr(
        model, "gradient_checkpointing_enable"
    ):
        raise ConfigError(field, f"{type(model).__name__} does not support it", "set it to false")
    kwargs = dict(kwargs or {})
    every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
    kwargs.setdefault("use_reentrant", False)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers,
                                              offload=offload)
    else:  # models outside PreTrainedModel that only define the older method (as transformers falls back)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_pretrained(model: nn.Module) -> bool:
    """True for models that can write themselves with ``save_pretrained``."""
    from transformers import PreTrainedModel  # modeling_utils pulls in accelerate: only when a model exists

    return isinstance(model, PreTrainedModel) or hasattr(model, "save_pretrained")


def save_model_weights(model: nn.Module, directory: str | Path, state_dict: dict[str, Any] | None = None) -> None:
    """``save_pretrained`` where the model has it; otherwise its weights as ``model.safetensors``, as HF's Trainer does.

    Plain ``nn.Module``s are welcome in the facade (seed examples wrap a backbone in their own module);
    their checkpoints must still be written rather than crash the first save. Tensors sharing storage
    (tied weights) are cloned so safetensors accepts them.
    """
    directory = Path(directory)
    if is_pretrained(model):
        model.save_pretrained(directory, **({"state_dict": state_dict} if state_dict is not None else {}))
        return
    from safetensors.torch import save_file

    weights = state_dict if state_dict is not None else model.state_dict()
    save_file({k: v.detach().contiguous().clone().cpu() for k, v in weights.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})
