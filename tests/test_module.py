"""HFLightningModule + HFDataModule for every task, and the save_pretrained/from_pretrained round trip."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import transformers

from hf_lightning.data import HFDataModule
from hf_lightning.errors import ConfigError
from hf_lightning.module import HFLightningModule
from hf_lightning.tasks import TASKS
from tests.conftest import TINY_MODELS

CASES = {
    "sequence-classification": ("bert", "cls", {"label_column": "label"}),
    "token-classification": ("bert", "ner", {"text_column": "tokens", "label_column": "tags"}),
    "causal-lm": ("gpt2", "text", {}),
    "masked-lm": ("bert", "text", {}),
    "seq2seq-lm": ("t5", "s2s", {"target_column": "summary"}),
}


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kwargs})


def test_cases_cover_every_task() -> None:
    assert set(CASES) == set(TASKS)


@pytest.mark.parametrize("task", sorted(CASES))
def test_train_and_round_trip(task: str, task_files, demo_assets, tmp_path: Path) -> None:
    arch, files, data_kwargs = CASES[task]
    data = HFDataModule(dataset="json", data_files=task_files[files], tokenizer=demo_assets["tokenizer"], task=task,
                        batch_size=4, max_length=16, **data_kwargs)
    module = HFLightningModule(model=TINY_MODELS[arch], task=task, num_labels=data.num_labels, id2label=data.id2label,
                               vocab_size=data.vocab_size, pad_token_id=data.pad_token_id, learning_rate=1e-3)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = _trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    assert any(not torch.equal(before[k], v) for k, v in module.model.state_dict().items()), "weights moved"
    assert "eval_loss" in module.last_eval_metrics
    if TASKS[task].has_num_labels:
        assert "eval_accuracy" in module.last_eval_metrics
    else:
        assert "eval_perplexity" in module.last_eval_metrics

    out = module.save_hf_pretrained(tmp_path / "export", processing_class=data.tokenizer)
    auto = getattr(transformers, TASKS[task].auto_class)
    loaded = auto.from_pretrained(out).eval()
    module.model.eval()
    batch = next(iter(data.val_dataloader()))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if task == "seq2seq-lm":
        inputs["decoder_input_ids"] = torch.zeros_like(batch["labels"][:, :3])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, module.model(**inputs).logits, rtol=0, atol=0)
    assert transformers.AutoTokenizer.from_pretrained(out)("good film")["input_ids"] == data.tokenizer("good film")["input_ids"]


def test_model_loaded_in_eval_mode_trains_with_dropout(task_files, demo_assets, tmp_path: Path) -> None:
    """from_pretrained returns eval mode; fine-tuning must still run with dropout on (HF's model.train())."""
    data = HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"],
                        batch_size=4, max_length=16)
    config = {**TINY_MODELS["bert"], "hidden_dropout_prob": 0.5, "num_labels": data.num_labels,
              "vocab_size": data.vocab_size}
    HFLightningModule(model=config).model.save_pretrained(tmp_path / "pretrained")
    module = HFLightningModule(model=str(tmp_path / "pretrained"), num_labels=data.num_labels)
    assert not module.model.training  # what from_pretrained gives

    modes: list[bool] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            modes.append(pl_module.model.training and all(m.training for m in pl_module.model.modules()))

    _trainer(max_steps=2, limit_val_batches=0, callbacks=[Record()]).fit(module, datamodule=data)
    assert modes == [True, True]


def test_module_accepts_instance_and_directory(tmp_path: Path) -> None:
    config = transformers.BertConfig(**{k: v for k, v in TINY_MODELS["bert"].items() if k != "model_type"}, vocab_size=50)
    instance = transformers.BertForSequenceClassification(config)
    assert HFLightningModule(model=instance).model is instance
    instance.save_pretrained(tmp_path / "m")
    from_dir = HFLightningModule(model=str(tmp_path / "m"))
    torch.testing.assert_close(from_dir.model.bert.embeddings.word_embeddings.weight, instance.bert.embeddings.word_embeddings.weight)


def test_num_labels_mismatch_is_one_clear_error(tmp_path: Path) -> None:
    config = transformers.BertConfig(**{k: v for k, v in TINY_MODELS["bert"].items() if k != "model_type"}, vocab_size=50, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match="num_labels"):
        HFLightningModule(model=str(tmp_path / "m"), num_labels=2)


def test_missing_model_dir_fails_fast() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        HFLightningModule(model="./no/such/model")
    with pytest.raises(ConfigError, match="offline"):
        HFLightningModule(model="bert-base-uncased")


def test_missing_model_is_one_line_error_not_a_hub_download() -> None:
    with pytest.raises(ConfigError, match=r"^model: no model given\. Fix: pass a local folder") as info:
        HFLightningModule(task="sequence-classification", num_labels=2)
    assert "\n" not in str(info.value)


def test_help_lists_the_settings_by_concern() -> None:
    """``hf-lightning fit --help`` reads model, loss, optimizer, evaluation, scale-out, in that order."""
    import inspect
    import re

    concerns = ["model", "loss", "optimizer", "evaluation", "scale-out"]
    doc = inspect.getdoc(HFLightningModule) or ""
    tags = dict(re.findall(r"^    (\w+): \(([a-z-]+)\)", doc, flags=re.M))
    params = [p for p in inspect.signature(HFLightningModule).parameters]
    assert set(params) == set(tags), "every setting is documented with its concern"
    order = [concerns.index(tags[p]) for p in params]
    assert order == sorted(order), [(p, tags[p]) for p in params]


def test_weight_decay_grouping_matches_hf() -> None:
    module = HFLightningModule(model=TINY_MODELS["bert"], weight_decay=0.1)
    module.trainer = None
    from hf_lightning.optim import build_optimizer

    optimizer = build_optimizer(module, weight_decay=0.1)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    names = {n for n, p in module.named_parameters() if id(p) in decayed}
    assert all("bias" not in n and "LayerNorm" not in n for n in names)
    assert any("LayerNorm" in n for n, p in module.named_parameters() if id(p) not in decayed)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def _s2s(task_files, demo_assets, **kwargs) -> tuple[HFDataModule, HFLightningModule]:
    data = HFDataModule(dataset="json", data_files=task_files["s2s"], tokenizer=demo_assets["tokenizer"],
                        task="seq2seq-lm", target_column="summary", batch_size=4, max_length=16)
    module = HFLightningModule(model=TINY_MODELS["t5"], task="seq2seq-lm", vocab_size=data.vocab_size,
                               pad_token_id=data.pad_token_id, **kwargs)
    return data, module


def test_seq2seq_predicts_with_and_without_labels_and_trains_with_label_smoothing(task_files, demo_assets,
                                                                                 tmp_path: Path) -> None:
    """Losses and predictions call the model without labels; the decoder inputs come from the labels."""
    data, module = _s2s(task_files, demo_assets, label_smoothing_factor=0.1)
    trainer = _trainer(max_steps=2, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2
    labelled = HFDataModule(dataset="json", data_files=task_files["s2s"], tokenizer=demo_assets["tokenizer"],
                            task="seq2seq-lm", target_column="summary", batch_size=4, max_length=16,
                            test_split="validation")
    out = _trainer(limit_predict_batches=1).predict(module, datamodule=labelled)[0]  # teacher-forced logits
    assert out["logits"].shape[:2] == out["labels"].shape
    rows = [{"text": "good film"}, {"text": "bad plot"}]  # unlabelled: generated ids
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(__import__("json").dumps(r) for r in rows))
    files = {**task_files["s2s"], "test": str(test)}
    unlabelled = HFDataModule(dataset="json", data_files=files, tokenizer=demo_assets["tokenizer"], task="seq2seq-lm",
                              target_column="summary", batch_size=4, max_length=16)
    out = _trainer().predict(module, datamodule=unlabelled)[0]
    assert set(out) == {"generated"} and out["generated"].shape[0] == 2


def test_reduce_lr_on_plateau_steps_after_each_evaluation(task_files, demo_assets) -> None:
    data = HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"],
                        batch_size=4, max_length=16)
    module = HFLightningModule(model=TINY_MODELS["bert"], num_labels=data.num_labels, vocab_size=data.vocab_size,
                               learning_rate=1e-3, lr_scheduler_type="reduce_lr_on_plateau",
                               lr_scheduler_kwargs={"patience": 0, "factor": 0.5, "threshold": 10.0})
    trainer = _trainer(max_steps=4, val_check_interval=1, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    # threshold 10 (relative): no evaluation, not even the first, counts as an improvement; each halves the lr
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**4)


def test_load_from_checkpoint_needs_the_loss_it_was_trained_with(task_files, demo_assets, tmp_path: Path) -> None:
    from hf_lightning.losses import FocalLoss

    data = HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"],
                        batch_size=4, max_length=16)
    module = HFLightningModule(model=TINY_MODELS["bert"], num_labels=data.num_labels, vocab_size=data.vocab_size,
                               loss=FocalLoss(gamma=2.0))
    trainer = _trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "focal.ckpt")
    with pytest.raises(ConfigError, match="FocalLoss") as info:
        HFLightningModule.load_from_checkpoint(tmp_path / "focal.ckpt")
    assert info.value.field == "loss"
    reloaded = HFLightningModule.load_from_checkpoint(tmp_path / "focal.ckpt", loss=FocalLoss(gamma=2.0))
    assert isinstance(reloaded.loss_fn, FocalLoss)
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, reloaded.model.state_dict()[key]), key


def test_compute_metrics_joins_the_streaming_metrics(task_files, demo_assets) -> None:
    """HF's compute_metrics on the Lightning-native module: EvalPrediction in, eval_<name> out."""
    data = HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"],
                        batch_size=4, max_length=16)
    seen = {}

    def compute_metrics(p):
        seen["shapes"] = (p.predictions.shape, p.label_ids.shape)
        return {"agreement": float((p.predictions == p.label_ids).mean())}

    module = HFLightningModule(model=TINY_MODELS["bert"], num_labels=data.num_labels, vocab_size=data.vocab_size,
                               compute_metrics=compute_metrics,
                               preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1))
    metrics = _trainer().validate(module, datamodule=data)[0]
    rows = len(data.dataset("validation"))
    assert seen["shapes"] == ((rows,), (rows,))
    assert metrics["eval_agreement"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)


def test_default_optimizer_is_transformers_default(tmp_path: Path) -> None:
    """The native module steps what transformers.Trainer steps by default (fused AdamW on this torch),
    so that the two front doors and transformers compare on the same kernel."""
    import inspect

    from hf_lightning.optim import build_optimizer

    hf_default = str(transformers.TrainingArguments(output_dir=str(tmp_path)).optim.value)
    assert inspect.signature(HFLightningModule.__init__).parameters["optim"].default == hf_default
    assert inspect.signature(build_optimizer).parameters["optim"].default == hf_default
    optimizer = build_optimizer(torch.nn.Linear(4, 2))
    assert optimizer.defaults.get("fused") is (hf_default == "adamw_torch_fused")
