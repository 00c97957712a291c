"""Loading raw data and the tokenizer: Hub names, local files, the demo set, and a held-out validation split.

Everything here fails fast with one line naming the ``data.*`` field: an unsupported or missing file,
a Hub name while the Hub is offline (a Hub request otherwise fails only after ~26 s of retries), a
header-only csv, a validation share that cannot be held out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_lightning.errors import ConfigError

__all__ = [
    "DEMO_DATASET",
    "DEMO_TOKENIZER",
    "FILE_BUILDERS",
    "check_validation_size",
    "hold_out_validation",
    "load_raw",
    "load_tokenizer",
]

FILE_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
DEMO_DATASET = "demo:sentiment"
DEMO_TOKENIZER = "demo:tokenizer"


def load_tokenizer(name: str, field: str = "data.tokenizer") -> Any:
    """Load a tokenizer from a local dir or the Hub (fail fast offline); ``demo:tokenizer`` is built in."""
    from transformers import AutoTokenizer

    from hf_lightning.models import resolve_local_or_hub

    if name == DEMO_TOKENIZER:
        from hf_lightning.demo.tokenizer import ensure_demo_assets

        name = ensure_demo_assets()["tokenizer"]
    source = (
        resolve_local_or_hub(name, field)
        if not Path(name).expanduser().is_dir()
        else str(Path(name).expanduser())
    )
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(
            field,
            f"could not load a tokenizer from {name!r} ({str(err).splitlines()[0][:120]})",
            "point to a folder written by tokenizer.save_pretrained",
        ) from None


def check_validation_size(size: float | None) -> float | int | None:
    """A share in (0, 1) stays a float; 1 or more must be a whole number of rows."""
    if size is None:
        return None
    if size <= 0 or (size >= 1 and size != int(size)):
        raise ConfigError(
            "data.validation_size",
            f"must be a share in (0, 1) or a whole number of rows, got {size}",
            "use e.g. 0.1 or 20",
        )
    return size if size < 1 else int(size)


def _load_error(name: str, err: Exception) -> ConfigError:
    """One line for a failed ``load_dataset``; a header-only csv gets a message that says so."""
    if "corresponds to no data" in str(err):
        return ConfigError(
            "data.dataset",
            "the data has no rows (a csv with only a header?)",
            "point to data with at least one row",
        )
    return ConfigError(
        "data.dataset",
        f"could not load {name!r} ({str(err).splitlines()[0][:160]})",
        "check the dataset name, config name and data_files",
    )


def _suffixes(files: dict[str, str | list[str]]) -> set[str]:
    """The lower-case file extensions across all splits of ``data_files``."""
    paths = [p for v in files.values() for p in ([v] if isinstance(v, str) else v)]
    return {Path(p).suffix.lower() for p in paths}


def _hub_offline() -> bool:
    from hf_lightning.models import hub_offline

    return hub_offline()


def load_raw(name: str, dataset_config: str | None, data_files: dict[str, str | list[str]] | str | None) -> Any:
    """The raw ``DatasetDict``: the demo set, local files (builder from the extension) or a Hub dataset."""
    import datasets

    files = data_files
    if name == DEMO_DATASET:
        from hf_lightning.demo.tokenizer import ensure_demo_assets

        assets = ensure_demo_assets()
        name, files = "csv", {s: assets[s] for s in ("train", "validation", "test")}
    if isinstance(files, str):
        files = {"train": files}
    if files:
        _check_files(files)
        if name in (None, "", "auto") or name not in {"csv", "json", "parquet", "text"}:
            first = next(iter(files.values()))
            first = first if isinstance(first, str) else first[0]
            name = FILE_BUILDERS[Path(first).suffix.lower()]
    elif _hub_offline() and not Path(name).expanduser().exists():
        raise ConfigError(
            "data.dataset",
            f"{name!r} would be downloaded from the Hub, which is offline here",
            "save it locally and pass data_files (csv/json/parquet), or unset HF_HUB_OFFLINE",
        )
    builder_kwargs: dict[str, Any] = {}
    if files and name == "csv" and _suffixes(files) == {".tsv"}:
        builder_kwargs["delimiter"] = "\t"  # the csv builder splits on commas unless told
    try:
        raw = datasets.load_dataset(name, dataset_config, data_files=files, **builder_kwargs)
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise _load_error(name, err) from None
    return raw


def _check_files(files: dict[str, str | list[str]]) -> None:
    """Every listed file exists, is not empty and has an extension a ``datasets`` builder reads."""
    for split, paths in files.items():
        for path in [paths] if isinstance(paths, str) else paths:
            suffix = Path(path).suffix.lower()
            if suffix not in FILE_BUILDERS:
                raise ConfigError(
                    f"data.data_files.{split}",
                    f"unsupported file format {suffix or '(none)'!r} for {path!r}",
                    f"use one of {', '.join(sorted(FILE_BUILDERS))}",
                )
            if not Path(path).expanduser().is_file():
                raise ConfigError(f"data.data_files.{split}", f"file {path!r} does not exist", "check the path")
            if Path(path).expanduser().stat().st_size == 0:
                # datasets' json builder raises a bare StopIteration on an empty file.
                raise ConfigError(
                    f"data.data_files.{split}",
                    f"file {path!r} is empty",
                    "point to a file with at least one row",
                )


def hold_out_validation(
    raw: Any, splits: dict[str, str | None], validation_size: float | int | None, seed: int
) -> Any:
    """Carve ``validation_size`` rows out of the training split (seeded), if asked; ``raw`` is updated."""
    if validation_size is None:
        return raw
    train_name, val_name = splits["train"], splits["validation"]
    if val_name is None:
        raise ConfigError(
            "data.validation_size",
            "is set but validation_split is null",
            "set validation_split (e.g. validation) or remove validation_size",
        )
    if val_name in raw:
        raise ConfigError(
            "data.validation_size",
            f"the data already has a {val_name!r} split",
            "remove validation_size, or point validation_split at a name the data lacks",
        )
    if train_name not in raw:
        raise ConfigError("data.train_split", f"split {train_name!r} not found", f"use one of {list(raw)}")
    try:
        parts = raw[train_name].train_test_split(test_size=validation_size, seed=seed, shuffle=True)
    except ValueError as err:
        raise ConfigError(
            "data.validation_size",
            f"cannot hold out {validation_size} rows ({str(err).splitlines()[0][:120]})",
            "use a smaller share or more data",
        ) from None
    raw[train_name], raw[val_name] = parts["train"], parts["test"]
    return raw
