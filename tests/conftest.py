"""Shared fixtures: offline mode, one thread, tiny models and data built once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

TINY_MODELS = {
    "bert": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64},
    "t5": {"model_type": "t5", "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1,
           "num_heads": 2, "decoder_start_token_id": 0},
}


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["HF_LIGHTNING_DEMO_DIR"] = str(tmp_path_factory.mktemp("demo_assets"))


@pytest.fixture(autouse=True)
def _fresh_warn_once() -> None:
    """Each test sees the once-per-process warnings of ``TrainingArguments`` anew.

    They are deliberately emitted once per process; without this reset, which test sees a warning
    depends on the order tests ran in.
    """
    import sys

    args = sys.modules.get("hf_lightning.args")
    if args is not None:
        args._WARNED.clear()


@pytest.fixture(scope="session")
def demo_assets(_session_env: None) -> dict[str, str]:
    from hf_lightning.demo.tokenizer import ensure_demo_assets

    return ensure_demo_assets()


@pytest.fixture(scope="session")
def task_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Small local datasets for every task, written as the file formats users bring."""
    root = tmp_path_factory.mktemp("task_data")
    words = "the film was good not bad great dull acting plot ending boring".split()
    rows = [" ".join(words[(i + j) % len(words)] for j in range(4 + i % 5)) for i in range(24)]
    out: dict[str, dict[str, str]] = {}

    def write(name: str, split: str, records: list[dict]) -> str:
        path = root / f"{name}_{split}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        return str(path)

    for split in ("train", "validation"):
        out.setdefault("text", {})[split] = write("text", split, [{"text": r} for r in rows])
        out.setdefault("cls", {})[split] = write("cls", split, [{"text": r, "label": ["neg", "pos"][i % 2]} for i, r in enumerate(rows)])
        out.setdefault("ner", {})[split] = write("ner", split, [
            {"tokens": r.split(), "tags": [["O", "B", "I"][(i + k) % 3] for k in range(len(r.split()))]}
            for i, r in enumerate(rows)
        ])
        out.setdefault("s2s", {})[split] = write("s2s", split, [{"text": r, "summary": " ".join(r.split()[:2])} for r in rows])
    return out


@pytest.fixture(scope="session")
def demo_tokenizer(demo_assets: dict[str, str]):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(demo_assets["tokenizer"])


@pytest.fixture(scope="session")
def cls_dataset(demo_tokenizer):
    """40 tokenised sentences of uneven length with binary labels (a HF datasets.Dataset)."""
    import datasets

    words = "the film was good not bad great dull acting plot ending boring".split()
    rows = [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 6)) for i in range(40)]
    raw = datasets.Dataset.from_dict({"text": rows, "label": [int("good" in r or "great" in r) for r in rows]})
    return raw.map(lambda b: demo_tokenizer(b["text"]), batched=True)


def tiny_bert_classifier(vocab_size: int, dropout: float = 0.0, seed: int = 0, num_labels: int = 2):
    import torch
    import transformers

    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, max_position_embeddings=64,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config)


def tiny_bert_config(**overrides):
    """The 1-layer, 32-wide BERT config the unit tests share (vocabulary 100 unless overridden)."""
    import transformers

    values = dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    values.update(overrides)
    return transformers.BertConfig(**values)
