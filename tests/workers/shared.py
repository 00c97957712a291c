"""Tiny data and models shared by the in-process tests and the multi-process workers.

Workers are separate scripts (Lightning's DDP launcher re-runs the script once per rank), so nothing
here may depend on pytest fixtures.
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = "the film was good not bad great dull acting plot ending boring".split()


def demo_tokenizer():
    import transformers

    from hf_lightning.demo.tokenizer import ensure_demo_assets

    return transformers.AutoTokenizer.from_pretrained(ensure_demo_assets()["tokenizer"])


def uneven_texts(n: int) -> list[str]:
    """Sentences of 2 to 13 words, so micro-batches hold very different token counts."""
    return [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(2 + (i * 7) % 12)) for i in range(n)]


def causal_lm_dataset(n: int = 16):
    import datasets

    tok = demo_tokenizer()
    raw = datasets.Dataset.from_dict({"text": uneven_texts(n)})
    return raw.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"]), tok


def cls_dataset(n: int = 16):
    import datasets

    tok = demo_tokenizer()
    texts = uneven_texts(n)
    raw = datasets.Dataset.from_dict({"text": texts, "labels": [int("good" in t) for t in texts]})
    return raw.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"]), tok


def tiny_gpt2_config(vocab_size: int) -> dict:
    return {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64, "vocab_size": vocab_size,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def tiny_bert_config(vocab_size: int, layers: int = 2) -> dict:
    return {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64, "vocab_size": vocab_size,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


class GradCapture(pl.Callback):
    """Keeps the gradients as the optimizer will see them (after the window rescale and clipping)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_gradients_ready(self, trainer, pl_module, optimizer) -> None:
        grads = {}
        for name, p in pl_module.named_parameters():
            if p.grad is not None:
                g = p.grad
                grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone().cpu()
        self.grads.append(grads)


def reference_grads(module, batch) -> dict[str, torch.Tensor]:
    """Gradients of the per-item mean loss over one big batch (what accumulation must reproduce)."""
    module.zero_grad()
    result = module.compute_loss(batch)
    result.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad()
    return grads
