"""``FSDP2Strategy`` and ``TensorParallelStrategy``: Lightning's ``ModelParallelStrategy`` carrying HF's options.

Lightning leaves FSDP2 sharding and tensor parallelism to the LightningModule's ``configure_model``,
which knows nothing of ``TrainingArguments``. The options ``fsdp``/``fsdp_config`` name (the layer
classes to wrap, CPU offload, reshard after forward) and the tensor-parallel plan therefore travel with
the strategy, and the module asks it through
:func:`hf_lightning.strategies.tensor_parallel.parallelize_for_strategy`. Kept apart from ``fsdp.py``
because defining the classes imports Lightning's strategies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from hf_lightning.errors import ConfigError
from hf_lightning.strategies.fsdp_options import FSDPOptions

__all__ = ["FSDP2Strategy", "TensorParallelStrategy"]


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` plus the validated :class:`FSDPOptions` that ``fully_shard`` should follow."""

    def __init__(self, fsdp_options: FSDPOptions, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fsdp_options = fsdp_options


class TensorParallelStrategy(FSDP2Strategy):
    """Tensor parallelism over ``tensor_parallel_size`` processes, FSDP2 over the rest (2-D when both > 1).

    The data-parallel size is ``world size / tensor_parallel_size``, computed when the processes exist.
    ``tp_plan`` None or ``"auto"`` takes the model's own plan (its config's ``base_model_tp_plan``, or
    the BERT plan); a dict maps module-name patterns to ``"colwise"``/``"rowwise"``. In a LightningCLI
    config: ``trainer.strategy: {class_path: hf_lightning.strategies.TensorParallelStrategy,
    init_args: {tensor_parallel_size: 2}}``.
    """

    def __init__(
        self,
        tensor_parallel_size: int = 2,
        tp_plan: Mapping[str, str] | str | None = None,
        fsdp_options: FSDPOptions | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(tensor_parallel_size, bool) or not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ConfigError("tp_size", f"must be a positive integer, got {tensor_parallel_size!r}", "use e.g. tp_size=2")
        kwargs.pop("data_parallel_size", None)  # always world / tensor_parallel_size
        super().__init__(fsdp_options or FSDPOptions(), tensor_parallel_size=tensor_parallel_size, **kwargs)
        self.tp_plan = dict(tp_plan) if isinstance(tp_plan, Mapping) else tp_plan

    def setup_environment(self) -> None:
        tp, world = int(self._tensor_parallel_size), self.num_nodes * self.num_processes
        if world % tp:
            raise ConfigError("tp_size", f"tp_size={tp} does not divide the {world} processes",
                              "use devices x num_nodes that is a multiple of tp_size")
        self._data_parallel_size = world // tp
        super().setup_environment()
