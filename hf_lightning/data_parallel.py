"""Which processes hold different data: the data-parallel world, as opposed to all processes.

Under DDP and FSDP every process reads its own share of the data, so the data-parallel world is the
whole ``torch.distributed`` world. Under tensor parallelism the processes of one tensor-parallel group
hold slices of the same layers and must see the *same* batches: the data are split over
``world / tp_size`` data-parallel ranks only. Samplers, stream shards and the gathering of evaluation
predictions read :func:`data_parallel_world` instead of the global rank, so that they are right under
every strategy. The strategy's module code registers the data-parallel mesh axis when it builds the
mesh (:func:`use_data_parallel_mesh`); without a registration the whole world is data parallel.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

__all__ = ["data_parallel_group", "data_parallel_world", "use_data_parallel_mesh"]

# (mesh axis, the default process group it was made in): a mesh left from an earlier, destroyed
# process group in the same process is ignored rather than used.
_DP_MESH: tuple[Any, Any] | None = None


def use_data_parallel_mesh(mesh: Any) -> None:
    """Record the data-parallel axis of this process' device mesh (None: the whole world again)."""
    global _DP_MESH
    _DP_MESH = None if mesh is None else (mesh, dist.group.WORLD)


def _active_mesh() -> Any:
    if _DP_MESH is None or not (dist.is_available() and dist.is_initialized()):
        return None
    mesh, world = _DP_MESH
    return mesh if world is dist.group.WORLD else None


def data_parallel_world() -> tuple[int, int]:
    """``(size, rank)`` of this process among the processes that read different data; (1, 0) alone."""
    mesh = _active_mesh()
    if mesh is not None:
        return mesh.size(), mesh.get_local_rank()
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def data_parallel_group() -> Any:
    """The process group over the data-parallel ranks (None: the default group, i.e. every process)."""
    mesh = _active_mesh()
    return mesh.get_group() if mesh is not None else None
