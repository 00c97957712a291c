"""Bit-exact mid-epoch resume: a run resumed from any checkpoint ends with the uninterrupted run's weights.

The set-up has every ingredient that breaks a naive resume: a tiny BERT with dropout (global RNG),
shuffled data (data order), ``accumulate_grad_batches=2`` with a short last window per epoch (partial
gradients, the module's token-exact window), linear warmup (scheduler position) and several epochs.
24 rows in batches of 5 give 5 batches and 3 optimizer steps per epoch; 8 steps span 3 epochs.

Checkpoints are taken at every optimizer step (Lightning's ModelCheckpoint), in the middle of an
accumulation window and at ``on_train_epoch_end`` (a small callback), and every one of them must resume
to weights that are *equal*, not close. A control run without ExactResumeCallback shows the comparison
can fail. The DDP variant runs this module as a script, because Lightning's subprocess launcher starts
the other rank by re-running the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from hf_lightning.callbacks.resume import STATE_KEY, ExactResumeCallback
from hf_lightning.data import HFDataModule
from hf_lightning.errors import ConfigError
from hf_lightning.module import HFLightningModule
from hf_lightning.sampler import ResumableSampler
from tests.conftest import REPO, TINY_MODELS

__all__: list[str] = []

MAX_STEPS = 8
BATCH_SIZE = 5
ACCUMULATE = 2
STEPS_PER_EPOCH = 3  # 24 rows / 5 = 5 batches: windows [0, 1] [2, 3] [4]


class SaveAt(pl.Callback):
    """Save extra checkpoints where ModelCheckpoint never does: mid-window batches and epoch ends.

    ``batches`` holds ``(epoch, batch_idx)`` pairs saved at ``on_train_batch_end``; ``epoch_ends`` the
    epochs saved at ``on_train_epoch_end``.
    """

    def __init__(self, dirpath: Path, batches: tuple[tuple[int, int], ...] = (), epoch_ends: tuple[int, ...] = ()):
        self.dirpath = Path(dirpath)
        self.batches = {tuple(b) for b in batches}
        self.epoch_ends = set(epoch_ends)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) in self.batches:
            trainer.save_checkpoint(self.dirpath / f"batch-e{trainer.current_epoch}-b{batch_idx}.ckpt")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch in self.epoch_ends:
            trainer.save_checkpoint(self.dirpath / f"epochend-e{trainer.current_epoch}.ckpt")


def train(
    root: Path,
    data_files: dict[str, str],
    tokenizer: str,
    *,
    ckpt_path: str | Path | None = None,
    exact: bool = True,
    save_batches: tuple[tuple[int, int], ...] = (),
    save_epoch_ends: tuple[int, ...] = (),
    num_workers: int = 0,
    devices: int = 1,
    strategy: str = "auto",
    task: str = "sequence-classification",
    data_seed: int = 7,
    max_steps: int = MAX_STEPS,
    max_epochs: int | None = None,
    limit_val_batches: int = 0,
    every_n_epochs: int | None = None,
) -> dict[str, torch.Tensor] | None:
    """Train (or resume) the tiny dropout BERT for MAX_STEPS steps; return the final weights on rank 0.

    Checkpoints go to ``root / "ckpt"``: one per optimizer step (``step=N.ckpt``) plus the extra
    ``SaveAt`` points. The seed is set before the model is built, so a resumed run starts from a
    *different* RNG state than the checkpointed one and only a correct restore can make it exact.
    """
    pl.seed_everything(1234 if ckpt_path is None else 99, verbose=False)
    data_kwargs: dict[str, Any] = {"label_column": "label"} if task == "sequence-classification" else {}
    data = HFDataModule(dataset="json", data_files=data_files, tokenizer=tokenizer, task=task, batch_size=BATCH_SIZE,
                        max_length=16, num_workers=num_workers, seed=data_seed, **data_kwargs)
    model = {**TINY_MODELS["bert"], "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    module = HFLightningModule(model=model, task=task, num_labels=data.num_labels, id2label=data.id2label,
                               vocab_size=data.vocab_size, pad_token_id=data.pad_token_id, learning_rate=5e-3,
                               warmup_steps=2, lr_scheduler_type="linear")
    ckpt_dir = Path(root) / "ckpt"
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", save_top_k=-1,
                        **({"every_n_epochs": every_n_epochs} if every_n_epochs else {"every_n_train_steps": 1})),
        SaveAt(ckpt_dir, save_batches, save_epoch_ends),
    ]
    if exact:
        callbacks.insert(0, ExactResumeCallback())
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=max_steps, max_epochs=max_epochs,
        accumulate_grad_batches=ACCUMULATE, use_distributed_sampler=False, limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, callbacks=callbacks,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    assert trainer.global_step == (max_steps if max_steps > 0 else max_epochs * STEPS_PER_EPOCH)
    if not trainer.is_global_zero:
        return None
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# ---------------------------------------------------------------------------- single process

# Checkpoint name -> where it was taken (5 batches = windows [0,1] [2,3] [4] per epoch).
RESUME_POINTS = {
    "step=1.ckpt": "epoch 0 after batch 1, mid-epoch at a window boundary",
    "step=3.ckpt": "epoch 0 after its last batch (a short window)",
    "step=5.ckpt": "epoch 1 after batch 3",
    "step=7.ckpt": "epoch 2 after batch 1",
    "batch-e0-b2.ckpt": "epoch 0 after batch 2, in the middle of an accumulation window",
    "batch-e1-b0.ckpt": "epoch 1 after batch 0, in the middle of an accumulation window",
    "batch-e1-b4.ckpt": "epoch 1 after its last batch, saved by a plain callback",
    "epochend-e0.ckpt": "on_train_epoch_end of epoch 0",
    "epochend-e1.ckpt": "on_train_epoch_end of epoch 1",
}
MID_WINDOW = {"batch-e0-b2.ckpt", "batch-e1-b0.ckpt"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, task_files, demo_assets) -> dict[str, Any]:
    """The uninterrupted run, with its checkpoints."""
    root = tmp_path_factory.mktemp("reference")
    weights = train(root, task_files["cls"], demo_assets["tokenizer"], save_batches=((0, 2), (1, 0), (1, 4)),
                    save_epoch_ends=(0, 1))
    return {"root": root, "weights": weights, "files": task_files["cls"], "tokenizer": demo_assets["tokenizer"]}


def test_reference_saved_every_resume_point(reference) -> None:
    ckpt_dir = reference["root"] / "ckpt"
    for name in RESUME_POINTS:
        checkpoint = torch.load(ckpt_dir / name, weights_only=True)
        assert STATE_KEY in checkpoint, name
        assert checkpoint[STATE_KEY]["mid_window"] == (name in MID_WINDOW), name


@pytest.mark.parametrize("name", sorted(RESUME_POINTS))
def test_resume_is_bit_exact(reference, name: str, tmp_path: Path) -> None:
    resumed = train(tmp_path, reference["files"], reference["tokenizer"], ckpt_path=reference["root"] / "ckpt" / name)
    assert max_abs_diff(resumed, reference["weights"]) == 0.0, RESUME_POINTS[name]


def test_mid_window_checkpoint_restores_partial_gradients(reference, tmp_path: Path) -> None:
    """The mid-window checkpoint carries gradients; dropping them (as Lightning alone would) changes the result."""
    checkpoint = torch.load(reference["root"] / "ckpt" / "batch-e0-b2.ckpt", weights_only=True)
    state = checkpoint[STATE_KEY]
    assert state["ranks"][0]["grads"], "gradients of the first micro-batch of the window"
    assert float(state["ranks"][0]["window"]["items"]) > 0
    state["mid_window"] = False  # pretend it was taken at a window boundary
    path = tmp_path / "no-grads.ckpt"
    torch.save(checkpoint, path)
    resumed = train(tmp_path, reference["files"], reference["tokenizer"], ckpt_path=path)
    assert max_abs_diff(resumed, reference["weights"]) > 0.0


def test_chained_resumes_are_bit_exact(reference, tmp_path: Path) -> None:
    """Resume, stop again at a checkpoint the *resumed* run wrote, resume again."""
    first = tmp_path / "first"
    train(first, reference["files"], reference["tokenizer"], ckpt_path=reference["root"] / "ckpt" / "step=2.ckpt",
          save_batches=((1, 2),))
    second = train(tmp_path / "second", reference["files"], reference["tokenizer"],
                   ckpt_path=first / "ckpt" / "batch-e1-b2.ckpt")
    assert max_abs_diff(second, reference["weights"]) == 0.0


def test_without_the_callback_resume_differs(reference, tmp_path: Path) -> None:
    """Control: Lightning alone restarts the epoch's data and RNG streams, so the weights move elsewhere."""
    resumed = train(tmp_path, reference["files"], reference["tokenizer"], exact=False,
                    ckpt_path=reference["root"] / "ckpt" / "step=5.ckpt")
    assert max_abs_diff(resumed, reference["weights"]) > 1e-6


@pytest.mark.parametrize(
    "config",
    [{"max_steps": -1, "max_epochs": 3}, {"limit_val_batches": 2}],
    ids=["max_epochs", "validation"],
)
def test_epoch_end_and_mid_window_resume_in_other_loop_modes(config, task_files, demo_assets, tmp_path: Path) -> None:
    """Epoch-based training and validation at every epoch end take other paths through Lightning's loops."""
    files, tokenizer = task_files["cls"], demo_assets["tokenizer"]
    ref = train(tmp_path / "ref", files, tokenizer, save_batches=((1, 2),), save_epoch_ends=(0,), **config)
    for name in ("epochend-e0.ckpt", "batch-e1-b2.ckpt"):
        resumed = train(tmp_path / name, files, tokenizer, ckpt_path=tmp_path / "ref" / "ckpt" / name, **config)
        assert max_abs_diff(resumed, ref) == 0.0, name


def test_resume_with_two_workers_is_bit_exact(task_files, demo_assets, tmp_path: Path) -> None:
    ref = train(tmp_path / "ref", task_files["cls"], demo_assets["tokenizer"], num_workers=2,
                save_batches=((1, 2),))
    for name in ("step=4.ckpt", "batch-e1-b2.ckpt"):
        resumed = train(tmp_path / name, task_files["cls"], demo_assets["tokenizer"], num_workers=2,
                        ckpt_path=tmp_path / "ref" / "ckpt" / name)
        assert max_abs_diff(resumed, ref) == 0.0, name


def test_worker_side_randomness_is_exact_from_an_epoch_boundary(task_files, demo_assets, tmp_path: Path) -> None:
    """Masked-LM masking runs in the DataLoader workers, seeded from the loader's generator per epoch.

    Resuming at the start of epoch 2 needs the generator's saved state: a fresh generator would give the
    workers the seeds of epoch 1. (Mid-epoch, the workers' own generators cannot be restored; see the
    module docstring of hf_lightning.callbacks.resume.)
    """
    files, tokenizer = task_files["text"], demo_assets["tokenizer"]
    ref = train(tmp_path / "ref", files, tokenizer, task="masked-lm", num_workers=2)
    resumed = train(tmp_path / "resumed", files, tokenizer, task="masked-lm", num_workers=2,
                    ckpt_path=tmp_path / "ref" / "ckpt" / "step=6.ckpt")
    assert max_abs_diff(resumed, ref) == 0.0


def test_only_the_non_resumable_warning_is_silenced_and_only_while_resuming(reference, tmp_path: Path) -> None:
    ckpt = reference["root"] / "ckpt" / "step=5.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters_before = list(warnings.filters)
        train(tmp_path / "exact", reference["files"], reference["tokenizer"], ckpt_path=ckpt)
        exact = [str(w.message) for w in caught]
        caught.clear()
        train(tmp_path / "plain", reference["files"], reference["tokenizer"], ckpt_path=ckpt, exact=False)
        plain = [str(w.message) for w in caught]
        filters_after = list(warnings.filters)
    assert not any("dataloader is not resumable" in m for m in exact), exact
    assert any("dataloader is not resumable" in m for m in plain), "Lightning warns when nothing restores the data"
    assert filters_after == filters_before, "the filter is removed again"


def test_changed_data_order_resumes_with_a_warning(reference, tmp_path: Path) -> None:
    """As transformers: a changed seed resumes at the saved position of the new order, and says so."""
    with pytest.warns(UserWarning, match=r"data order changed .*seed 7 -> 8"):
        weights = train(tmp_path, reference["files"], reference["tokenizer"], data_seed=8,
                        ckpt_path=reference["root"] / "ckpt" / "step=5.ckpt")
    assert weights is not None and max_abs_diff(weights, reference["weights"]) > 0.0  # another order: not exact


def test_sampler_wrapped_by_lightning_is_refused(reference, tmp_path: Path) -> None:
    """With use_distributed_sampler=True Lightning would split the per-rank order again; fail before training."""
    data = HFDataModule(dataset="json", data_files=reference["files"], tokenizer=reference["tokenizer"], batch_size=5)
    module = HFLightningModule(model=TINY_MODELS["bert"], num_labels=data.num_labels, vocab_size=data.vocab_size)
    wrapped = DistributedSamplerWrapper(ResumableSampler(24, num_replicas=1, rank=0), num_replicas=1, rank=0)
    loader = DataLoader(data.dataset("train"), batch_size=5, sampler=wrapped, collate_fn=data.collator)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[ExactResumeCallback()], default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match="use_distributed_sampler"):
        trainer.fit(module, train_dataloaders=loader)


# ---------------------------------------------------------------------------- DDP (this file as a script)


def _ddp_main(args: argparse.Namespace) -> None:
    """Reference run and resumes under 2-process DDP; rank 0 writes the max abs differences as JSON."""
    torch.set_num_threads(1)
    root = Path(args.root)
    files = json.loads(args.files)
    ddp = {"devices": 2, "strategy": "ddp"}
    ref = train(root / "ref", files, args.tokenizer, save_batches=((0, 2),), **ddp)
    diffs = {}
    for name in ("step=2.ckpt", "batch-e0-b2.ckpt", "step=6.ckpt"):
        resumed = train(root / name, files, args.tokenizer, ckpt_path=root / "ref" / "ckpt" / name, **ddp)
        if resumed is not None:
            diffs[name] = max_abs_diff(resumed, ref)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and ref is not None:
        (root / "diffs.json").write_text(json.dumps(diffs))


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_two_processes_resume_is_bit_exact(task_files, demo_assets, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tests.callbacks.test_resume", "--root", str(tmp_path),
           "--files", json.dumps(task_files["cls"]), "--tokenizer", demo_assets["tokenizer"]]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    diffs = json.loads((tmp_path / "diffs.json").read_text())
    assert diffs == {"step=2.ckpt": 0.0, "batch-e0-b2.ckpt": 0.0, "step=6.ckpt": 0.0}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--files", required=True)
    parser.add_argument("--tokenizer", required=True)
    _ddp_main(parser.parse_args())
