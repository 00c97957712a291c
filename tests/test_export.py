"""Export and compression on a tiny trained BERT: ONNX, TorchScript, int8 quantization, pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_lightning.args import TrainingArguments
from hf_lightning.trainer import Trainer
from tests.conftest import tiny_bert_classifier


@pytest.fixture(scope="module")
def trained(cls_dataset, demo_tokenizer, tmp_path_factory: pytest.TempPathFactory):
    """A tiny classifier trained until it separates the labels, and a padded batch of all 40 rows."""
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("trained")), per_device_train_batch_size=8,
                             max_steps=40, learning_rate=5e-3, save_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args, train_dataset=cls_dataset,
                      processing_class=demo_tokenizer)
    trainer.train()
    batch = demo_tokenizer(list(cls_dataset["text"]), return_tensors="pt", padding=True)
    return trainer.model.eval(), dict(batch), torch.tensor(list(cls_dataset["label"]))


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def test_onnx_matches_pytorch_with_onnxruntime(trained, tmp_path: Path) -> None:
    import onnxruntime

    from hf_lightning.export import export_onnx

    model, batch, _ = trained
    report = export_onnx(model, {k: v[:2] for k, v in batch.items()}, tmp_path / "model.onnx")
    assert report.max_abs_diff <= 1e-4
    # Dynamic axes: the file runs on a different batch size and sequence length than it was traced with.
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    other = {k: v[5:12, :9] for k, v in batch.items()}
    (logits,) = session.run(["logits"], {k: v.numpy() for k, v in other.items()})
    with torch.no_grad():
        expected = model(**other).logits
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=0, atol=1e-4)


def test_torchscript_trace_matches_pytorch(trained, tmp_path: Path) -> None:
    from hf_lightning.export import export_torchscript

    model, batch, _ = trained
    report = export_torchscript(model, batch, tmp_path / "model.pt")
    loaded = torch.jit.load(str(report.path))  # no transformers classes needed to run it
    with torch.no_grad():
        torch.testing.assert_close(loaded(*batch.values()), model(**batch).logits, rtol=0, atol=1e-5)


def test_dynamic_int8_quantization_size_and_accuracy(trained, capsys) -> None:
    from hf_lightning.export import model_size_bytes, quantize_dynamic_int8

    model, batch, labels = trained
    quantized = quantize_dynamic_int8(model)
    assert type(quantized.classifier).__module__.startswith("torch.ao.nn.quantized")  # Linear layers replaced
    with torch.no_grad():
        full, small = model(**batch).logits, quantized(**batch).logits
    sizes = model_size_bytes(model), model_size_bytes(quantized)
    accuracy = _accuracy(full, labels), _accuracy(small, labels)
    with capsys.disabled():
        print(f"\nint8 dynamic quantization: {sizes[0]} -> {sizes[1]} bytes; accuracy {accuracy[0]:.3f} -> {accuracy[1]:.3f}")
    assert accuracy[0] >= 0.9, "the fixture model must have learned the labels for this comparison to mean anything"
    assert sizes[1] < 0.85 * sizes[0]  # the embeddings stay float; the Linear weights shrink 4x
    assert accuracy[1] >= accuracy[0] - 0.05
    assert (full.argmax(-1) == small.argmax(-1)).float().mean() >= 0.95


def test_magnitude_pruning_reaches_target_sparsity(demo_assets, task_files, tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from hf_lightning import HFDataModule, HFLightningModule
    from hf_lightning.callbacks.pruning import MagnitudePruning, linear_sparsity
    from tests.conftest import TINY_MODELS

    data = HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"], batch_size=4)
    module = HFLightningModule(model=TINY_MODELS["bert"], num_labels=data.num_labels, vocab_size=data.vocab_size,
                               pad_token_id=data.pad_token_id, learning_rate=1e-3)
    assert linear_sparsity(module.model) == 0.0
    pruning = MagnitudePruning(target_sparsity=0.6, steps=3)
    rounds = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            rounds.append(linear_sparsity(pl_module.model))  # masks applied: the forward weights

    trainer = pl.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, use_distributed_sampler=False, limit_val_batches=0,
                         callbacks=[pruning, Watch()], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    # Rising along the cubic schedule (0.42, 0.58, 0.6 after rounds 1-3), never decreasing.
    assert rounds == sorted(rounds) and rounds[0] == 0.0
    assert linear_sparsity(module.model) == pytest.approx(0.6, abs=1e-3)
    keys = module.model.state_dict().keys()
    assert not any(k.endswith(("_orig", "_mask")) for k in keys), "masks are folded into the weights at the end"
    module.model.save_pretrained(tmp_path / "pruned")
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned")
    assert linear_sparsity(reloaded) == pytest.approx(0.6, abs=1e-3)


def test_pruning_arguments_are_checked() -> None:
    from hf_lightning.callbacks.pruning import MagnitudePruning
    from hf_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="target_sparsity"):
        MagnitudePruning(target_sparsity=1.0)
