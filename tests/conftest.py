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


# ---------------------------------------------------------------- Ray (kept on 127.0.0.1)
# Ray replaces 127.0.0.1 with the machine's network address unless this is set (DESIGN.md, Ray): with it,
# GCS, raylet and workers listen on loopback only. Set before any test imports ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# `ray start` turns token auth on (Ray 2.60) and a driver joining by address sends the token only in
# token mode (read when ray is imported): one mode for the local Ray, the started cluster and drivers.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _ray_shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts Ray down once the session ends (whichever Ray fixture started it)."""
    yield
    _ray_shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """A local Ray on 127.0.0.1 with 2 CPUs, started once and shared by the tests that ask for it."""
    import tempfile

    import ray

    if ray.is_initialized() and os.environ.get("_HFL_RAY_MODE") != "local":
        ray.shutdown()  # connected to the cluster fixture's Ray: switch back to a local one
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are limited
        os.environ["_HFL_RAY_MODE"] = "local"
    return ray


@pytest.fixture
def ray_cluster(_ray_session):
    """A real Ray cluster: ``ray start --head`` bound to 127.0.0.1 on a free port; stopped afterwards.

    Yields the address (``127.0.0.1:<port>``); the driver is connected to it. Another engineer's Ray
    Train tests can ask for this fixture too.
    """
    import socket
    import subprocess
    import sys
    import tempfile

    import ray

    _ray_shutdown()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    temp = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                   check=True, env=env, capture_output=True, timeout=120)
    try:
        ray.init(address=address)
        os.environ["_HFL_RAY_MODE"] = "cluster"
        yield address
    finally:
        _ray_shutdown()
        os.environ.pop("_HFL_RAY_MODE", None)
        _stop_cluster(temp)


def _stop_cluster(temp_dir: str) -> None:
    """Stop this fixture's cluster only (``ray stop`` would stop every Ray on the machine): its processes
    are the ones whose command line names its temp dir."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(temp_dir in part for part in proc.info["cmdline"] or []):
            procs.append(proc)
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        proc.kill()
