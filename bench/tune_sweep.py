"""Ray Tune sweeps: what Ray costs per trial, and what ASHA's early stopping saves.

Both parts run the sweep path of ``hf-lightning tune`` (``hf_lightning.tune.ray.Sweep``: one ordinary
``fit`` of the config per trial, reporting and checkpointing to Ray at every validation) on a local Ray
bound to 127.0.0.1 (``ray.init(num_cpus=2, include_dashboard=False)``), with a 1-layer BERT on a synthetic task it
learns in a few epochs at a sensible learning rate (JSON-lines files written by ``write_task``).

(a) **Per-trial overhead.** The same N trials (same config, same learning rate, same seed) run as a plain
    Python loop of fits in this process (the CLI's own objects, built as a trial builds them, minus Ray)
    and as a Ray Tune sweep with one trial at a time. Reported: seconds per trial each way, the
    difference (Ray's overhead per trial: a worker process that imports the stack, the report and
    checkpoint at each validation, Tune's bookkeeping), Ray's start-up (``ray.init``) and the sweep's
    one-off pre-flight check, separately. The metric of both ways is printed too: they must agree.
(b) **ASHA against full trials.** 16 trials sampled (seeded) from a learning-rate range whose top end is
    hopeless, run to the end (FIFO) and under ASHA (grace period 1 validation, reduction factor 2), both
    two at a time. Reported: wall time of both and their ratio (target <= 0.5), validations run (the
    load-independent ratio), trials stopped early, and the best metric each sweep found.

    HF_HUB_OFFLINE=1 python bench/tune_sweep.py            # the figures in docs/benchmarks.md
    HF_HUB_OFFLINE=1 python bench/tune_sweep.py --tiny     # seconds-scale smoke run (the test's setting)
    ... --json PATH                                         # also write the raw figures

Nothing here is asserted on time; tests only check that the script runs and reports consistent rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Ray on loopback only (DESIGN.md, Ray); set before ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

METRIC = "eval_loss"
GOOD_LR = 3e-3
LR_RANGE = (1e-4, 3.0)  # loguniform: the top third of the range (lr >~ 0.1 with Adam) does not learn


@dataclass(frozen=True)
class Setting:
    """How big each part is."""

    overhead_trials: int
    overhead_epochs: int
    sweep_trials: int
    sweep_epochs: int
    train_samples: int
    eval_samples: int
    batch_size: int = 16


FULL = Setting(overhead_trials=4, overhead_epochs=2, sweep_trials=16, sweep_epochs=8, train_samples=512,
               eval_samples=128)
TINY = Setting(overhead_trials=2, overhead_epochs=1, sweep_trials=4, sweep_epochs=2, train_samples=32,
               eval_samples=16)


def write_task(directory: Path, setting: Setting) -> dict[str, str]:
    """A task a 1-layer BERT learns in a few epochs (so a good learning rate shows): six words drawn from
    the demo vocabulary, positive when "great" is among them (half the rows). JSON-lines train/validation."""
    import random

    from hf_lightning.demo import sentiment_lexicon

    words = [w for w in sentiment_lexicon() if w.isalpha() and w != "great"]
    rng = random.Random(0)
    files = {}
    for split, n in (("train", setting.train_samples), ("validation", setting.eval_samples)):
        rows = []
        for i in range(n):
            text = [rng.choice(words) for _ in range(6)]
            if i % 2:
                text[rng.randrange(6)] = "great"
            rows.append(json.dumps({"text": " ".join(text), "label": i % 2}))
        files[split] = str(directory / f"{split}.jsonl")
        Path(files[split]).write_text("\n".join(rows) + "\n")
    return files


def fit_config(setting: Setting, epochs: int, files: dict[str, str]) -> dict[str, Any]:
    """The fit config every trial runs (the sweep varies only ``model.learning_rate``)."""
    return {
        "seed_everything": 0,
        "model": {"task": "sequence-classification", "learning_rate": GOOD_LR,
                  "model": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 64, "max_position_embeddings": 64}},
        "data": {"dataset": "json", "data_files": files, "tokenizer": "demo:tokenizer", "max_length": 16,
                 "batch_size": setting.batch_size, "test_split": None},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "devices": 1, "enable_model_summary": False,
                    "num_sanity_val_steps": 0},
    }


def start_ray() -> float:
    """Start a local Ray on 127.0.0.1 (2 CPUs, no dashboard) unless one is running; seconds it took."""
    import ray

    if ray.is_initialized():
        return 0.0
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are limited
    return time.perf_counter() - start


def make_sweep(config: dict[str, Any], work: Path, name: str, **tune: Any) -> Any:
    from hf_lightning.tune.ray import Sweep
    from hf_lightning.tune.settings import TuneSettings

    settings = TuneSettings(metric=METRIC, mode="min", storage_path=str(work), resources_per_trial={"cpu": 1},
                            **tune)
    return Sweep(config, settings, name)


def run_tuner(sweep: Any) -> tuple[float, Any]:
    """Run the sweep's ``Tuner`` (Ray must be started); wall seconds and Ray's ``ResultGrid``."""
    sweep.save()
    start = time.perf_counter()
    results = sweep.tuner().fit()
    seconds = time.perf_counter() - start
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise SystemExit(f"sweep {sweep.name}: {len(errors)} trial(s) failed: {errors[0]}")
    return seconds, results


def plain_fit(config: dict[str, Any], run_dir: Path) -> float:
    """One ordinary fit of ``config`` (the objects a trial builds, without Ray); its final metric."""
    from hf_lightning.tune.ray import build_cli

    cli = build_cli(config, run_dir=str(run_dir))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return float(cli.trainer.callback_metrics[METRIC])


def overhead(setting: Setting, work: Path) -> dict[str, Any]:
    """(a): the same N trials as a plain loop and as a one-at-a-time Ray sweep."""
    config = fit_config(setting, setting.overhead_epochs, write_task(work, setting))
    n = setting.overhead_trials
    start = time.perf_counter()
    plain_fit(config, work / "warmup")  # imports and first-use costs, paid once per process
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    plain_metrics = [plain_fit(config, work / f"plain-{i}") for i in range(n)]
    plain = time.perf_counter() - start

    same = dict(num_samples=n, max_concurrent_trials=1, scheduler="fifo",
                search_space={"model.learning_rate": {"distribution": "choice", "values": [GOOD_LR]}})
    fresh_s, _ = run_tuner(make_sweep(config, work, "overhead-fresh", reuse_actors=False, **same))
    sweep = make_sweep(config, work, "overhead", **same)
    start = time.perf_counter()
    sweep.validate()  # what `hf-lightning tune` checks once before any trial
    preflight = time.perf_counter() - start
    ray_s, results = run_tuner(sweep)
    ordered = sorted(results, key=lambda r: r.metrics["trial_id"])
    inside = [float(r.metrics["time_total_s"]) for r in ordered]  # Ray's clock inside the trial function
    return {"trials": n, "epochs": setting.overhead_epochs, "warmup_fit_s": warmup, "preflight_s": preflight,
            "plain_s_per_trial": plain / n, "ray_s_per_trial": ray_s / n, "overhead_s_per_trial": (ray_s - plain) / n,
            "ray_fresh_process_s_per_trial": fresh_s / n, "ray_first_trial_inside_s": inside[0], "ray_later_trials_inside_s": sum(inside[1:]) / max(1, n - 1),
            "plain_metric": plain_metrics, "ray_metric": [r.metrics[METRIC] for r in ordered]}


def summarize_sweep(results: Any, max_t: int, seconds: float) -> dict[str, Any]:
    """Wall time, validations run, trials stopped before ``max_t`` and the best final metric of one sweep."""
    iterations = [int(r.metrics["training_iteration"]) for r in results]
    finals = [(float(r.metrics[METRIC]), float(r.config["model.learning_rate"])) for r in results]
    best_metric, best_lr = min(finals)
    return {"wall_s": seconds, "trials": len(iterations), "validations": sum(iterations),
            "stopped_early": sum(1 for i in iterations if i < max_t), "best_metric": best_metric, "best_lr": best_lr,
            "learning_rates": sorted(lr for _, lr in finals)}


def asha_vs_full(setting: Setting, work: Path) -> dict[str, Any]:
    """(b): the same 16 sampled trials to the end (FIFO) and under ASHA, two at a time."""
    config = fit_config(setting, setting.sweep_epochs, write_task(work, setting))
    space = {"model.learning_rate": {"distribution": "loguniform", "low": LR_RANGE[0], "high": LR_RANGE[1]}}
    common = dict(search_space=space, num_samples=setting.sweep_trials, max_concurrent_trials=2, seed=0)
    rows = {}
    for scheduler in ("asha", "fifo"):
        sweep = make_sweep(config, work, f"sweep-{scheduler}", scheduler=scheduler, grace_period=1,
                           reduction_factor=2, **common)
        seconds, results = run_tuner(sweep)
        rows[scheduler] = summarize_sweep(results, setting.sweep_epochs, seconds)
    asha, fifo = rows["asha"], rows["fifo"]
    if asha["learning_rates"] != fifo["learning_rates"]:
        raise SystemExit("the two sweeps sampled different learning rates: the comparison would be unfair")
    return {"epochs": setting.sweep_epochs, "asha": asha, "fifo": fifo, "wall_ratio": asha["wall_s"] / fifo["wall_s"],
            "validation_ratio": asha["validations"] / fifo["validations"]}


def report(figures: dict[str, Any]) -> str:
    a, b = figures["overhead"], figures["asha"]
    lines = [
        f"Ray start-up (ray.init, 2 CPUs, 127.0.0.1): {figures['ray_startup_s']:.1f} s",
        f"(a) {a['trials']} identical trials of {a['epochs']} epoch(s), one at a time "
        f"(first plain fit, imports included: {a['warmup_fit_s']:.1f} s; sweep pre-flight check: {a['preflight_s']:.1f} s)",
        "| way | s / trial | final eval_loss |",
        "|---|---|---|",
        f"| plain loop of fits | {a['plain_s_per_trial']:.2f} | {_metrics(a['plain_metric'])} |",
        f"| Ray Tune sweep | {a['ray_s_per_trial']:.2f} | {_metrics(a['ray_metric'])} |",
        f"| Ray Tune sweep, a fresh worker process per trial (reuse_actors: false) | "
        f"{a['ray_fresh_process_s_per_trial']:.2f} | |",
        f"Ray overhead per trial: {a['overhead_s_per_trial']:.2f} s "
        f"({a['ray_s_per_trial'] / a['plain_s_per_trial']:.2f}x a plain fit); inside the trial function "
        f"(Ray's time_total_s): first trial {a['ray_first_trial_inside_s']:.2f} s (the worker imports the stack), "
        f"later trials {a['ray_later_trials_inside_s']:.2f} s each (same worker, reused)",
        f"(b) {b['fifo']['trials']} trials, learning rate loguniform {LR_RANGE[0]:g}..{LR_RANGE[1]:g}, "
        f"{b['epochs']} epochs (validations) each, 2 at a time",
        "| scheduler | wall (s) | validations run | stopped early | best eval_loss (lr) |",
        "|---|---|---|---|---|",
    ]
    for name in ("fifo", "asha"):
        row = b[name]
        lines.append(f"| {name} | {row['wall_s']:.1f} | {row['validations']} | {row['stopped_early']} | "
                     f"{row['best_metric']:.4f} ({row['best_lr']:.2g}) |")
    lines.append(f"ASHA / full trials: {b['wall_ratio']:.2f}x wall time, {b['validation_ratio']:.2f}x validations "
                 "(target <= 0.5x)")
    return "\n".join(lines)


def _metrics(values: list[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-scale run (what the test uses)")
    parser.add_argument("--json", help="also write the figures to this file")
    opts = parser.parse_args(argv)
    setting = TINY if opts.tiny else FULL
    import ray
    import torch

    torch.set_num_threads(1)  # what Ray gives a 1-CPU trial: the plain loop runs under the same rule
    started_here = not ray.is_initialized()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
            work = Path(tmp)
            figures: dict[str, Any] = {"setting": setting.__dict__, "ray_startup_s": start_ray()}
            figures["overhead"] = overhead(setting, work)
            figures["asha"] = asha_vs_full(setting, work)
    finally:
        if started_here:
            ray.shutdown()
    print(report(figures))
    if opts.json:
        Path(opts.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
