"""The one place that touches Lightning's private state. Checked against Lightning 2.6 (2.6.6).

Exact resume, HF's event order and token-exact accumulation need a few things Lightning keeps to
itself: whether the current micro-batch closes an accumulation window, how far the training loop is
into its epoch, its data fetcher, the logger connector's cadence, the SIGTERM flag, the sampler that
Lightning's ``DistributedSamplerWrapper`` hides, and the layout of the loop state in a checkpoint
(plus the private ``LightningCLI`` methods that ``cli.py`` overrides, :data:`CLI_OVERRIDES`).
Every such access lives here, so a Lightning upgrade is checked in one file:
``tests/test_lightning_compat.py`` runs :func:`missing_private_api` on the installed Lightning and
names whatever moved. pyproject pins ``lightning>=2.6,<2.7`` (:data:`CHECKED_VERSIONS`).

Where a missing attribute can only mean another Lightning, the accessors raise a
:class:`LightningCompatError` naming the attribute and the checked range instead of an
``AttributeError`` deep inside a hook.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import lightning
import lightning.pytorch as pl

__all__ = [
    "CHECKED_VERSIONS",
    "CLI_OVERRIDES",
    "NON_RESUMABLE_WARNING",
    "LightningCompatError",
    "at_window_end",
    "attached_trainer",
    "consumed_batches",
    "logs_this_step",
    "loop_state_after_step",
    "missing_private_api",
    "request_graceful_stop",
    "restart_train_iterator",
    "restart_epoch_end_as_next_epoch",
    "sampler_inside_wrapper",
]

#: The Lightning versions these accesses were checked against (the pin in pyproject.toml).
CHECKED_VERSIONS = ">=2.6,<2.7"

#: Lightning 2.6 ``training_epoch_loop.reset()`` warns with this when resuming mid-epoch with a loader that
#: has no ``state_dict``; ``ExactResumeCallback`` restores the position itself and silences it (regex).
NON_RESUMABLE_WARNING = re.escape(
    "You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable"
)


class LightningCompatError(RuntimeError):
    """Lightning no longer has private state that hf_lightning relies on."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"lightning {lightning.__version__} has no {what}; hf_lightning was checked against lightning"
            f"{CHECKED_VERSIONS}. Fix: install lightning{CHECKED_VERSIONS}"
        )


def _get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise LightningCompatError(f"{type(obj).__name__}.{name} (needed: {path})") from None
    return obj


# ---------------------------------------------------------------------------- accumulation and logging


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The Lightning trainer driving ``module``, or None (``module.trainer`` raises when detached)."""
    return _get(module, "_trainer")


def at_window_end(trainer: pl.Trainer) -> bool:
    """True when the current micro-batch closes an accumulation window (an optimizer step follows).

    Lightning's own answer: every ``accumulate_grad_batches`` batches and at an epoch's last batch
    (except under strategies that accumulate themselves, DeepSpeed).
    """
    return not _get(trainer, "fit_loop._should_accumulate")()


def logs_this_step(trainer: pl.Trainer) -> bool:
    """True on the steps whose values Lightning passes to its loggers (``log_every_n_steps``)."""
    return bool(_get(trainer, "_logger_connector.should_update_logs"))


# ---------------------------------------------------------------------------- exact resume


def consumed_batches(trainer: pl.Trainer) -> int:
    """Batches of the current epoch already handed to the model on this rank.

    Between ``set_epoch`` of a new epoch and the epoch loop's reset (``on_train_epoch_start``) the
    batch counter still shows the previous, finished epoch; the new one has consumed nothing yet.
    """
    epoch_progress = _get(trainer, "fit_loop.epoch_progress.current")
    if epoch_progress.ready > epoch_progress.started:
        return 0
    return int(_get(trainer, "fit_loop.epoch_loop.batch_progress.current.ready"))


def restart_train_iterator(trainer: pl.Trainer) -> None:
    """Recreate the training data iterator (Lightning creates it in ``setup_data``, before any hook)."""
    fetcher = _get(trainer, "fit_loop._data_fetcher")
    if fetcher is not None:
        iter(fetcher)


def sampler_inside_wrapper(sampler: Any) -> Any:
    """The sampler that Lightning's ``DistributedSamplerWrapper`` wraps (``use_distributed_sampler=True``), else None."""
    return getattr(getattr(sampler, "dataset", None), "_sampler", None)


def _zero_current_counters(state: Any) -> None:
    """Set every ``current`` (per-epoch) progress counter in a loop's saved state to 0, in place."""
    if isinstance(state, dict):
        for key, value in state.items():
            if key == "current" and isinstance(value, dict):
                for counter in value:
                    value[counter] = 0
            else:
                _zero_current_counters(value)


def restart_epoch_end_as_next_epoch(checkpoint: dict[str, Any]) -> bool:
    """Rewrite the loop state of a checkpoint taken after an epoch's last batch into "next epoch, nothing done".

    Why: with ``max_steps`` set, Lightning 2.6 treats every resume as a restart. From a checkpoint
    written in ``on_train_epoch_end`` (or after it, by a SIGTERM) it then replays the epoch end,
    increments ``epoch_progress.processed`` a second time and calls ``set_epoch`` with one epoch too
    many from then on; without validation it even trains one extra batch. With ``max_epochs`` it
    instead starts the next epoch cleanly: the state written here is that clean start (the epoch
    completed, the per-epoch batch, optimizer and scheduler counters at 0). Returns whether it
    changed anything. Only the training loop's own counters are touched; totals stay as saved.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not isinstance(fit, dict) or "epoch_progress" not in fit:
        return False
    current, total = fit["epoch_progress"]["current"], fit["epoch_progress"]["total"]
    trained = current["ready"] == current["started"] == current["processed"] > 0
    if not trained or current["completed"] not in (current["processed"] - 1, current["processed"]):
        return False
    current["completed"] = current["processed"]
    total["completed"] = total["processed"]
    for key, value in fit.items():
        if key.startswith("epoch_loop.") and not key.startswith("epoch_loop.val_loop."):
            _zero_current_counters(value)
            if isinstance(value, dict) and "is_last_batch" in value:
                value["is_last_batch"] = False
    return True


def _set_counters(progress: dict[str, Any], total: int, current: int, done_lags: bool = False) -> None:
    """Fill one saved progress entry: every counter ``total``/``current`` (``completed`` one less if it lags)."""
    for scope, value in (("total", total), ("current", current)):
        for counter in progress[scope]:
            progress[scope][counter] = value - 1 if done_lags and counter == "completed" else value


def loop_state_after_step(template: dict[str, Any], *, epoch: int, batches_in_epoch: int, batches_before: int,
                          steps: int, steps_before_epoch: int, last_batch: bool) -> dict[str, Any]:
    """The fit loop's saved state as Lightning 2.6 writes it in ``on_train_batch_end`` right after an optimizer step.

    For resuming a checkpoint that another trainer wrote (transformers'), which has no loop state:
    ``template`` is a fresh ``fit_loop.state_dict()``; ``epoch`` the 0-based epoch of that batch,
    ``batches_in_epoch`` the batches of it already run, ``batches_before`` those of earlier epochs,
    ``steps`` the optimizer steps in all, ``steps_before_epoch`` those of earlier epochs, ``last_batch``
    whether the epoch's last batch was run. The layout was read off real checkpoints (a test compares
    it with one): the batch's ``completed`` counter still lags by one, the epoch is started, not done.
    """
    import copy

    state = copy.deepcopy(template)
    batches = state["epoch_loop.batch_progress"]
    _set_counters(batches, batches_before + batches_in_epoch, batches_in_epoch, done_lags=True)
    batches["is_last_batch"] = last_batch
    _set_counters(state["epoch_loop.scheduler_progress"], steps, steps - steps_before_epoch)
    optim = state["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    _set_counters(optim["step"], steps, steps - steps_before_epoch)
    _set_counters(optim["zero_grad"], steps, steps - steps_before_epoch)
    state["epoch_loop.state_dict"] = {**state.get("epoch_loop.state_dict", {}), "_batches_that_stepped": steps - 1}
    epochs = state["epoch_progress"]
    for scope in ("total", "current"):
        epochs[scope].update(ready=epoch + 1, started=epoch + 1, processed=epoch, completed=epoch)
    return state


# ---------------------------------------------------------------------------- preemption


def request_graceful_stop(trainer: pl.Trainer | None) -> None:
    """Ask the loops to stop at their next safe point, as Lightning's own SIGTERM handler does.

    Without the connector's flag (another Lightning) a SIGTERM to this process does the same through
    Lightning's public SIGTERM handling.
    """
    connector = getattr(trainer, "_signal_connector", None)
    if connector is not None and hasattr(connector, "received_sigterm"):
        connector.received_sigterm = True
    else:
        os.kill(os.getpid(), signal.SIGTERM)


# ---------------------------------------------------------------------------- the check


#: Private ``LightningCLI`` methods that ``hf_lightning.cli`` overrides (a rename would silently skip them).
CLI_OVERRIDES = ("_parse_ckpt_path", "_run_subcommand")


def missing_private_api(trainer: pl.Trainer) -> list[str]:
    """What hf_lightning needs and this Lightning lacks; empty when all is there.

    ``trainer`` must be fitting (call it from a training hook), so that the loops hold their state.
    """
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from lightning.pytorch.cli import LightningCLI

    needs = [
        "fit_loop._should_accumulate",
        "fit_loop._data_fetcher",
        "fit_loop.epoch_progress.current.ready",
        "fit_loop.epoch_progress.current.started",
        "fit_loop.epoch_loop.batch_progress.current.ready",
        "_logger_connector.should_update_logs",
        "_signal_connector.received_sigterm",
    ]
    missing = [f"LightningCLI.{name}" for name in CLI_OVERRIDES if not callable(getattr(LightningCLI, name, None))]
    for path in needs:
        try:
            _get(trainer, path)
        except LightningCompatError:
            missing.append(f"Trainer.{path}")
    if "_trainer" not in vars(trainer.lightning_module):
        missing.append("LightningModule._trainer")
    wrapped = DistributedSamplerWrapper([0, 1], num_replicas=1, rank=0)
    if sampler_inside_wrapper(wrapped) != [0, 1]:
        missing.append("DistributedSamplerWrapper.dataset._sampler")
    saved = trainer.fit_loop.state_dict()
    if "epoch_progress" not in saved or not any(k.startswith("epoch_loop.") for k in saved):
        missing.append("fit_loop.state_dict() keys 'epoch_progress' and 'epoch_loop.*'")
    return missing
