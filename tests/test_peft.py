"""LoRA through both front doors: only adapters train, adapter folders load with peft, merge is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_lightning.args import TrainingArguments
from hf_lightning.trainer import Trainer
from tests.conftest import tiny_bert_classifier

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "lora_dropout": 0.0,
             "fan_in_fan_out": True}


def _lora_model(vocab_size: int):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_bert_classifier(vocab_size), LoraConfig(task_type="SEQ_CLS", **LORA))


def _frozen(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _args(out: Path, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(out), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-2,
                  save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
                  train_sampling_strategy="sequential")
    return TrainingArguments(**{**values, **overrides})


def test_facade_trains_only_adapters_and_saves_an_adapter_folder(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    from peft import PeftModel

    model = _lora_model(len(demo_tokenizer))
    frozen, trainable = _frozen(model), _trainable(model)
    assert any("lora_" in n for n in trainable) and not any("lora_" in n for n in frozen)
    trainer = Trainer(model=model, args=_args(tmp_path / "run"), train_dataset=cls_dataset, processing_class=demo_tokenizer)
    trainer.train()
    for name, value in _frozen(model).items():
        assert torch.equal(value, frozen[name]), f"frozen base weight {name} changed"
    assert all(not torch.equal(v, trainable[n]) for n, v in _trainable(model).items() if "lora_B" in n)
    # Checkpoints hold the adapters (what PeftModel.save_pretrained writes), not a full model copy.
    checkpoint = tmp_path / "run" / "checkpoint-4"
    assert (checkpoint / "adapter_config.json").is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()
    trainer.save_model(str(tmp_path / "adapter"))
    batch = dict(demo_tokenizer(list(cls_dataset["text"][:8]), return_tensors="pt", padding=True))
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        base = tiny_bert_classifier(len(demo_tokenizer))  # the same seed: the same base weights
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=1e-6)
        merged = reloaded.merge_and_unload()  # a plain transformers model with the adapters folded in
        assert type(merged).__name__ == "BertForSequenceClassification"
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=0, atol=1e-5)


def test_facade_resume_with_lora_is_exact(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    straight = Trainer(model=_lora_model(len(demo_tokenizer)), args=_args(tmp_path / "a"), train_dataset=cls_dataset,
                       processing_class=demo_tokenizer)
    straight.train()
    resumed = Trainer(model=_lora_model(len(demo_tokenizer)), args=_args(tmp_path / "b"), train_dataset=cls_dataset,
                      processing_class=demo_tokenizer)
    resumed.train()  # writes checkpoint-2 on the way; now continue a fresh model from it
    again = Trainer(model=_lora_model(len(demo_tokenizer)), args=_args(tmp_path / "b"), train_dataset=cls_dataset,
                    processing_class=demo_tokenizer)
    again.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    for (name, a), b in zip(_trainable(straight.model).items(), _trainable(again.model).values()):
        assert torch.equal(a, b), name


def test_native_module_peft_config(demo_assets, task_files, tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from hf_lightning import HFDataModule, HFLightningModule
    from tests.conftest import TINY_MODELS

    data = HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"], batch_size=4)
    module = HFLightningModule(model=TINY_MODELS["bert"], num_labels=data.num_labels, vocab_size=data.vocab_size,
                               pad_token_id=data.pad_token_id, learning_rate=1e-2, peft_config=LORA)
    frozen = _frozen(module.model)
    trainable = _trainable(module.model)
    assert set(trainable) == {n for n in trainable if "lora_" in n or "classifier" in n}
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=0,
                         use_distributed_sampler=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    for name, value in _frozen(module.model).items():
        assert torch.equal(value, frozen[name]), f"frozen base weight {name} changed"
    # The Lightning checkpoint holds the adapters; the HF export is an adapter folder.
    (ckpt,) = tmp_path.rglob("*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert any("lora_A" in k for k in state)
    folder = module.save_hf_pretrained(tmp_path / "hf", processing_class=data.tokenizer)
    assert (Path(folder) / "adapter_config.json").is_file()


def test_peft_config_errors_are_one_line() -> None:
    from hf_lightning import HFLightningModule
    from hf_lightning.errors import ConfigError
    from tests.conftest import TINY_MODELS

    with pytest.raises(ConfigError, match="model.peft_config.*Fix: name modules the model has"):
        HFLightningModule(model=TINY_MODELS["bert"], num_labels=2, vocab_size=100,
                          peft_config={**LORA, "target_modules": ["c_attn"]})
    with pytest.raises(ConfigError, match="peft_type.*unknown PEFT method 'NOPE'"):
        HFLightningModule(model=TINY_MODELS["bert"], num_labels=2, vocab_size=100, peft_config={"peft_type": "nope"})


GPT2_LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "lora_dropout": 0.0,
             "fan_in_fan_out": True}


def _lora_lm(vocab: int):
    from hf_lightning import HFLightningModule
    from tests.workers.shared import tiny_gpt2_config

    torch.manual_seed(0)
    return HFLightningModule(model=tiny_gpt2_config(vocab), task="causal-lm", optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
                             peft_config=GPT2_LORA)


def test_accumulation_with_lora_equals_one_big_batch_on_uneven_causal_lm(tmp_path: Path) -> None:
    """4 micro-batches of 2 (accumulation 4) train the same LoRA adapters as one batch of 8, in both front doors.

    Causal LM rows of 2 to 13 words padded per micro-batch hold very different token counts, so the
    plain mean of micro-batch means (Lightning's default) gives a different update: the control below
    measures it on the same data, so this test fails if token-exact normalisation is lost.
    """
    import lightning.pytorch as pl

    from hf_lightning.data import build_collator, build_dataloader
    from tests.workers.shared import causal_lm_dataset

    data, tok = causal_lm_dataset(16)
    collate = build_collator("causal-lm", tok)
    tokens = [len(x) for x in data["input_ids"]]
    assert max(tokens) > 2 * min(tokens), "uneven rows are what makes the naive mean of means wrong"
    runs = {}
    for name, (batch, accumulation) in {"big": (8, 1), "accumulated": (2, 4)}.items():
        module = _lora_lm(len(tok))
        initial, frozen = _trainable(module), _frozen(module)
        loader = build_dataloader(data, batch, collate, train=True, shuffle=False)
        trainer = pl.Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=accumulation, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             use_distributed_sampler=False, default_root_dir=tmp_path)
        trainer.fit(module, train_dataloaders=loader)
        runs[name] = _trainable(module)
        assert set(runs[name]) and all("lora_" in n for n in runs[name]), "only the adapters train"
        assert all(torch.equal(v, frozen[n]) for n, v in _frozen(module).items()), "the frozen base changed"
    # Both steps moved both adapter matrices (lora_B starts at zero, so lora_A first moves in step 2).
    assert all(not torch.equal(v, initial[n]) for n, v in runs["big"].items())
    # The facade with the PEFT model: the same adapters (HF's column pruning reads the base model's
    # forward, so GPT-2 keeps its token_type_ids as in the native run).
    model = _lora_lm(len(tok)).model
    Trainer(model=model, train_dataset=data, data_collator=collate,
            args=_args(tmp_path / "facade", per_device_train_batch_size=2, gradient_accumulation_steps=4, max_steps=2,
                       learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", save_strategy="no")).train()
    runs["facade"] = {f"model.{n}": v for n, v in _trainable(model).items()}
    for name, value in runs["big"].items():
        torch.testing.assert_close(runs["accumulated"][name], value, rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(runs["facade"][name], value, rtol=0, atol=1e-5, msg=name)

    # Control: the same two SGD steps (constant lr) with each micro-batch's mean loss divided by 4 (mean of means).
    naive = _lora_lm(len(tok))
    params = [p for p in naive.parameters() if p.requires_grad]
    for step in range(2):
        for micro in range(4):
            start = step * 8 + micro * 2
            (naive.compute_loss(collate([data[start], data[start + 1]])).loss / 4).backward()
        with torch.no_grad():
            for p in params:
                p -= 1.0 * p.grad
                p.grad = None
    naive_gap = max((v - runs["big"][n]).abs().max().item() for n, v in _trainable(naive).items())
    assert naive_gap > 1e-4, f"the control should differ measurably, got {naive_gap}"


@pytest.mark.slow
@pytest.mark.distributed
def test_native_lora_under_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    """peft_config under strategy="ddp", devices=2 (gloo): 2 ranks x batch 2 == one process x batch 4.

    The adapters match the one-process run, the frozen base is bit for bit unchanged, and the adapter
    folder rank 0 writes loads with ``PeftModel.from_pretrained`` onto a fresh base.
    """
    import subprocess
    import sys

    from peft import PeftModel

    from hf_lightning import HFLightningModule
    from tests.workers.shared import tiny_gpt2_config

    worker = Path(__file__).parent / "workers" / "dist_worker.py"
    runs = {}
    for name, world in (("single", 1), ("ddp", 2)):
        out = tmp_path / f"lora-{name}.pt"
        run = subprocess.run([sys.executable, str(worker), "lora", str(out), str(world)], capture_output=True,
                             text=True, timeout=400, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-4000:]
        runs[name] = torch.load(out, weights_only=False)
    single, ddp = runs["single"]["adapters"], runs["ddp"]["adapters"]
    assert set(single) == set(ddp) and single and all("lora_" in n for n in ddp)
    gap = max((ddp[n] - single[n]).abs().max().item() for n in single)
    assert gap <= 1e-5, f"DDP adapters differ from one process by {gap}"
    assert all(ddp[n].abs().max() > 0 for n in ddp if "lora_B" in n), "the adapters trained"
    assert runs["ddp"]["frozen_count"] > 0 and runs["ddp"]["base_unchanged"], "the frozen base changed under DDP"

    folder = Path(runs["ddp"]["export"])
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    torch.manual_seed(0)  # the worker's seed: the same base weights, built without peft_config
    vocab = runs["ddp"]["logits"].shape[-1]
    base = HFLightningModule(model=tiny_gpt2_config(vocab), task="causal-lm").model
    reloaded = PeftModel.from_pretrained(base, str(folder)).eval()
    batch = runs["ddp"]["batch"]
    with torch.no_grad():
        logits = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, runs["ddp"]["logits"], rtol=0, atol=1e-6)
