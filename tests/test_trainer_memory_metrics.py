"""``skip_memory_metrics=False`` reports transformers' ``*_mem_*`` metrics through its own ``TrainerMemoryTracker``."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers

import hf_lightning
from tests.conftest import tiny_bert_classifier

IMPLEMENTATIONS = {
    "transformers": (transformers.Trainer, transformers.TrainingArguments),
    "hf_lightning": (hf_lightning.Trainer, hf_lightning.TrainingArguments),
}


def _memory_keys(metrics: dict) -> list[str]:
    return sorted(k for k in metrics if "_mem_" in k)


# transformers' tracker watches the peak in a thread that spins on a core: slow on a shared 2-core machine.
@pytest.mark.parametrize("skip", [pytest.param(False, marks=pytest.mark.slow), True])
def test_memory_metrics_as_transformers_reports_them(tmp_path: Path, cls_dataset, demo_tokenizer, skip: bool) -> None:
    keys = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), max_steps=2, per_device_train_batch_size=4, report_to="none",
                        use_cpu=True, disable_tqdm=True, save_strategy="no", skip_memory_metrics=skip)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                              processing_class=demo_tokenizer)
        train = trainer.train().metrics
        evaluate = trainer.evaluate(cls_dataset.select(range(8)))
        predict = trainer.predict(cls_dataset.select(range(8))).metrics
        keys[name] = (_memory_keys(train), _memory_keys(evaluate), _memory_keys(predict))
        logged = [k for h in trainer.state.log_history for k in h if "_mem_" in k]
        keys[name] += (sorted(set(logged)),)
    assert keys["hf_lightning"] == keys["transformers"]
    if not skip:
        assert "init_mem_cpu_alloc_delta" in keys["hf_lightning"][0] and "train_mem_cpu_peaked_delta" in keys["hf_lightning"][0]
        assert "eval_mem_cpu_alloc_delta" in keys["hf_lightning"][1] and "test_mem_cpu_alloc_delta" in keys["hf_lightning"][2]
    else:
        assert keys["hf_lightning"] == ([], [], [], [])
