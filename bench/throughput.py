"""Training throughput and peak memory: hf_lightning against a raw PyTorch loop and transformers.Trainer.

Every runner trains the same randomly initialised model (GPT-2, or a 2-layer BERT classifier with
``--preset bert``) on the same synthetic, unpadded token rows
(AdamW, linear schedule, clipping at 1.0, no evaluation, no checkpoints), so the only difference is
the training engine. Each runner runs in its own process (clean peak-memory counters, no shared
caches) and times the optimizer steps after a warm-up, with the GPU synchronised at both ends.

    python bench/throughput.py                      # tiny CPU settings, all runners, markdown table
    python bench/throughput.py --preset bert        # 2-layer BERT (hidden 128, seq 64, batch 16) on CPU
    python bench/throughput.py --preset gpu         # GPT-2 small, bf16, on one CUDA device
    python bench/throughput.py --runner raw --json  # one runner in this process (what the table calls)

Figures go to docs/benchmarks.md; tests never assert on time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(model="gpt2", layers=2, hidden=64, heads=2, seq=64, batch=8, steps=30, warmup=5, precision="32",
                vocab=1000),
    # A realistic small encoder (the quickstart's size): per-step host overhead against real compute.
    "bert": dict(model="bert", layers=2, hidden=128, heads=4, seq=64, batch=16, steps=40, warmup=5,
                 precision="32", vocab=8000),
    "gpu": dict(model="gpt2", layers=12, hidden=768, heads=12, seq=512, batch=16, steps=40, warmup=10,
                precision="bf16", vocab=50257),
    # Only for tests of the harness: a few steps of minute models.
    "smoke": dict(model="gpt2", layers=1, hidden=16, heads=2, seq=16, batch=4, steps=3, warmup=1, precision="32",
                  vocab=100),
    "smoke-bert": dict(model="bert", layers=1, hidden=16, heads=2, seq=16, batch=4, steps=3, warmup=1,
                       precision="32", vocab=100),
}
RUNNERS = ("raw", "transformers", "hf_lightning", "hf_lightning-native")
STRATEGY_RUNNERS = ("hf_lightning-fsdp", "hf_lightning-deepspeed")


# ---------------------------------------------------------------------------- shared pieces
def _model(cfg: dict[str, Any]):
    import torch
    import transformers

    torch.manual_seed(0)
    if cfg["model"] == "bert":
        config = transformers.BertConfig(num_hidden_layers=cfg["layers"], hidden_size=cfg["hidden"],
                                         num_attention_heads=cfg["heads"], intermediate_size=2 * cfg["hidden"],
                                         max_position_embeddings=cfg["seq"], vocab_size=cfg["vocab"], num_labels=2)
        return transformers.BertForSequenceClassification(config)
    config = transformers.GPT2Config(n_layer=cfg["layers"], n_embd=cfg["hidden"], n_head=cfg["heads"],
                                     n_positions=cfg["seq"], vocab_size=cfg["vocab"])
    return transformers.GPT2LMHeadModel(config)


def _rows(cfg: dict[str, Any]):
    """Unpadded rows so that every engine does identical work per step."""
    import datasets
    import torch

    generator = torch.Generator().manual_seed(0)
    count = (cfg["steps"] + cfg["warmup"]) * cfg["batch"]
    ids = torch.randint(0, cfg["vocab"], (count, cfg["seq"]), generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator) if cfg["model"] == "bert" else ids
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()}).with_format("torch")


class StepClock:
    """Wall time at the end of every optimizer step (device synchronised), and this process's CPU time.

    On a CPU run with one thread the CPU time per step is what the step costs on an idle machine,
    however busy the machine is; wall time also counts the waits for a core.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def tick(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())


def _hf_clock_callback(clock: StepClock):
    import transformers

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    return Clock()


def _training_arguments(cls, cfg: dict[str, Any], out: str, **extra: Any):
    import torch

    bf16 = cfg["precision"] == "bf16"
    return cls(output_dir=out, per_device_train_batch_size=cfg["batch"], max_steps=cfg["steps"] + cfg["warmup"],
               learning_rate=1e-4, max_grad_norm=1.0, logging_steps=10_000, save_strategy="no", report_to="none",
               disable_tqdm=True, bf16=bf16, use_cpu=not torch.cuda.is_available(),
               train_sampling_strategy="sequential", dataloader_num_workers=0, **extra)


# ---------------------------------------------------------------------------- runners
def run_raw(cfg: dict[str, Any], clock: StepClock, out: str) -> None:
    """What a careful person writes by hand: autocast, clip, fused AdamW, linear schedule."""
    import contextlib

    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(cfg).to(device).train()
    loader = torch.utils.data.DataLoader(_rows(cfg), batch_size=cfg["batch"], shuffle=False)
    # fused: the kernel transformers.Trainer and hf_lightning use by default, so that only the engine differs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    total = cfg["steps"] + cfg["warmup"]
    scheduler = transformers.get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=total)
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if cfg["precision"] == "bf16"
                else contextlib.nullcontext())
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick()


def run_transformers(cfg: dict[str, Any], clock: StepClock, out: str) -> None:
    import transformers

    args = _training_arguments(transformers.TrainingArguments, cfg, out)
    trainer = transformers.Trainer(model=_model(cfg), args=args, train_dataset=_rows(cfg),
                                   callbacks=[_hf_clock_callback(clock)])
    trainer.train()


def run_hf_lightning(cfg: dict[str, Any], clock: StepClock, out: str, **extra: Any) -> None:
    from hf_lightning import Trainer, TrainingArguments

    args = _training_arguments(TrainingArguments, cfg, out, **extra)
    trainer = Trainer(model=_model(cfg), args=args, train_dataset=_rows(cfg), callbacks=[_hf_clock_callback(clock)])
    trainer.train()


def run_hf_lightning_native(cfg: dict[str, Any], clock: StepClock, out: str) -> None:
    import lightning.pytorch as pl
    import torch

    from hf_lightning.data import build_dataloader
    from hf_lightning.module import HFLightningModule

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.tick()

    task = "sequence-classification" if cfg["model"] == "bert" else "causal-lm"
    module = HFLightningModule(model=_model(cfg), task=task, learning_rate=1e-4)
    loader = build_dataloader(_rows(cfg), cfg["batch"], None, train=True, shuffle=False)
    trainer = pl.Trainer(accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1,
                         precision="bf16-mixed" if cfg["precision"] == "bf16" else "32-true",
                         max_steps=cfg["steps"] + cfg["warmup"], gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[Clock()], default_root_dir=out)
    trainer.fit(module, train_dataloaders=loader)


def run(runner: str, cfg: dict[str, Any], out: str) -> dict[str, Any]:
    import torch

    clock = StepClock()
    start = time.perf_counter()
    if runner == "raw":
        run_raw(cfg, clock, out)
    elif runner == "transformers":
        run_transformers(cfg, clock, out)
    elif runner == "hf_lightning":
        run_hf_lightning(cfg, clock, out)
    elif runner == "hf_lightning-native":
        run_hf_lightning_native(cfg, clock, out)
    elif runner == "hf_lightning-fsdp":
        run_hf_lightning(cfg, clock, out, fsdp="full_shard auto_wrap")
    elif runner == "hf_lightning-deepspeed":
        run_hf_lightning(cfg, clock, out, deepspeed={
            "zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"}})
    else:
        raise SystemExit(f"--runner: unknown runner {runner!r}. Fix: use one of {RUNNERS + STRATEGY_RUNNERS}")
    wall = time.perf_counter() - start
    expected = cfg["steps"] + cfg["warmup"]
    if len(clock.times) != expected:
        raise SystemExit(f"{runner}: timed {len(clock.times)} optimizer steps, expected {expected}")
    timed = clock.times[-1] - clock.times[cfg["warmup"] - 1]
    cpu_timed = clock.cpu_times[-1] - clock.cpu_times[cfg["warmup"] - 1]
    if torch.cuda.is_available():
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"runner": runner, "tokens_per_s": cfg["steps"] * cfg["batch"] * cfg["seq"] / timed,
            "step_ms": 1000 * timed / cfg["steps"], "cpu_step_ms": 1000 * cpu_timed / cfg["steps"], "peak_mib": peak_mib, "wall_s": wall,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


# ---------------------------------------------------------------------------- table
def _subprocess(runner: str, preset: str) -> dict[str, Any]:
    """One runner in a fresh process: its JSON row, or ``{"runner", "error"}``."""
    cmd = [sys.executable, __file__, "--runner", runner, "--preset", preset, "--json",
           "--steps", str(PRESETS[preset]["steps"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"runner": runner, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def interleaved(runners: list[str], preset: str, repeat: int, in_process: bool = False) -> list[dict[str, Any]]:
    """Run every runner ``repeat`` times round-robin (raw, transformers, ..., raw, ...) and keep medians.

    Interleaving spreads a load change on a shared machine over all runners instead of one; the
    median of each runner's repeats then drops the outliers. ``in_process`` runs them all in this
    process (libraries imported once: far quicker on a loaded machine; peak memory is then shared).
    """
    runs: dict[str, list[dict[str, Any]]] = {runner: [] for runner in runners}
    for _ in range(repeat):
        for runner in runners:
            if runs[runner] and "error" in runs[runner][-1]:
                continue  # failed once: it will fail again
            runs[runner].append(_in_process(runner, preset) if in_process else _subprocess(runner, preset))
            print(json.dumps(runs[runner][-1]), file=sys.stderr, flush=True)
    rows = []
    for runner in runners:
        good = [r for r in runs[runner] if "error" not in r]
        if not good:
            rows.append(runs[runner][-1])
            continue
        best = dict(good[0])
        for key in ("tokens_per_s", "step_ms", "cpu_step_ms", "peak_mib", "wall_s"):
            best[key] = _median([r[key] for r in good])
        best["repeats"] = len(good)
        best["cpu_step_ms_rounds"] = [r.get("cpu_step_ms") if "error" not in r else None for r in runs[runner]]
        rows.append(best)
    for row in rows:  # each round's ratio to the baselines run next to it: drift between rounds cancels
        for base in ("raw", "transformers"):
            pairs = zip(row.get("cpu_step_ms_rounds", []), runs.get(base, []))
            ratios = [mine / other["cpu_step_ms"] for mine, other in pairs if mine and "error" not in other]
            if ratios:
                row[f"cpu_x_{base}_rounds"] = ratios
                row[f"cpu_x_{base}"] = _median(ratios)
    return rows


def _in_process(runner: str, preset: str) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        return {**run(runner, PRESETS[preset], out), "preset": preset}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def table(rows: list[dict[str, Any]]) -> str:
    ok = {r["runner"]: r for r in rows if "error" not in r}
    lines = ["| runner | tokens/s | step ms | peak MiB | vs raw (speed) | vs transformers (speed) | "
             "vs transformers (memory) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['runner']} | failed: {' '.join(row['error'])[:120]} | | | | | |")
            continue
        raw, hf = ok.get("raw"), ok.get("transformers")
        vs_raw = f"{row['tokens_per_s'] / raw['tokens_per_s']:.3f}" if raw else "n/a"
        vs_hf = f"{row['tokens_per_s'] / hf['tokens_per_s']:.3f}" if hf else "n/a"
        mem_hf = f"{row['peak_mib'] / hf['peak_mib']:.3f}" if hf else "n/a"
        lines.append(f"| {row['runner']} | {row['tokens_per_s']:.0f} | {row['step_ms']:.1f} | {row['peak_mib']:.0f} "
                     f"| {vs_raw} | {vs_hf} | {mem_hf} |")
    return "\n".join(lines)


def cpu_table(rows: list[dict[str, Any]]) -> str:
    """CPU time per optimizer step and its ratio to raw's and transformers' (1.05x = 5% more host+compute time).

    A ratio is the median over rounds of this runner's step time over the baseline's in the same round
    (runs next to each other share the machine's state; a slow spell then moves both), with the
    rounds' lowest and highest ratio beside it.
    """
    ok = {r["runner"]: r for r in rows if "error" not in r and "cpu_step_ms" in r}
    lines = ["| runner | CPU ms/step | x raw | x transformers | x transformers, rounds' range |",
             "| --- | ---: | ---: | ---: | ---: |"]
    def ratio(row: dict[str, Any], base: str) -> str:
        if f"cpu_x_{base}" in row:
            return f"{row[f'cpu_x_{base}']:.3f}"
        return f"{row['cpu_step_ms'] / ok[base]['cpu_step_ms']:.3f}" if base in ok else "n/a"

    for name, row in ok.items():
        spread = row.get("cpu_x_transformers_rounds")
        span = f"{min(spread):.3f}-{max(spread):.3f}" if spread else "n/a"
        lines.append(f"| {name} | {row['cpu_step_ms']:.1f} | {ratio(row, 'raw')} | {ratio(row, 'transformers')} | {span} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--runner", help="run one runner in this process")
    parser.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated runners for the table")
    parser.add_argument("--repeat", type=int, default=3, help="processes per runner, run round-robin; the median is reported")
    parser.add_argument("--steps", type=int, help="timed optimizer steps per run (default: the preset's)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (with --runner)")
    parser.add_argument("--output", help="also write the rows as JSON here")
    parser.add_argument("--in-process", action="store_true",
                        help="run the runners in this process, still round-robin (libraries imported once: "
                             "step times only, peak memory is shared)")
    args = parser.parse_args(argv)
    if args.steps:
        PRESETS[args.preset] = {**PRESETS[args.preset], "steps": args.steps}
    cfg = PRESETS[args.preset]
    if args.runner:
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            result = {**run(args.runner, cfg, out), "preset": args.preset}
        print(json.dumps(result) if args.json else result)
        return
    rows = interleaved(args.runners.split(","), args.preset, args.repeat, in_process=args.in_process)
    print(f"preset {args.preset}: {json.dumps(cfg)}")
    print(table(rows))
    if any("cpu_step_ms" in r for r in rows):
        print("\nCPU time per step (this process; with one thread, what the step costs on an idle core):")
        print(cpu_table(rows))
    if args.output:
        Path(args.output).write_text(json.dumps({"preset": args.preset, "config": cfg, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
