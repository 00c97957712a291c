"""Hyperparameter search for the facade: how a trial's parameters reach the ``Trainer``.

``apply_trial`` is what ``Trainer._hp_search_setup`` (HF's name) does before each trial's
``train()``: the trial's values are set on ``TrainingArguments`` and, with ``model_init``, a fresh
model is built for it. A search driver (``hyperparameter_search``, over Ray Tune or Optuna) belongs
in this module and runs ``trainer.train(trial=...)`` per trial; ``hf_lightning/tune/`` parses spaces.
"""

from __future__ import annotations

from typing import Any

from hf_lightning.errors import ConfigError

__all__ = ["apply_trial"]


def apply_trial(trainer: Any, trial: Any) -> None:
    """Set a trial's parameters (a dict, or an object with ``.params``) on ``trainer.args``."""
    params = trial if isinstance(trial, dict) else getattr(trial, "params", {})
    for key, value in params.items():
        if not hasattr(trainer.args, key):
            raise ConfigError("hp_space", f"unknown TrainingArguments field {key!r}", "use TrainingArguments field names")
        old = getattr(trainer.args, key)
        setattr(trainer.args, key, type(old)(value) if old is not None and not isinstance(old, bool) else value)
    if trainer.model_init is not None:
        trainer._fresh_model(trial)
