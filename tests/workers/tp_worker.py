"""Tensor-parallel runs for tests/test_tensor_parallel.py: ``python tp_worker.py MODE OUT WORLD``.

MODE ``facade`` (``OUT WORLD [TP_SIZE [ACCELERATOR]]``): the HF-style Trainer with
``TrainingArguments(tp_size=TP_SIZE or WORLD)`` on a tiny BERT, then a
tiny Llama, in the same processes (WORLD 1: the one-process reference, no tensor parallelism; the test
runs that in its own process). Lightning's launcher re-runs this script once per rank; rank 0 writes
``OUT-bert.pt`` and ``OUT-llama.pt``. MODE ``mesh`` (started by torchrun): what the samplers hand each rank
under a (data_parallel=2, tensor_parallel=2) mesh.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from tests.workers.shared import causal_lm_dataset, cls_dataset, tiny_bert_config  # noqa: E402


def _model(kind: str, vocab: int):
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        config = {k: v for k, v in tiny_bert_config(vocab).items() if k != "model_type"}
        return transformers.BertForSequenceClassification(transformers.BertConfig(**config, num_labels=2))
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config)


def _gather(value):
    if not dist.is_initialized():
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def facade(kind: str, out: str | Path, world: int, tp_size: int | None = None, accelerator: str = "cpu") -> None:
    """Global batch 4 (split over the world / tp_size data-parallel ranks), 2 micro-batches per step."""
    from hf_lightning import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    data, tok = cls_dataset(16) if kind == "bert" else causal_lm_dataset(16)
    tp_size = tp_size or world
    tp = {"tp_size": tp_size} if tp_size > 1 else {}
    args = TrainingArguments(
        output_dir=str(Path(out).parent / f"{kind}-{world}"), per_device_train_batch_size=4 // (world // tp_size),
        gradient_accumulation_steps=2, max_steps=3, learning_rate=1e-3, warmup_steps=0, max_grad_norm=0.5,
        train_sampling_strategy="random", seed=7, logging_steps=1, save_strategy="no", report_to="none",
        accelerator=accelerator, disable_tqdm=True, devices=world, overwrite_output_dir=True, per_device_eval_batch_size=2, **tp,
    )
    collator = DataCollatorForLanguageModeling(tok, mlm=False) if kind == "llama" else None
    seen: dict[str, list] = {}

    def compute_metrics(p):  # every evaluation row once, although both tensor-parallel ranks evaluated it
        seen["rows"] = len(p.label_ids)
        return {}

    trainer = Trainer(model=_model(kind, len(tok)), args=args, train_dataset=data, eval_dataset=data.select(range(5)),
                      data_collator=collator, processing_class=tok,
                      compute_metrics=compute_metrics if kind == "bert" else None)
    trainer.train()
    metrics = trainer.evaluate()
    order = _gather(trainer.get_train_dataloader().sampler.epoch_indices(0))
    export = Path(args.output_dir) / "export"
    trainer.save_model(str(export))
    device = trainer._pl_trainer.strategy.root_device
    batch = {k: torch.tensor(v, device=device) for k, v in tok(["the film was good", "not bad at all"], padding=True).items()}
    batch.pop("token_type_ids", None)
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(**batch).logits  # a collective under tensor parallelism
    if trainer.is_world_process_zero():
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        strategy = type(trainer._pl_trainer.strategy).__name__
        torch.save({"losses": losses, "export": str(export), "eval_loss": metrics["eval_loss"],
                    "eval_rows": seen.get("rows"), "orders": order, "batch": {k: v.cpu() for k, v in batch.items()},
                    "logits": logits.detach().cpu().clone(),
                    "strategy": strategy}, out)


def mesh(out: str) -> None:
    """The training and evaluation samplers' rows on each rank of a 2 x 2 (data x tensor) mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    from hf_lightning.data import build_dataloader
    from hf_lightning.data_parallel import use_data_parallel_mesh

    dist.init_process_group("gloo")
    device_mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("data_parallel", "tensor_parallel"))
    use_data_parallel_mesh(device_mesh["data_parallel"])
    rows = list(range(10))
    train = build_dataloader(rows, 2, None, train=True, shuffle=True, seed=3)
    evaluation = build_dataloader(rows[:9], 2, None, train=False)
    record = {"rank": dist.get_rank(), "dp_rank": device_mesh["data_parallel"].get_local_rank(),
              "train": [int(i) for batch in train for i in batch], "eval": [int(i) for batch in evaluation for i in batch],
              "eval_real": evaluation.sampler.real_count}
    gathered = _gather(record)
    if dist.get_rank() == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    world = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    torch.set_num_threads(1)
    if mode == "mesh":
        mesh(out)
    elif mode == "facade":  # optional: TP_SIZE ACCELERATOR (2-D runs: WORLD 4, TP_SIZE 2)
        tp_size = int(sys.argv[4]) if len(sys.argv) > 4 else None
        accelerator = sys.argv[5] if len(sys.argv) > 5 else "cpu"
        for kind in ("bert", "llama"):
            facade(kind, f"{out}-{kind}.pt", world, tp_size, accelerator)
    else:
        raise SystemExit(f"unknown mode {mode}")
