"""Run ``hf-lightning fit`` configs and ``Trainer`` scripts as Ray Train jobs.

``RayOptions`` is importable without Ray; ``run`` (the facade's entry point) and the job machinery
import Ray only when called.
"""

from __future__ import annotations

from typing import Any

from hf_lightning.ray_train.options import RayOptions

__all__ = ["RayOptions", "run"]


def run(trainer: Any, **options: Any) -> Any:
    """Train a ``hf_lightning.Trainer`` on a Ray cluster; see :func:`hf_lightning.ray_train.job.run`."""
    from hf_lightning.ray_train.job import run as run_job

    return run_job(trainer, **options)
