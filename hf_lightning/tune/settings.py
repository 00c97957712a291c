"""The ``tune:`` section of a sweep config: what to search, how to schedule it, where it runs.

A sweep YAML is an ordinary ``hf-lightning fit`` config plus this section::

    tune:
      search_space:
        model.learning_rate: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
        data.batch_size: {distribution: choice, values: [16, 32]}
      num_samples: 4
      metric: eval_loss
      mode: min
      scheduler: asha

Every field is checked here, before Ray starts, so a typo is one line and no trial runs.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from hf_lightning.errors import ConfigError
from hf_lightning.tune.space import ParamSpec, parse_search_space

__all__ = ["SCHEDULERS", "SEARCH_ALGS", "TuneSettings"]

SCHEDULERS = ("fifo", "asha", "pbt")
SEARCH_ALGS = ("random", "grid", "optuna")


@dataclass
class TuneSettings:
    """How a sweep runs (the ``tune:`` section; each field is also ``--tune.<field>=...``)."""

    search_space: dict[str, Any] = field(default_factory=dict)
    """Dotted fit-config key -> distribution (uniform, loguniform, randint, choice, grid)."""
    num_samples: int = 4
    """Trials to sample (with grid values: samples per grid point, as in Ray Tune)."""
    metric: str = "eval_loss"
    """A metric the model logs at validation (eval_loss, eval_accuracy, ...)."""
    mode: str = "min"
    """min or max."""
    scheduler: str = "fifo"
    """fifo (run every trial to the end), asha (stop weak trials early), pbt (population based training)."""
    max_t: int | None = None
    """ASHA: the most validations a trial runs (default: the fit config's own length)."""
    grace_period: int = 1
    """ASHA: validations every trial gets before it can be stopped."""
    reduction_factor: int = 2
    """ASHA: keep the best 1/reduction_factor at each rung."""
    perturbation_interval: int = 1
    """PBT: validations between exploit/explore steps."""
    search_alg: str = "random"
    """random (Ray's sampler), grid (every combination of choice/grid values), optuna (TPE through Ray Tune)."""
    seed: int | None = 0
    """Seed of the search algorithm's sampling (None: not seeded)."""
    resources_per_trial: dict[str, float] = field(default_factory=lambda: {"cpu": 1})
    """Ray resources one trial takes, e.g. {cpu: 2, gpu: 1}."""
    max_concurrent_trials: int | None = None
    """At most this many trials at once (None: as many as the resources allow)."""
    reuse_actors: bool = True
    """Run a trial in a worker process a finished trial leaves (Ray's ``reuse_actors``): a fresh process
    per trial imports torch, Lightning and transformers again, which costs more than a small trial trains."""
    max_failures: int = 0
    """Restart a failed trial (from its last checkpoint) up to this many times."""
    checkpoints_to_keep: int | None = 1
    """Checkpoints kept per trial, the best by ``metric`` (None: all). PBT keeps all: a clone restores a
    checkpoint its donor reported earlier, which a limit would delete under it."""
    storage_path: str = "outputs/tune"
    """Where the sweep's run directory goes (results, best config, plot, Ray's state for --resume)."""
    name: str | None = None
    """The run directory's name under storage_path (default: the config file's name)."""
    address: str | None = None
    """A running Ray cluster (``ray start --head`` prints it); default: RAY_ADDRESS, else a local Ray."""

    def __post_init__(self) -> None:
        self.params: list[ParamSpec] = parse_search_space(self.search_space)
        for key in self.search_space:
            if key.split(".", 1)[0] not in ("model", "data", "trainer", "seed_everything") or (
                    "." not in key and key != "seed_everything"):
                raise ConfigError(f"tune.search_space.{key}", "is not a dotted fit-config key",
                                  "write model.<field>, data.<field> or trainer.<field>")
        _choose("tune.mode", self.mode, ("min", "max"))
        _choose("tune.scheduler", self.scheduler, SCHEDULERS)
        _choose("tune.search_alg", self.search_alg, SEARCH_ALGS)
        for name in ("num_samples", "grace_period", "reduction_factor", "perturbation_interval"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"tune.{name}", f"must be at least 1, got {getattr(self, name)}", "use a positive integer")
        if self.max_failures < 0:
            raise ConfigError("tune.max_failures", "must be 0 or more", "use 0 to never retry")
        grids = [p.name for p in self.params if p.distribution == "grid"]
        if grids and self.search_alg == "optuna":
            raise ConfigError(f"tune.search_space.{grids[0]}", "grid values cannot be searched by optuna",
                              "use distribution: choice, or search_alg: grid")
        if grids and self.scheduler == "pbt":
            raise ConfigError(f"tune.search_space.{grids[0]}", "PBT mutates parameters and takes no grid",
                              "use distribution: choice")
        if self.search_alg == "grid":
            bad = [p.name for p in self.params if p.distribution not in ("grid", "choice")]
            if bad:
                raise ConfigError(f"tune.search_space.{bad[0]}", "search_alg grid needs a list of values",
                                  "use distribution: choice (or grid) with values, or search_alg: random")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TuneSettings:
        """Build from the YAML section; an unknown key is one line naming the closest field."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                raise ConfigError(f"tune.{key}", "is not a tune setting",
                                  f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _choose(field_name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        raise ConfigError(field_name, f"unknown value {value!r}",
                          f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(allowed)}")
