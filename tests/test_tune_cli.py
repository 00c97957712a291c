"""``hf-lightning tune``: a fit config plus a ``tune:`` section, swept on a real Ray Tune (loopback only)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from tests.conftest import REPO, TINY_MODELS

GOOD_LR, HOPELESS_LR = 3e-3, 5.0


def _sweep_config(tmp_path: Path, tune: dict, **trainer) -> Path:
    """A tiny fit config (the demo data, 1-layer BERT, 3 epochs of 4 steps) with a ``tune:`` section."""
    config = {
        "seed_everything": 0,
        "model": {"task": "sequence-classification", "model": TINY_MODELS["bert"], "learning_rate": GOOD_LR},
        "data": {"dataset": "demo:sentiment", "tokenizer": "demo:tokenizer", "max_length": 32, "batch_size": 16,
                 "max_train_samples": 64, "max_eval_samples": 32},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "devices": 1, "enable_model_summary": False, **trainer},
        "tune": {"storage_path": str(tmp_path / "sweeps"), "resources_per_trial": {"cpu": 1}, **tune},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _tune(*args: str) -> None:
    from hf_lightning.cli import main

    main(["tune", *args])


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


class RecordFits(pl.Callback):
    """Appends ``<event> <learning rate>`` to a file at each fit start and validation (which trials ran)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _write(self, event: str, pl_module: pl.LightningModule) -> None:
        with self.path.open("a") as handle:
            handle.write(f"{event} {pl_module.hparams['learning_rate']}\n")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write("fit", pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write("validated", pl_module)


class HoldLaterTrials(pl.Callback):
    """Holds every trial but the first at its second epoch while ``marker`` exists.

    The interrupted-sweep test kills the driver while the second trial waits here, after its first
    checkpoint: on a fast machine that trial would otherwise finish (or the whole sweep end) before the kill.
    """

    def __init__(self, log: str, marker: str) -> None:
        self.fits_path = Path(log)  # not self.log: that name would shadow a Callback method
        self.hold_marker = Path(marker)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fits = [line.split()[1] for line in self.fits_path.read_text().splitlines() if line.startswith("fit ")]
        if trainer.current_epoch < 1 or not fits or fits[0] == str(pl_module.hparams["learning_rate"]):
            return
        deadline = time.time() + 300
        while self.hold_marker.exists() and time.time() < deadline:
            time.sleep(0.2)


class RecordWeights(pl.Callback):
    """Appends one JSON line per training start and validation: the Ray trial, the epoch, the learning rate
    the optimizer uses, the trial's configured one and a digest of the weights (to match a clone's start
    with the validation whose checkpoint it restored).

    It also keeps a population of ``trials`` in step: each waits (at most 60 s) at an epoch's start until
    the others have validated the epoch before. Without that, a trial whose worker started first can
    finish before the other reports once, and PBT has nobody to compare it with.
    """

    def __init__(self, path: str, trials: int = 2) -> None:
        self.path = Path(path)
        self.trials = trials

    def _rows(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import ray.tune

        me = ray.tune.get_context().get_trial_id()
        deadline = time.time() + 60
        while time.time() < deadline:
            validated: dict[str, int] = {}
            for row in self._rows():
                validated.setdefault(row["trial"], -1)
                if row["event"] == "validated":
                    validated[row["trial"]] = max(validated[row["trial"]], row["epoch"])
            others = [epoch for trial, epoch in validated.items() if trial != me]
            if len(others) >= self.trials - 1 and all(e >= trainer.current_epoch - 1 for e in others):
                return
            time.sleep(0.2)

    def _write(self, event: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import hashlib

        import ray.tune

        digest = hashlib.sha256()
        for tensor in pl_module.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        row = {"event": event, "trial": ray.tune.get_context().get_trial_id(), "epoch": trainer.current_epoch,
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "config_lr": pl_module.hparams["learning_rate"],
               "weights": digest.hexdigest()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write("start", trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write("validated", trainer, pl_module)


class FailOnce(pl.Callback):
    """Raises at the end of the second epoch of the first trial that gets there (a crashed worker)."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1 and not self.marker.exists():
            self.marker.write_text("failed once")
            raise RuntimeError("simulated worker crash")


# ---------------------------------------------------------------- bad input: one line, before any trial
@pytest.mark.parametrize(("tune", "expected"), [
    ({"search_space": {"model.lerning_rate": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}}},
     "error: tune.search_space.model.lerning_rate: is not a field of the fit config"),
    ({"search_space": {"model.learning_rate": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-2}}},
     "error: search_space.model.learning_rate: unknown distribution 'log_uniform'. Fix: did you mean 'loguniform'?"),
    ({"search_space": {"model.learning_rate": {"distribution": "choice", "values": [1e-3]}}, "metric": "val_acc"},
     "error: tune.metric: 'val_acc' is never logged at validation (logged: eval_accuracy, eval_f1, eval_loss)"),
    ({"search_space": {"model.learning_rate": {"distribution": "choice", "values": [1e-3]}}, "sheduler": "asha"},
     "error: tune.sheduler: is not a tune setting. Fix: did you mean 'scheduler'?"),
    ({"search_space": {"model.learning_rate": {"distribution": "grid", "values": [1e-3]}}, "search_alg": "optuna"},
     "error: tune.search_space.model.learning_rate: grid values cannot be searched by optuna"),
])
def test_bad_sweep_input_is_one_line(tmp_path: Path, demo_assets, capsys, tune: dict, expected: str) -> None:
    with pytest.raises(SystemExit) as info:
        _tune("--config", str(_sweep_config(tmp_path, tune)))
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err[-1].startswith(expected), err[-1]
    assert not (tmp_path / "sweeps").exists(), "no trial ran"


def test_without_ray_the_error_names_the_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "from hf_lightning.cli import main\n"
            f"main(['tune', '--config', {str(tmp_path / 'x.yaml')!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        'error: tune: Ray Tune is not installed. Fix: pip install "hf-lightning[ray]"')


# ---------------------------------------------------------------- sweeps on Ray
@pytest.mark.slow
def test_asha_sweep_stops_the_hopeless_trial_retries_a_crash_and_writes_a_reproducible_best(
        ray_local, tmp_path: Path, demo_assets, monkeypatch) -> None:
    from hf_lightning.cli import run_cli

    marker = tmp_path / "crashed"
    config = _sweep_config(
        tmp_path,
        {"search_space": {"model.learning_rate": {"distribution": "grid", "values": [GOOD_LR, HOPELESS_LR]}},
         "scheduler": "asha", "max_concurrent_trials": 1, "max_failures": 1, "num_samples": 1},
        callbacks=[{"class_path": "tests.test_tune_cli.FailOnce", "init_args": {"marker": str(marker)}}])
    _tune("--config", str(config))
    run_dir = tmp_path / "sweeps" / "sweep"
    rows = {float(r["model.learning_rate"]): r for r in _rows(run_dir)}
    assert marker.exists(), "the good trial crashed once"
    assert rows[GOOD_LR]["status"] == "TERMINATED" and rows[GOOD_LR]["iterations"] == "3", "retried and finished"
    assert rows[HOPELESS_LR]["status"] == "STOPPED_EARLY" and rows[HOPELESS_LR]["iterations"] == "1", rows
    summary = json.loads((run_dir / "results.json").read_text())
    assert summary["best"]["params"] == {"model.learning_rate": GOOD_LR}
    assert (run_dir / "results.png").stat().st_size > 0 and Path(summary["best"]["checkpoint"]).is_dir()
    # the best trial's YAML reproduces its metric with a plain fit (also across the crash: resume is exact)
    monkeypatch.chdir(tmp_path)
    best = yaml.safe_load((run_dir / "best_config.yaml").read_text())
    best["trainer"]["callbacks"] = []
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(best))
    cli = run_cli(["fit", "--config", str(tmp_path / "best.yaml"), "--trainer.enable_progress_bar=false"])
    assert float(cli.trainer.callback_metrics["eval_loss"]) == pytest.approx(summary["best"]["eval_loss"], abs=1e-6)


@pytest.mark.slow
def test_interrupted_sweep_on_a_cluster_resumes_only_the_missing_trials(ray_cluster, tmp_path: Path,
                                                                         demo_assets) -> None:
    log = tmp_path / "fits.log"
    hold = tmp_path / "hold"  # the second trial waits at its second epoch until the driver is killed
    hold.touch()
    config = _sweep_config(
        tmp_path,
        {"search_space": {"model.learning_rate": {"distribution": "grid", "values": [1e-3, 2e-3, 3e-3]}},
         "max_concurrent_trials": 1, "num_samples": 1, "address": ray_cluster}, max_epochs=2, num_sanity_val_steps=0,
        callbacks=[{"class_path": "tests.test_tune_cli.RecordFits", "init_args": {"path": str(log)}},
                   {"class_path": "tests.test_tune_cli.HoldLaterTrials",
                    "init_args": {"log": str(log), "marker": str(hold)}}])
    run_dir = tmp_path / "sweeps" / "sweep"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen([sys.executable, "-m", "hf_lightning", "tune", "--config", str(config)], cwd=tmp_path,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while True:  # one trial at a time: once a second trial has checkpointed, the first one is finished
            started = [line.split()[1] for line in (log.read_text() if log.exists() else "").splitlines()
                       if line.startswith("fit ")]
            if len(started) == 2 and list(run_dir.glob(f"fit_trial_*rate={float(started[1]):.4f}_*/checkpoint_000000")):
                break
            assert proc.poll() is None and time.time() < deadline, "the sweep should still be running"
            time.sleep(0.5)
        time.sleep(3)  # Ray records the reported checkpoint in its experiment state
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-sweep; the cluster stays up
        proc.wait()
        hold.unlink()
    finished, interrupted = started
    _tune("--resume", str(run_dir))
    rows = _rows(run_dir)
    assert len(rows) == 3 and all(r["status"] == "TERMINATED" and r["iterations"] == "2" for r in rows), rows
    fits = log.read_text().splitlines()
    assert fits.count(f"fit {finished}") == 1, "the finished trial did not run again"
    assert fits.count(f"validated {interrupted}") == 2, "the interrupted trial went on from its checkpoint"
    (missing,) = {"0.001", "0.002", "0.003"} - {finished, interrupted}
    assert fits.count(f"fit {missing}") == 1 and fits.count(f"validated {missing}") == 2


@pytest.mark.slow
def test_pbt_sweep_clones_a_better_trial_and_trains_on(ray_local, tmp_path: Path, demo_assets) -> None:
    """PBT (perturbation every validation, two trials side by side): the worse trial restores the better
    one's checkpoint and goes on training from it. Read from Ray's own PBT log and from the weights each
    fit starts from, not from timing."""
    log = tmp_path / "weights.jsonl"
    config = _sweep_config(
        tmp_path,
        {"search_space": {"model.learning_rate": {"distribution": "choice", "values": [GOOD_LR, HOPELESS_LR]}},
         "search_alg": "grid", "scheduler": "pbt", "perturbation_interval": 1, "num_samples": 1,
         "max_concurrent_trials": 2},
        max_epochs=4, num_sanity_val_steps=0,
        callbacks=[{"class_path": "tests.test_tune_cli.RecordWeights", "init_args": {"path": str(log), "trials": 2}}])
    values = yaml.safe_load(config.read_text())
    values["model"].update(lr_scheduler_type="constant", warmup_steps=0)  # the optimizer's lr is the trial's
    config.write_text(yaml.safe_dump(values))
    _tune("--config", str(config))
    run_dir = tmp_path / "sweeps" / "sweep"
    # Ray's PBT log, one line per exploit: [trial tag, donor tag, trial's iteration, donor's iteration,
    # donor config, explored config]; a tag starts with the trial's index ("1_model_learning_rate=5.0000")
    exploits = [json.loads(line) for line in (run_dir / "pbt_global.txt").read_text().splitlines()]
    assert exploits, "no trial exploited another"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    ids = {int(r["trial"].rsplit("_", 1)[1]): r["trial"] for r in rows}
    validated = {(r["trial"], r["weights"]) for r in rows if r["event"] == "validated"}
    for tag, donor_tag, _, _, _, explored in exploits:
        trial, donor = ids[int(tag.split("_")[0])], ids[int(donor_tag.split("_")[0])]
        lr = explored["model.learning_rate"]
        starts = [r for r in rows if r["event"] == "start" and r["trial"] == trial
                  and (donor, r["weights"]) in validated and r["config_lr"] == pytest.approx(lr)]
        assert starts, f"{trial} never started from {donor}'s weights with lr {lr}"
        # it trains with the explored learning rate, not the donor's (the optimizer state came from the donor)
        assert starts[0]["lr"] == pytest.approx(lr, rel=1e-9), starts[0]
        later = [r for r in rows[rows.index(starts[0]):] if r["trial"] == trial and r["event"] == "validated"]
        assert later and later[0]["epoch"] >= starts[0]["epoch"], "the clone trained on after the restore"
    rows_csv = _rows(run_dir)
    assert len(rows_csv) == 2 and all(r["status"] != "ERROR" for r in rows_csv), rows_csv


class RecordStartLr(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
        self.weight_decays = [g["weight_decay"] for g in trainer.optimizers[0].param_groups]
        self.base_lrs = list(trainer.lr_scheduler_configs[0].scheduler.base_lrs)


def test_a_restored_fit_trains_with_its_own_learning_rate_and_weight_decay(tmp_path: Path, demo_assets) -> None:
    """What a PBT clone does, without Ray: fit from another run's checkpoint with other values. The optimizer
    state comes from the checkpoint; ``ApplyTrialHyperparameters`` puts the fit's own lr (schedule kept)
    and weight decay back. Without it the donor's lr and weight decay train on (checked: this test then
    sees the donor's values)."""
    from hf_lightning.tune.explore import ApplyTrialHyperparameters
    from hf_lightning.tune.ray import apply_dotted, build_cli

    config = yaml.safe_load(_sweep_config(tmp_path, {}, max_epochs=1, num_sanity_val_steps=0).read_text())
    config.pop("tune")
    config["model"].update(warmup_steps=2, weight_decay=0.1)  # linear schedule with warm-up: lr moves per step
    donor = build_cli(config, run_dir=str(tmp_path / "donor"))
    donor.trainer.fit(donor.model, datamodule=donor.datamodule)
    ckpt = tmp_path / "donor.ckpt"
    donor.trainer.save_checkpoint(ckpt)
    donor_lrs = [g["lr"] for g in donor.trainer.optimizers[0].param_groups]

    clone = build_cli(apply_dotted(config, {"model.learning_rate": GOOD_LR * 0.5, "model.weight_decay": 0.2,
                                            "trainer.max_epochs": 2}), run_dir=str(tmp_path / "clone"))
    record = RecordStartLr()
    clone.trainer.callbacks[:0] = [ApplyTrialHyperparameters(), record]
    clone.trainer.fit(clone.model, datamodule=clone.datamodule, ckpt_path=str(ckpt))
    assert record.lrs == pytest.approx([lr * 0.5 for lr in donor_lrs], rel=1e-9) and donor_lrs[0] != GOOD_LR
    assert record.base_lrs == pytest.approx([GOOD_LR * 0.5] * len(record.base_lrs), rel=1e-9)
    assert sorted(set(record.weight_decays)) == [0.0, 0.2], "the decayed groups take 0.2, no-decay ones stay at 0"
