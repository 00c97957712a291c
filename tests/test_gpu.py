"""Real GPU runs of the strategies Lightning refuses on CPU (skipped without CUDA).

Not run in this repository's CI (no GPU there); run them on a lent GPU machine with
``bash bench/gpu_check.sh`` (these tests, then the GPU benchmark); figures are in docs/benchmarks.md.
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
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3,
                    logging_steps=1, save_strategy="steps", save_steps=4, report_to="none", disable_tqdm=True,
                    accelerator="gpu", devices=1)
    args = TrainingArguments(**{**settings, **kw})
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


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return transformers.AutoModelForSequenceClassification.from_pretrained(path).state_dict()


@pytest.mark.parametrize("parallel", ["deepspeed-2", "deepspeed-3", "fsdp"])
def test_accumulation_matches_plain_gpu_run(parallel: str, cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """DeepSpeed scales and accumulates itself, FSDPStrategy runs training_step inside its forward: with
    SGD (scale-sensitive) and accumulation 2 both must land where the plain run does."""
    if parallel.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
        extra = {"deepspeed": {"zero_optimization": {"stage": int(parallel[-1])}, "gradient_clipping": "auto",
                               "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}}
    else:
        extra = {"fsdp": "full_shard"}
    common = dict(optim="sgd", learning_rate=0.5, gradient_accumulation_steps=2, per_device_train_batch_size=4,
                  max_grad_norm=0.0, max_steps=3, save_steps=3, train_sampling_strategy="sequential")
    plain = _train(tmp_path / "plain", cls_dataset, demo_tokenizer, **common)
    ds = _train(tmp_path / "ds", cls_dataset, demo_tokenizer, **extra, **common)
    assert ds.state.global_step == plain.state.global_step == 3
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (plain, ds)]
    assert len(losses[1]) == 3
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    want, got = _weights(tmp_path / "plain" / "checkpoint-3"), _weights(tmp_path / "ds" / "checkpoint-3")
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-5


def test_native_module_deepspeed_matches_plain_gpu_run(demo_tokenizer) -> None:
    """The Lightning-native module under DeepSpeedStrategy (ZeRO-2, accumulation 2) vs plain GPU training."""
    pytest.importorskip("deepspeed")
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from hf_lightning.data import build_collator, build_dataloader
    from hf_lightning.module import HFLightningModule
    from tests.workers.shared import cls_dataset as worker_cls_dataset
    from tests.workers.shared import tiny_bert_config

    data, tok = worker_cls_dataset(16)
    finals = []
    for strategy in ("auto", DeepSpeedStrategy(stage=2)):
        torch.manual_seed(0)
        module = HFLightningModule(model=tiny_bert_config(len(tok)), learning_rate=0.5, optim="sgd", num_labels=2)
        loader = build_dataloader(data, 4, build_collator("sequence-classification", tok), train=True, shuffle=False)
        trainer = pl.Trainer(accelerator="gpu", devices=1, strategy=strategy, precision="32-true", max_steps=3,
                             accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, use_distributed_sampler=False)
        trainer.fit(module, train_dataloaders=loader)
        assert trainer.global_step == 3
        finals.append({k: v.detach().float().cpu().clone() for k, v in module.model.state_dict().items()})
    assert max(float((finals[0][k] - finals[1][k]).abs().max()) for k in finals[0]) < 1e-5


@pytest.mark.parametrize("pin", [True, False])
def test_pin_memory_follows_dataloader_pin_memory(pin: bool, cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """``dataloader_pin_memory`` reaches the train and eval loaders (on a CPU-only machine nothing is pinned)."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", accelerator="gpu", devices=1,
                             dataloader_pin_memory=pin)
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                      eval_dataset=cls_dataset, processing_class=demo_tokenizer)
    assert trainer.get_train_dataloader().pin_memory is pin
    assert trainer.get_eval_dataloader().pin_memory is pin
    assert next(iter(trainer.get_train_dataloader()))["input_ids"].is_pinned() is pin
