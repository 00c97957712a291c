"""Reading HF-style configuration values: JSON configs, booleans written as strings, typo hints.

``TrainingArguments`` passes DeepSpeed and FSDP settings as a dict, a file path or an inline JSON string,
with booleans that arrive as ``"true"`` from JSON or the command line. Parsing them in one place keeps
the one-line error messages identical for every strategy (and for ``TrainingArguments.__post_init__``).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from hf_lightning.errors import ConfigError

__all__ = ["as_bool", "closest", "load_json_config"]


def closest(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix, so a typo costs one glance instead of a docs search."""
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def as_bool(value: Any, field: str) -> bool:
    """Parse HF-style booleans, which arrive as real bools or as ``"true"``/``"false"`` strings from JSON/CLI."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(field, f"expected true or false, got {value!r}", f"set {field} to true or false")


def load_json_config(source: str | os.PathLike[str] | Mapping[str, Any], field: str) -> dict[str, Any]:
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
