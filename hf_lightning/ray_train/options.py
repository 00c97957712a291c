"""What a Ray Train job needs to know: the ``--ray.*`` options (or a ``ray:`` YAML section).

This module never imports Ray: the CLI parses these options on every run, and a run without them
must not pay for (or require) a Ray installation. Checks that can fail without a cluster (0 workers,
an address nothing listens on) run here, before Ray starts, so a typo costs one line and no minutes.
"""

from __future__ import annotations

import importlib.util
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hf_lightning.errors import ConfigError

__all__ = ["RayOptions", "require_ray"]


@dataclass
class RayOptions:
    """How to run a fit as a Ray Train job.

    Args:
        num_workers: training processes (one device each). Setting it is what turns Ray on.
        address: the cluster to join (``host:port`` of ``ray start --head``, ``ray://host:10001`` or
            ``auto``). Default: the ``RAY_ADDRESS`` environment variable, else a local Ray started
            for this job.
        use_gpu: give each worker one GPU (``accelerator`` becomes ``gpu``).
        resources_per_worker: Ray resources per worker, e.g. ``{"CPU": 4, "GPU": 1}``.
        storage_path: where Ray keeps the run's checkpoints and the final model (default
            ``./ray_results``); a shared file system or ``s3://...`` on a multi-node cluster.
        name: the run's folder under ``storage_path``. Running again with the same name resumes the
            run from its latest checkpoint. Default: ``hf-lightning-<date>-<time>``.
        max_failures: how many times Ray restarts the worker group after a worker dies; each
            restart resumes exactly from the last checkpoint reported to Ray.
        checkpoint_every_n_steps: report a checkpoint to Ray every N optimizer steps. Default:
            at the end of every epoch. The end of fit always reports one (with the HF model). Ray's
            controller collects one report per worker every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``
            (2 s by default): report less often than that.
    """

    num_workers: int | None = None
    address: str | None = None
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    storage_path: str | None = None
    name: str | None = None
    max_failures: int = 0
    checkpoint_every_n_steps: int | None = None

    @property
    def requested(self) -> bool:
        """True when the user asked for Ray (``num_workers`` set)."""
        return self.num_workers is not None

    def validate(self) -> RayOptions:
        """Refuse values Ray would reject late or obscurely; returns self."""
        if self.num_workers is not None and self.num_workers < 1:
            raise ConfigError("ray.num_workers", f"must be at least 1, got {self.num_workers}",
                              "pass --ray.num_workers=N with N >= 1 (or leave every --ray option out to train here)")
        if self.max_failures < -1:
            raise ConfigError("ray.max_failures", f"must be >= 0 (or -1 for unlimited), got {self.max_failures}",
                              "pass --ray.max_failures=N")
        if self.checkpoint_every_n_steps is not None and self.checkpoint_every_n_steps < 1:
            raise ConfigError("ray.checkpoint_every_n_steps", f"must be at least 1, got {self.checkpoint_every_n_steps}",
                              "pass a positive number of optimizer steps, or leave it unset to report each epoch")
        for key, amount in (self.resources_per_worker or {}).items():
            if not isinstance(amount, (int, float)) or amount < 0:
                raise ConfigError("ray.resources_per_worker", f"{key!r} must be a non-negative number, got {amount!r}",
                                  'pass e.g. {"CPU": 2, "GPU": 1}')
        if self.use_gpu and (self.resources_per_worker or {}).get("GPU") == 0:
            raise ConfigError("ray.resources_per_worker", "gives GPU 0 while ray.use_gpu is true",
                              "drop GPU from resources_per_worker or set it to 1")
        if self.address is not None:
            check_address(self.address)
        return self

    def resolved_storage_path(self) -> str:
        """An absolute storage path (Ray requires one); remote URLs are kept as they are."""
        path = self.storage_path or "ray_results"
        return path if "://" in path else str(Path(path).expanduser().resolve())

    def resolved_name(self) -> str:
        return self.name or time.strftime("hf-lightning-%Y%m%d-%H%M%S")


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with the fix, when nothing listens at ``address`` (Ray itself retries for minutes)."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("ray.address", f"{address!r} is not host:port, ray://host:port or auto",
                          "pass the address 'ray start --head' printed, e.g. 127.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ConfigError(
            "ray.address", f"no Ray cluster answers at {address!r} ({err.strerror or type(err).__name__})",
            "start one with 'ray start --head' and pass the address it prints, or leave ray.address unset "
            "to start a local Ray",
        ) from None


def require_ray() -> None:
    """One line naming the extra when Ray Train is not installed."""
    for module in ("ray.train", "ray.train.lightning"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ConfigError("ray.num_workers", "needs Ray Train, which is not installed",
                              "pip install 'hf-lightning[ray]'")
