"""The package logger: ``logging.getLogger("hf_lightning")`` and one child per module.

Information (what a run is doing) goes through these loggers; ``warnings`` stay for deprecations and
settings that cannot take effect, as in transformers. ``set_verbosity_from_args`` applies HF's
``log_level`` / ``log_level_replica`` the way ``transformers.Trainer`` does: the process's level (main
or replica) is set on this package's logger and on transformers' (``args.get_process_log_level()``);
``"passive"`` leaves the package logger's level as it is.

The ``hf-lightning`` command is an application: it shows the package's information (as Lightning
shows its own) unless a level was set (``show_info_by_default``). As a library, the package stays at
Python's default (warnings and above) until ``log_level`` or the application says otherwise.

Without any logging configuration, records at or above the package logger's level are printed to
stderr (like transformers' and Lightning's loggers); once the application configures the root
logger (``logging.basicConfig``, pytest's ``caplog``), records only propagate to it, so nothing is
printed twice.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["get_logger", "log_on_rank_zero", "set_verbosity_from_args", "show_info_by_default"]

ROOT_NAME = "hf_lightning"


class _FallbackHandler(logging.StreamHandler):
    """Print to stderr only while the root logger has no handler of its own (no double printing)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))  # plain lines, as Lightning prints its own

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            self.stream = sys.stderr  # stderr may have been replaced since import (notebooks, capture)
            super().emit(record)


_root = logging.getLogger(ROOT_NAME)
if not any(isinstance(h, _FallbackHandler) for h in _root.handlers):
    _root.addHandler(_FallbackHandler())


def get_logger(name: str = ROOT_NAME) -> logging.Logger:
    """The package logger, or its child for ``name`` (a module's ``__name__`` under ``hf_lightning``)."""
    if name != ROOT_NAME and not name.startswith(ROOT_NAME + "."):
        name = f"{ROOT_NAME}.{name}"
    return logging.getLogger(name)


def set_verbosity_from_args(args: Any) -> int:
    """Apply ``args.log_level`` / ``log_level_replica`` to this package and to transformers; returns the level.

    As in ``transformers.Trainer.__init__``: the main process uses ``log_level``, the others
    ``log_level_replica``; transformers' verbosity is set to ``args.get_process_log_level()``. A
    ``"passive"`` choice for this process leaves the ``hf_lightning`` logger's level untouched.
    """
    import transformers

    level = args.get_process_log_level()
    transformers.logging.set_verbosity(level)
    choice = args.log_level if args.should_log else args.log_level_replica
    if str(getattr(choice, "value", choice)) != "passive":
        _root.setLevel(level)
    return level


def show_info_by_default() -> None:
    """Let the package's information through (INFO) unless its level was already set; for applications."""
    if _root.level == logging.NOTSET:
        _root.setLevel(logging.INFO)


def log_on_rank_zero(logger: logging.Logger, level: int, message: str, *args: Any) -> None:
    """Log on the global-zero process only (the others would repeat the same line), as Lightning's rank-zero helpers."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        logger.log(level, message, *args)
