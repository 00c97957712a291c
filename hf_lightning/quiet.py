"""Keep messages that are not about the user's run out of it.

Two libraries print into every run here without being asked: DeepSpeed, when it is installed but
unused, announces on import (``save_pretrained`` imports it through accelerate) that it fell back
to the CPU; Lightning advertises its cloud products twice per fit. Both are filtered by message on
their own loggers, so every other warning from those libraries still reaches the user. Nothing here
imports torch, Lightning or DeepSpeed: a filter on a logger that does not exist yet is kept when the
library later creates and configures it.
"""

from __future__ import annotations

import logging

__all__ = ["NOISE", "install_filters"]

# logger name -> message prefixes that carry no information about the run.
NOISE: dict[str, tuple[str, ...]] = {
    "DeepSpeed": ("Setting accelerator to CPU",),
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip:",),
}


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def install_filters() -> None:
    """Attach the filters once (idempotent)."""
    for name, prefixes in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
