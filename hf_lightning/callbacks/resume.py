"""Bit-exact mid-epoch resume for Lightning: data position, RNG streams and a half-finished accumulation window.

A Lightning checkpoint holds weights, optimizer, scheduler and loop counters. Three more things decide
what the next optimizer step computes, and Lightning saves none of them:

* **where in the epoch's data order the run stopped.** The loops know how many batches of the epoch
  were consumed, but a plain ``DataLoader`` restarts the epoch from its first sample. A
  :class:`~hf_lightning.sampler.ResumableSampler` can skip the consumed samples; this callback tells
  it how many (``batch_progress.current.ready * batch_size``) and on resume rebuilds the loader
  iterator after the skip is set, because Lightning creates the iterator (and DataLoader workers start
  pulling indices) in ``setup_data``, before any hook can reach the freshly built sampler.
* **every process' random number generators**, so dropout masks and random collators continue the
  original streams. Each rank has its own generators; all ranks' snapshots are gathered into the
  checkpoint (only rank 0 writes it) and each rank gets its own back in ``on_train_start``: anything
  earlier is wrong, because model set-up and DataLoader iterator creation draw random numbers between
  checkpoint restore and the first batch that the original run did not draw at that point.
* **a half-accumulated gradient window.** A checkpoint taken between two micro-batches of one
  optimizer step (a preemption can land anywhere) would lose the gradients already accumulated and
  the module's per-window item count, so the step after resume would use only part of the window. Both
  are saved per rank when, and only when, the checkpoint is taken mid-window.

The state lives under the top-level checkpoint key :data:`STATE_KEY`, built only from types that
``torch.load(weights_only=True)`` accepts. Lightning's "your dataloader is not resumable" warning is
silenced for the resumes this callback makes exact, and only for those.

Known limits: randomness inside DataLoader *worker* processes (e.g. masked-LM masking with
``num_workers > 0``) cannot continue mid-epoch, as the workers' own generators are not checkpointable;
it is exact again from the next epoch boundary (worker seeds come from the loader's generator, whose
state is saved), but not with ``persistent_workers=True``. Callbacks whose ``on_train_start`` runs
after this one and draws random numbers shift the stream; put such callbacks first.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader

from hf_lightning.errors import ConfigError
from hf_lightning.lightning_compat import (
    NON_RESUMABLE_WARNING,
    consumed_batches,
    restart_epoch_end_as_next_epoch,
    restart_train_iterator,
    sampler_inside_wrapper,
)
from hf_lightning.module import HFLightningModule
from hf_lightning.rng import capture_rng_state, restore_rng_state
from hf_lightning.sampler import ResumableSampler

__all__ = ["STATE_KEY", "STATE_VERSION", "ExactResumeCallback", "find_resumable_loader"]

#: Top-level checkpoint key holding this callback's state.
STATE_KEY = "hf_lightning_exact_resume"
#: Layout version of that state (a checkpoint built elsewhere, e.g. from transformers' files, writes it too).
STATE_VERSION = 1
_STATE_VERSION = STATE_VERSION


# ---------------------------------------------------------------------------- finding the sampler


def _flatten_loaders(obj: Any) -> Iterator[Any]:
    """Yield every leaf of what ``trainer.train_dataloader`` returns (a loader, CombinedLoader, list or dict)."""
    if isinstance(obj, CombinedLoader):
        yield from (leaf for item in obj.flattened for leaf in _flatten_loaders(item))
    elif isinstance(obj, Mapping):
        yield from (leaf for item in obj.values() for leaf in _flatten_loaders(item))
    elif isinstance(obj, (list, tuple)):
        yield from (leaf for item in obj for leaf in _flatten_loaders(item))
    elif obj is not None:
        yield obj


def _samplers_of(loader: Any) -> list[Any]:
    """The loader's sampler and its batch sampler's sampler (either may carry the ResumableSampler)."""
    found = [getattr(loader, "sampler", None)]
    batch_sampler = getattr(loader, "batch_sampler", None)
    found.append(getattr(batch_sampler, "sampler", None))
    return [s for s in found if s is not None]


def _wrapped_resumable(sampler: Any) -> bool:
    """True if Lightning's DistributedSamplerWrapper hides a ResumableSampler (use_distributed_sampler=True)."""
    return isinstance(sampler_inside_wrapper(sampler), ResumableSampler)


def find_resumable_loader(trainer: pl.Trainer) -> tuple[DataLoader, ResumableSampler, int] | None:
    """The training DataLoader driven by a ResumableSampler, that sampler, and the per-rank batch size.

    Looks through ``trainer.train_dataloader`` (Lightning wraps whatever ``train_dataloader()``
    returned in a ``CombinedLoader`` and exposes its ``iterables``). Returns None when there is no
    such loader. Raises ConfigError when Lightning wrapped the sampler in a ``DistributedSampler``,
    which would split the already per-rank order a second time, and when several training loaders
    have one, because their consumed counts differ under ``max_size_cycle`` and cannot be derived
    from the loop's batch count.
    """
    hits: list[tuple[DataLoader, ResumableSampler, int]] = []
    for loader in _flatten_loaders(trainer.train_dataloader):
        samplers = _samplers_of(loader)
        resumable = [s for s in samplers if isinstance(s, ResumableSampler)]
        if not resumable:
            if any(_wrapped_resumable(s) for s in samplers):
                raise ConfigError(
                    "use_distributed_sampler",
                    "Lightning wrapped the ResumableSampler in a DistributedSampler, which splits the data by "
                    "rank a second time",
                    "pass Trainer(use_distributed_sampler=False); the ResumableSampler splits by rank itself",
                )
            continue
        batch_size = getattr(loader, "batch_size", None)
        if batch_size is None:
            batch_size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(
                "train_dataloader",
                "the DataLoader with the ResumableSampler has no fixed batch size, so consumed samples are unknown",
                "build it with DataLoader(..., batch_size=N, sampler=ResumableSampler(...))",
            )
        hits.append((loader, resumable[0], batch_size))
    if len(hits) > 1:
        raise ConfigError(
            "train_dataloader",
            f"{len(hits)} training DataLoaders use a ResumableSampler; ExactResumeCallback supports one",
            "train on a single DataLoader, or remove ExactResumeCallback and resume at epoch boundaries",
        )
    return hits[0] if hits else None


# ---------------------------------------------------------------------------- small helpers


def _generator_state(loader: DataLoader) -> bytes | None:
    generator = getattr(loader, "generator", None)
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        return None
    return bytes(generator.get_state().numpy().tobytes())


def _set_generator_state(loader: DataLoader, state: bytes | None) -> None:
    generator = getattr(loader, "generator", None)
    if state is None or not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        return
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8).clone())


def _is_mid_window(trainer: pl.Trainer, pl_module: pl.LightningModule, ready: int) -> bool:
    """True when some micro-batches of an unfinished accumulation window have already run backward.

    Lightning steps after every ``accumulate_grad_batches`` ready batches and after the epoch's last
    batch, and zeroes gradients at the first batch of the next window; anything else is mid-window.
    """
    if not pl_module.automatic_optimization or trainer.accumulate_grad_batches <= 1 or ready <= 0:
        return False
    return ready % trainer.accumulate_grad_batches != 0 and ready < trainer.num_training_batches


def _local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly distributed) tensor, detached and copied to CPU."""
    to_local = getattr(tensor, "to_local", None)
    if callable(to_local):
        tensor = to_local()
    return tensor.detach().to("cpu", copy=True)


def _gather_per_rank(trainer: pl.Trainer, local: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``local`` in rank order; a collective, so every rank must be saving (Lightning's rule)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        return gathered
    return [local]


# ---------------------------------------------------------------------------- the callback


class ExactResumeCallback(pl.Callback):
    """Save and restore what a bit-exact mid-epoch resume needs beyond Lightning's own checkpoint.

    Use with ``Trainer(use_distributed_sampler=False)`` and a training DataLoader whose sampler is a
    :class:`~hf_lightning.sampler.ResumableSampler` with its own ``generator`` (what
    :func:`hf_lightning.data.build_dataloader` builds), then resume with ``trainer.fit(...,
    ckpt_path=...)``. Without a ResumableSampler the RNG and accumulation state are still restored,
    and the data order is whatever the loader does (Lightning warns about that, as usual).

    After a restore, :attr:`restored` describes what was put back (for logs and tests).
    """

    def __init__(self, skip_consumed: bool = True) -> None:
        # False is HF's ignore_data_skip: the resumed epoch starts from its first batch (faster, not exact).
        self.skip_consumed = skip_consumed
        self._pending: dict[str, Any] | None = None
        self._warning_filter: tuple[Any, ...] | None = None
        self.restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ save

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Add the data position, every rank's RNG snapshot and, mid-window, every rank's partial gradients."""
        ready = consumed_batches(trainer)
        data: dict[str, Any] | None = None
        found = find_resumable_loader(trainer)
        if found is not None:
            loader, sampler, batch_size = found
            total = trainer.num_training_batches
            finished = total != float("inf") and ready >= total
            data = {
                "sampler": sampler.state_dict(ready * batch_size, epoch_finished=finished),
                "generator": _generator_state(loader),
            }
        mid_window = _is_mid_window(trainer, pl_module, ready)
        local: dict[str, Any] = {"rng": capture_rng_state(), "window": None, "grads": None}
        if isinstance(pl_module, HFLightningModule):
            local["window"] = pl_module.train_window.state_dict()
        if mid_window:
            local["grads"] = {
                name: _local_tensor(p.grad) for name, p in pl_module.named_parameters() if p.grad is not None
            }
        checkpoint[STATE_KEY] = {
            "version": _STATE_VERSION,
            "world_size": trainer.world_size,
            "mid_window": mid_window,
            "data": data,
            "ranks": _gather_per_rank(trainer, local),
        }

    # ------------------------------------------------------------------ load

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Keep the saved state aside: the training DataLoader does not exist yet (see the module docstring)."""
        state = checkpoint.get(STATE_KEY)
        if state is None:
            self._pending = None
            return
        if state.get("version") != _STATE_VERSION:
            raise ConfigError(
                "ckpt_path",
                f"the exact-resume state has version {state.get('version')!r}, this hf_lightning reads "
                f"{_STATE_VERSION}",
                "resume with the hf_lightning version that wrote the checkpoint",
            )
        self._pending = state
        if trainer.max_steps != -1:
            restart_epoch_end_as_next_epoch(checkpoint)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply the pending state: data position first, then gradients, then the RNGs, last of all.

        Also looks for the ResumableSampler on fresh runs, so that a set-up which could not resume
        exactly (a sampler wrapped by Lightning) fails now rather than at the first checkpoint.
        """
        state, self._pending = self._pending, None
        if state is None:
            find_resumable_loader(trainer)
            return
        restored: dict[str, Any] = {"data": False, "rng": False, "grads": 0, "window": False}
        data = state.get("data")
        if data is not None:
            restored["data"] = self._restore_data(trainer, data)

        ranks = state.get("ranks") or []
        if len(ranks) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint was written by {len(ranks)} process(es) and this run has {trainer.world_size}; "
                "random number generators and partial gradients are not restored, so the resume is not exact"
            )
        else:
            mine = ranks[trainer.global_rank]
            restored["window"] = self._restore_window(pl_module, mine.get("window"))
            if state.get("mid_window") and mine.get("grads") is not None:
                restored["grads"] = self._restore_grads(pl_module, mine["grads"])
            restore_rng_state(mine["rng"])
            restored["rng"] = True
        self.restored = restored

    def _restore_data(self, trainer: pl.Trainer, data: dict[str, Any]) -> bool:
        found = find_resumable_loader(trainer)
        if found is None:
            rank_zero_warn(
                "the checkpoint holds a ResumableSampler position but this run's training DataLoader has no "
                "ResumableSampler; the epoch restarts from its first batch, so the resume is not exact"
            )
            return False
        loader, sampler, _batch_size = found
        position = data["sampler"] if self.skip_consumed else {**data["sampler"], "consumed_on_this_rank": 0}
        sampler.load_state_dict(position)
        # The loader's generator seeds DataLoader workers once per iterator. The saved state follows the
        # original run's draw for the checkpointed epoch: at an epoch boundary the iterator we are about
        # to create *is* that draw; mid-epoch it was drawn already and we only keep later epochs aligned.
        at_epoch_start = sampler.pending_skip == 0
        if at_epoch_start:
            _set_generator_state(loader, data.get("generator"))
        restart_train_iterator(trainer)  # Lightning's iterator was created before the skip was known
        if not at_epoch_start:
            _set_generator_state(loader, data.get("generator"))
        self._silence_non_resumable_warning()
        return True

    @staticmethod
    def _restore_window(pl_module: pl.LightningModule, window_state: dict[str, Any] | None) -> bool:
        if not isinstance(pl_module, HFLightningModule) or window_state is None:
            return False
        pl_module.train_window.load_state_dict(window_state)
        return True

    @staticmethod
    def _restore_grads(pl_module: pl.LightningModule, grads: dict[str, torch.Tensor]) -> int:
        params = dict(pl_module.named_parameters())
        missing = sorted(set(grads) - set(params))
        if missing:
            raise ConfigError(
                "ckpt_path",
                f"the checkpoint has partial gradients for parameters this model lacks ({missing[:3]} ...)",
                "resume with the same model architecture that wrote the checkpoint",
            )
        with torch.no_grad():
            for name, grad in grads.items():
                param = params[name]
                if callable(getattr(param, "to_local", None)):
                    raise ConfigError(
                        "ckpt_path",
                        "the checkpoint was taken in the middle of an accumulation window of a sharded model",
                        "resume from a checkpoint taken right after an optimizer step",
                    )
                if tuple(param.shape) != tuple(grad.shape):
                    raise ConfigError(
                        "ckpt_path",
                        f"the saved gradient of {name} has shape {tuple(grad.shape)}, the parameter "
                        f"{tuple(param.shape)}",
                        "resume with the same model and number of devices that wrote the checkpoint",
                    )
                param.grad = grad.to(device=param.device, dtype=param.dtype).clone()
        return len(grads)

    # ------------------------------------------------------------------ the warning filter

    def _silence_non_resumable_warning(self) -> None:
        """Ignore Lightning's non-resumable-loader warning until the first batch; it fires in between."""
        if self._warning_filter is not None:
            return
        warnings.filterwarnings("ignore", message=NON_RESUMABLE_WARNING, category=PossibleUserWarning)
        self._warning_filter = warnings.filters[0]

    def _drop_warning_filter(self) -> None:
        entry, self._warning_filter = self._warning_filter, None
        if entry is not None:
            with contextlib.suppress(ValueError):
                warnings.filters.remove(entry)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._drop_warning_filter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drop_warning_filter()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._drop_warning_filter()
