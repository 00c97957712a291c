"""``hf-lightning tune``: a fit config plus a ``tune:`` section, swept on Ray Tune.

    hf-lightning tune --config configs/tune_quickstart.yaml [--trainer.max_epochs=2] [--tune.num_samples=8]
    hf-lightning tune --resume outputs/tune/tune_quickstart      # finish an interrupted sweep

``--tune.<field>=<value>`` overrides the ``tune:`` section and any other ``--<key>=<value>`` the fit
config, both as YAML values; bad input of any kind is one line (``error: ...``) and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from hf_lightning.errors import ConfigError

__all__ = ["main", "parse_tune_args"]

USAGE = ("usage: hf-lightning tune --config SWEEP.yaml [--<fit key>=VALUE ...] [--tune.<field>=VALUE ...]\n"
         "       hf-lightning tune --resume RUN_DIR [--tune.address=HOST:PORT]")


def main(argv: list[str]) -> Any:
    """Run (or resume) a sweep; returns Ray's ``ResultGrid``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print("Fields of the tune: section (hf_lightning/tune/settings.py):")
        from hf_lightning.tune.settings import TuneSettings

        for name in TuneSettings.__dataclass_fields__:
            print(f"  --tune.{name}")
        return None
    try:
        from hf_lightning.tune.ray import Sweep, require_ray, resume_sweep, run_sweep
        from hf_lightning.tune.settings import TuneSettings

        require_ray()
        resume, fit_config, tune_section, name = parse_tune_args(argv)
        if resume is not None:
            return resume_sweep(resume, address=tune_section.get("address"))
        return run_sweep(Sweep(fit_config, TuneSettings.from_dict(tune_section), name))
    except ConfigError as err:
        _exit(str(err))


def parse_tune_args(argv: list[str]) -> tuple[str | None, dict[str, Any], dict[str, Any], str]:
    """(resume dir, fit config, tune section, sweep name) from the command line."""
    configs: list[str] = []
    resume: str | None = None
    overrides: dict[str, Any] = {}
    items = list(argv)
    while items:
        arg = items.pop(0)
        if not arg.startswith("--"):
            raise ConfigError("tune", f"unexpected argument {arg!r}", "write options as --key=value")
        key, has_value, value = arg[2:].partition("=")
        if not has_value:
            if not items:
                raise ConfigError(key, "needs a value", f"write --{key}=VALUE")
            value = items.pop(0)
        if key == "config":
            configs.append(value)
        elif key == "resume":
            resume = value
        else:
            overrides[key] = yaml.safe_load(value)
    if resume is None and not configs:
        raise ConfigError("config", "hf-lightning tune needs a sweep config", "pass --config SWEEP.yaml (or --resume RUN_DIR)")
    merged: dict[str, Any] = {}
    for path in configs:
        merged = _merge(merged, _load(path))
    tune_section = merged.pop("tune", None) or {}
    if not isinstance(tune_section, dict):
        raise ConfigError("tune", "must be a mapping of settings", "see configs/tune_quickstart.yaml")
    from hf_lightning.tune.ray import apply_dotted

    fit_overrides = {k: v for k, v in overrides.items() if not k.startswith("tune.")}
    for key, value in overrides.items():
        if key.startswith("tune."):
            tune_section[key[len("tune."):]] = value
    if resume is None and "search_space" not in tune_section:
        raise ConfigError("tune.search_space", "is missing", "add a tune: section with a search_space to the config")
    name = Path(configs[-1]).stem if configs else ""
    return resume, apply_dotted(merged, fit_overrides), tune_section, name


def _load(path: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("config", f"{path!r} does not exist", "pass the path of a sweep YAML")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("config", f"{path!r} is not valid YAML ({type(err).__name__})", "fix the file's syntax") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path!r} is not a mapping", "write a fit config with a tune: section")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _exit(message: str) -> NoReturn:
    from hf_lightning.cli import one_line

    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.exit(2)
