"""Run ``hf-lightning fit`` or a ``Trainer`` facade script as a Ray Train job (``TorchTrainer``).

There is no second training path. The driver only starts the job; each Ray worker builds exactly
what a local run builds (the same LightningCLI objects from the same arguments, or the same facade
``Trainer``) and swaps in Ray's Lightning pieces: ``RayDDPStrategy``/``RayFSDPStrategy`` on the
process group Ray has set up, ``RayLightningEnvironment`` for ranks, and a report callback
(:mod:`hf_lightning.ray_train.report`) that hands checkpoints with the project's exact-resume state to
Ray. When Ray restarts a failed worker group, each worker reads ``ray.train.get_checkpoint()`` and
resumes from it, so token-exact accumulation and bit-exact resume hold as they do on one machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_lightning.cli import HFLightningCLI, run_cli
from hf_lightning.errors import ConfigError
from hf_lightning.ray_train.options import RayOptions, require_ray
from hf_lightning.ray_train.report import (
    CHECKPOINT_FILE,
    HF_MODEL_DIR,
    RayCheckpointReport,
    RayHFCheckpointReport,
    report_to_ray,
)

__all__ = ["RayRunResult", "RayWorkerCLI", "ray_strategy", "run", "run_cli_job"]


@dataclass
class RayRunResult:
    """What a finished Ray Train job left in its storage path."""

    path: str  #: the run's folder (``storage_path/name``)
    checkpoint: str | None  #: the last checkpoint reported to Ray
    hf_model: str | None  #: the final model in HF format (loads with ``from_pretrained``)
    metrics: dict[str, Any] = field(default_factory=dict)  #: the last metrics reported


# ---------------------------------------------------------------------------- driver side


def _start_job(worker: Any, config: dict[str, Any], options: RayOptions) -> RayRunResult:
    """Connect to (or start) Ray, run ``worker`` on ``options.num_workers`` workers, and say where outputs are."""
    options.validate()
    require_ray()
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=True)
    resources = dict(options.resources_per_worker or {}) or None
    storage, name = options.resolved_storage_path(), options.resolved_name()
    trainer = TorchTrainer(
        worker,
        train_loop_config={**config, "cwd": os.getcwd(), "use_gpu": options.use_gpu,
                           "every_n_steps": options.checkpoint_every_n_steps},
        scaling_config=ScalingConfig(num_workers=options.num_workers, use_gpu=options.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage, failure_config=FailureConfig(max_failures=options.max_failures)),
    )
    print(f"[ray] {options.num_workers} workers; checkpoints in {storage}/{name}", flush=True)
    result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    hf_model = str(Path(checkpoint) / HF_MODEL_DIR) if checkpoint and Path(checkpoint, HF_MODEL_DIR).is_dir() else None
    if hf_model:
        print(f"Saved the model in Hugging Face format to {hf_model}", flush=True)
    return RayRunResult(path=f"{storage}/{name}", checkpoint=checkpoint, hf_model=hf_model,
                        metrics=dict(result.metrics or {}))


def run_cli_job(args: list[str] | dict[str, Any], options: RayOptions) -> RayRunResult:
    """Run ``hf-lightning <args>`` (with its ``--ray`` options) on Ray: every worker parses the same args."""
    return _start_job(_cli_worker, {"args": args}, options)


def run(trainer: Any, *, resume_from_checkpoint: str | None = None, **options: Any) -> RayRunResult:
    """Train a ``hf_lightning.Trainer`` as a Ray Train job; the driver's ``trainer.model`` gets the final weights.

    ``options`` are :class:`~hf_lightning.ray_train.options.RayOptions` fields (``num_workers``,
    ``address``, ``use_gpu``, ``resources_per_worker``, ``storage_path``, ``name``,
    ``max_failures``). The trainer is pickled to every worker, as Ray Tune does with trainers; each
    worker calls ``trainer.train()`` with ``TrainingArguments`` unchanged except for Ray's strategy
    and cluster environment. Ray checkpoints are the facade's ``checkpoint-N`` folders (every
    ``save_steps``), plus a final one with the model in HF format.
    """
    unknown = set(options) - set(RayOptions.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"ray.{sorted(unknown)[0]}", "is not a Ray option",
                          f"use {', '.join(RayOptions.__dataclass_fields__)}")
    settings = RayOptions(**options)
    if settings.num_workers is None:
        raise ConfigError("ray.num_workers", "is required", "pass num_workers=N")
    result = _start_job(_facade_worker, {"trainer": trainer, "resume": resume_from_checkpoint}, settings)
    if result.hf_model is not None:
        _load_weights(trainer.model, result.hf_model)
    return result


def _load_weights(model: Any, folder: str) -> None:
    from transformers.modeling_utils import load_state_dict

    weights = Path(folder) / "model.safetensors"
    if weights.is_file():
        model.load_state_dict(load_state_dict(str(weights)), strict=False)


# ---------------------------------------------------------------------------- worker side


def _enter_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Work in the driver's folder (relative paths in configs mean the same) and say which worker this is."""
    import ray.train

    if Path(config["cwd"]).is_dir():
        os.chdir(config["cwd"])
    context = ray.train.get_context()
    info = {"rank": context.get_world_rank(), "world": context.get_world_size(),
            "local_rank": context.get_local_rank(), "node": context.get_node_rank()}
    attempt = "resuming from a Ray checkpoint" if ray.train.get_checkpoint() is not None else "starting"
    print(f"[ray worker {info['rank']}/{info['world']}] node {info['node']}, local rank {info['local_rank']}, "
          f"pid {os.getpid()}: {attempt}", file=sys.stderr, flush=True)
    return info


@contextlib.contextmanager
def _ray_checkpoint_folder():
    """The folder of the checkpoint Ray restored this worker group from, or None on a first start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def ray_strategy(strategy: Any) -> Any:
    """The Ray counterpart of a Lightning strategy setting: DDP (also for "auto") or FSDP."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
    from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy

    if isinstance(strategy, (RayDDPStrategy, RayFSDPStrategy)):
        return strategy
    if strategy in (None, "auto", "ddp"):
        return RayDDPStrategy()
    if strategy == "ddp_find_unused_parameters_true":
        return RayDDPStrategy(find_unused_parameters=True)
    if strategy == "fsdp":
        return RayFSDPStrategy()
    if isinstance(strategy, FSDPStrategy):
        return RayFSDPStrategy()
    if isinstance(strategy, DDPStrategy):
        return RayDDPStrategy(**strategy._ddp_kwargs)
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    raise ConfigError("trainer.strategy", f"{name!r} cannot run as a Ray Train job",
                      "use ddp or fsdp (or leave it unset): Ray starts one process per worker")


class RayWorkerCLI(HFLightningCLI):
    """The CLI as a Ray worker builds it: same config, Ray's strategy/environment, checkpoints reported to Ray."""

    launches_ray_jobs = False  # this *is* the job: a ``ray`` section must not start another one
    resume_from: str | None = None
    every_n_steps: int | None = None
    use_gpu: bool = False

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        if self.resume_from is not None:  # Ray restarted the group: continue from its checkpoint
            self.config[self.subcommand]["ckpt_path"] = self.resume_from

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from lightning.fabric.plugins.environments import ClusterEnvironment
        from lightning.pytorch.utilities import rank_zero_warn
        from ray.train.lightning import RayLightningEnvironment, prepare_trainer

        if config.get("devices") not in (None, "auto", 1, "1") or config.get("num_nodes") not in (None, 1):
            rank_zero_warn(f"trainer.devices={config.get('devices')} / num_nodes={config.get('num_nodes')} are "
                           "replaced under Ray: each of ray.num_workers workers runs one process on one device")
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        config = {
            **config,
            "strategy": ray_strategy(config.get("strategy")),
            "plugins": [p for p in plugins if not isinstance(p, ClusterEnvironment)] + [RayLightningEnvironment()],
            "accelerator": "gpu" if self.use_gpu else "cpu",
            "devices": "auto",
            "num_nodes": 1,
        }
        defaults = self.trainer_defaults.get("callbacks", [])
        defaults = defaults if isinstance(defaults, list) else [defaults]
        # Last, after HFExportCallback: the final report carries the HF-format model it wrote.
        self.trainer_defaults = {**self.trainer_defaults,
                                 "callbacks": [*defaults, RayCheckpointReport(self.every_n_steps)]}
        return prepare_trainer(super()._instantiate_trainer(config, callbacks))


def _cli_worker(config: dict[str, Any]) -> None:
    _enter_worker(config)
    with _ray_checkpoint_folder() as folder:
        cli_class = type("RayWorkerCLI", (RayWorkerCLI,), {
            "resume_from": str(folder / CHECKPOINT_FILE) if folder is not None else None,
            "every_n_steps": config["every_n_steps"],
            "use_gpu": config["use_gpu"],
        })
        run_cli(config["args"], cli_class=cli_class)


#: The facade's strategy under Ray, by registry name: ``TrainingArguments`` are pickled into every
#: ``checkpoint-N/training_args.bin``, and a live strategy there would drag the whole trainer along.
FACADE_STRATEGY = "hf_lightning_ray_ddp"


def _register_facade_strategy() -> None:
    from lightning.pytorch.strategies import StrategyRegistry
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    if FACADE_STRATEGY not in StrategyRegistry:
        StrategyRegistry.register(FACADE_STRATEGY, RayDDPStrategy, description="DDP on Ray Train's process group",
                                  cluster_environment=RayLightningEnvironment())


def _facade_worker(config: dict[str, Any]) -> None:
    info = _enter_worker(config)
    trainer = config["trainer"]
    args = trainer.args
    if args.fsdp or args.deepspeed:
        raise ConfigError("fsdp" if args.fsdp else "deepspeed", "is not supported by hf_lightning.ray_train.run",
                          "train with DDP under Ray (drop it), or launch FSDP/DeepSpeed with torchrun")
    _register_facade_strategy()
    args.lightning_trainer_kwargs = {**(args.lightning_trainer_kwargs or {}), "strategy": FACADE_STRATEGY,
                                     "accelerator": "gpu" if config["use_gpu"] else "cpu", "devices": "auto",
                                     "num_nodes": 1}
    trainer.add_callback(RayHFCheckpointReport())
    with _ray_checkpoint_folder() as folder:
        output = trainer.train(resume_from_checkpoint=str(folder) if folder is not None else config["resume"])
    with tempfile.TemporaryDirectory(prefix="hf-lightning-ray-") as tmp:
        if info["rank"] == 0:
            trainer.save_model(str(Path(tmp) / HF_MODEL_DIR))
        metrics = {k: float(v) for k, v in output.metrics.items() if isinstance(v, (int, float))}
        report_to_ray({**metrics, "step": output.global_step}, Path(tmp), f"final-step{output.global_step:07d}")
