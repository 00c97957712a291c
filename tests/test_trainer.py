"""The HF-compatible facade: numerical parity with transformers.Trainer and the HF API surface."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from hf_lightning.args import TrainingArguments
from hf_lightning.errors import ConfigError
from hf_lightning.trainer import Trainer
from tests.conftest import tiny_bert_classifier

TIMING_KEYS = ("runtime", "per_second", "total_flos")


def _args(cls, out: Path, **overrides):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=4, per_device_eval_batch_size=8, gradient_accumulation_steps=3,
        num_train_epochs=2, learning_rate=1e-3, weight_decay=0.01, warmup_steps=2, max_grad_norm=0.01,
        train_sampling_strategy="sequential", eval_strategy="epoch", logging_steps=2, save_strategy="no",
        report_to="none", optim="adamw_torch", use_cpu=True, disable_tqdm=True, seed=0,
    )
    base.update(overrides)
    return cls(**base)


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if not any(t in k for t in TIMING_KEYS)} for entry in history]


def test_parity_with_transformers_trainer(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """Same run under both trainers: 40 rows, batch 4, accumulation 3 (windows 3,3,3,1), clipping,
    warmup + linear decay, weight-decay grouping. transformers 5.24 skips its GA division for models
    that accept loss kwargs but ignore num_items_in_batch (BERT's classification head does), so its
    steps are 3x too large; ``model_accepts_loss_kwargs = False`` restores HF's exact path. hf_lightning
    normalises by the window's items by construction and needs no such switch."""
    base = tiny_bert_classifier(len(demo_tokenizer))

    hf_model = copy.deepcopy(base)
    hf = transformers.Trainer(model=hf_model, args=_args(transformers.TrainingArguments, tmp_path / "hf"),
                              train_dataset=cls_dataset, eval_dataset=cls_dataset, processing_class=demo_tokenizer)
    hf.model_accepts_loss_kwargs = False
    hf.train()
    hf_eval = hf.evaluate()

    ours_model = copy.deepcopy(base)
    ours = Trainer(model=ours_model, args=_args(TrainingArguments, tmp_path / "ours"),
                   train_dataset=cls_dataset, eval_dataset=cls_dataset, processing_class=demo_tokenizer)
    ours.train()
    ours_eval = ours.evaluate()

    diff = max((a - b).abs().max().item() for a, b in zip(hf_model.state_dict().values(), ours_model.state_dict().values()))
    assert diff <= 1e-5, diff
    moved = max((a - b).abs().max().item() for a, b in zip(base.state_dict().values(), ours_model.state_dict().values()))
    assert moved > 1e-3, "the run must actually train for the comparison to mean anything"
    assert ours_eval["eval_loss"] == pytest.approx(hf_eval["eval_loss"], abs=1e-6)

    hf_hist, our_hist = _comparable(hf.state.log_history), _comparable(ours.state.log_history)
    assert [sorted(e) for e in our_hist] == [sorted(e) for e in hf_hist]
    for a, b in zip(hf_hist, our_hist):
        assert a["step"] == b["step"] and a.get("epoch") == pytest.approx(b.get("epoch"))
        for key in ("loss", "learning_rate", "grad_norm", "eval_loss", "train_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert any("grad_norm" in e and e["grad_norm"] > 0.01 for e in our_hist), "clipping was active"
    assert ours.state.global_step == hf.state.global_step == 8


def _accuracy(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def test_seed_full_example_runs_with_only_the_import_changed(demo_assets, tmp_path: Path) -> None:
    """003's full example with a local tiny model and local CSV data in place of the Hub."""
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_lightning import Trainer, TrainingArguments  # the only changed line

    model_dir = tmp_path / "tiny-bert"
    tok = AutoTokenizer.from_pretrained(demo_assets["tokenizer"])
    tiny_bert_classifier(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    dataset = load_dataset("csv", data_files={"train": demo_assets["train"], "test": demo_assets["test"]})
    dataset["train"] = dataset["train"].select(range(64))
    dataset["test"] = dataset["test"].select(range(32))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)

    def tokenize_function(examples):
        return tokenizer(examples["text"], padding="max_length", truncation=True, max_length=32)

    tokenized_datasets = dataset.map(tokenize_function, batched=True)
    training_args = TrainingArguments(
        output_dir=str(tmp_path / "results"), eval_strategy="epoch", save_strategy="epoch", learning_rate=2e-3,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, num_train_epochs=2, logging_steps=4,
        load_best_model_at_end=True, metric_for_best_model="accuracy", save_total_limit=1,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=tokenized_datasets["train"],
                      eval_dataset=tokenized_datasets["test"], compute_metrics=_accuracy)
    result = trainer.train()
    metrics = trainer.evaluate()

    assert result.global_step == 16 and "train_loss" in result.metrics
    assert {"eval_loss", "eval_accuracy", "eval_runtime", "epoch"} <= set(metrics)
    best = trainer.state.best_model_checkpoint
    assert best is not None and Path(best).is_dir()
    checkpoints = sorted((tmp_path / "results").glob("checkpoint-*"))
    assert Path(best) in checkpoints and len(checkpoints) <= 2, "save_total_limit keeps the best"
    state = json.loads((Path(best) / "trainer_state.json").read_text())
    assert {"global_step", "log_history", "best_metric", "best_model_checkpoint"} <= set(state)
    reloaded = AutoModelForSequenceClassification.from_pretrained(best)
    best_weights = reloaded.state_dict()
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, best_weights[name], rtol=0, atol=0), "load_best_model_at_end"


def test_evaluate_prefixes_predict_and_dict_eval(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)),
                      args=_args(TrainingArguments, tmp_path, eval_strategy="no", num_train_epochs=1),
                      train_dataset=cls_dataset, eval_dataset={"a": cls_dataset, "b": cls_dataset.select(range(8))},
                      processing_class=demo_tokenizer, compute_metrics=_accuracy)
    metrics = trainer.evaluate()
    assert {"eval_a_loss", "eval_a_accuracy", "eval_b_loss", "eval_b_accuracy"} <= set(metrics)
    out = trainer.predict(cls_dataset)
    assert out.predictions.shape == (40, 2) and out.label_ids.shape == (40,)
    assert "test_loss" in out.metrics and "test_accuracy" in out.metrics
    assert trainer.evaluate(cls_dataset, metric_key_prefix="dev").keys() >= {"dev_loss", "dev_accuracy"}


def test_old_argument_names_are_aliases(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match="evaluation_strategy"):
        args = TrainingArguments(output_dir=str(tmp_path), evaluation_strategy="steps", eval_steps=3)
    assert args.eval_strategy == "steps" and args.evaluation_strategy == "steps"
    with pytest.warns(FutureWarning, match="warmup_ratio"):
        assert TrainingArguments(output_dir=str(tmp_path), warmup_ratio=0.1).warmup_steps == 0.1


def test_arguments_cover_every_hf_field_with_hf_defaults(tmp_path: Path) -> None:
    import dataclasses

    from hf_lightning.args import NO_EFFECT, SUPPORTED

    hf_fields = {f.name: f for f in dataclasses.fields(transformers.TrainingArguments)}
    assert set(hf_fields) == SUPPORTED | set(NO_EFFECT)
    ours = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    for name, f in hf_fields.items():
        assert ours[name].default == f.default, name
    with pytest.warns(UserWarning, match="push_to_hub"):
        TrainingArguments(output_dir=str(tmp_path), push_to_hub=True)


def test_callbacks_add_pop_remove(tmp_path: Path, demo_tokenizer) -> None:
    from transformers import EarlyStoppingCallback, PrinterCallback

    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=TrainingArguments(output_dir=str(tmp_path)))
    trainer.add_callback(EarlyStoppingCallback)
    assert any(isinstance(c, EarlyStoppingCallback) for c in trainer.callback_handler.callbacks)
    popped = trainer.pop_callback(EarlyStoppingCallback)
    assert isinstance(popped, EarlyStoppingCallback)
    trainer.add_callback(PrinterCallback())
    trainer.remove_callback(PrinterCallback)
    assert not any(isinstance(c, PrinterCallback) for c in trainer.callback_handler.callbacks)


def test_eval_strategy_without_eval_dataset_fails_fast(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(TrainingArguments, tmp_path),
                      train_dataset=cls_dataset, processing_class=demo_tokenizer)
    with pytest.raises(ConfigError, match="eval_dataset"):
        trainer.train()


def test_accelerator_sync_gradients_is_true_on_a_windows_last_micro_batch(cls_dataset, demo_tokenizer,
                                                                         tmp_path: Path) -> None:
    """``self.accelerator.sync_gradients`` (read by HF-style overrides) marks the micro-batch before each step."""
    seen: list[bool] = []

    class Recording(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append(self.accelerator.sync_gradients)
            return super().training_step(model, inputs, num_items_in_batch)

    args = _args(TrainingArguments, tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=3,
                 max_steps=2, eval_strategy="no")
    Recording(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
              processing_class=demo_tokenizer).train()
    assert seen == [False, False, True, False, False, True]


def test_train_prints_its_metrics_in_one_line(cls_dataset, demo_tokenizer, tmp_path: Path, capsys) -> None:
    """With the progress bar on, train() ends with the metrics line HF's ProgressCallback writes under its bar."""
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)),
                      args=_args(TrainingArguments, tmp_path, eval_strategy="no", max_steps=2, disable_tqdm=False),
                      train_dataset=cls_dataset, processing_class=demo_tokenizer)
    result = trainer.train()
    out = capsys.readouterr()
    lines = [ln for ln in out.out.splitlines() if "train_runtime" in ln]
    assert len(lines) == 1
    shown = ast.literal_eval(lines[0][lines[0].index("{"):])
    assert shown["train_loss"] == f"{result.metrics['train_loss']:.4g}" and "total_flos" not in shown
    assert "2/2" in out.err, "HF's training bar (tqdm, on stderr) counted the optimizer steps"


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_default_callbacks_are_hfs(disable_tqdm: bool, cls_dataset, demo_tokenizer, tmp_path: Path, capsys) -> None:
    """The same callback list as transformers.Trainer's; ProgressCallback is the only bar and can be removed."""
    names = []
    for cls, args_cls in ((transformers.Trainer, transformers.TrainingArguments), (Trainer, TrainingArguments)):
        trainer = cls(model=tiny_bert_classifier(len(demo_tokenizer)), train_dataset=cls_dataset,
                      args=_args(args_cls, tmp_path / cls.__module__, eval_strategy="no", max_steps=2,
                                 disable_tqdm=disable_tqdm), processing_class=demo_tokenizer)
        names.append([type(cb).__name__ for cb in trainer.callback_handler.callbacks])
    assert names[1] == names[0]
    assert ("ProgressCallback" in names[1]) is (not disable_tqdm)
    if not disable_tqdm:
        capsys.readouterr()
        trainer.remove_callback(transformers.ProgressCallback)
        trainer.train()
        out = capsys.readouterr()
        assert "train_runtime" not in out.out and "2/2" not in out.err, "no bar and no lines once removed, as HF"
