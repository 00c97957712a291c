"""Peak host memory and speed of ``evaluate()`` with ``compute_metrics``: hf_lightning against transformers.Trainer.

A ``compute_metrics`` must be handed every logit of the evaluation set (HF's ``EvalPrediction``), so the
least an evaluation can hold is the logits once. For each evaluation-set size this prints the growth of
peak RSS during ``evaluate()`` (the kernel's high-water mark, reset just before the call) divided by
the size of those logits, and the samples/s of the same call and of a loss-only ``evaluate()``. Each
trainer runs in its own process, the runners interleaved and repeated; the table shows medians.

    python bench/eval_memory.py                       # GPT-2 vocabulary size (8,000 tokens x 64 positions)
    python bench/eval_memory.py --sizes 8 16 --vocab 256 --repeat 1   # seconds: the smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUNNERS = ("transformers", "hf_lightning")
ROOT = Path(__file__).resolve().parents[1]


def _status_mib(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return that RSS in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def run_one(runner: str, sizes: list[int], vocab: int, positions: int, batch: int) -> list[dict[str, Any]]:
    """In this process: build ``runner``'s trainer on a tiny GPT-2 and measure ``evaluate()`` at each size."""
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(1)
    if runner == "hf_lightning":
        import hf_lightning

        trainer_cls, args_cls = hf_lightning.Trainer, hf_lightning.TrainingArguments
    else:
        trainer_cls, args_cls = transformers.Trainer, transformers.TrainingArguments
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(0)

    def dataset(rows: int) -> list[dict[str, torch.Tensor]]:
        ids = torch.randint(0, vocab, (rows, positions), generator=generator)
        return [{"input_ids": row, "labels": row} for row in ids]

    def compute_metrics(prediction: Any) -> dict[str, float]:  # all the logits, as a user's metric gets them
        logits, labels = prediction.predictions, prediction.label_ids
        hits = total = 0
        for start in range(0, len(logits), 16):  # argmax in slices: the metric itself adds little memory
            predicted = logits[start:start + 16, :-1].argmax(-1)
            gold = labels[start:start + 16, 1:]
            hits += int(((predicted == gold) & (gold != -100)).sum())
            total += int((gold != -100).sum())
        return {"accuracy": hits / max(total, 1)}

    args = args_cls(output_dir=tempfile.mkdtemp(prefix="eval_memory_"), report_to="none", use_cpu=True,
                    per_device_eval_batch_size=batch, disable_tqdm=True, dataloader_num_workers=0)
    trainer = trainer_cls(model=model, args=args, compute_metrics=compute_metrics)
    trainer.evaluate(dataset(batch * 2))  # warm-up: lazy initialisation is not evaluation memory
    rows = []
    for size in sizes:
        data = dataset(size)
        base = _reset_peak()
        start = time.perf_counter()
        metrics = trainer.evaluate(data)
        seconds = time.perf_counter() - start
        growth = _status_mib("VmHWM") - base
        trainer.compute_metrics = None
        start = time.perf_counter()
        trainer.evaluate(data)
        loss_only = time.perf_counter() - start
        trainer.compute_metrics = compute_metrics
        logits_mib = size * positions * vocab * np.dtype(np.float32).itemsize / 2**20
        rows.append({"runner": runner, "samples": size, "logits_mib": round(logits_mib, 1),
                     "growth_mib": round(growth, 1), "growth_per_logits": round(growth / logits_mib, 3),
                     "samples_per_s": round(size / seconds, 1), "loss_only_samples_per_s": round(size / loss_only, 1),
                     "accuracy": metrics["eval_accuracy"]})
    return rows


def _median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for group in zip(*runs):
        row = dict(group[0])
        for key in ("growth_mib", "growth_per_logits", "samples_per_s", "loss_only_samples_per_s"):
            row[key] = statistics.median(r[key] for r in group)
        out.append(row)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table with hf_lightning's ratios to transformers at the same size."""
    lines = ["| runner | samples | logits MiB | peak growth MiB | growth / logits | eval samples/s "
             "| loss-only samples/s | speed vs transformers |", "|---|---|---|---|---|---|---|---|"]
    reference = {r["samples"]: r for r in rows if r["runner"] == "transformers"}
    for r in rows:
        ref = reference.get(r["samples"])
        speed = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref else "-"
        lines.append(f"| {r['runner']} | {r['samples']} | {r['logits_mib']:.1f} | {r['growth_mib']:.1f} "
                     f"| {r['growth_per_logits']:.2f}x | {r['samples_per_s']:.1f} | {r['loss_only_samples_per_s']:.1f} "
                     f"| {speed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 480])
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--positions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--child", choices=RUNNERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.sizes, args.vocab, args.positions, args.batch)))
        return
    runs: dict[str, list[list[dict[str, Any]]]] = {r: [] for r in RUNNERS}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for _ in range(args.repeat):  # interleaved: a busy spell on the shared machine hits both runners
        for runner in RUNNERS:
            command = [sys.executable, __file__, "--child", runner, "--sizes", *map(str, args.sizes),
                       "--vocab", str(args.vocab), "--positions", str(args.positions), "--batch", str(args.batch)]
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(f"{runner} failed:\n{done.stderr[-3000:]}")
            runs[runner].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = [row for runner in RUNNERS for row in _median_rows(runs[runner])]
    print(table(rows))
    if args.output is not None:
        args.output.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
