"""One error type for bad input, so every front door can print it as a single line.

A user who mistypes a field should read one sentence that names the field and the fix, not a
traceback through Lightning and transformers. Code that validates input raises `ConfigError`;
the CLI catches it (and only it, plus jsonargparse's own errors) and prints ``error: <message>``.
"""

from __future__ import annotations

__all__ = ["ConfigError", "config_error"]


class ConfigError(ValueError):
    """Bad user input, detected before any expensive work starts.

    Subclasses ValueError so that code written for transformers (which raises ValueError for
    bad arguments) keeps catching it.
    """

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}. Fix: {fix}")


def config_error(field: str, problem: str, fix: str) -> ConfigError:
    """Build a ConfigError; handy in expressions such as ``raise config_error(...)``."""
    return ConfigError(field, problem, fix)
