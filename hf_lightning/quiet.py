"""Keep messages that are not about the user's run out of it.

Libraries print into runs here without being asked: DeepSpeed, when it is installed but
unused, announces on import (``save_pretrained`` imports it through accelerate) that it fell back
to the CPU; bitsandbytes, imported by peft, that an optional CPU kernel is missing; Lightning
advertises its cloud products twice per fit. Each is filtered by message on its own logger, so every other warning from those libraries still reaches the user. Nothing here
imports torch, Lightning or DeepSpeed: a filter on a logger that does not exist yet is kept when the
library later creates and configures it.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["NOISE", "install_filters"]

# logger name -> message prefixes that carry no information about the run.
NOISE: dict[str, tuple[str, ...]] = {
    "DeepSpeed": ("Setting accelerator to CPU",),
    # bitsandbytes (pulled in by peft when installed) on a CPU without its optional kernels package.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
    # kernels (imported by bitsandbytes) on every offline run, about a kernel the run never loads.
    "kernels._internals.hf_hub": ("Skipping publisher trust check",),
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
    # Lightning 2.6 builds torch's deprecated LeafSpec in its own pytree helper on every fit (torch >= 2.10
    # warns); the warning is about Lightning's code, so it is dropped only where Lightning raises it.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
