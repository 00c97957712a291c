"""``torch_compile_backend`` / ``torch_compile_mode`` reach ``torch.compile`` (they were dropped before)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hf_lightning
from tests.conftest import tiny_bert_classifier

CALLS: list[int] = []


def _counting_backend(graph_module, example_inputs):
    CALLS.append(len(example_inputs))
    return graph_module.forward


@pytest.fixture(scope="module", autouse=True)
def _backend() -> None:
    from torch._dynamo import list_backends, register_backend

    if "hfl_counting" not in list_backends(exclude_tags=()):
        register_backend(_counting_backend, name="hfl_counting")


@pytest.mark.slow  # dynamo traces the model (~30 s on 2 cores)
def test_the_named_backend_compiles_the_model(tmp_path: Path, cls_dataset, demo_tokenizer) -> None:
    args = hf_lightning.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                          report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                                          torch_compile_backend="hfl_counting")
    assert args.torch_compile  # transformers turns it on when a backend is named
    trainer = hf_lightning.Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args,
                                   train_dataset=cls_dataset, processing_class=demo_tokenizer)
    CALLS.clear()
    trainer.train()
    assert CALLS, "the backend named in torch_compile_backend was never called"
    assert isinstance(trainer._module.forward_model, torch._dynamo.eval_frame.OptimizedModule)


def test_mode_is_passed_on(tmp_path: Path) -> None:
    from hf_lightning.facade.fit import _compile_settings

    args = hf_lightning.TrainingArguments(output_dir=str(tmp_path), torch_compile_mode="reduce-overhead", use_cpu=True)
    assert _compile_settings(args) == {"backend": "inductor", "mode": "reduce-overhead"}
    assert _compile_settings(hf_lightning.TrainingArguments(output_dir=str(tmp_path), use_cpu=True)) is False
