"""Padding-free packing for causal LMs: same loss, gradients and trained weights as padding."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest

from hf_lightning.data import HFDataModule
from hf_lightning.errors import ConfigError
from hf_lightning.module import HFLightningModule

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def _data(task_files, demo_assets, collator: str, packing_length: int | None = None) -> HFDataModule:
    data = HFDataModule(dataset="json", data_files=task_files["text"], tokenizer=demo_assets["tokenizer"],
                        task="causal-lm", batch_size=6, max_length=16, shuffle=False, collator=collator,
                        packing_length=packing_length)
    data.setup("fit")
    return data


def _loss_and_gradients(base: HFLightningModule, batch: dict) -> tuple[float, list]:
    module = copy.deepcopy(base)
    loss = module.compute_loss(batch).loss
    loss.backward()
    return loss.item(), [p.grad for p in module.parameters()]


def _fit(base: HFLightningModule, data: HFDataModule, steps: int = 3) -> dict:
    module = copy.deepcopy(base)
    pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0, max_steps=steps, limit_val_batches=0,
               ).fit(module, datamodule=data)
    return module.model.state_dict()


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - v).abs().max().item() for k, v in b.items())


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_packed_loss_gradients_and_weights_equal_padded(config, task_files, demo_assets) -> None:
    padded, packed = _data(task_files, demo_assets, "auto"), _data(task_files, demo_assets, "packed")
    base = HFLightningModule(model=config, task="causal-lm", vocab_size=padded.vocab_size,
                             pad_token_id=padded.pad_token_id, learning_rate=1e-3)
    pad_batch, pack_batch = next(iter(padded.train_dataloader())), next(iter(packed.train_dataloader()))
    lengths = pad_batch["attention_mask"].sum(1)
    assert pack_batch["input_ids"].shape == (1, int(lengths.sum())), "one row, no pad tokens"
    assert pad_batch["input_ids"].numel() > pack_batch["input_ids"].numel(), "the data must have padding to save"
    assert (pack_batch["position_ids"] == 0).sum() == len(lengths), "positions restart for each sequence"

    (pad_loss, pad_grads), (pack_loss, pack_grads) = _loss_and_gradients(base, pad_batch), _loss_and_gradients(
        base, pack_batch)
    assert pack_loss == pytest.approx(pad_loss, abs=1e-5)
    assert max((a - b).abs().max().item() for a, b in zip(pad_grads, pack_grads)) <= 1e-5

    weights = {"padded": _fit(base, padded), "packed": _fit(base, packed)}
    assert _max_diff(weights["padded"], base.model.state_dict()) > 1e-4
    assert _max_diff(weights["padded"], weights["packed"]) <= 1e-5


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_fixed_length_rows_equal_padded(config, task_files, demo_assets) -> None:
    padded, packed = _data(task_files, demo_assets, "auto"), _data(task_files, demo_assets, "packed", 12)
    base = HFLightningModule(model=config, task="causal-lm", vocab_size=padded.vocab_size,
                             pad_token_id=padded.pad_token_id, learning_rate=1e-3)
    pad_batch, pack_batch = next(iter(padded.train_dataloader())), next(iter(packed.train_dataloader()))
    lengths = pad_batch["attention_mask"].sum(1)
    rows = pack_batch["input_ids"].shape[0]
    assert rows > 1 and pack_batch["input_ids"].shape[1] == 12, "several rows, each padded to packing_length"
    real = pack_batch["input_ids"].ne(packed.pad_token_id)
    assert int(real.sum()) == int(lengths.sum()), "every token of every sequence is in a row"
    assert int(((pack_batch["position_ids"] == 0) & real).sum()) == len(lengths), "positions restart per sequence"

    (pad_loss, pad_grads), (pack_loss, pack_grads) = _loss_and_gradients(base, pad_batch), _loss_and_gradients(
        base, pack_batch)
    assert pack_loss == pytest.approx(pad_loss, abs=1e-5)
    assert max((a - b).abs().max().item() for a, b in zip(pad_grads, pack_grads)) <= 1e-5
    assert _max_diff(_fit(base, padded, 2), _fit(base, packed, 2)) <= 1e-5


def test_fixed_length_rows_keep_sequences_apart() -> None:
    """Rows are binned first-fit decreasing; padding has its own positions and no labels."""
    from hf_lightning.data.collators import PackedCollator

    features = [{"input_ids": list(range(10, 10 + n))} for n in (3, 7, 5, 2, 12)]
    batch = PackedCollator(max_length=10, pad_token_id=1)(features)
    assert batch["input_ids"].shape == (3, 10) and batch["use_cache"] is False
    assert batch["position_ids"].tolist() == [[*range(10)], [*range(7), *range(3)], [*range(5), *range(2), 0, 1, 2]]
    assert batch["input_ids"][0].tolist() == list(range(10, 20)), "a sequence longer than a row is truncated"
    assert batch["labels"][2].tolist() == [-100, 11, 12, 13, 14, -100, 11, -100, -100, -100]
    assert batch["input_ids"][2, 7:].tolist() == [1, 1, 1]


def test_packing_length_needs_packed_collator(task_files, demo_assets) -> None:
    with pytest.raises(ConfigError, match="data.packing_length: needs collator packed"):
        _data(task_files, demo_assets, "auto", 24)


def test_packing_is_for_causal_lm_only(task_files, demo_assets) -> None:
    with pytest.raises(ConfigError, match="data.collator: packed needs task causal-lm"):
        HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"],
                     task="sequence-classification", label_column="label", collator="packed")


@pytest.mark.parametrize("packing_length", [None, 16], ids=["one_row", "fixed_rows"])
def test_trainer_facade_trains_the_same_with_packed_collator(packing_length, demo_tokenizer, tmp_path) -> None:
    import transformers

    from hf_lightning.args import TrainingArguments
    from hf_lightning.data.collators import PackedCollator
    from hf_lightning.trainer import Trainer

    rows = [{"input_ids": [(i * 5 + j) % 60 + 4 for j in range(3 + (i * 7) % 11)]} for i in range(12)]
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                      pad_token_id=0)
    transformers.set_seed(0)
    base = transformers.LlamaForCausalLM(config)
    weights = {}
    for name, collator in (("padded", transformers.DataCollatorForLanguageModeling(demo_tokenizer, mlm=False)),
                           ("packed", PackedCollator(max_length=packing_length))):
        model = copy.deepcopy(base)
        args = TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=4, max_steps=3,
                                 learning_rate=1e-3, train_sampling_strategy="sequential", report_to="none",
                                 use_cpu=True, disable_tqdm=True, save_strategy="no", seed=0)
        Trainer(model=model, args=args, train_dataset=rows, data_collator=collator).train()
        weights[name] = model.state_dict()
    if packing_length:
        assert PackedCollator(max_length=packing_length)(rows[:4])["input_ids"].shape[0] > 1, "several rows a batch"
    assert _max_diff(weights["padded"], base.state_dict()) > 1e-4
    assert _max_diff(weights["padded"], weights["packed"]) <= 1e-5
