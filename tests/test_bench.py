"""The benchmark harness runs every CPU runner and reports ratios against the same run's baselines."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_throughput", ROOT / "bench" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_ratios_come_from_the_same_rows() -> None:
    bench = _bench_module()
    rows = [{"runner": "raw", "tokens_per_s": 100.0, "step_ms": 10.0, "peak_mib": 50.0},
            {"runner": "transformers", "tokens_per_s": 80.0, "step_ms": 12.5, "peak_mib": 40.0},
            {"runner": "hf_lightning", "tokens_per_s": 90.0, "step_ms": 11.1, "peak_mib": 44.0},
            {"runner": "hf_lightning-fsdp", "error": ["CUDA required"]}]
    lines = bench.table(rows).splitlines()
    assert lines[4].split("|")[5:8] == [" 0.900 ", " 1.125 ", " 1.100 "]
    assert "failed: CUDA required" in lines[5]


def test_cpu_time_table_gives_step_cost_as_a_multiple_of_raw_and_transformers() -> None:
    rows = [{"runner": "raw", "cpu_step_ms": 30.0}, {"runner": "transformers", "cpu_step_ms": 33.9},
            {"runner": "hf_lightning", "cpu_step_ms": 30.6}, {"runner": "hf_lightning-fsdp", "error": ["CUDA required"]}]
    lines = _bench_module().cpu_table(rows).splitlines()
    assert lines[4] == "| hf_lightning | 30.6 | 1.020 | 0.903 | n/a |"
    assert len(lines) == 5  # failed runners have no CPU time


def test_cpu_ratios_pair_each_round_with_the_baselines_run_beside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine that slows down between rounds moves every runner of that round, not the ratios."""
    bench = _bench_module()
    times = iter([10.0, 11.0, 10.5, 20.0, 22.0, 21.0, 30.0, 33.0, 31.5])  # rounds 2 and 3 on a slower machine
    monkeypatch.setattr(bench, "_in_process", lambda runner, preset: {"runner": runner, "tokens_per_s": 1.0,
                        "step_ms": 1.0, "cpu_step_ms": next(times), "peak_mib": 1.0, "wall_s": 1.0})
    rows = bench.interleaved(["raw", "transformers", "hf_lightning"], "smoke", 3, in_process=True)
    ours = rows[2]
    assert ours["cpu_x_raw"] == pytest.approx(1.05) and ours["cpu_x_transformers"] == pytest.approx(10.5 / 11)
    assert bench.cpu_table(rows).splitlines()[4] == "| hf_lightning | 21.0 | 1.050 | 0.955 | 0.955-0.955 |"


@pytest.mark.parametrize("preset", ["smoke", "smoke-bert"])
def test_every_cpu_runner_trains_and_is_timed(tmp_path: Path, preset: str, capsys: pytest.CaptureFixture) -> None:
    """Every runner of both model families, a few steps of a minute model, in this process.

    The figures run each runner in its own process; here the libraries are imported once for all
    runners, which keeps the check to seconds.
    """
    bench = _bench_module()
    out = tmp_path / "rows.json"
    bench.main(["--preset", preset, "--in-process", "--repeat", "1", "--output", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["runner"] for r in rows] == ["raw", "transformers", "hf_lightning", "hf_lightning-native"]
    assert all("error" not in r and r["tokens_per_s"] > 0 and r["peak_mib"] > 0 for r in rows), rows
    assert "| hf_lightning-native |" in capsys.readouterr().out
    bench.main(["--runner", "raw", "--preset", preset, "--json"])  # what each figure's own process runs
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["runner"] == "raw" and row["preset"] == preset and row["step_ms"] > 0


def test_ray_vs_ddp_summary_separates_startup_from_steps() -> None:
    spec = importlib.util.spec_from_file_location("bench_ray_vs_ddp", ROOT / "bench" / "ray_vs_ddp.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.summarize("ray", start=100.0, end=130.0, stamps=[110.0, 112.0, 114.0, 116.0])
    assert row == {"runner": "ray", "steps": 4, "startup_s": 10.0, "step_s": 2.0, "total_s": 30.0}
    with pytest.raises(ValueError, match="at least 2 optimizer steps"):
        bench.summarize("ddp", 0.0, 1.0, [0.5])


def _load(name: str):
    """A bench script as a module, registered in sys.modules (its dataclasses look their module up there)."""
    if f"bench_{name}" in sys.modules:
        return sys.modules[f"bench_{name}"]
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_eval_memory_bench_measures_both_trainers_on_a_tiny_setting() -> None:
    """In-process (the script runs these same functions in child processes): rows, speeds and the table."""
    bench = _load("eval_memory")
    rows = [row for runner in bench.RUNNERS for row in bench.run_memory(runner, [8, 16], 64, 8, 4)]
    assert [(r["runner"], r["samples"]) for r in rows] == [("transformers", 8), ("transformers", 16),
                                                           ("hf_lightning", 8), ("hf_lightning", 16)]
    assert rows[1]["accuracy"] == rows[3]["accuracy"]  # same model, same data, same compute_metrics
    speed = bench.run_speed(8, 64, 8, 4, repeat=1)
    assert all(speed[r][m] > 0 for r in bench.RUNNERS for m in ("with_metrics", "loss_only"))
    assert "| hf_lightning | 16 |" in bench.table(rows, speed)


def test_checkpoint_cost_bench_times_both_trainers_saves(tmp_path: Path) -> None:
    bench = _load("checkpoint_cost")
    rows = {runner: bench.run_one(runner, hidden=32, layers=1, saves=2, root=tmp_path, train_seconds=0.01)
            for runner in bench.RUNNERS}
    assert all(r["saves"] == 2 and r["save_s"] > 0 and r["durable_s"] > 0 for r in rows.values())
    assert {"model.safetensors", "trainer_state.json"} <= set(rows["hf_lightning"]["files"])
    # the end of training's wait for hf_lightning's background fsyncs was timed, then put back
    from hf_lightning.checkpoint_io import wait_for_durability
    from hf_lightning.facade import fit

    assert fit.wait_for_durability is wait_for_durability


def test_tune_sweep_task_and_report(tmp_path: Path, demo_assets) -> None:
    bench = _load("tune_sweep")
    files = bench.write_task(tmp_path, bench.TINY)
    rows = [json.loads(line) for line in Path(files["train"]).read_text().splitlines()]
    assert len(rows) == bench.TINY.train_samples and all(r["label"] == ("great" in r["text"].split()) for r in rows)
    sweep = {"wall_s": 10.0, "trials": 4, "validations": 8, "stopped_early": 0, "best_metric": 0.1, "best_lr": 1e-3}
    figures = {"ray_startup_s": 3.0, "overhead": {
        "trials": 2, "epochs": 1, "warmup_fit_s": 5.0, "preflight_s": 1.0, "plain_s_per_trial": 2.0,
        "ray_s_per_trial": 3.0, "overhead_s_per_trial": 1.0, "ray_fresh_process_s_per_trial": 9.0,
        "ray_first_trial_inside_s": 4.0, "ray_later_trials_inside_s": 2.5, "plain_metric": [0.5, 0.5],
        "ray_metric": [0.5, 0.5]},
        "asha": {"epochs": 2, "fifo": sweep, "asha": dict(sweep, wall_s=4.0, validations=5, stopped_early=3),
                 "wall_ratio": 0.4, "validation_ratio": 0.625}}
    text = bench.report(figures)
    assert "Ray overhead per trial: 1.00 s (1.50x a plain fit)" in text
    assert "| asha | 4.0 | 5 | 3 | 0.1000 (0.001) |" in text
    assert "ASHA / full trials: 0.40x wall time, 0.62x validations" in text


@pytest.mark.slow
def test_tune_sweep_benchmark_runs_on_the_tiny_setting(ray_local, demo_assets, tmp_path: Path, capsys) -> None:
    """bench/tune_sweep.py --tiny on the session's local Ray: both parts run and their rows agree."""
    bench = _load("tune_sweep")
    figures = bench.main(["--tiny", "--json", str(tmp_path / "figures.json")])
    assert json.loads((tmp_path / "figures.json").read_text()) == figures
    a, b = figures["overhead"], figures["asha"]
    assert figures["ray_startup_s"] == 0.0, "the running Ray was reused"
    # the same trial inside Ray and in a plain fit: the same metric (Ray adds time, not a different run)
    assert a["ray_metric"] == pytest.approx(a["plain_metric"], abs=1e-6) and len(a["ray_metric"]) == bench.TINY.overhead_trials
    full = bench.TINY.sweep_trials * bench.TINY.sweep_epochs
    assert b["fifo"]["validations"] == full and b["fifo"]["stopped_early"] == 0
    assert b["asha"]["validations"] <= full  # which trials ASHA stops depends on arrival order: not asserted
    assert b["asha"]["learning_rates"] == b["fifo"]["learning_rates"]
    assert "ASHA / full trials:" in capsys.readouterr().out
