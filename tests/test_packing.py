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


def _data(task_files, demo_assets, collator: str) -> HFDataModule:
    data = HFDataModule(dataset="json", data_files=task_files["text"], tokenizer=demo_assets["tokenizer"],
                        task="causal-lm", batch_size=6, max_length=16, shuffle=False, collator=collator)
    data.setup("fit")
    return data


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

    results = {}
    for name, batch in (("padded", pad_batch), ("packed", pack_batch)):
        module = copy.deepcopy(base)
        loss = module.compute_loss(batch).loss
        loss.backward()
        results[name] = (loss.detach(), [p.grad for p in module.parameters()])
    (pad_loss, pad_grads), (pack_loss, pack_grads) = results["padded"], results["packed"]
    assert pack_loss.item() == pytest.approx(pad_loss.item(), abs=1e-5)
    assert max((a - b).abs().max().item() for a, b in zip(pad_grads, pack_grads)) <= 1e-5

    weights = {}
    for name, data in (("padded", padded), ("packed", packed)):
        module = copy.deepcopy(base)
        pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, max_steps=3, limit_val_batches=0,
                   ).fit(module, datamodule=data)
        weights[name] = module.model.state_dict()
    moved = max((weights["padded"][k] - v).abs().max().item() for k, v in base.model.state_dict().items())
    assert moved > 1e-4
    assert max((weights["padded"][k] - v).abs().max().item() for k, v in weights["packed"].items()) <= 1e-5


def test_packing_is_for_causal_lm_only(task_files, demo_assets) -> None:
    with pytest.raises(ConfigError, match="data.collator: packed needs task causal-lm"):
        HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"],
                     task="sequence-classification", label_column="label", collator="packed")


def test_trainer_facade_trains_the_same_with_packed_collator(demo_tokenizer, tmp_path) -> None:
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
                           ("packed", PackedCollator())):
        model = copy.deepcopy(base)
        args = TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=4, max_steps=3,
                                 learning_rate=1e-3, train_sampling_strategy="sequential", report_to="none",
                                 use_cpu=True, disable_tqdm=True, save_strategy="no", seed=0)
        Trainer(model=model, args=args, train_dataset=rows, data_collator=collator).train()
        weights[name] = model.state_dict()
    assert max((weights["padded"][k] - base.state_dict()[k]).abs().max().item() for k in weights["padded"]) > 1e-4
    assert max((weights["padded"][k] - v).abs().max().item() for k, v in weights["packed"].items()) <= 1e-5
