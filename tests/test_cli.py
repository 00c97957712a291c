"""The LightningCLI front door: the quickstart end to end, configs parse, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_lightning", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_every_config_is_found() -> None:
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_parses(config: Path, tmp_path: Path) -> None:
    result = _cli("fit", "--config", str(config), "--print_config", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model:" in result.stdout and "trainer:" in result.stdout


def test_quickstart_end_to_end(tmp_path: Path, demo_assets: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_lightning.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    cli = run_cli([
        "fit", "--config", str(REPO / "configs/quickstart.yaml"),
        "--trainer.max_epochs=1", "--data.max_train_samples=256", "--data.max_eval_samples=64",
    ])
    assert cli.trainer.global_step == 8
    assert "eval_accuracy" in cli.model.last_eval_metrics
    export = next(tmp_path.rglob("hf_model"))
    # The exported folder loads in a process that never imports hf_lightning.
    code = (
        "import sys, transformers\n"
        f"m = transformers.AutoModelForSequenceClassification.from_pretrained({str(export)!r})\n"
        f"t = transformers.AutoTokenizer.from_pretrained({str(export)!r})\n"
        "assert 'hf_lightning' not in sys.modules\n"
        "print(m(**t(['not bad at all'], return_tensors='pt')).logits.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([1, 2])" in out.stdout
    assert list(tmp_path.rglob("*.ckpt")), "a Lightning checkpoint is written"
    assert list(tmp_path.rglob("metrics.csv")), "CSV logs are written"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.learning_rat=0.1"], "learning_rat"),
        (["--trainer.max_epoch=1"], "max_epoch"),
        (["--model.learning_rate=fast"], "learning_rate"),
        (["--model.optim=adamw_torh"], "optim"),
        (["--model.model.hiden_size=8"], "hiden_size"),
        (["--model.num_labels=3"], "model.num_labels"),
    ],
)
def test_config_errors_are_one_line(args: list[str], expected: str, tmp_path: Path) -> None:
    result = _cli("fit", "--config", str(REPO / "configs/quickstart.yaml"), *args, "--trainer.max_steps=1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0] and "Fix:" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
