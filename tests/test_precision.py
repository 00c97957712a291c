"""Mixed precision, gradient checkpointing and torch.compile reached from the HF flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_lightning import Trainer, TrainingArguments
from hf_lightning.errors import ConfigError
from tests.conftest import tiny_bert_classifier


def _args(tmp_path: Path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3,
                report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", logging_steps=1)
    base.update(kw)
    return TrainingArguments(**base)


def test_bf16_mixed_on_cpu(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    model = tiny_bert_classifier(len(demo_tokenizer))
    before = model.classifier.weight.detach().clone()
    trainer = Trainer(model=model, args=_args(tmp_path, bf16=True), train_dataset=cls_dataset,
                      processing_class=demo_tokenizer)
    trainer.train()
    assert trainer._pl_trainer.precision == "bf16-mixed"
    assert model.classifier.weight.dtype == torch.float32, "mixed precision keeps fp32 master weights"
    assert not torch.equal(before, model.classifier.weight)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_fp16_on_cpu_is_a_clear_error(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(tmp_path, fp16=True),
                      train_dataset=cls_dataset, processing_class=demo_tokenizer)
    with pytest.raises(ConfigError, match="fp16"):
        trainer.train()


def test_gradient_checkpointing_matches_plain_run(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    results = []
    for checkpointing in (False, True):
        model = tiny_bert_classifier(len(demo_tokenizer))
        trainer = Trainer(model=model, args=_args(tmp_path / str(checkpointing), gradient_checkpointing=checkpointing,
                                                  train_sampling_strategy="sequential"),
                          train_dataset=cls_dataset, processing_class=demo_tokenizer)
        trainer.train()
        assert model.is_gradient_checkpointing == checkpointing
        results.append(model.state_dict())
    assert max((results[0][k] - results[1][k]).abs().max().item() for k in results[0]) <= 1e-6


@pytest.mark.slow
def test_torch_compile_trains(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    model = tiny_bert_classifier(len(demo_tokenizer))
    trainer = Trainer(model=model, args=_args(tmp_path, torch_compile=True, max_steps=2),
                      train_dataset=cls_dataset, processing_class=demo_tokenizer)
    trainer.train()
    assert trainer._module.forward_model is not model, "the forward pass goes through torch.compile"
    assert hasattr(trainer._module.forward_model, "_orig_mod")
    assert trainer.state.global_step == 2
