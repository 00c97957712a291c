"""Lightning-native sweeps on Ray Tune: one ordinary ``fit`` of the same config per trial.

The driver validates the whole sweep before Ray starts (the fit config through the same LightningCLI
parser, the search space's keys against it, the metric against what the model logs in one validation
batch). Each trial then builds the CLI's own objects from the config with its sampled values and calls
``trainer.fit``, with Ray Tune's ``TuneReportCheckpointCallback(on="validation_end")`` added: metrics
and a checkpoint go to Ray at every validation, so ASHA can stop a trial, PBT can clone one, and a
failed trial restarts from its last checkpoint. Ray's ``Tuner`` does everything distributed.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

from hf_lightning.errors import ConfigError
from hf_lightning.tune.settings import TuneSettings

__all__ = ["SWEEP_FILE", "Sweep", "apply_dotted", "require_ray", "resume_sweep", "run_sweep"]

SWEEP_FILE = "sweep.json"  # what --resume needs: the fit config and the settings, beside Ray's own state


def require_ray() -> None:
    """One line naming the extra when Ray Tune is missing."""
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        raise ConfigError("tune", "Ray Tune is not installed", 'pip install "hf-lightning[ray]"') from None


def apply_dotted(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with each ``a.b.c`` key set (the fit config with a trial's parameters)."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"tune.search_space.{key}", f"{part!r} is not a section of the fit config",
                                  "search a field of model, data or trainer")
        node[leaf] = value.item() if hasattr(value, "item") else value
    return out


class Sweep:
    """A validated sweep: the fit config (a dict) and its ``TuneSettings``."""

    def __init__(self, fit_config: dict[str, Any], settings: TuneSettings, name: str) -> None:
        self.fit_config = fit_config
        self.settings = settings
        self.name = settings.name or name
        self.run_dir = Path(settings.storage_path).expanduser().resolve() / self.name

    # ------------------------------------------------------------------ checks before any trial
    def validate(self) -> None:
        """Parse the fit config as ``fit`` would, check the space's keys and the metric; one line on error."""
        cli = build_cli(self.fit_config, run_dir=None)
        parsed = cli.config.as_dict() if hasattr(cli.config, "as_dict") else dict(cli.config)
        for param in self.settings.params:
            node: Any = parsed
            for part in param.name.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ConfigError(f"tune.search_space.{param.name}", "is not a field of the fit config",
                                      "use a key that 'hf-lightning fit --print_config' shows")
                node = node[part]
        logged = validation_metrics(cli)
        if self.settings.metric not in logged:
            raise ConfigError("tune.metric", f"{self.settings.metric!r} is never logged at validation "
                              f"(logged: {', '.join(sorted(logged)) or 'nothing'})",
                              "pick one of the logged metrics (add metrics to the model for others)")

    # ------------------------------------------------------------------ Ray Tune objects
    def param_space(self) -> dict[str, Any]:
        from ray import tune

        space = {p.name: p.to_ray() for p in self.settings.params}
        if self.settings.search_alg == "grid":
            space = {p.name: tune.grid_search(list(p.values)) for p in self.settings.params}
        return space

    def tuner(self) -> Any:
        from ray import tune

        s = self.settings
        return tune.Tuner(
            self.trainable(),
            param_space=self.param_space(),
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=s.mode, num_samples=s.num_samples, scheduler=self.scheduler(),
                search_alg=self.search_alg(),
                # Ray applies this to Searchers (optuna); Ray's random/grid generator takes it itself.
                max_concurrent_trials=s.max_concurrent_trials if s.search_alg == "optuna" else None,
                reuse_actors=s.reuse_actors,
            ),
            run_config=self.run_config(),
        )

    def trainable(self) -> Any:
        from ray import tune

        resources = {k: float(v) for k, v in self.settings.resources_per_trial.items()}
        fn = tune.with_parameters(fit_trial, fit_config=self.fit_config, metric=self.settings.metric)
        return tune.with_resources(fn, resources)

    def run_config(self) -> Any:
        from ray import tune

        s = self.settings
        if s.scheduler == "pbt":
            # A PBT clone restores a checkpoint its donor reported earlier, and takes it into its own list of
            # kept checkpoints; with any limit Ray deleted it under the clone's feet (measured with 1 and with
            # the 4 most recent: the clone errors with "checkpoint ... does not exist"). Keep them all.
            checkpoints = tune.CheckpointConfig(num_to_keep=None)
        else:
            checkpoints = tune.CheckpointConfig(num_to_keep=s.checkpoints_to_keep, checkpoint_score_attribute=s.metric,
                                                checkpoint_score_order=s.mode)
        return tune.RunConfig(
            name=self.name, storage_path=str(self.run_dir.parent),
            failure_config=tune.FailureConfig(max_failures=s.max_failures), checkpoint_config=checkpoints, verbose=1,
        )

    def scheduler(self) -> Any:
        from ray.tune import schedulers

        s = self.settings
        if s.scheduler == "asha":
            return schedulers.ASHAScheduler(time_attr="training_iteration", max_t=s.max_t or self.validations(),
                                            grace_period=s.grace_period, reduction_factor=s.reduction_factor)
        if s.scheduler == "pbt":
            return schedulers.PopulationBasedTraining(
                time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                hyperparam_mutations={p.name: p.to_ray() for p in s.params})
        return schedulers.FIFOScheduler()

    def search_alg(self) -> Any:
        s = self.settings
        if s.search_alg == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(seed=s.seed)
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent_trials or 0)

    def validations(self) -> int:
        """How many validations one full trial runs (ASHA's max_t when not given): the config's epochs."""
        trainer = self.fit_config.get("trainer") or {}
        return int(trainer.get("max_epochs") or 1000) * max(1, int(1 / float(trainer.get("val_check_interval") or 1)))

    # ------------------------------------------------------------------ run
    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"fit_config": self.fit_config, "settings": self.settings.to_dict(), "name": self.name}
        (self.run_dir / SWEEP_FILE).write_text(json.dumps(state, indent=2, default=str))

    @classmethod
    def load(cls, run_dir: str | Path) -> Sweep:
        path = Path(run_dir).expanduser().resolve()
        if not (path / SWEEP_FILE).is_file():
            raise ConfigError("resume", f"{str(path)!r} holds no sweep ({SWEEP_FILE} missing)",
                              "pass the run directory an earlier 'hf-lightning tune' printed")
        state = json.loads((path / SWEEP_FILE).read_text())
        settings = dict(state["settings"], storage_path=str(path.parent), name=path.name)
        return cls(state["fit_config"], TuneSettings.from_dict(settings), path.name)


def connect(address: str | None) -> None:
    """Join ``address`` (or RAY_ADDRESS) when given, else start a local Ray; reuse a connection already made."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)  # a cluster with token auth (Ray's default for `ray start`): RAY_AUTH_MODE=token
    else:
        ray.init(include_dashboard=False)


def run_sweep(sweep: Sweep) -> Any:
    """Validate, run every trial on Ray Tune and write the results; returns Ray's ``ResultGrid``."""
    from hf_lightning.tune.report import write_outputs

    require_ray()
    sweep.validate()
    sweep.save()
    connect(sweep.settings.address)
    results = sweep.tuner().fit()
    write_outputs(sweep, results)
    return results


def resume_sweep(run_dir: str | Path, address: str | None = None) -> Any:
    """Finish an interrupted sweep (``Tuner.restore``): finished trials stay, the rest run (errored ones again)."""
    from ray import tune

    from hf_lightning.tune.report import write_outputs

    require_ray()
    sweep = Sweep.load(run_dir)
    connect(address or sweep.settings.address)
    tuner = tune.Tuner.restore(str(sweep.run_dir), trainable=sweep.trainable(), resume_errored=True,
                               param_space=sweep.param_space())
    results = tuner.fit()
    write_outputs(sweep, results)
    return results


# ---------------------------------------------------------------------- inside a trial
def build_cli(fit_config: dict[str, Any], run_dir: str | None) -> Any:
    """The LightningCLI objects of ``hf-lightning fit`` for ``fit_config`` (parsed and instantiated, not run)."""
    from hf_lightning.cli import cli_kwargs

    config = copy.deepcopy(fit_config)
    if run_dir is not None:  # a trial: everything it writes goes under its own Ray trial directory
        trainer = config.setdefault("trainer", {})
        trainer["default_root_dir"] = run_dir
        trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": run_dir}}
        trainer["enable_progress_bar"] = False
    from hf_lightning.cli import HFLightningCLI

    return HFLightningCLI(**cli_kwargs(["--config", yaml.safe_dump(config)]), run=False)


def validation_metrics(cli: Any) -> set[str]:
    """What the model logs in one validation batch (the names a sweep can optimise)."""
    import lightning.pytorch as pl

    probe = pl.Trainer(accelerator="cpu", devices=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False)
    probe.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    return set(probe.callback_metrics)


def fit_trial(config: dict[str, Any], fit_config: dict[str, Any], metric: str) -> None:
    """One trial: an ordinary fit of the config with this trial's values, reporting at each validation."""
    import ray.tune
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    from hf_lightning.tune.explore import ApplyTrialHyperparameters

    trial_dir = ray.tune.get_context().get_trial_dir()
    cli = build_cli(apply_dotted(fit_config, config), run_dir=trial_dir)
    cli.trainer.callbacks.append(TuneReportCheckpointCallback(metrics=None, on="validation_end"))
    # first, so that every other callback already sees a PBT clone's explored values at on_train_start
    cli.trainer.callbacks.insert(0, ApplyTrialHyperparameters())
    checkpoint = ray.tune.get_checkpoint()  # a retried trial, or a PBT clone: continue from it
    if checkpoint is None:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return
    with checkpoint.as_directory() as folder:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(Path(folder) / "checkpoint"))
