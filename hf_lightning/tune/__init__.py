"""Hyperparameter search: backend-neutral search spaces (Ray Tune and Optuna adapters come next)."""

from hf_lightning.tune.space import DISTRIBUTIONS, ParamSpec, parse_search_space

__all__ = ["DISTRIBUTIONS", "ParamSpec", "parse_search_space"]
