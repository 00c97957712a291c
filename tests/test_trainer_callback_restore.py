"""``restore_callback_states_from_checkpoint``: a resumed run continues EarlyStopping's patience counter."""

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


def _counter(trainer) -> int:
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, transformers.EarlyStoppingCallback))
    return callback.early_stopping_patience_counter


@pytest.mark.slow  # three short training runs per trainer
def test_patience_counter_is_restored_only_when_asked(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    counters = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        def run(max_steps: int, restore: bool, resume: bool, out: Path = tmp_path / name,
                trainer_cls=trainer_cls, args_cls=args_cls) -> int:
            args = args_cls(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, report_to="none",
                            use_cpu=True, disable_tqdm=True, eval_strategy="steps", eval_steps=2, save_steps=2,
                            metric_for_best_model="eval_loss", train_sampling_strategy="sequential",
                            restore_callback_states_from_checkpoint=restore)
            # every evaluation after the first counts as "no improvement" (threshold far above any change)
            trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                                  eval_dataset=cls_dataset.select(range(8)), processing_class=demo_tokenizer,
                                  callbacks=[transformers.EarlyStoppingCallback(early_stopping_patience=5,
                                                                                early_stopping_threshold=10.0)])
            trainer.train(resume_from_checkpoint=str(out / "checkpoint-4") if resume else None)
            return _counter(trainer)

        first = run(4, restore=False, resume=False)
        counters[name] = (first, run(6, restore=True, resume=True), run(6, restore=False, resume=True))
    assert counters["hf_lightning"] == counters["transformers"]
    first, restored, fresh = counters["hf_lightning"]
    assert restored == first + 1 and fresh == first
