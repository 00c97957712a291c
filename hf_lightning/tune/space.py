"""Search spaces written once (YAML or dict) and translated to Ray Tune or Optuna.

A space maps a TrainingArguments / model field to a distribution::

    learning_rate: {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}
    per_device_train_batch_size: {distribution: choice, values: [8, 16, 32]}
    warmup_steps: {distribution: uniform, low: 0.0, high: 0.2}
    seed: {distribution: randint, low: 0, high: 100}

Parsing happens before any trial starts so that a typo fails in one line, not after a cluster spins up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hf_lightning.errors import ConfigError

__all__ = ["DISTRIBUTIONS", "ParamSpec", "parse_search_space"]

# distribution -> the keys it needs
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "randint": ("low", "high"),
    "choice": ("values",),
    "grid": ("values",),
}


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter."""

    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    def to_ray(self) -> Any:
        from ray import tune

        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "randint":
            return tune.randint(int(self.low), int(self.high))
        if self.distribution == "grid":
            return tune.grid_search(list(self.values))
        return tune.choice(list(self.values))

    def suggest_optuna(self, trial: Any) -> Any:
        if self.distribution == "uniform":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.distribution == "loguniform":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.distribution == "randint":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_categorical(self.name, list(self.values))


def parse_search_space(space: dict[str, Any]) -> list[ParamSpec]:
    """Validate a search space and return its parameters; ConfigError names the bad field."""
    if not isinstance(space, dict) or not space:
        raise ConfigError("search_space", "must be a non-empty mapping of field -> distribution",
                          "e.g. {learning_rate: {distribution: loguniform, low: 1e-5, high: 1e-3}}")
    params = []
    for name, spec in space.items():
        field = f"search_space.{name}"
        if not isinstance(spec, dict) or "distribution" not in spec:
            raise ConfigError(field, "needs a 'distribution' key", f"use one of {', '.join(DISTRIBUTIONS)}")
        dist = spec["distribution"]
        if dist not in DISTRIBUTIONS:
            import difflib

            close = difflib.get_close_matches(str(dist), DISTRIBUTIONS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(DISTRIBUTIONS)}"
            raise ConfigError(field, f"unknown distribution {dist!r}", hint)
        missing = [k for k in DISTRIBUTIONS[dist] if k not in spec]
        if missing:
            raise ConfigError(field, f"distribution {dist!r} needs {missing}", f"add {', '.join(missing)}")
        unknown = set(spec) - {"distribution", *DISTRIBUTIONS[dist]}
        if unknown:
            raise ConfigError(field, f"unknown keys {sorted(unknown)}", f"{dist} takes {', '.join(DISTRIBUTIONS[dist])}")
        if "values" in DISTRIBUTIONS[dist]:
            values = spec["values"]
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(field, "values must be a non-empty list", "e.g. values: [8, 16, 32]")
            params.append(ParamSpec(name, dist, values=tuple(values)))
            continue
        low, high = float(spec["low"]), float(spec["high"])
        if not low < high:
            raise ConfigError(field, f"low ({low}) must be below high ({high})", "swap or widen the bounds")
        if dist == "loguniform" and low <= 0:
            raise ConfigError(field, f"loguniform needs low > 0, got {low}", "use a positive lower bound")
        params.append(ParamSpec(name, dist, low=low, high=high))
    return params
