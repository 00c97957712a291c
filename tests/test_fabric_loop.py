"""examples/fabric_loop.py: a Fabric loop built from hf_lightning's pieces ends where the Trainer path does.

Same settings on both paths: label smoothing, NEFTune, AdamW with weight decay, linear warmup/decay,
clipping, 2 micro-batches per step (with a short last window: 5 batches per epoch) and two epochs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fabric_loop.py"
REFERENCE = REPO / "tests" / "workers" / "fabric_reference.py"
# 20 rows, batch 4 (2 per process on 2), accumulation 2: windows of 2, 2 and 1 batches, 3 steps per epoch.
OPTIONS = {"num_samples": 20, "max_steps": 6, "accumulation": 2, "save_every": 2}


def _example():
    spec = importlib.util.spec_from_file_location("fabric_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fabric_loop", module)
    spec.loader.exec_module(module)
    return module


def _argv(**options) -> list[str]:
    return [f"--{k}={v}" for k, v in {**OPTIONS, **options}.items()]


@pytest.fixture(scope="module")
def initial_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama saved once; both paths fine-tune it from the same weights."""
    fabric_loop = _example()
    settings = fabric_loop.Settings(**OPTIONS)
    tokenizer, _ = fabric_loop.load_data(settings)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fabric_init") / "model"
    fabric_loop.load_model(settings, tokenizer).save_pretrained(path)
    return str(path)


def _weights(folder: Path | str) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _run(script: Path, *args: str, cwd: Path) -> None:
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-4000:]


def test_one_process_matches_trainer_and_resumes_exactly(tmp_path: Path, initial_model: str) -> None:
    fabric_loop = _example()
    reference = importlib.import_module("tests.workers.fabric_reference")
    initial = _weights(initial_model)

    settings = fabric_loop.parse_settings(_argv(model=initial_model, output_dir=tmp_path / "fabric"))
    export = fabric_loop.train(settings)
    reference.train_reference(fabric_loop.parse_settings(_argv(model=initial_model)), str(tmp_path / "trainer"))

    fabric, trainer = _weights(export), _weights(tmp_path / "trainer")
    assert _max_diff(fabric, trainer) <= 1e-5
    assert _max_diff(fabric, initial) > 1e-3  # it trained: the match is not two untouched copies

    # Resume mid-epoch (after 2 of epoch 0's 3 steps) and run to the end: the same weights.
    resumed = fabric_loop.train(fabric_loop.parse_settings(_argv(
        model=initial_model, output_dir=tmp_path / "resumed", resume=tmp_path / "fabric" / "checkpoint-2.pt")))
    assert _max_diff(_weights(resumed), fabric) <= 1e-6


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ddp_processes_match_the_trainer_on_two_processes(tmp_path: Path, initial_model: str) -> None:
    options = _argv(model=initial_model, devices=2, batch_size=2)
    _run(EXAMPLE, *options, f"--output_dir={tmp_path / 'fabric'}", cwd=tmp_path)
    _run(REFERENCE, str(tmp_path / "trainer"), *options, cwd=tmp_path)
    assert _max_diff(_weights(tmp_path / "fabric" / "hf_model"), _weights(tmp_path / "trainer")) <= 1e-5
