"""``Trainer.hyperparameter_search``: transformers' own sweep drivers, run against this trainer.

transformers drives a search with ``run_hp_search_optuna`` / ``run_hp_search_ray``
(``transformers.integrations``); both only call a small protocol on the trainer: ``hp_space``,
``compute_objective``, ``objective``, ``train(resume_from_checkpoint=, trial=)``, ``evaluate``,
``_hp_search_setup``, ``_report_to_hp_search``, ``_tune_save_checkpoint``, ``model_wrapped``,
``accelerator.clear()``, ``pop_callback``/``add_callback``. This mixin implements that protocol on
the Lightning-backed ``Trainer``, so a sweep keeps HF's exact semantics (defaults, ``BestRun``,
pruning, Ray's object-store hand-off of the trainer via ``tune.with_parameters``) without a second
copy of the drivers. Each trial is one ordinary ``train()``: there is no separate training path.
"""

from __future__ import annotations

import os
from typing import Any

from hf_lightning.errors import ConfigError

__all__ = ["HyperparameterSearchMixin", "SUPPORTED_BACKENDS", "resolve_backend"]

SUPPORTED_BACKENDS = ("optuna", "ray")
_EXTRA = {"optuna": "optuna", "ray": "ray"}
_MODULE = {"optuna": "optuna", "ray": "ray.tune"}


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(_MODULE[name].split(".")[0]) is not None


def resolve_backend(backend: Any) -> str:
    """The backend's name ('optuna' or 'ray'): None picks what is installed, optuna first (as HF does)."""
    if backend is None:
        for name in SUPPORTED_BACKENDS:
            if _installed(name):
                return name
        raise ConfigError("backend", "neither optuna nor ray[tune] is installed",
                          'pip install "hf-lightning[optuna]" or "hf-lightning[ray]"')
    name = str(getattr(backend, "value", backend)).lower()
    if name not in SUPPORTED_BACKENDS:
        raise ConfigError("backend", f"{name!r} is not supported for hyperparameter_search",
                          f"use one of {', '.join(SUPPORTED_BACKENDS)}")
    if not _installed(name):
        raise ConfigError("backend", f"{name!r} is not installed", f'pip install "hf-lightning[{_EXTRA[name]}]"')
    return name


class HyperparameterSearchMixin:
    """HF's hyperparameter-search protocol for ``hf_lightning.Trainer`` (see the module docstring)."""

    hp_search_backend: Any = None
    hp_name: Any = None
    objective: Any = None
    _trial: Any = None
    _hp_output_root: str | None = None

    def hyperparameter_search(
        self,
        hp_space: Any = None,
        compute_objective: Any = None,
        n_trials: int = 20,
        direction: str | list[str] = "minimize",
        backend: Any = None,
        hp_name: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Search hyperparameters with Optuna or Ray Tune; returns HF's ``BestRun`` (a list for multi-objective).

        Same arguments and defaults as ``transformers.Trainer.hyperparameter_search``: ``hp_space`` takes
        the Optuna trial (or returns a Ray search space), ``compute_objective`` maps evaluation metrics to
        the objective (default: eval loss, else the sum of the metrics), backend keyword arguments pass
        through (Optuna: ``sampler``, ``pruner``, ``storage``, ``study_name``, ``timeout``, ``n_jobs``,
        ``gc_after_trial``; Ray: ``resources_per_trial``, ``scheduler``, ``search_alg``,
        ``storage_path``, ``max_concurrent_trials``, ``progress_reporter``, ``max_failures``, ...).
        Each trial trains a fresh ``model_init()`` model into ``output_dir/run-<trial id>``.
        """
        from transformers.trainer_utils import HPSearchBackend, default_compute_objective

        name = resolve_backend(backend)
        if self.model_init is None:
            raise ConfigError("model_init", "hyperparameter_search builds a fresh model per trial and needs it",
                              "pass model_init=... (a function returning the model) to Trainer")
        _check_directions(direction)
        from transformers.hyperparameter_search import ALL_HYPERPARAMETER_SEARCH_BACKENDS

        backend_obj = ALL_HYPERPARAMETER_SEARCH_BACKENDS[HPSearchBackend(name)]()
        self.hp_search_backend = HPSearchBackend(name)
        self.hp_space = backend_obj.default_hp_space if hp_space is None else hp_space
        self.hp_name = hp_name
        self.compute_objective = default_compute_objective if compute_objective is None else compute_objective
        self._hp_output_root = str(self.args.output_dir)
        try:
            if name == "ray":
                return self._run_ray_search(n_trials, direction, **kwargs)
            from transformers.integrations import run_hp_search_optuna

            return run_hp_search_optuna(self, n_trials, direction, **kwargs)
        finally:
            self.args.output_dir = self._hp_output_root
            self.hp_search_backend = None
            self._trial = None

    def _run_ray_search(self, n_trials: int, direction: Any, **kwargs: Any) -> Any:
        """transformers' Ray driver; the trainer travels once through Ray's object store (``tune.with_parameters``)."""
        from transformers.integrations import run_hp_search_ray

        if isinstance(direction, list):
            raise ConfigError("direction", "several objectives need the optuna backend", 'pass backend="optuna"')
        _check_space_fields(self.hp_space(None), self.args)
        # What a finished train() left behind (the Lightning trainer, module, optimizer) does not travel:
        # every trial builds its own from model_init. Datasets, args and callbacks are what Ray ships.
        self._pl_trainer = self._module = self._bridge = None
        if not getattr(self, "_user_optimizers", False):
            self.optimizer = self.lr_scheduler = None
        handler = self.callback_handler
        handler.model = handler.optimizer = handler.lr_scheduler = None
        handler.train_dataloader = handler.eval_dataloader = None
        return run_hp_search_ray(self, n_trials, direction, **kwargs)

    # ------------------------------------------------------------------ protocol the drivers call
    def _get_output_dir(self, trial: Any) -> str:
        """``output_dir/run-<trial id>`` (or ``hp_name(trial)``) during a search, else ``output_dir``."""
        root = self._hp_output_root or str(self.args.output_dir)
        if self.hp_search_backend is None or trial is None:
            return str(self.args.output_dir)
        if self.hp_name is not None:
            return os.path.join(root, self.hp_name(trial))
        if str(getattr(self.hp_search_backend, "value", self.hp_search_backend)) == "optuna":
            run_id = trial.number
        else:
            import ray.tune

            run_id = ray.tune.get_context().get_trial_id()
        return os.path.join(root, f"run-{run_id}")

    def _hp_search_setup(self, trial: Any) -> None:
        """Apply a trial's parameters to ``args``, point ``output_dir`` at its run folder, build its model.

        The parameters are applied before ``model_init`` runs (and seeding with them), so a trial that
        searches ``seed`` builds the same model as a plain ``train()`` with that seed.
        """
        self._trial = trial
        backend = str(getattr(self.hp_search_backend, "value", self.hp_search_backend))
        if self.hp_search_backend is not None and trial is not None:
            if backend == "optuna":
                params = self.hp_space(trial)
            else:
                params = {k: v for k, v in dict(trial).items() if k != "wandb"}
            run_dir = self._get_output_dir(trial)
            apply_params(self.args, params)
            self.args.output_dir = run_dir
        if self.model_init is not None:
            self._fresh_model(trial)

    def _tune_save_checkpoint(self, checkpoint_dir: str) -> None:
        """A full resumable ``checkpoint-N`` (weights, optimizer, RNG, data position) for Ray schedulers (PBT)."""
        from hf_lightning.callbacks.hf_checkpoint import save_hf_checkpoint

        self.state.stateful_callbacks["TrainerControl"] = self.control.state()
        # Durable before returning: Ray copies the folder into its storage and HF then deletes it.
        save_hf_checkpoint(self._pl_trainer, self._module, checkpoint_dir, self.state, args=self.args,
                           processing_class=self.processing_class, sync="before_rename")

    @property
    def model_wrapped(self) -> Any:
        """The model as trained (HF's wrapped model); the drivers read it and reset it after a trial."""
        module = getattr(self, "_module", None)
        return module.forward_model if module is not None else self.model

    @model_wrapped.setter
    def model_wrapped(self, value: Any) -> None:
        if value is None:  # the Optuna driver releases the trial's model: drop what still holds it
            self._module = None
            self._pl_trainer = None

    def _report_to_hp_search(self, trial: Any, step: int, metrics: dict[str, float]) -> None:
        """HF's own report (Optuna ``report``/pruning, Ray ``tune.report`` with a checkpoint when saving)."""
        from transformers import Trainer as HFTrainer

        HFTrainer._report_to_hp_search(self, trial, step, metrics)  # type: ignore[arg-type]


def apply_params(args: Any, params: dict[str, Any]) -> None:
    """Set each searched value on ``args``, cast to the field's type (HF's rule); unknown names are refused."""
    for key, value in params.items():
        if not hasattr(args, key):
            raise ConfigError(f"hp_space.{key}", "is not a TrainingArguments field",
                              "search TrainingArguments fields (model settings go through model_init(trial))")
        old = getattr(args, key)
        setattr(args, key, type(old)(value) if old is not None and not isinstance(old, bool) else value)


def _check_space_fields(space: Any, args: Any) -> None:
    for key in dict(space or {}):
        if key != "wandb" and not hasattr(args, key):
            raise ConfigError(f"hp_space.{key}", "is not a TrainingArguments field",
                              "search TrainingArguments fields (model settings go through model_init(trial))")


def _check_directions(direction: Any) -> None:
    for d in direction if isinstance(direction, list) else [direction]:
        if str(getattr(d, "value", d)) not in ("minimize", "maximize"):
            raise ConfigError("direction", f"{d!r} is not a direction", "use 'minimize' or 'maximize'")

