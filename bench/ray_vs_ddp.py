"""Ray Train against plain DDP: the same ``hf-lightning fit`` config, 2 CPU workers each way.

Both runs are separate ``hf-lightning fit`` processes on the same config (a 2-layer, 64-wide BERT on
the offline demo data, no validation): one with ``--trainer.devices=2 --trainer.strategy=ddp``, one
with ``--ray.num_workers=2`` (a local Ray on 127.0.0.1 started by that process). A callback on rank 0
stamps the wall clock at every optimizer step; the launcher stamps the process start. Reported:

* start-up: process start -> end of the first optimizer step (imports, Ray start, worker spawn,
  data loading, model build, first step);
* per step: mean time of the steps after the first;
* total: process start -> exit (for Ray: including the final checkpoint upload and shutdown).

    python bench/ray_vs_ddp.py --steps 30          # markdown table
    python bench/ray_vs_ddp.py --steps 30 --json   # raw rows

Figures go to docs/benchmarks.md; tests never assert on time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = ('{"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, '
         '"intermediate_size": 128, "max_position_embeddings": 64}')


class StepClock(pl.Callback):
    """Rank 0 writes ``[t_step1, t_step2, ...]`` (wall clock after each optimizer step) to ``path`` at the end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamps: list[float] = []
        self._step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            self.stamps.append(time.time())

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(self.stamps))


def summarize(name: str, start: float, end: float, stamps: list[float]) -> dict[str, Any]:
    """Start-up, mean step time after the first step, and total, in seconds."""
    if len(stamps) < 2:
        raise ValueError(f"{name}: need at least 2 optimizer steps, got {len(stamps)}")
    return {"runner": name, "steps": len(stamps), "startup_s": stamps[0] - start,
            "step_s": (stamps[-1] - stamps[0]) / (len(stamps) - 1), "total_s": end - start}


def _run(name: str, extra: list[str], steps: int, work: Path) -> dict[str, Any]:
    clock = work / f"{name}.json"
    cmd = [sys.executable, "-m", "hf_lightning", "fit", "--config", str(REPO / "configs/quickstart.yaml"),
           f"--model.model={MODEL}", "--trainer.max_epochs=-1", f"--trainer.max_steps={steps}",
           "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--trainer.logger=false",
           "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false",
           f"--trainer.default_root_dir={work / name}", "--data.batch_size=16",
           "--trainer.callbacks+=ray_vs_ddp.StepClock", f"--trainer.callbacks.path={clock}", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1",
               # Ray gives each worker OMP_NUM_THREADS=<its CPUs> (1 here); the DDP ranks get the same.
               OMP_NUM_THREADS="1")
    start = time.time()
    run = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    end = time.time()
    if run.returncode != 0:
        raise SystemExit(f"{name} failed:\n{run.stderr[-3000:]}")
    return summarize(name, start, end, json.loads(clock.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        rows = [
            _run("ddp", ["--trainer.devices=2", "--trainer.strategy=ddp"], opts.steps, work),
            _run("ray", ["--ray.num_workers=2", f"--ray.storage_path={work / 'store'}"], opts.steps, work),
        ]
    if opts.json:
        print(json.dumps(rows))
        return
    ddp = rows[0]
    print("| runner | steps | start-up (s) | per step (ms) | total (s) | per step vs DDP |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['runner']} | {row['steps']} | {row['startup_s']:.1f} | {row['step_s'] * 1000:.0f} | "
              f"{row['total_s']:.1f} | {row['step_s'] / ddp['step_s']:.2f}x |")


if __name__ == "__main__":
    main()
