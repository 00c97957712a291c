"""Time per ``save_strategy="steps"`` checkpoint: hf_lightning against transformers.Trainer, same model, one run.

Both trainers train the same BERT classifier (about 25 M parameters at the default size, so writing
dominates) with AdamW, saving at every step; the time of each save call is recorded (transformers:
``Trainer._save_checkpoint``; hf_lightning: ``Trainer.save_during_training``, which writes the HF folder and
the resume state, renames the folder into place atomically and fsyncs it in a background thread). A second
column counts until the bytes are on disk: the save calls plus the final ``os.sync()`` (and, for
hf_lightning, the end of training's wait for its background fsyncs), per save. The runners alternate
``--repeat`` times; each row is the median over that runner's saves, the ratio the median of per-round
ratios. ``--profile`` prints where hf_lightning's save spends its time (cProfile, cumulative).

    python bench/checkpoint_cost.py                    # 25 M parameters, 3 rounds x 3 saves
    python bench/checkpoint_cost.py --train-seconds 2  # saves 2 s of training apart, not back to back
    python bench/checkpoint_cost.py --hidden 32 --layers 1 --repeat 1 --saves 2   # the smoke test
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUNNERS = ("transformers", "hf_lightning")


def _folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _pause_callback(seconds: float) -> Any:
    import transformers

    class Pause(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            time.sleep(seconds)

    return Pause()


def run_one(runner: str, hidden: int, layers: int, saves: int, root: Path, profile: bool = False,
            train_seconds: float = 0.0) -> dict[str, Any]:
    """Train ``saves`` steps with a checkpoint after each; the save calls' times in seconds.

    ``train_seconds``: extra time each step takes before its save (idle here), as when a real run saves
    every few hundred steps and the disk has finished the previous checkpoint by the next one.
    """
    import torch
    import transformers

    if runner == "hf_lightning":
        import hf_lightning

        trainer_cls, args_cls, method = hf_lightning.Trainer, hf_lightning.TrainingArguments, "save_during_training"
    else:
        trainer_cls, args_cls, method = transformers.Trainer, transformers.TrainingArguments, "_save_checkpoint"
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=8000, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                                     max_position_embeddings=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(0, 8000, (2 * saves, 16), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": torch.tensor(i % 2)} for i, row in enumerate(ids)]
    out = root / runner
    args = args_cls(output_dir=str(out), report_to="none", use_cpu=True, max_steps=saves, per_device_train_batch_size=2,
                    save_strategy="steps", save_steps=1, save_total_limit=2, logging_strategy="no",
                    disable_tqdm=True, dataloader_num_workers=0, seed=0)
    pause = _pause_callback(train_seconds)
    trainer = trainer_cls(model=model, args=args, train_dataset=data, callbacks=[pause] if train_seconds else None)
    original = getattr(trainer, method)
    times: list[float] = []
    profiler = cProfile.Profile() if profile else None

    def timed(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        try:
            return original(*a, **k)
        finally:
            if profiler is not None:
                profiler.disable()
            times.append(time.perf_counter() - start)

    setattr(trainer, method, timed)
    final_waits: list[float] = []
    patched: Any = None
    if runner == "hf_lightning":
        # The end of train() waits for the fsyncs still running in the background: part of "on disk".
        from hf_lightning.facade import fit

        patched, wait = fit, fit.wait_for_durability

        def timed_wait(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return wait(*a, **k)
            finally:
                final_waits.append(time.perf_counter() - start)

        fit.wait_for_durability = timed_wait
    os.sync()  # start from a clean page cache: no runner pays for the writeback of the one before it
    try:
        trainer.train()
    finally:
        if patched is not None:
            patched.wait_for_durability = wait
    start = time.perf_counter()
    os.sync()  # what is still only in memory: transformers never fsyncs; hf_lightning's last fsyncs were awaited
    settle = time.perf_counter() - start + sum(final_waits)
    folder = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    row = {"runner": runner, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
           "saves": len(times), "save_s": statistics.median(times), "settle_s": settle,
           "durable_s": (sum(times) + settle) / len(times), "folder_mib": round(_folder_mib(folder), 1),
           "files": sorted(p.name for p in folder.iterdir())}
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
        row["profile"] = text.getvalue()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--saves", type=int, default=3, help="checkpoints per run (one per step)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--train-seconds", type=float, default=0.0,
                        help="extra seconds per training step before each save (0: back-to-back saves, the worst case)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="checkpoint_cost_", dir=args.dir))
    rows: dict[str, list[dict[str, Any]]] = {r: [] for r in RUNNERS}
    try:
        for round_ in range(args.repeat):  # interleaved, so a busy spell on a shared machine hits both
            for runner in RUNNERS:
                target = root / str(round_)
                rows[runner].append(run_one(runner, args.hidden, args.layers, args.saves, target,
                                            profile=args.profile and runner == "hf_lightning" and round_ == 0,
                                            train_seconds=args.train_seconds))
                shutil.rmtree(target / runner, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios = [h["save_s"] / t["save_s"] for h, t in zip(rows["hf_lightning"], rows["transformers"])]
    durable_ratios = [h["durable_s"] / t["durable_s"] for h, t in zip(rows["hf_lightning"], rows["transformers"])]
    summary = []
    print(f"| runner | parameters (M) | folder MiB | seconds per save call (median of {args.repeat} rounds) "
          "| seconds per save on disk (calls + final sync, per save) |")
    print("|---|---|---|---|---|")
    for runner in RUNNERS:
        first = rows[runner][0]
        seconds = statistics.median(r["save_s"] for r in rows[runner])
        durable = statistics.median(r["durable_s"] for r in rows[runner])
        summary.append({"runner": runner, "save_s": round(seconds, 3), "durable_s": round(durable, 3),
                        "folder_mib": first["folder_mib"], "params_m": first["params_m"], "files": first["files"]})
        print(f"| {runner} | {first['params_m']} | {first['folder_mib']} | {seconds:.3f} | {durable:.3f} |")
    ratio = statistics.median(ratios)
    print(f"hf_lightning / transformers per save call: {ratio:.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"hf_lightning / transformers per save on disk: {statistics.median(durable_ratios):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in durable_ratios)})")
    for runner in RUNNERS:
        print(f"{runner} files: {', '.join(rows[runner][0]['files'])}")
    if args.profile:
        print(rows["hf_lightning"][0]["profile"])
    if args.output is not None:
        args.output.write_text(json.dumps({"argv": sys.argv[1:], "rows": summary, "ratio": ratio,
                                           "ratios": ratios, "durable_ratios": durable_ratios}, indent=1))


if __name__ == "__main__":
    main()
