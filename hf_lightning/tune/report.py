"""What a finished sweep leaves for a person: a results table (printed, CSV, JSON), the best trial as a
runnable fit YAML, and a plot of the metric against the searched parameters and the validations run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

__all__ = ["results_rows", "write_outputs"]

RESULTS_CSV, RESULTS_JSON, BEST_YAML, PLOT = "results.csv", "results.json", "best_config.yaml", "results.png"


def results_rows(sweep: Any, results: Any) -> list[dict[str, Any]]:
    """One row per trial: id, parameters, last and best metric, validations run, status."""
    s = sweep.settings
    rows = []
    for result in results:
        metrics = result.metrics or {}
        history = _history(result, s.metric)
        best = (min if s.mode == "min" else max)(history) if history else None
        rows.append({
            "trial": metrics.get("trial_id") or Path(str(result.path)).name,
            **{name: result.config.get(name) for name in (p.name for p in s.params)},
            s.metric: metrics.get(s.metric),
            f"best_{s.metric}": best,
            "iterations": int(metrics.get("training_iteration") or 0),
            "status": "ERROR" if result.error is not None else "TERMINATED",
        })
    most = max((r["iterations"] for r in rows), default=0)
    for row in rows:  # a scheduler's early stop: fewer validations than the longest trial
        if row["status"] == "TERMINATED" and row["iterations"] < most:
            row["status"] = "STOPPED_EARLY"
    return rows


def write_outputs(sweep: Any, results: Any) -> dict[str, Path]:
    """Print the table and write CSV, JSON, the best config and the plot under the run directory."""
    s = sweep.settings
    run_dir = Path(sweep.run_dir)
    rows = results_rows(sweep, results)
    print(format_table(rows))
    paths = {"csv": run_dir / RESULTS_CSV, "json": run_dir / RESULTS_JSON}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    ok = [r for r in results if r.error is None and r.metrics and s.metric in r.metrics]
    best = results.get_best_result(metric=s.metric, mode=s.mode, scope="last") if ok else None
    summary: dict[str, Any] = {"metric": s.metric, "mode": s.mode, "trials": rows}
    if best is not None:
        from hf_lightning.tune.ray import apply_dotted

        params = {p.name: best.config.get(p.name) for p in s.params}
        config = apply_dotted(sweep.fit_config, params)
        config.setdefault("trainer", {})["default_root_dir"] = str(run_dir / "best_fit")
        paths["best_config"] = run_dir / BEST_YAML
        header = (f"# The best trial of sweep {sweep.name!r} ({s.metric} = {best.metrics[s.metric]:.6g}).\n"
                  f"# Reproduce it: hf-lightning fit --config {paths['best_config']}\n")
        paths["best_config"].write_text(header + yaml.safe_dump(config, sort_keys=False))
        checkpoint = best.checkpoint.path if best.checkpoint is not None else None
        summary["best"] = {"params": params, s.metric: best.metrics[s.metric], "checkpoint": checkpoint,
                           "config": str(paths["best_config"])}
    paths["json"].write_text(json.dumps(summary, indent=2, default=str))
    paths["plot"] = plot(sweep, results, run_dir / PLOT)
    print(f"Sweep results: {paths['csv']}, {paths['json']}, plot {paths['plot']}")
    if best is not None:
        print(f"Best trial: {summary['best']['params']} {s.metric}={summary['best'][s.metric]:.6g}; "
              f"reproduce with: hf-lightning fit --config {paths['best_config']}")
    return paths


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    cells = [[_fmt(v) for v in row.values()] for row in rows]
    headers = list(rows[0])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join([line, "-" * len(line), *body])


def plot(sweep: Any, results: Any, path: Path) -> Path:
    """The metric against each searched parameter (last value per trial) and against validations run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = sweep.settings
    fig, axes = plt.subplots(1, len(s.params) + 1, figsize=(4.5 * (len(s.params) + 1), 3.6), squeeze=False)
    for ax, param in zip(axes[0], s.params):
        points = [(r.config.get(param.name), r.metrics.get(s.metric)) for r in results if r.metrics]
        points = [(x, y) for x, y in points if _number(x) and _number(y)]
        ax.scatter([x for x, _ in points], [y for _, y in points])
        if param.distribution == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(param.name)
        ax.set_ylabel(s.metric)
    curves = axes[0][-1]
    for result in results:
        history = _history(result, s.metric)
        if history:
            curves.plot(range(1, len(history) + 1), history, marker="o", label=Path(str(result.path)).name[-11:])
    curves.set_xlabel("validations (training_iteration)")
    curves.set_ylabel(s.metric)
    fig.suptitle(f"sweep {sweep.name}: {s.metric} ({s.mode})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _history(result: Any, metric: str) -> list[float]:
    frame = result.metrics_dataframe
    if frame is None or metric not in getattr(frame, "columns", ()):
        return []
    return [float(v) for v in frame[metric].tolist() if _number(v)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return "" if value is None else str(value)
