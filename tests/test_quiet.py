"""Installed-but-unused libraries print nothing into a run; their real warnings still get through."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import hf_lightning  # noqa: F401 - importing the package installs the filters
from tests.conftest import REPO


@pytest.mark.parametrize(("logger", "noise"), [
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."),
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging and experiment tracking, try ..."),
])
def test_noise_is_dropped_and_other_messages_kept(logger: str, noise: str, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger(logger)
    with caplog.at_level(logging.INFO, logger=logger):
        log.propagate = True  # DeepSpeed turns propagation off on its logger; caplog listens at the root
        log.warning(noise)
        log.warning("a real warning")
    assert [r.getMessage() for r in caplog.records if r.name == logger] == ["a real warning"]


FIT = (
    "import lightning.pytorch as pl\n"
    "from lightning.pytorch.demos.boring_classes import BoringModel\n"
    "pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,\n"
    "           enable_model_summary=False, limit_val_batches=0).fit(BoringModel())\n"
)


@pytest.mark.parametrize("with_package", [False, True])
def test_a_fit_prints_no_advertising_once_the_package_is_imported(with_package: bool) -> None:
    """In a fresh process (Lightning's handlers write to the streams of their import time)."""
    code = ("import hf_lightning\n" if with_package else "") + FIT
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ("Tip:" in out.stdout + out.stderr) is not with_package  # without the package Lightning prints them
