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


def _dataset(rows: int, vocab: int, positions: int) -> list[dict[str, Any]]:
    import torch

    ids = torch.randint(0, vocab, (rows, positions), generator=torch.Generator().manual_seed(rows))
    return [{"input_ids": row, "labels": row} for row in ids]


def _trainer(runner: str, vocab: int, positions: int, batch: int) -> Any:
    """``runner``'s trainer on a tiny GPT-2 (the same weights for both) with an accuracy ``compute_metrics``."""
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
    trainer.evaluate(_dataset(batch * 2, vocab, positions))  # warm-up: lazy initialisation is not evaluation memory
    return trainer


def run_memory(runner: str, sizes: list[int], vocab: int, positions: int, batch: int) -> list[dict[str, Any]]:
    """In this process: peak RSS growth of ``runner``'s ``evaluate()`` at each size, over the logits' size."""
    trainer = _trainer(runner, vocab, positions, batch)
    rows = []
    for size in sizes:
        data = _dataset(size, vocab, positions)
        base = _reset_peak()
        metrics = trainer.evaluate(data)
        growth = _status_mib("VmHWM") - base
        logits_mib = size * positions * vocab * 4 / 2**20  # float32
        rows.append({"runner": runner, "samples": size, "logits_mib": round(logits_mib, 1),
                     "growth_mib": round(growth, 1), "growth_per_logits": round(growth / logits_mib, 3),
                     "accuracy": metrics["eval_accuracy"]})
    return rows


def run_speed(size: int, vocab: int, positions: int, batch: int, repeat: int) -> dict[str, dict[str, float]]:
    """In this process: samples/s of ``evaluate()`` with and without ``compute_metrics``, both trainers
    alternating call by call (median of ``repeat``), so the shared machine's load hits both alike."""
    trainers = {runner: _trainer(runner, vocab, positions, batch) for runner in RUNNERS}
    data = _dataset(size, vocab, positions)
    seconds: dict[str, dict[str, list[float]]] = {r: {"with_metrics": [], "loss_only": []} for r in RUNNERS}
    for _ in range(repeat):
        for mode in ("with_metrics", "loss_only"):
            for runner, trainer in trainers.items():
                metric = trainer.compute_metrics
                if mode == "loss_only":
                    trainer.compute_metrics = None
                start = time.perf_counter()
                trainer.evaluate(data)
                seconds[runner][mode].append(time.perf_counter() - start)
                trainer.compute_metrics = metric
    return {r: {mode: round(size / statistics.median(t), 1) for mode, t in modes.items()} for r, modes in seconds.items()}


def _median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for group in zip(*runs):
        row = dict(group[0])
        for key in ("growth_mib", "growth_per_logits"):
            row[key] = statistics.median(r[key] for r in group)
        out.append(row)
    return out


def table(rows: list[dict[str, Any]], speed: dict[str, dict[str, float]] | None) -> str:
    """Markdown: memory per runner and size, then samples/s with hf_lightning's ratio to transformers."""
    lines = ["| runner | samples | logits MiB | peak RSS growth MiB | growth / logits |", "|---|---|---|---|---|"]
    lines += [f"| {r['runner']} | {r['samples']} | {r['logits_mib']:.1f} | {r['growth_mib']:.1f} "
              f"| {r['growth_per_logits']:.2f}x |" for r in rows]
    if speed:
        lines += ["", "| evaluate() samples/s | transformers | hf_lightning | hf_lightning / transformers |",
                  "|---|---|---|---|"]
        for mode, label in (("with_metrics", "with compute_metrics"), ("loss_only", "loss only")):
            a, b = speed["transformers"][mode], speed["hf_lightning"][mode]
            lines.append(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    return "\n".join(lines)


def _child(args: argparse.Namespace, mode: str) -> Any:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--child", mode, "--sizes", *map(str, args.sizes), "--vocab", str(args.vocab),
               "--positions", str(args.positions), "--batch", str(args.batch), "--repeat", str(args.repeat),
               "--speed-samples", str(args.speed_samples)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 480], help="evaluation-set sizes (memory)")
    parser.add_argument("--speed-samples", type=int, default=96, help="evaluation-set size of the speed runs (0: none)")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--positions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--child", choices=[*RUNNERS, "speed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "speed":
        print(json.dumps(run_speed(args.speed_samples, args.vocab, args.positions, args.batch, args.repeat)))
        return
    if args.child:
        print(json.dumps(run_memory(args.child, args.sizes, args.vocab, args.positions, args.batch)))
        return
    runs: dict[str, list[list[dict[str, Any]]]] = {r: [] for r in RUNNERS}
    for _ in range(args.repeat):  # each trainer in its own process, interleaved
        for runner in RUNNERS:
            runs[runner].append(_child(args, runner))
    rows = [row for runner in RUNNERS for row in _median_rows(runs[runner])]
    speed = _child(args, "speed") if args.speed_samples else None
    print(table(rows, speed))
    if args.output is not None:
        args.output.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows, "speed": speed}, indent=1))


if __name__ == "__main__":
    main()
