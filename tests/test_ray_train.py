"""``hf-lightning fit --ray.*`` and ``hf_lightning.ray_train.run``: Ray Train jobs on a real local Ray (2 CPU
workers, gloo, 127.0.0.1) give the weights of a local 2-process DDP run and of one process with the same
global batch, also after a worker is SIGKILLed mid-run; bad ``--ray`` values are one line; without them
Ray is never imported."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

from hf_lightning.cli import run_cli

REPO = Path(__file__).resolve().parents[1]

# Ray on loopback only (DESIGN.md, Ray), set before anything imports ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TINY_CONFIG = """
seed_everything: 0
model:
  task: sequence-classification
  model: {{model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64,
          max_position_embeddings: 64, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}}
  learning_rate: 0.002
  warmup_steps: 1
data:
  dataset: json
  data_files: {{train: {train}, validation: {validation}}}
  tokenizer: demo:tokenizer
  max_length: 32
trainer:
  max_steps: 4
  accumulate_grad_batches: 2
  gradient_clip_val: 1.0
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 0
  num_sanity_val_steps: 0
"""


@pytest.fixture
def tiny_config(tmp_path: Path, task_files: dict, demo_assets: dict) -> Path:
    """24 labelled rows: 2 workers x batch 2 x 2 accumulated = 8 rows a step, so 4 steps cross an epoch end."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG.format(**task_files["cls"]))
    return path


@pytest.fixture(scope="module")
def local_ray(demo_assets: dict):
    """One local Ray for this module (2 CPUs, 127.0.0.1); workers import this checkout (and ``tests``)."""
    import tempfile

    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    # Ray's controller collects each worker's reports once per health check (2 s by default): a checkpoint
    # reported just before a crash may never be registered. Poll faster so the fault test knows which one.
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: socket paths are limited
    yield ray
    if started:
        ray.shutdown()


def _weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).state_dict()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ---------------------------------------------------------------------------- fast: no Ray started


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


@pytest.mark.parametrize(("option", "field"), [
    ("--ray.num_workers=0", "ray.num_workers: must be at least 1, got 0"),
    (f"--ray.address=127.0.0.1:{_closed_port()}", "ray.address: no Ray cluster answers at '127.0.0.1:"),
    ("--ray.address=nowhere", "ray.address: 'nowhere' is not host:port"),
    ("--ray.max_failures=-3", "ray.max_failures: must be >= 0"),
])
def test_bad_ray_values_are_one_line(option: str, field: str, tiny_config: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    extra = [] if "num_workers" in option else ["--ray.num_workers=2"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(tiny_config), option, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {field}"), err
    assert "Fix:" in err


def test_a_ray_section_in_the_yaml_is_read(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    section = tmp_path / "ray.yaml"
    section.write_text("ray:\n  num_workers: 2\n  max_failures: -2\n")
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(tiny_config), "--config", str(section)])
    assert capsys.readouterr().err.startswith("error: ray.max_failures: must be >= 0")


@pytest.mark.slow  # a subprocess fit: ~15 s idle, more on a loaded machine
def test_without_ray_options_ray_is_never_imported(tiny_config: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from hf_lightning.cli import run_cli
        cli = run_cli(["fit", "--config", {str(tiny_config)!r}, "--trainer.max_steps=1", "--data.batch_size=4"])
        assert cli.trainer.global_step == 1 and cli.ray_result is None
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
        assert not loaded, loaded
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]


# ---------------------------------------------------------------------------- slow: real Ray Train jobs


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_ray_job_survives_a_killed_worker_and_matches_ddp_and_one_process(
    local_ray, tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    marker = tmp_path / "killed"
    cli = run_cli([
        "fit", "--config", str(tiny_config), "--data.batch_size=2", f"--trainer.default_root_dir={tmp_path / 'ray'}",
        "--ray.num_workers=2", f"--ray.storage_path={tmp_path / 'store'}", "--ray.name=tiny",
        "--ray.max_failures=1", "--ray.checkpoint_every_n_steps=1",
        # Rank 1 SIGKILLs itself after step 3, before that step's checkpoint: Ray restarts the group
        # from the last checkpoint it registered (step 2, or step 1 if the crash beat the controller's
        # poll), mid-epoch and mid-way through the data order.
        "--trainer.callbacks+=tests.workers.ray_faults.KillOnce", "--trainer.callbacks.rank=1",
        "--trainer.callbacks.step=3", f"--trainer.callbacks.marker={marker}",
    ])
    result = cli.ray_result
    assert marker.is_file(), "the worker was never killed"
    # The restarted group resumed (a rerun from scratch would also end with equal weights).
    assert marker.with_suffix(".resumed").read_text() in ("1", "2")
    assert result.metrics["step"] == 4
    assert result.hf_model is not None and Path(result.hf_model).parent.parent == tmp_path / "store" / "tiny"
    assert (tmp_path / "store" / "tiny" / "checkpoint-step0000002" / "checkpoint.ckpt").is_file()

    ddp = subprocess.run(
        [sys.executable, "-m", "hf_lightning", "fit", "--config", str(tiny_config), "--data.batch_size=2",
         "--trainer.devices=2", "--trainer.strategy=ddp", f"--trainer.default_root_dir={tmp_path / 'ddp'}"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)),
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    single = run_cli(["fit", "--config", str(tiny_config), "--data.batch_size=4",
                      f"--trainer.default_root_dir={tmp_path / 'one'}"])
    assert single.trainer.global_step == 4

    ray_weights = _weights(result.hf_model)
    assert _max_diff(ray_weights, _weights(tmp_path / "ddp" / "hf_model")) <= 1e-5
    assert _max_diff(ray_weights, _weights(tmp_path / "one" / "hf_model")) <= 1e-5


@pytest.mark.slow
@pytest.mark.distributed
def test_facade_trainer_on_ray_matches_one_process(local_ray, tmp_path: Path) -> None:
    from hf_lightning import Trainer, TrainingArguments
    from hf_lightning.ray_train import run
    from tests.workers.shared import cls_dataset, tiny_bert_config

    data, tok = cls_dataset(16)
    config = {k: v for k, v in tiny_bert_config(len(tok)).items() if k != "model_type"}

    def trainer(world: int, out: str) -> Trainer:
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**config, num_labels=2))
        args = TrainingArguments(
            output_dir=str(tmp_path / out), per_device_train_batch_size=4 // world, gradient_accumulation_steps=2,
            max_steps=3, learning_rate=1e-3, logging_steps=1, save_strategy="steps", save_steps=1,
            report_to="none", use_cpu=True, disable_tqdm=True,
        )
        return Trainer(model=model, args=args, train_dataset=data, processing_class=tok)

    on_ray = trainer(2, "on_ray")
    result = run(on_ray, num_workers=2, storage_path=str(tmp_path / "store"), name="facade")
    assert result.metrics["step"] == 3
    assert sorted(p.name for p in (tmp_path / "store" / "facade").glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3"]

    local = trainer(1, "local")
    local.train()
    expected = {k: v.detach() for k, v in local.model.state_dict().items()}
    assert _max_diff(_weights(result.hf_model), expected) <= 1e-5
    # The driver's model holds the trained weights, so evaluate()/save_model() work after run().
    assert _max_diff({k: v.detach() for k, v in on_ray.model.state_dict().items()}, expected) <= 1e-5
