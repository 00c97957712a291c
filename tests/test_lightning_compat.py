"""The Lightning private state hf_lightning relies on is still there (``hf_lightning/lightning_compat.py``).

A failure here after a Lightning upgrade names what moved; fix it in ``lightning_compat.py`` only.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning
import lightning.pytorch as pl
import pytest
import torch
from packaging.specifiers import SpecifierSet
from torch.utils.data import DataLoader, TensorDataset

from hf_lightning import lightning_compat as compat


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Probe(pl.Callback):
    """Calls every compat accessor from inside a real fit and records what they answered."""

    def __init__(self) -> None:
        self.missing: list[str] | None = None
        self.window_ends: list[bool] = []
        self.consumed: list[int] = []
        self.logs: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.missing is None:
            self.missing = compat.missing_private_api(trainer)
        assert compat.attached_trainer(pl_module) is trainer
        self.window_ends.append(compat.at_window_end(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.consumed.append(compat.consumed_batches(trainer))
        self.logs.append(compat.logs_this_step(trainer))


def _fit(tmp_path: Path, callbacks: list[pl.Callback], **kwargs) -> pl.Trainer:
    data = DataLoader(TensorDataset(torch.randn(10, 4)), batch_size=2)  # 5 batches an epoch
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **kwargs)
    trainer.fit(_Tiny(), train_dataloaders=data)
    return trainer


def test_installed_lightning_is_the_checked_range() -> None:
    assert lightning.__version__ in SpecifierSet(compat.CHECKED_VERSIONS), (
        f"lightning {lightning.__version__} is outside {compat.CHECKED_VERSIONS}: re-check hf_lightning/lightning_compat.py"
    )


def test_private_api_is_present_and_answers_as_expected(tmp_path: Path) -> None:
    probe = _Probe()
    _fit(tmp_path, [probe], max_epochs=1, accumulate_grad_batches=2, log_every_n_steps=1)
    assert probe.missing == [], (
        f"lightning {lightning.__version__} lacks {probe.missing}; adapt hf_lightning/lightning_compat.py"
    )
    # windows of 2 over 5 batches: steps after batches 2 and 4 and at the epoch's last batch
    assert probe.window_ends == [False, True, False, True, True]
    assert probe.consumed == [1, 2, 3, 4, 5]
    assert all(isinstance(flag, bool) for flag in probe.logs) and any(probe.logs)


def test_restart_train_iterator_and_graceful_stop(tmp_path: Path) -> None:
    class StopAtSecond(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            compat.restart_train_iterator(trainer)  # a fresh iterator mid-epoch must not break the loop
            if batch_idx == 1:
                compat.request_graceful_stop(trainer)

    with pytest.raises(SystemExit):  # Lightning's SIGTERM path: stop at the next safe point
        _fit(tmp_path, [StopAtSecond()], max_epochs=1)


def test_epoch_end_checkpoint_is_rewritten_as_next_epoch(tmp_path: Path) -> None:
    class SaveAtEpochEnd(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.save_checkpoint(tmp_path / "end.ckpt")

    _fit(tmp_path, [SaveAtEpochEnd()], max_epochs=1)
    checkpoint = torch.load(tmp_path / "end.ckpt", weights_only=False)
    assert compat.restart_epoch_end_as_next_epoch(checkpoint), "the saved loop state has the layout checked here"
    fit = checkpoint["loops"]["fit_loop"]
    assert fit["epoch_progress"]["current"]["completed"] == fit["epoch_progress"]["current"]["processed"] == 1
    assert fit["epoch_loop.batch_progress"]["current"]["ready"] == 0


def test_a_missing_attribute_fails_with_the_fix() -> None:
    future_trainer = SimpleNamespace(fit_loop=SimpleNamespace())  # a Lightning that renamed the loop method
    with pytest.raises(compat.LightningCompatError, match=r"_should_accumulate.*lightning>=2\.6,<2\.7"):
        compat.at_window_end(future_trainer)
