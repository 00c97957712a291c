"""The benchmark harness runs every CPU runner and reports ratios against the same run's baselines."""

from __future__ import annotations

import importlib.util
import json
import subprocess
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


@pytest.mark.slow
def test_every_cpu_runner_trains_and_is_timed(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--repeat", "1", "--output", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["runner"] for r in rows] == ["raw", "transformers", "hf_lightning", "hf_lightning-native"]
    assert all("error" not in r and r["tokens_per_s"] > 0 and r["peak_mib"] > 0 for r in rows), rows
    assert "| hf_lightning-native |" in run.stdout


def test_ray_vs_ddp_summary_separates_startup_from_steps() -> None:
    spec = importlib.util.spec_from_file_location("bench_ray_vs_ddp", ROOT / "bench" / "ray_vs_ddp.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.summarize("ray", start=100.0, end=130.0, stamps=[110.0, 112.0, 114.0, 116.0])
    assert row == {"runner": "ray", "steps": 4, "startup_s": 10.0, "step_s": 2.0, "total_s": 30.0}
    with pytest.raises(ValueError, match="at least 2 optimizer steps"):
        bench.summarize("ddp", 0.0, 1.0, [0.5])


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
    rows = {runner: bench.run_one(runner, hidden=32, layers=1, saves=2, root=tmp_path) for runner in bench.RUNNERS}
    assert all(r["saves"] == 2 and r["save_s"] > 0 for r in rows.values())
    assert {"model.safetensors", "trainer_state.json"} <= set(rows["hf_lightning"]["files"])
