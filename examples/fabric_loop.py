"""Your own training loop, without a Trainer, on Lightning Fabric with hf_lightning's pieces.

Fabric handles devices, processes and DDP; the loop below is yours to change. It fine-tunes a causal
LM (a tiny Llama on the offline demo sentences unless ``--model`` names a local model folder) and uses
the same building blocks as ``hf_lightning.Trainer``, so with the same settings it ends with the same
weights (``tests/test_fabric_loop.py`` checks 1e-5, on 1 and 2 processes):

* a loss from ``hf_lightning.losses`` (label smoothing here; focal, distillation, ... work the same way:
  ``loss_fn(model, batch)`` returns the mean over the batch's scored tokens),
* NEFTune noise on the input embeddings (``hf_lightning.neftune``),
* token-exact gradient accumulation (``hf_lightning.accumulation``): each micro-batch backpropagates
  its summed loss and the gradients are divided once per optimizer step by the number of scored tokens
  in the whole window over all processes, so 4 micro-batches of 2 give the step of one batch of 8
  even when padding makes their token counts differ (a mean of per-micro-batch means does not),
* the exact-resume sampler (``hf_lightning.sampler``): the data order is a function of (seed, epoch,
  rank), and a checkpoint records how far into the epoch the run got (plus every RNG state), so
  ``--resume`` continues with exactly the batches and noise the uninterrupted run would have seen,
* the optimizer and scheduler HF's Trainer would build for these names (``hf_lightning.optim``),
* a Hugging Face export that loads with ``AutoModelForCausalLM.from_pretrained``.

Run it (CPU; the same file for one process and for DDP)::

    python examples/fabric_loop.py --output_dir outputs/fabric_loop
    python examples/fabric_loop.py --output_dir outputs/fabric_loop --devices 2   # 2 DDP processes (gloo)
    python examples/fabric_loop.py --output_dir outputs/resumed --resume outputs/fabric_loop/checkpoint-4.pt

With ``--devices 2`` Fabric starts the second process by running this script again. Keep the global
batch (``devices * batch_size * accumulation``) when you change the number of processes and the run
stays the same.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from torch.utils.data import DataLoader

from hf_lightning.accumulation import WindowCounter, scale_gradients
from hf_lightning.data import build_collator
from hf_lightning.losses import LabelSmoothingLoss
from hf_lightning.neftune import activate_neftune, deactivate_neftune
from hf_lightning.optim import build_optimizer, build_scheduler
from hf_lightning.rng import capture_rng_state, restore_rng_state
from hf_lightning.sampler import ResumableSampler


@dataclass
class Settings:
    """Everything the run depends on; each field is also a command-line option of the same name."""

    output_dir: str = "outputs/fabric_loop"
    model: str | None = None  # a local model folder; None builds a tiny Llama from a config
    devices: int = 1
    max_steps: int = 8  # optimizer steps
    batch_size: int = 4  # per process and micro-batch
    accumulation: int = 2  # micro-batches per optimizer step
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 2
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.1
    neftune_alpha: float = 5.0
    num_samples: int = 64  # demo sentences to train on
    max_length: int = 32
    seed: int = 42
    save_every: int = 4  # write output_dir/checkpoint-<step>.pt every this many optimizer steps
    resume: str | None = None  # a checkpoint-<step>.pt to continue from


def load_data(settings: Settings) -> tuple[Any, Any]:
    """The tokenizer and tokenized demo sentences (variable lengths, so batches carry padding)."""
    import datasets
    from transformers import AutoTokenizer

    from hf_lightning.demo.tokenizer import ensure_demo_assets

    files = ensure_demo_assets()
    tokenizer = AutoTokenizer.from_pretrained(files["tokenizer"])
    rows = datasets.load_dataset("csv", data_files=files["train"], split="train").select(range(settings.num_samples))
    dataset = rows.map(lambda b: tokenizer(b["text"], truncation=True, max_length=settings.max_length),
                       batched=True, remove_columns=rows.column_names)
    return tokenizer, dataset


def load_model(settings: Settings, tokenizer: Any) -> torch.nn.Module:
    """A local model folder, or a tiny random Llama sized to the tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if settings.model is not None:
        return AutoModelForCausalLM.from_pretrained(settings.model)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id)
    return AutoModelForCausalLM.from_config(config)


def gather_rng_states(fabric: Fabric) -> list[dict[str, Any]]:
    """Every process's RNG state (NEFTune noise differs per process), for the checkpoint rank 0 writes."""
    states: list[Any] = [capture_rng_state()]
    if fabric.world_size > 1:
        states = [None] * fabric.world_size
        dist.all_gather_object(states, capture_rng_state())
    return states


def train(settings: Settings) -> Path:
    """Train, checkpoint every ``save_every`` steps, and write the model in HF format; returns the folder."""
    fabric = Fabric(accelerator="cpu", devices=settings.devices, strategy="ddp" if settings.devices > 1 else "auto")
    fabric.launch()  # with devices > 1 this starts the other processes, each running this script
    fabric.seed_everything(settings.seed)
    output_dir = Path(settings.output_dir)

    tokenizer, dataset = load_data(settings)
    model = load_model(settings, tokenizer)
    model.train()  # from_pretrained returns a model in eval mode (dropout off)
    loss_fn = LabelSmoothingLoss(settings.label_smoothing, shift_labels=True)  # causal LM: token t scores t + 1
    optimizer = build_optimizer(model, "adamw_torch", learning_rate=settings.learning_rate,
                                weight_decay=settings.weight_decay)
    scheduler = build_scheduler(optimizer, "linear", num_training_steps=settings.max_steps,
                                warmup_steps=settings.warmup_steps)
    hf_model = model  # keep the plain HF model: NEFTune hooks into it and it is what we export
    model, optimizer = fabric.setup(model, optimizer)

    # The order is randperm(seed + epoch), split across processes. The loader stays a plain DataLoader:
    # fabric.setup_dataloaders would call sampler.set_epoch(number of iterations so far) on every pass,
    # which undoes the epoch a resumed sampler was set to.
    sampler = ResumableSampler(len(dataset), seed=settings.seed, num_replicas=fabric.world_size,
                               rank=fabric.global_rank)
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler,
                        collate_fn=build_collator("causal-lm", tokenizer),  # pads; labels -100 on padding
                        generator=torch.Generator().manual_seed(settings.seed))
    batches_per_epoch = len(loader)

    step = 0
    if settings.resume:
        state = fabric.load(settings.resume, {"model": model, "optimizer": optimizer})
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])  # the epoch, and the samples to skip in it
        restore_rng_state(state["rng"][fabric.global_rank])
        step = state["step"]

    activate_neftune(hf_model, settings.neftune_alpha)  # noise only while the model is in train mode
    window = WindowCounter()  # this process's scored tokens (and loss mass) in the current window
    while step < settings.max_steps:
        first = sampler.pending_skip // settings.batch_size  # > 0 only in a resumed epoch
        for index, batch in enumerate(loader, start=first):
            batch = fabric.to_device(batch)
            # A window closes after `accumulation` micro-batches, or early at the end of an epoch.
            window_end = (index + 1) % settings.accumulation == 0 or index + 1 == batches_per_epoch
            with fabric.no_backward_sync(model, enabled=not window_end):  # DDP syncs once per window
                loss, _ = loss_fn(model, batch)  # mean over this micro-batch's scored tokens
                tokens = loss_fn.count_items(batch)
                fabric.backward(loss * tokens)  # the sum: normalised once per window, below
            window.add(tokens, loss * tokens)
            if not window_end:
                continue
            # DDP averaged the summed gradients over processes; divide by the window's tokens instead.
            window_tokens, window_loss = window.close(fabric.device)  # summed over all processes
            scale_gradients(model.parameters(), fabric.world_size / window_tokens)
            fabric.clip_gradients(model, optimizer, max_norm=settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            fabric.print(f"step {step}: loss {window_loss:.4f}, lr {scheduler.get_last_lr()[0]:.2e}")

            if step % settings.save_every == 0 or step == settings.max_steps:
                consumed = (index + 1) * settings.batch_size  # samples of this epoch used on this process
                fabric.save(output_dir / f"checkpoint-{step}.pt", {
                    "model": model, "optimizer": optimizer, "scheduler": scheduler.state_dict(), "step": step,
                    "sampler": sampler.state_dict(consumed, epoch_finished=index + 1 == batches_per_epoch),
                    "rng": gather_rng_states(fabric),
                })
            if step == settings.max_steps:
                break
        else:
            sampler.set_epoch(sampler.epoch + 1)  # the epoch ran out before max_steps
    deactivate_neftune(hf_model)  # the exported model must carry no hook

    export = output_dir / "hf_model"
    if fabric.is_global_zero:
        hf_model.save_pretrained(export)  # under DDP every process holds the full model
        tokenizer.save_pretrained(export)
    fabric.barrier()
    return export


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, field in Settings.__dataclass_fields__.items():
        default = field.default
        parser.add_argument(f"--{name}", type=type(default) if default is not None else str, default=default)
    return Settings(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    print(f"exported to {train(parse_settings())}")
