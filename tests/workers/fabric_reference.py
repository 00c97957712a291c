"""The Trainer path that ``examples/fabric_loop.py`` must match: ``python fabric_reference.py OUT [--option ...]``.

``HFLightningModule`` driven by ``lightning.Trainer`` with the example's settings (same loss, NEFTune,
optimizer, scheduler, clipping, accumulation, sampler and seed; the example's own command-line options)
and writes the trained model in HF format to ``OUT``. Lightning's DDP launcher re-runs this script once per process.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "examples")]

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from fabric_loop import Settings, load_data, parse_settings  # noqa: E402

from hf_lightning.data import build_collator, build_dataloader  # noqa: E402
from hf_lightning.module import HFLightningModule  # noqa: E402


def train_reference(settings: Settings, out: str) -> None:
    pl.seed_everything(settings.seed)
    tokenizer, dataset = load_data(settings)
    module = HFLightningModule(
        model=settings.model, task="causal-lm", label_smoothing_factor=settings.label_smoothing,
        neftune_noise_alpha=settings.neftune_alpha, optim="adamw_torch", learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, lr_scheduler_type="linear", warmup_steps=settings.warmup_steps,
    )
    loader = build_dataloader(dataset, settings.batch_size, build_collator("causal-lm", tokenizer), train=True,
                              seed=settings.seed)
    trainer = pl.Trainer(
        accelerator="cpu", devices=settings.devices, strategy="ddp" if settings.devices > 1 else "auto",
        max_steps=settings.max_steps, accumulate_grad_batches=settings.accumulation,
        gradient_clip_val=settings.max_grad_norm, use_distributed_sampler=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    module.save_hf_pretrained(out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    train_reference(parse_settings(sys.argv[2:]), sys.argv[1])
