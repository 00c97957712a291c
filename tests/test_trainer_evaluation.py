"""evaluate()/predict() hand compute_metrics and callers what transformers.Trainer hands them.

Each case runs the same model, data and arguments under ``transformers.Trainer`` and under ours and
compares the structures (tuples stay tuples, -100 padding, lists per batch) and the values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
import transformers

import hf_lightning
from tests.conftest import tiny_bert_classifier, tiny_bert_config

BASE = dict(report_to="none", disable_tqdm=True, use_cpu=True, seed=0, per_device_eval_batch_size=4)
IMPLEMENTATIONS = {
    "transformers": (transformers.Trainer, transformers.TrainingArguments),
    "hf_lightning": (hf_lightning.Trainer, hf_lightning.TrainingArguments),
}


def _both(tmp_path: Path, model_fn, dataset, tokenizer, **kwargs: Any) -> dict[str, Any]:
    """``{"transformers": trainer, "hf_lightning": trainer}`` built from the same pieces."""
    trainer_kwargs = {k: kwargs.pop(k) for k in ("compute_metrics", "preprocess_logits_for_metrics", "model_init")
                      if k in kwargs}
    out = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), **{**BASE, **kwargs})
        model = None if "model_init" in trainer_kwargs else model_fn()
        out[name] = trainer_cls(model=model, args=args, eval_dataset=dataset, processing_class=tokenizer,
                                **trainer_kwargs)
    return out


def _structure(value: Any) -> Any:
    """Types, shapes and values, recursively: what a compute_metrics may depend on."""
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, [_structure(v) for v in value])
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape, np.round(value.astype(np.float64), 5).tolist())
    return value


def _assert_same_predictions(a: Any, b: Any) -> None:
    assert _structure(a.predictions) == _structure(b.predictions)
    assert _structure(a.label_ids) == _structure(b.label_ids)


@pytest.fixture(scope="module")
def token_dataset(demo_tokenizer):
    """Token classification with rows of different lengths, so batches pad to different widths."""
    words = "the film was good not bad great dull acting plot ending boring".split()
    rows = [[words[(i * 5 + j) % len(words)] for j in range(2 + i % 7)] for i in range(10)]
    encoded = demo_tokenizer([" ".join(r) for r in rows])
    labels = [[-100] + [(len(w) % 3) for w in r][: len(ids) - 2] + [-100] for r, ids in zip(rows, encoded["input_ids"])]
    return datasets.Dataset.from_dict({**encoded, "labels": labels})


def test_token_classification_predictions_padding_and_eval_loss_match(tmp_path, token_dataset, demo_tokenizer):
    def model():
        torch.manual_seed(0)
        return transformers.BertForTokenClassification(tiny_bert_config(vocab_size=len(demo_tokenizer), num_labels=3))

    collator = transformers.DataCollatorForTokenClassification(demo_tokenizer)
    trainers = _both(tmp_path, model, token_dataset, demo_tokenizer)
    outputs = {}
    for name, trainer in trainers.items():
        trainer.data_collator = collator
        outputs[name] = trainer.predict(token_dataset)
    _assert_same_predictions(outputs["transformers"], outputs["hf_lightning"])
    # HF's eval loss is the sample-weighted mean of batch means, not the token mean: the facade follows it.
    assert outputs["hf_lightning"].metrics["test_loss"] == pytest.approx(outputs["transformers"].metrics["test_loss"],
                                                                         abs=1e-6)


def test_seq2seq_predictions_are_the_tuple_hf_returns(tmp_path, demo_tokenizer):
    def model():
        torch.manual_seed(0)
        return transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=len(demo_tokenizer), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
            decoder_start_token_id=0, pad_token_id=0))

    enc = demo_tokenizer(["good film", "bad plot ending", "the acting was dull", "great"])
    data = datasets.Dataset.from_dict({**enc, "labels": [[5, 6, 1], [7, 1, -100], [8, 9, 1], [4, 1, -100]]})
    outputs = {}
    for name, trainer in _both(tmp_path, model, data, demo_tokenizer).items():
        trainer.data_collator = transformers.DataCollatorForSeq2Seq(demo_tokenizer)
        outputs[name] = trainer.predict(data)
    assert isinstance(outputs["hf_lightning"].predictions, tuple)  # logits and encoder states, no KV cache
    _assert_same_predictions(outputs["transformers"], outputs["hf_lightning"])


def test_question_answering_label_names_come_from_the_model(tmp_path, demo_tokenizer):
    def model():
        torch.manual_seed(0)
        return transformers.BertForQuestionAnswering(tiny_bert_config(vocab_size=len(demo_tokenizer)))

    enc = demo_tokenizer(["good film and bad plot", "the acting was dull", "great ending", "boring"],
                         padding="max_length", max_length=8)
    data = datasets.Dataset.from_dict({**enc, "start_positions": [1, 2, 0, 1], "end_positions": [3, 4, 1, 1]})
    seen: dict[str, Any] = {}

    def compute_metrics(p):
        seen[len(seen)] = _structure((p.predictions, p.label_ids))
        return {"n": len(p.label_ids)}

    outputs = {}
    for name, trainer in _both(tmp_path, model, data, demo_tokenizer, compute_metrics=compute_metrics).items():
        assert trainer.label_names == ["start_positions", "end_positions"]
        outputs[name] = trainer.evaluate()
    assert seen[0] == seen[1]
    assert outputs["hf_lightning"]["eval_n"] == 2  # a tuple of two label arrays
    assert outputs["hf_lightning"]["eval_loss"] == pytest.approx(outputs["transformers"]["eval_loss"], abs=1e-6)


@pytest.mark.parametrize("concat", [True, False], ids=["concat", "list-per-batch"])
def test_include_for_metrics_and_eval_do_concat_batches(tmp_path, cls_dataset, demo_tokenizer, concat):
    data = cls_dataset.select(range(10))
    seen: dict[str, Any] = {}

    def compute_metrics(p):
        seen[len(seen)] = _structure((p.predictions, p.label_ids, p.inputs, p.losses))
        return {"rows": 10}

    trainers = _both(tmp_path, lambda: tiny_bert_classifier(len(demo_tokenizer)), data, demo_tokenizer,
                     compute_metrics=compute_metrics, include_for_metrics=["inputs", "loss"],
                     eval_do_concat_batches=concat)
    for trainer in trainers.values():
        trainer.evaluate()
    assert seen[0] == seen[1]
    inputs = seen[1][1][2]
    assert (inputs[0] == "ndarray") if concat else (inputs[0] == "list" and len(inputs[1]) == 3)


def test_batch_eval_metrics_calls_compute_metrics_per_batch(tmp_path, cls_dataset, demo_tokenizer):
    calls: dict[int, list[bool]] = {0: [], 1: []}
    current = [0]

    def compute_metrics(p, compute_result: bool):
        calls[current[0]].append(compute_result)
        return {"batch_rows": int(p.predictions.shape[0])}

    trainers = _both(tmp_path, lambda: tiny_bert_classifier(len(demo_tokenizer)), cls_dataset.select(range(10)),
                     demo_tokenizer, compute_metrics=compute_metrics, batch_eval_metrics=True)
    results = []
    for index, trainer in enumerate(trainers.values()):
        current[0] = index
        results.append(trainer.evaluate())
    assert calls[0] == calls[1] == [False, False, True]
    assert results[0]["eval_batch_rows"] == results[1]["eval_batch_rows"] == 2  # the last batch's metrics


def test_dataloader_drop_last_applies_to_evaluation(tmp_path, cls_dataset, demo_tokenizer):
    trainers = _both(tmp_path, lambda: tiny_bert_classifier(len(demo_tokenizer)), cls_dataset.select(range(10)),
                     demo_tokenizer, dataloader_drop_last=True)
    metrics = {name: trainer.evaluate() for name, trainer in trainers.items()}
    assert metrics["hf_lightning"]["eval_loss"] == pytest.approx(metrics["transformers"]["eval_loss"], abs=1e-6)
    assert metrics["hf_lightning"]["eval_samples_per_second"] > 0


def test_example_script_tail_writes_what_hf_writes(tmp_path, cls_dataset, demo_tokenizer):
    """The end of every HF example script: log_metrics, save_metrics, save_state, save_model, model card."""
    written = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        out = tmp_path / name
        args = args_cls(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, **BASE)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args,
                              train_dataset=cls_dataset, processing_class=demo_tokenizer)
        metrics = trainer.train().metrics
        metrics["train_samples"] = trainer.num_examples(trainer.get_train_dataloader())
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_model()
        trainer.save_state()
        trainer.create_model_card(model_name="tiny")
        assert trainer.is_local_process_zero() and trainer.get_num_trainable_parameters() > 0
        assert len(trainer.get_learning_rates()) == len(trainer.get_optimizer_group())
        written[name] = sorted(p.name for p in out.iterdir() if not p.name.startswith("checkpoint-"))
        results = json.loads((out / "all_results.json").read_text())
        assert results["train_samples"] == 40 and "train_loss" in results
    assert set(written["transformers"]) <= set(written["hf_lightning"]) | {"runs"}


class _Plain(torch.nn.Module):
    """Not a PreTrainedModel: a backbone wrapped in the user's own module, as in the seed examples."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        logits = self.head(self.embed(input_ids).mean(1))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def test_plain_module_checkpoints_and_save_model_as_safetensors(tmp_path, cls_dataset, demo_tokenizer):
    from safetensors.torch import load_file

    args = hf_lightning.TrainingArguments(output_dir=str(tmp_path), max_steps=2, save_steps=1,
                                          per_device_train_batch_size=4, **BASE)
    model = _Plain(len(demo_tokenizer))
    trainer = hf_lightning.Trainer(model=model, args=args, train_dataset=cls_dataset, processing_class=demo_tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    for folder in (tmp_path / "checkpoint-2", tmp_path / "final"):
        weights = load_file(str(folder / "model.safetensors"))
        assert set(weights) == set(model.state_dict())
        assert (folder / "training_args.bin").is_file()
    assert torch.equal(load_file(str(tmp_path / "final" / "model.safetensors"))["head.weight"], model.head.weight)


def test_model_init_gives_every_train_call_a_fresh_model(tmp_path, cls_dataset, demo_tokenizer):
    calls = {name: 0 for name in IMPLEMENTATIONS}

    def counting_init(name):
        def model_init():
            calls[name] += 1
            return tiny_bert_classifier(len(demo_tokenizer))
        return model_init

    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), max_steps=1, per_device_train_batch_size=4, **BASE)
        trainer = trainer_cls(model_init=counting_init(name), args=args, train_dataset=cls_dataset,
                              processing_class=demo_tokenizer)
        first = trainer.model
        trainer.train()
        assert trainer.model is not first
    assert calls["hf_lightning"] == calls["transformers"] == 2


def test_reduce_lr_on_plateau_steps_with_each_evaluation_as_in_hf(tmp_path, cls_dataset, demo_tokenizer):
    histories = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), max_steps=4, per_device_train_batch_size=4,
                        learning_rate=1e-3, lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="steps",
                        eval_steps=1, logging_steps=1, lr_scheduler_kwargs={"patience": 0, "factor": 0.5, "threshold": 10.0},
                        **BASE)
        trainer = trainer_cls(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                              eval_dataset=cls_dataset.select(range(8)), processing_class=demo_tokenizer)
        trainer.train()
        histories[name] = [round(e["learning_rate"], 12) for e in trainer.state.log_history if "learning_rate" in e]
    assert histories["hf_lightning"] == histories["transformers"]
    assert len(set(histories["transformers"])) > 1, "the evaluations must have lowered the learning rate"
