"""Soak: thousands of steps with logging, evaluation and checkpoints every few steps leak nothing.

2,000 optimizer steps of a 1-layer, 16-wide BERT, logging every 5 steps, evaluating and saving every
20 (100 checkpoints written, 98 rotated away by ``save_total_limit=2``). 2,000 rather than 5,000: on
this project's 2-core CI machine a facade step costs about 25 ms unloaded (90 ms with other jobs
running), so 5,000 steps would take 2.5 to 8 minutes; 100 save/rotate/evaluate cycles are what a leak
per checkpoint, evaluation or log entry needs to show. ``HF_LIGHTNING_SOAK_STEPS`` runs it longer.

Checked: resident memory and open file descriptors stay flat after warm-up, ``log_history`` holds
exactly what transformers' Trainer keeps (one entry per logging step and per evaluation, plus the
summary), and the output folder holds exactly the two newest checkpoints: no temporary, no lock.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import transformers
from transformers import TrainerCallback

from hf_lightning import Trainer, TrainingArguments
from hf_lightning.checkpoint_io import is_complete_checkpoint

STEPS = int(os.environ.get("HF_LIGHTNING_SOAK_STEPS", "2000"))
EVERY = 20  # evaluate and save
LOG_EVERY = 5


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _Probe(TrainerCallback):
    def __init__(self) -> None:
        self.rss: list[float] = []
        self.fds: list[int] = []

    def on_save(self, args, state, control, **kwargs):
        self.rss.append(_rss_mb())
        self.fds.append(_open_fds())


@pytest.mark.slow
def test_thousands_of_steps_keep_memory_fds_history_and_disk_flat(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    config = transformers.BertConfig(vocab_size=len(demo_tokenizer), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=STEPS, learning_rate=1e-3,
        logging_steps=LOG_EVERY, eval_strategy="steps", eval_steps=EVERY, save_strategy="steps", save_steps=EVERY,
        save_total_limit=2, report_to="none", use_cpu=True, disable_tqdm=True, log_level="warning",
    )
    probe = _Probe()
    trainer = Trainer(model=transformers.BertForSequenceClassification(config), args=args, train_dataset=cls_dataset,
                      eval_dataset=cls_dataset.select(range(8)), processing_class=demo_tokenizer, callbacks=[probe])
    trainer.train()

    saves = STEPS // EVERY
    assert trainer.state.global_step == STEPS and len(probe.rss) == saves
    warm = saves // 5  # allocator pools, lazily imported modules and caches settle in the first fifth
    settled, end = sorted(probe.rss[warm:warm + 10]), sorted(probe.rss[-10:])
    growth = end[5] - settled[5]  # medians, so one transient peak does not decide
    print(f"soak {STEPS} steps: RSS {settled[5]:.1f} -> {end[5]:.1f} MB after warm-up (min {min(probe.rss):.1f},"
          f" max {max(probe.rss):.1f}); open fds {probe.fds[warm]} -> {probe.fds[-1]}; log_history {len(trainer.state.log_history)}")
    assert growth < 25, f"resident memory grew {growth:.1f} MB over {saves - warm} checkpoints: {probe.rss[::10]}"
    assert max(probe.fds[warm:]) <= probe.fds[warm] + 2, f"open file descriptors grew: {probe.fds[::10]}"

    logs = trainer.state.log_history
    assert len(logs) == STEPS // LOG_EVERY + STEPS // EVERY + 1, "log_history holds what transformers keeps"
    assert sum("loss" in e for e in logs) == STEPS // LOG_EVERY and sum("eval_loss" in e for e in logs) == saves

    newest = [f"checkpoint-{STEPS - EVERY}", f"checkpoint-{STEPS}"]
    assert sorted(os.listdir(tmp_path)) == newest, "exactly the two newest checkpoints: no temporary, no lock"
    files = [sorted(os.listdir(tmp_path / name)) for name in newest]
    assert files[0] == files[1] and all(is_complete_checkpoint(tmp_path / name) for name in newest)
