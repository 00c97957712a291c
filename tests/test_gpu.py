"""Real GPU runs of the strategies Lightning refuses on CPU (skipped without CUDA).

Not run in this repository's CI (no GPU there); run them on a lent GPU machine with
``python -m pytest -m gpu tests/test_gpu.py`` and record the figures in docs/benchmarks.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import transformers

from hf_lightning import Trainer, TrainingArguments
from tests.conftest import tiny_bert_classifier

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _train(tmp_path: Path, dataset, tokenizer, **kw) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3, logging_steps=1,
        save_strategy="steps", save_steps=4, report_to="none", disable_tqdm=True, accelerator="gpu", devices=1, **kw,
    )
    trainer = Trainer(model=tiny_bert_classifier(len(tokenizer)), args=args, train_dataset=dataset,
                      processing_class=tokenizer)
    trainer.train()
    return trainer


def _check(trainer: Trainer, tmp_path: Path) -> None:
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "checkpoint-4")


def test_bf16_mixed_on_gpu(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = _train(tmp_path, cls_dataset, demo_tokenizer, bf16=True)
    assert trainer._pl_trainer.precision == "bf16-mixed"
    _check(trainer, tmp_path)


def test_fsdp_strategy_on_gpu(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = _train(tmp_path, cls_dataset, demo_tokenizer, bf16=True, fsdp="full_shard auto_wrap")
    assert type(trainer._pl_trainer.strategy).__name__ == "FSDPStrategy"
    _check(trainer, tmp_path)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_on_gpu(stage: int, cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    config = {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"}}
    trainer = _train(tmp_path, cls_dataset, demo_tokenizer, bf16=True, deepspeed=config)
    assert type(trainer._pl_trainer.strategy).__name__ == "DeepSpeedStrategy"
    _check(trainer, tmp_path)
