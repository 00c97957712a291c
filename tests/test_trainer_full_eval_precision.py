"""``bf16_full_eval`` / ``fp16_full_eval``: evaluation outside training runs the model cast, as in transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

import hf_lightning
from tests.conftest import tiny_bert_classifier

IMPLEMENTATIONS = {
    "transformers": (transformers.Trainer, transformers.TrainingArguments),
    "hf_lightning": (hf_lightning.Trainer, hf_lightning.TrainingArguments),
}


def test_bf16_full_eval_casts_the_model_as_transformers_does(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    data = cls_dataset.select(range(12))
    losses, dtypes = {}, {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        for full_eval in (False, True):
            args = args_cls(output_dir=str(tmp_path / name), per_device_eval_batch_size=4, report_to="none",
                            use_cpu=True, disable_tqdm=True, bf16_full_eval=full_eval)
            trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, processing_class=demo_tokenizer)
            losses[name, full_eval] = trainer.evaluate(data)["eval_loss"]
            dtypes[name, full_eval] = next(trainer.model.parameters()).dtype
    assert dtypes["hf_lightning", True] == dtypes["transformers", True] == torch.bfloat16
    assert dtypes["hf_lightning", False] == torch.float32
    assert losses["hf_lightning", True] == pytest.approx(losses["transformers", True], abs=1e-6)
    assert losses["hf_lightning", True] != pytest.approx(losses["hf_lightning", False], abs=1e-6)  # really cast
