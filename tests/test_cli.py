"""The LightningCLI front door: the quickstart end to end, configs parse, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_lightning", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_every_config_is_found() -> None:
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_parses(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_lightning.cli import main

    monkeypatch.chdir(REPO)  # configs name their sample data relative to the repository root
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    data = yaml.safe_load(config.read_text()) or {}
    if "tune" in data:  # a sweep config: its tune: section is the sweep's, the rest parses as fit does
        from hf_lightning.tune.settings import TuneSettings

        TuneSettings.from_dict(data.pop("tune"))
        config = tmp_path / config.name
        config.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), "--print_config"])
    out = capsys.readouterr()
    assert info.value.code in (0, None), out.err[-2000:]
    assert "model:" in out.out and "trainer:" in out.out


def test_quickstart_end_to_end(tmp_path: Path, demo_assets: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    from hf_lightning.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    cli = run_cli([
        "fit", "--config", str(REPO / "configs/quickstart.yaml"),
        "--trainer.max_epochs=1", "--data.max_train_samples=256", "--data.max_eval_samples=64",
    ])
    assert cli.trainer.global_step == 4  # 256 rows in batches of 64
    assert "eval_accuracy" in cli.model.last_eval_metrics
    export = next(tmp_path.rglob("hf_model"))
    # The run ends by telling its result: one block with the held-out metrics and where things went.
    printed = capsys.readouterr().out
    summary = printed[printed.index("Run summary"):]
    accuracy = cli.model.last_eval_metrics["eval_accuracy"]
    assert f"eval_accuracy={accuracy:.4f}" in summary
    assert f"best checkpoint:  {Path(cli.trainer.checkpoint_callback.best_model_path).resolve()}" in summary
    assert f"Hugging Face model: {export.resolve()}" in summary
    assert f"logs:             {Path(cli.trainer.log_dir).resolve()}" in summary
    assert "wall time:" in summary and "Tip:" not in printed
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


def test_hf_callbacks_named_in_a_config(tmp_path: Path, demo_assets, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers.EarlyStoppingCallback, named in YAML through HFCallbacks, stops a LightningCLI run."""
    from hf_lightning.callbacks import HFCallbacks
    from hf_lightning.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    cli = run_cli([
        "fit", "--config", str(REPO / "configs/quickstart.yaml"), "--config", str(REPO / "configs/hf_callbacks.yaml"),
        "--data.max_train_samples=64", "--data.max_eval_samples=32", "--model.learning_rate=0.05",
        "--model.model.hidden_size=32", "--model.model.intermediate_size=64",
    ])
    bridge = next(cb for cb in cli.trainer.callbacks if isinstance(cb, HFCallbacks))
    assert cli.trainer.current_epoch < 9, "early stopping ended the run before max_epochs"
    assert bridge.host.state.best_metric is not None, "on_evaluate saw the eval metrics"


def test_ckpt_path_resumes_fit_and_feeds_validate_test_predict(tmp_path: Path, demo_assets,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint's hyperparameters carry the linked values (num_labels, ...): not a user conflict."""
    from hf_lightning.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    tiny = [
        "--config", str(REPO / "configs/quickstart.yaml"), "--trainer.max_epochs=1", "--trainer.limit_val_batches=1",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--data.max_train_samples=256",
        "--data.max_eval_samples=16", '--model.model={"model_type": "bert", "hidden_size": 32, '
        '"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}',
    ]
    first = run_cli(["fit", *tiny, "--trainer.max_steps=2", "--trainer.callbacks+=ModelCheckpoint",
                     f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}"])
    assert first.trainer.global_step == 2
    ckpt = str(next((tmp_path / "ckpt").glob("*.ckpt")))
    resumed = run_cli(["fit", *tiny, "--trainer.max_steps=3", "--trainer.max_epochs=3", f"--ckpt_path={ckpt}"])
    assert resumed.trainer.global_step == 3
    for subcommand in ("validate", "test", "predict"):
        run_cli([subcommand, *tiny, f"--ckpt_path={ckpt}"])


def test_help_says_what_the_tool_is(tmp_path: Path) -> None:
    out = _cli("--help", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage: hf-lightning")
    assert "Hugging Face transformers" in out.stdout and "Lightning Trainer command line tool" not in out.stdout
    assert "lightning tune --config" in " ".join(out.stdout.split())  # the sweep subcommand is named
