"""Multi-process training runs for the distributed tests: ``python dist_worker.py MODE OUT [WORLD]``.

Lightning's DDP launcher re-runs this script once per rank; rank 0 writes ``OUT`` with torch.save.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from hf_lightning.data import build_collator, build_dataloader  # noqa: E402
from hf_lightning.module import HFLightningModule  # noqa: E402
from tests.workers.shared import (  # noqa: E402
    GradCapture,
    causal_lm_dataset,
    cls_dataset,
    tiny_bert_config,
    tiny_gpt2_config,
)


def _trainer(strategy, devices: int, callbacks: list, **kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                      num_sanity_val_steps=0, callbacks=callbacks, **kwargs)


def accumulation(out: str, world: int) -> None:
    """One optimizer step over 8 causal-LM samples: world x accumulation x batch == 8."""
    torch.manual_seed(0)
    data, tok = causal_lm_dataset(8)
    module = HFLightningModule(model=tiny_gpt2_config(len(tok)), task="causal-lm", learning_rate=0.0, optim="sgd")
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    loader = build_dataloader(data, 2, build_collator("causal-lm", tok), train=True, shuffle=False)
    capture = GradCapture()
    trainer = _trainer("ddp" if world > 1 else "auto", world, [capture], max_steps=1,
                       accumulate_grad_batches=8 // (2 * world))
    trainer.fit(module, train_dataloaders=loader)
    if trainer.is_global_zero:
        torch.save({"grads": capture.grads[0], "initial": initial}, out)


def weights(out: str, world: int, strategy_name: str) -> None:
    """A few AdamW steps of a tiny BERT classifier with a fixed global batch of 4."""
    torch.manual_seed(0)
    data, tok = cls_dataset(16)
    module = HFLightningModule(model=tiny_bert_config(len(tok)), learning_rate=1e-3, warmup_steps=1,
                               weight_decay=0.01, num_labels=2)
    loader = build_dataloader(data, 4 // world, build_collator("sequence-classification", tok), train=True,
                              shuffle=False)
    if strategy_name == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)
    else:
        strategy = "ddp" if world > 1 else "auto"
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(pl_module.last_step.loss)

    # 9 validation rows, batch 2: over 2 ranks one runs 3 batches and the other 2.
    val = build_dataloader(data.select(range(9)), 2, build_collator("sequence-classification", tok), train=False)
    trainer = _trainer(strategy, world, [Record()], max_steps=4, gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val)
    export = Path(out).with_suffix(".hf")
    module.save_hf_pretrained(export)
    if trainer.is_global_zero:
        torch.save({"losses": losses, "export": str(export), "eval": module.last_eval_metrics}, out)


LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "lora_dropout": 0.0, "fan_in_fan_out": True}


def lora(out: str, world: int) -> None:
    """A few AdamW steps of a LoRA-wrapped tiny GPT-2 (causal LM, uneven rows) at a global batch of 4."""
    torch.manual_seed(0)
    data, tok = causal_lm_dataset(16)
    module = HFLightningModule(model=tiny_gpt2_config(len(tok)), task="causal-lm", learning_rate=1e-2,
                               peft_config=LORA)
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    collate = build_collator("causal-lm", tok)
    loader = build_dataloader(data, 4 // world, collate, train=True, shuffle=False)
    trainer = _trainer("ddp" if world > 1 else "auto", world, [], max_steps=4)
    trainer.fit(module, train_dataloaders=loader)
    export = Path(out).with_suffix(".adapter")
    module.save_hf_pretrained(export)
    if trainer.is_global_zero:
        module.eval()
        with torch.no_grad():
            batch = collate([data[i] for i in range(4)])
            logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        params = dict(module.named_parameters())
        torch.save({"adapters": {n: p.detach().clone() for n, p in params.items() if p.requires_grad},
                    "base_unchanged": all(torch.equal(params[n].detach(), v) for n, v in frozen.items()),
                    "frozen_count": len(frozen), "export": str(export), "batch": batch, "logits": logits}, out)


def facade(out: str, world: int, parallel: str) -> None:
    """The HF-style Trainer with TrainingArguments naming the parallelism (ddp via devices, or fsdp)."""
    import transformers

    from hf_lightning import Trainer, TrainingArguments
    from tests.workers.shared import tiny_bert_config

    data, tok = cls_dataset(16)
    config = {k: v for k, v in tiny_bert_config(len(tok)).items() if k != "model_type"}
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**config, num_labels=2))
    extra = FSDP_VARIANTS.get(parallel, {})
    args = TrainingArguments(
        output_dir=str(Path(out).parent / f"facade-{parallel}"), per_device_train_batch_size=4 // world, max_steps=4,
        learning_rate=1e-3, train_sampling_strategy="sequential", logging_steps=1, save_strategy="steps", save_steps=4,
        report_to="none", use_cpu=True, disable_tqdm=True, devices=world, overwrite_output_dir=True,
        per_device_eval_batch_size=2, **extra,
    )
    seen: dict[str, list] = {}

    def compute_metrics(p):  # 9 rows over `world` ranks, batch 2: the ranks run different numbers of batches
        seen["labels"] = p.label_ids.tolist()
        return {"rows": len(p.label_ids), "accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(9)),
                      processing_class=tok, compute_metrics=compute_metrics)
    trainer.train()
    metrics = trainer.evaluate()
    sharding = _sharding_state(trainer.model, data, tok) if parallel.startswith("fsdp") else None
    if trainer.is_world_process_zero():
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        torch.save({"losses": losses, "export": str(Path(args.output_dir) / "checkpoint-4"), "eval": metrics,
                    "eval_labels": seen["labels"], "labels": list(data["labels"][:9]), "sharding": sharding}, out)


# TrainingArguments for each FSDP variant the facade tests run (fsdp -> FSDP2 on CPU).
FSDP_VARIANTS = {
    "fsdp": {"fsdp": "full_shard auto_wrap"},
    "fsdp-offload": {"fsdp": "full_shard auto_wrap offload"},
    "fsdp-shard_grad_op": {"fsdp": "shard_grad_op auto_wrap"},
    "fsdp-layers": {"fsdp": "full_shard auto_wrap",
                    "fsdp_config": {"transformer_layer_cls_to_wrap": ["BertAttention", "BertIntermediate"]}},
}


def _sharding_state(model, data, tok) -> dict:
    """What FSDP2 did with the model: the wrapped classes, the offload flags, and whether a block's
    weights stay gathered after a forward (reshard_after_forward=False) or go back to shards (DTensors)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from hf_lightning.data import build_collator

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    # torch keeps a unit's offload setting on its private parameter group; read it from there.
    offloaded = [p.offload_to_cpu for m in units for p in m._get_fsdp_state()._fsdp_param_group.fsdp_params]
    for unit in units:
        unit.reshard()
    batch = build_collator("sequence-classification", tok)([data[i] for i in range(2)])
    model(**batch)  # a forward with autograd on, without its backward
    query = model.bert.encoder.layer[0].attention.self.query.weight  # in a block unit, never the root
    return {
        "wrapped": sorted({type(m).__name__.removeprefix("FSDP") for m in units if m is not model}),
        "offloaded": offloaded,
        "devices": sorted({p.device.type for p in model.parameters()}),
        "sharded_after_forward": isinstance(query, DTensor),
    }


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    world = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    torch.set_num_threads(1)
    if mode == "accumulation":
        accumulation(out, world)
    elif mode in ("ddp", "single", "fsdp"):
        weights(out, world, mode)
    elif mode == "lora":
        lora(out, world)
    elif mode.startswith("facade-"):
        facade(out, world, mode.split("-", 1)[1])
    else:
        raise SystemExit(f"unknown mode {mode}")
