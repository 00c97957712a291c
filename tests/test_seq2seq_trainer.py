"""``Seq2SeqTrainer`` against ``transformers.Seq2SeqTrainer``: generated ids, padding and eval_loss.

Tiny T5 and BART models with dropout off are built from the same seed for both trainers; evaluation
and prediction with ``predict_with_generate`` must hand ``compute_metrics`` and callers the same arrays.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
import transformers

import hf_lightning

IMPLEMENTATIONS = {
    "transformers": (transformers.Seq2SeqTrainer, transformers.Seq2SeqTrainingArguments),
    "hf_lightning": (hf_lightning.Seq2SeqTrainer, hf_lightning.Seq2SeqTrainingArguments),
}
BASE = dict(report_to="none", disable_tqdm=True, use_cpu=True, seed=0, per_device_eval_batch_size=3,
            predict_with_generate=True)


def _model(kind: str, tokenizer) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
               decoder_start_token_id=tokenizer.cls_token_id)
    if kind == "t5":
        config = transformers.T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, d_kv=8, num_layers=1,
                                       num_heads=2, dropout_rate=0.0, **ids)
        return transformers.T5ForConditionalGeneration(config)
    config = transformers.BartConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                     decoder_ffn_dim=32, max_position_embeddings=64, dropout=0.0,
                                     attention_dropout=0.0, bos_token_id=tokenizer.cls_token_id, **ids)
    return transformers.BartForConditionalGeneration(config)


@pytest.fixture(scope="module")
def pairs(demo_tokenizer) -> datasets.Dataset:
    """Seven source/summary pairs of different lengths (batches of 3 pad to different widths)."""
    words = "the film was good not bad great dull acting plot ending boring".split()
    sources = [" ".join(words[(i * 5 + j) % len(words)] for j in range(3 + i % 5)) for i in range(7)]
    enc = demo_tokenizer(sources)
    enc["labels"] = demo_tokenizer([" ".join(s.split()[: 1 + i % 3]) for i, s in enumerate(sources)])["input_ids"]
    return datasets.Dataset.from_dict(dict(enc))


def _both(tmp_path: Path, kind: str, tokenizer, data, **kwargs: Any) -> dict[str, Any]:
    trainer_kwargs = {k: kwargs.pop(k) for k in ("compute_metrics", "train_dataset") if k in kwargs}
    out = {}
    for name, (trainer_cls, args_cls) in IMPLEMENTATIONS.items():
        args = args_cls(output_dir=str(tmp_path / name), **{**BASE, **kwargs})
        out[name] = trainer_cls(model=_model(kind, tokenizer), args=args, eval_dataset=data, processing_class=tokenizer,
                                data_collator=transformers.DataCollatorForSeq2Seq(tokenizer), **trainer_kwargs)
    return out


def _arrays(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_evaluate_generates_as_transformers(tmp_path, demo_tokenizer, pairs, kind):
    seen: dict[str, Any] = {}

    def compute_metrics(p):
        seen[len(seen)] = (_arrays(p.predictions), _arrays(p.label_ids))
        return {"exact": float(np.mean([list(a) == list(b) for a, b in zip(p.predictions, p.label_ids)]))}

    metrics = {}
    for name, trainer in _both(tmp_path, kind, demo_tokenizer, pairs, compute_metrics=compute_metrics,
                               generation_max_length=9, generation_num_beams=2).items():
        metrics[name] = trainer.evaluate()
    assert seen[0] == seen[1]
    predictions, labels = np.array(seen[1][0]), np.array(seen[1][1])
    # HF pads ids and labels to the model's generation_config.max_length (20), not to the max_length asked for
    assert predictions.shape == (7, 20) and labels.shape == (7, 20)
    assert (predictions[:, 9:] == demo_tokenizer.pad_token_id).all()
    assert metrics["hf_lightning"]["eval_exact"] == metrics["transformers"]["eval_exact"]


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_eval_loss_matches_and_weights_a_short_last_batch_by_its_rows(tmp_path, demo_tokenizer, pairs, kind):
    """Full batches: equal. A short last batch: transformers' Seq2SeqTrainer gathers without dropping the
    padding of the last batch, so that batch counts as a full one (its plain Trainer does not); ours keeps
    the Trainer's row-weighted mean for both classes."""
    trainers = _both(tmp_path, kind, demo_tokenizer, pairs, generation_max_length=9)
    full = {name: t.evaluate(pairs.select(range(6)))["eval_loss"] for name, t in trainers.items()}
    assert full["hf_lightning"] == pytest.approx(full["transformers"], abs=1e-6)
    hf = trainers["transformers"]
    batch = [hf.evaluate(pairs.select(rows))["eval_loss"] for rows in (range(3), range(3, 6), range(6, 7))]
    assert hf.evaluate(pairs)["eval_loss"] == pytest.approx(np.mean(batch), abs=1e-6)
    ours = trainers["hf_lightning"].evaluate(pairs)["eval_loss"]
    assert ours == pytest.approx((3 * batch[0] + 3 * batch[1] + batch[2]) / 7, abs=1e-6)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_predict_with_generate_kwargs(tmp_path, demo_tokenizer, pairs, kind):
    out: dict[str, Any] = {}
    for name, trainer in _both(tmp_path, kind, demo_tokenizer, pairs).items():
        labelled = trainer.predict(pairs, max_length=6, num_beams=3)
        short = trainer.predict(pairs, max_new_tokens=4)
        out[name] = (_arrays(labelled.predictions), _arrays(labelled.label_ids), _arrays(short.predictions))
    assert out["hf_lightning"] == out["transformers"]
    assert np.array(out["hf_lightning"][0]).shape[1] == np.array(out["hf_lightning"][2]).shape[1] == 20
    assert (np.array(out["hf_lightning"][0])[:, 6:] == demo_tokenizer.pad_token_id).all()


def test_predict_without_labels_returns_generated_ids(tmp_path, demo_tokenizer, pairs):
    """transformers 5.25 crashes here (DataCollatorForSeq2Seq gives labels=None, which it takes for labels);
    ours generates, and the ids equal those generated for the labelled rows."""
    trainers = _both(tmp_path, "t5", demo_tokenizer, pairs, generation_max_length=6)
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        trainers["transformers"].predict(pairs.remove_columns("labels"))
    ours = trainers["hf_lightning"]
    bare = ours.predict(pairs.remove_columns("labels"))
    assert bare.label_ids is None and "test_loss" not in bare.metrics
    assert bare.predictions.tolist() == ours.predict(pairs).predictions.tolist()


def test_without_predict_with_generate_predictions_are_logits(tmp_path, demo_tokenizer, pairs):
    trainer = _both(tmp_path, "t5", demo_tokenizer, pairs, predict_with_generate=False)["hf_lightning"]
    predictions = trainer.predict(pairs).predictions
    assert isinstance(predictions, tuple) and predictions[0].ndim == 3  # teacher-forced logits, as in HF


def test_generation_config_from_a_folder_sets_the_model_generation(tmp_path, demo_tokenizer, pairs):
    transformers.GenerationConfig(max_length=7, num_beams=1, decoder_start_token_id=demo_tokenizer.cls_token_id,
                                  pad_token_id=demo_tokenizer.pad_token_id,
                                  eos_token_id=demo_tokenizer.sep_token_id).save_pretrained(tmp_path / "gen")
    trainers = _both(tmp_path, "t5", demo_tokenizer, pairs, generation_config=str(tmp_path / "gen"))
    shapes = {name: trainer.predict(pairs).predictions.shape for name, trainer in trainers.items()}
    assert trainers["hf_lightning"].model.generation_config.max_length == 7
    assert shapes["hf_lightning"] == shapes["transformers"] == (7, 7)


def test_prediction_step_override_is_called(tmp_path, demo_tokenizer, pairs):
    calls: list[int] = []

    class Recording(hf_lightning.Seq2SeqTrainer):
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
            calls.append(inputs["input_ids"].shape[0])
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)

    args = hf_lightning.Seq2SeqTrainingArguments(output_dir=str(tmp_path), **BASE, generation_max_length=5)
    trainer = Recording(model=_model("t5", demo_tokenizer), args=args, processing_class=demo_tokenizer,
                        data_collator=transformers.DataCollatorForSeq2Seq(demo_tokenizer))
    assert trainer.predict(pairs).predictions.shape == (7, 20)  # padded to the model's generation max_length
    assert calls == [3, 3, 1]


def test_training_with_generation_in_evaluation_matches_transformers(tmp_path, demo_tokenizer, pairs):
    """Four optimizer steps with generated-text evaluation every two: same losses as transformers."""
    metrics = {}
    for name, trainer in _both(tmp_path, "bart", demo_tokenizer, pairs.select(range(6)), train_dataset=pairs, max_steps=4,
                               per_device_train_batch_size=2, learning_rate=1e-2, eval_strategy="steps", eval_steps=2,
                               save_strategy="no", train_sampling_strategy="sequential",
                               generation_max_length=6).items():
        trainer.train()
        metrics[name] = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    assert [s for s, _ in metrics["hf_lightning"]] == [s for s, _ in metrics["transformers"]] == [2, 4]
    for (_, ours), (_, theirs) in zip(metrics["hf_lightning"], metrics["transformers"]):
        assert ours == pytest.approx(theirs, abs=1e-5)


def test_arguments_parse_and_are_transformers_seq2seq_arguments(tmp_path):
    parser = transformers.HfArgumentParser(hf_lightning.Seq2SeqTrainingArguments)
    args = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--predict_with_generate",
                                               "--generation_max_length", "16", "--generation_num_beams", "4",
                                               "--devices", "1"])[0]
    assert isinstance(args, transformers.Seq2SeqTrainingArguments) and isinstance(args, hf_lightning.TrainingArguments)
    assert (args.predict_with_generate, args.generation_max_length, args.generation_num_beams, args.devices) == (True, 16, 4, 1)
    assert parser.parse_dict(args.to_dict())[0].to_dict() == args.to_dict()


def test_generation_config_object_serialises_in_to_dict(tmp_path):
    args = hf_lightning.Seq2SeqTrainingArguments(output_dir=str(tmp_path),
                                                 generation_config=transformers.GenerationConfig(max_length=5))
    assert args.to_dict()["generation_config"]["max_length"] == 5


def test_sortish_sampler_warns_that_it_has_no_effect(tmp_path):
    from hf_lightning.args import _WARNED

    _WARNED.discard("no-effect:sortish_sampler")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf_lightning.Seq2SeqTrainingArguments(output_dir=str(tmp_path), sortish_sampler=True)
    assert any("sortish_sampler has no effect" in str(w.message) for w in caught)
