"""``hf-lightning``: the LightningCLI front door (fit / validate / test / predict; ``tune`` runs a sweep).

Plain LightningCLI with three additions: the data module's facts (labels, vocabulary, pad id) are
linked into the model so they are typed once; every error a user can cause is printed as one line
(``error: <field>: <problem>. Fix: <fix>``) with exit code 2 instead of ~65 lines of usage or a
traceback; and the trainer defaults that exact resume and HF export need are switched on.
"""

from __future__ import annotations

import atexit
import gc
import re
import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from hf_lightning.callbacks.hf_export import HFExportCallback
from hf_lightning.callbacks.preemption import PreemptionCheckpoint
from hf_lightning.callbacks.resume import ExactResumeCallback
from hf_lightning.callbacks.summary import RunSummary
from hf_lightning.checkpoint_io import CheckpointWriteError
from hf_lightning.data import HFDataModule
from hf_lightning.errors import ConfigError
from hf_lightning.log import show_info_by_default
from hf_lightning.module import HFLightningModule
from hf_lightning.ray_train.options import RayOptions
from hf_lightning.run_lock import RunLockCallback
from hf_lightning.safe_load import read_checkpoint_header

__all__ = ["HFLightningCLI", "OneLineErrorParser", "check_tags_fit_model", "cli_kwargs", "main", "run_cli"]

DESCRIPTION = (
    "Fine-tune and evaluate Hugging Face transformers (a model name, local folder or config dict) on "
    "PyTorch Lightning from YAML configs (subcommands below; hf-lightning tune --config X.yaml runs a "
    "hyperparameter sweep on Ray Tune). "
    "Start with: hf-lightning fit --config configs/quickstart.yaml"
)

# Links: source on the data module -> target on the model. Targets are filled at instantiation;
# writing them in YAML would be silently overridden, so we refuse it (see _check_link_targets).
LINKS = {
    "data.num_labels": "model.num_labels",
    "data.id2label": "model.id2label",
    "data.vocab_size": "model.vocab_size",
    "data.pad_token_id": "model.pad_token_id",
}


def one_line(message: str) -> str:
    """Collapse a jsonargparse message (often several indented lines) into one readable line."""
    lines = [ln.strip(" -") for ln in str(message).splitlines() if ln.strip()]
    text = " ".join(lines)
    text = re.sub(r"\s+", " ", text)
    return text[:400]


class OneLineErrorParser(LightningArgumentParser):
    """A parser whose user-facing errors are one line; internal (non-exiting) parsing is unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # else --trainer.max_epoch is silently accepted
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        sys.stderr.write(f"error: {with_fix(one_line(message))}\n")
        sys.exit(2)


def with_fix(message: str) -> str:
    """Append the usual fix to jsonargparse's messages, which name the key but not the remedy."""
    if "Fix:" in message:
        return message
    if message.startswith("unrecognized arguments"):
        return f"{message}. Fix: check the key's spelling; 'hf-lightning fit --help' lists every key"
    if "Expected a" in message or "Does not validate" in message:
        return f"{message}. Fix: give a value of the expected type"
    return f"{message}. Fix: see 'hf-lightning fit --help'"


class HFLightningCLI(LightningCLI):
    """LightningCLI for HFLightningModule + HFDataModule.

    With ``--ray.num_workers`` (or a ``ray:`` section) ``fit`` runs as a Ray Train job instead: the
    driver parses and checks the config, then every Ray worker builds these same objects from the
    same arguments (:mod:`hf_lightning.ray_train`). Without it Ray is never imported.
    """

    launches_ray_jobs = True  # False in the Ray workers themselves
    ray_result: Any = None  # the finished job's RayRunResult, when this CLI started one

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")
        self._cli_args = list(sys.argv[1:]) if given is None else given
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.task", "data.task")
        for source, target in LINKS.items():
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_class_arguments(RayOptions, "ray", help="Run fit as a Ray Train job (see RayOptions)")

    def before_instantiate_classes(self) -> None:
        self._check_link_targets()
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        options = RayOptions(**config["ray"].as_dict()) if config is not None and config.get("ray") else RayOptions()
        if options.requested and self.launches_ray_jobs:
            if self.subcommand != "fit":
                raise ConfigError("ray.num_workers", f"runs 'fit' only, not {self.subcommand!r}",
                                  f"drop the --ray options to {self.subcommand} here")
            from hf_lightning.ray_train.job import run_cli_job

            self.ray_result = run_cli_job(self._cli_args, options)

    def _check_link_targets(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        model = config.get("model") if config is not None else None
        for source, target in LINKS.items():
            key = target.split(".", 1)[1]
            if model is not None and model.get(key) is not None:
                raise ConfigError(
                    target,
                    f"is filled from {source} and cannot be set in the config",
                    f"remove {target}; set the data module's labels/tokenizer instead",
                )
        data = config.get("data") if config is not None else None
        if model is not None and data is not None and data.get("task") not in (None, model.get("task")):
            raise ConfigError("data.task", "is linked from model.task", "set model.task only")

    def instantiate_classes(self) -> None:
        if self.ray_result is not None:
            return  # the Ray workers built and trained everything
        try:
            super().instantiate_classes()
            check_tags_fit_model(self.datamodule, self.model)
        except ConfigError as err:
            _exit_one_line(str(err))

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyperparameters while parsing. Done here instead, in one read that
        # validates the file too: weights_only=True (a pickle payload is refused, never run) and memory-mapped
        # (only the keys and hyperparameters are read, not the tensors).
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand or "", None)
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if not subcommand or not isinstance(ckpt_path, str) or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        try:
            hparams = dict(check_checkpoint_file(ckpt_path).get("hyper_parameters") or {})
        except ConfigError as err:
            _exit_one_line(str(err))
        linked = [target.split(".", 1)[1] for target in LINKS.values()]
        model = config.get("model")
        user_set = {key for key in linked if model is not None and model.get(key) is not None}
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:  # as LightningCLI._parse_ckpt_path
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        # The checkpoint's hyperparameters include the linked values (num_labels, id2label, ...); they are
        # filled again from the data module at instantiation, so they must not count as user-set targets.
        model = self.config[subcommand].get("model")
        for key in linked:
            if model is not None and key not in user_set and model.get(key) is not None:
                model[key] = None

    def _run_subcommand(self, subcommand: str) -> None:
        if self.ray_result is not None:
            return
        try:
            super()._run_subcommand(subcommand)
        except ConfigError as err:
            _exit_one_line(str(err))
        except CheckpointWriteError as err:  # disk full mid-save: the earlier checkpoints are intact
            sys.stderr.write(f"error: {err}\n")  # already one line; not cut, the fix is at its end
            sys.exit(1)


def check_checkpoint_file(path: str) -> dict[str, Any]:
    """Refuse a missing, corrupt or code-carrying ``--ckpt_path`` before the model and data are built.

    Returns the checkpoint's top-level dict with its tensors memory-mapped (read on first use only).
    """
    from pathlib import Path

    if not Path(path).expanduser().is_file():
        raise ConfigError("ckpt_path", f"{path!r} does not exist", "pass an existing .ckpt file (or 'last')")
    return read_checkpoint_header(path, field="ckpt_path")


def check_tags_fit_model(datamodule: Any, model: Any) -> None:
    """Refuse a multi-task model whose token head does not match the data's tag set.

    ``num_ner_labels`` lives inside the model's config dict, where no link can reach it, so a
    mismatch would otherwise surface mid-training as an index error inside cross-entropy.
    """
    tags = getattr(datamodule, "tag_names", None)
    config = getattr(getattr(model, "model", None), "config", None)
    heads = getattr(config, "num_ner_labels", None)
    if tags is None or heads is None or heads == len(tags):
        return
    raise ConfigError(
        "model.model.num_ner_labels",
        f"is {heads} but data.tag_column has {len(tags)} tags {tags[:10]}",
        f"set num_ner_labels: {len(tags)}",
    )


def _exit_one_line(message: str) -> NoReturn:
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.exit(2)


def main(args: list[str] | None = None) -> None:
    """Console entry point (``hf-lightning``, ``python -m hf_lightning``)."""
    # At exit the interpreter's last garbage collections walk every object that torch, transformers and
    # Lightning created: 2 s of the quickstart's 26 s. Freezing them (run after every other exit
    # handler) skips that walk; memory goes back to the system with the process anyway.
    atexit.register(gc.freeze)
    run_cli(args)


def run_cli(args: list[str] | None = None, cli_class: type[HFLightningCLI] = HFLightningCLI) -> HFLightningCLI | None:
    """Build and run the CLI; returns it so tests and notebooks can inspect the trainer and model.

    ``cli_class`` is how a Ray worker builds the same CLI with Ray's strategy and report callback.
    """
    show_info_by_default()  # an application: the package's information shows, as Lightning's own does
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["tune"]:  # sweeps: a fit config plus a tune: section, run on Ray Tune
        from hf_lightning.tune.cli import main as tune_main

        tune_main(argv[1:])
        return None
    try:
        return cli_class(**cli_kwargs(args))
    except ConfigError as err:
        _exit_one_line(str(err))


def cli_kwargs(args: list[str] | None) -> dict[str, Any]:
    """The CLI's construction arguments (``fit`` and each sweep trial build the same objects from them)."""
    return dict(
        model_class=HFLightningModule,
        datamodule_class=HFDataModule,
        trainer_defaults={
            # The sampler splits data by rank itself and remembers its position for exact resume.
            "use_distributed_sampler": False,
            # Exact mid-epoch resume, a checkpoint on SIGTERM/Ctrl-C, and checkpoint files that a
            # killed process can never leave half-written.
            # One run per default_root_dir at a time (a second is refused in one line).
            "callbacks": [RunLockCallback(), HFExportCallback(), ExactResumeCallback(), PreemptionCheckpoint(), RunSummary()],
            "plugins": [{"class_path": "hf_lightning.checkpoint_io_plugin.AtomicCheckpointIO"}],
        },
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_class=OneLineErrorParser,
        parser_kwargs={"prog": "hf-lightning", "description": DESCRIPTION},
        args=args,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
