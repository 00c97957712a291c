"""Sweeps: ``space.py`` (search spaces, parsed once), ``settings.py`` (the ``tune:`` section),
``ray.py`` (a Ray Tune run of one ``fit`` per trial), ``report.py`` (results table, CSV/JSON, plot, best
config) and ``cli.py`` (``hf-lightning tune``). Importing this package does not import Ray."""

from hf_lightning.tune.space import DISTRIBUTIONS, ParamSpec, parse_search_space

__all__ = ["DISTRIBUTIONS", "ParamSpec", "parse_search_space"]
