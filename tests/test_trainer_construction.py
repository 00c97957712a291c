"""What transformers.Trainer refuses at construction, ours refuses too (same exception type), and
``get_eval_dataloader("name")`` / transformers' ``Seq2SeqTrainingArguments`` are taken as transformers takes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import hf_lightning
from tests.conftest import tiny_bert_classifier

IMPLEMENTATIONS = {
    "transformers": (transformers.Trainer, transformers.TrainingArguments),
    "hf_lightning": (hf_lightning.Trainer, hf_lightning.TrainingArguments),
}
BASE = dict(report_to="none", disable_tqdm=True, use_cpu=True)


def _model() -> torch.nn.Module:
    return tiny_bert_classifier(100)


def _optimizers() -> tuple[Any, Any]:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


CASES = {
    "batch_eval_metrics without compute_result": (
        dict(batch_eval_metrics=True), dict(compute_metrics=lambda p: {}), ValueError, "compute_result"),
    "save_strategy best without a metric": (
        dict(save_strategy="best", eval_strategy="steps"), dict(eval_dataset=[{"input_ids": [1]}]), ValueError,
        "metric_for_best_model"),
    "optimizers and optimizer_cls_and_kwargs": (
        {}, dict(optimizers=_optimizers(), optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1})), RuntimeError,
        "optimizer_cls_and_kwargs"),
    "model_init and optimizers": ({}, dict(model_init=_model, optimizers=_optimizers()), RuntimeError, "model_init"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_at_construction_as_transformers_refuses(tmp_path: Path, case: str) -> None:
    arg_values, trainer_kwargs, error, words = CASES[case]
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), **BASE, **arg_values)
        kwargs = {"model": _model(), **trainer_kwargs}
        if "model_init" in kwargs:
            kwargs.pop("model")
        with pytest.raises(error, match=words):
            trainer_cls(args=args, **kwargs)
    ours = hf_lightning.TrainingArguments(output_dir=str(tmp_path), **BASE, **arg_values)
    with pytest.raises(error) as info:
        hf_lightning.Trainer(args=ours, **kwargs)
    assert "\n" not in str(info.value) and "Fix:" in str(info.value)  # one line naming the fix


def test_get_eval_dataloader_takes_a_name_from_a_dict_eval_dataset(tmp_path: Path, cls_dataset) -> None:
    sets = {"small": cls_dataset.select(range(4)), "large": cls_dataset.select(range(12))}
    lengths = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), per_device_eval_batch_size=4, **BASE)
        trainer = trainer_cls(model=_model(), args=args, eval_dataset=sets)
        lengths[name] = (len(trainer.get_eval_dataloader("small")), len(trainer.get_eval_dataloader("large")))
    assert lengths["hf_lightning"] == lengths["transformers"] == (1, 3)
    with pytest.raises(ValueError, match=r"^eval_dataset: there is no evaluation set named 'medium'.*'large', 'small'"):
        trainer.get_eval_dataloader("medium")


def test_transformers_seq2seq_arguments_keep_generation_settings(tmp_path: Path) -> None:
    """A script importing Seq2SeqTrainingArguments from transformers and the trainer from us."""
    args = transformers.Seq2SeqTrainingArguments(output_dir=str(tmp_path), predict_with_generate=True,
                                                 generation_max_length=7, generation_num_beams=3,
                                                 generation_config=transformers.GenerationConfig(max_length=7), **BASE)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=50, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, decoder_start_token_id=0))
    trainer = hf_lightning.Seq2SeqTrainer(model=model, args=args)
    assert isinstance(trainer.args, hf_lightning.Seq2SeqTrainingArguments)
    assert (trainer.args.predict_with_generate, trainer.args.generation_max_length,
            trainer.args.generation_num_beams) == (True, 7, 3)
    assert trainer.model.generation_config.max_length == 7
