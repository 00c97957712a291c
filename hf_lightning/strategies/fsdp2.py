"""``FSDP2Strategy``: Lightning's ``ModelParallelStrategy`` (data parallel only) carrying HF's FSDP options.

Lightning leaves FSDP2 sharding to the LightningModule's ``configure_model``, which knows nothing of
``TrainingArguments``. The options ``fsdp``/``fsdp_config`` name (the layer classes to wrap, CPU
offload, reshard after forward) therefore travel with the strategy, and the module asks it through
:func:`hf_lightning.strategies.fsdp.shard_for_strategy`. Kept apart from ``fsdp.py`` because defining
the class imports Lightning's strategies.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from hf_lightning.strategies.fsdp_options import FSDPOptions

__all__ = ["FSDP2Strategy"]


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` plus the validated :class:`FSDPOptions` that ``fully_shard`` should follow."""

    def __init__(self, fsdp_options: FSDPOptions, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fsdp_options = fsdp_options
