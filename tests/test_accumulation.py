"""Gradient accumulation is exactly a bigger batch, padding and short windows included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from hf_lightning.data import build_collator, build_dataloader
from hf_lightning.module import HFLightningModule
from tests.workers.shared import GradCapture, causal_lm_dataset, reference_grads, tiny_gpt2_config

WORKER = Path(__file__).parent / "workers" / "dist_worker.py"


def _module(vocab: int, seed: int = 0) -> HFLightningModule:
    torch.manual_seed(seed)
    return HFLightningModule(model=tiny_gpt2_config(vocab), task="causal-lm", learning_rate=0.0, optim="sgd")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _run(module, data, tok, batch_size: int, accumulate: int, steps: int, **kwargs) -> list[dict[str, torch.Tensor]]:
    capture = GradCapture()
    loader = build_dataloader(data, batch_size, build_collator("causal-lm", tok), train=True, shuffle=False)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, accumulate_grad_batches=accumulate, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[capture], **kwargs)
    trainer.fit(module, train_dataloaders=loader)
    return capture.grads


def _big_batch(data, tok, indices: list[int]) -> dict[str, torch.Tensor]:
    collate = build_collator("causal-lm", tok)
    return collate([data[i] for i in indices])


def test_four_micro_batches_equal_one_batch_of_eight() -> None:
    data, tok = causal_lm_dataset(8)
    lengths = [len(x) for x in data["input_ids"]]
    assert max(lengths) > 2 * min(lengths), "uneven padding is what makes naive accumulation wrong"
    module = _module(len(tok))
    reference = reference_grads(_module(len(tok)), _big_batch(data, tok, list(range(8))))
    grads = _run(module, data, tok, batch_size=2, accumulate=4, steps=1)[0]
    assert _max_diff(grads, reference) <= 1e-5

    # Control: Lightning's plain mean of micro-batch means is measurably off on the same data.
    naive: dict[str, torch.Tensor] = {}
    for start in range(0, 8, 2):
        micro = reference_grads(_module(len(tok)), _big_batch(data, tok, [start, start + 1]))
        for k, v in micro.items():
            naive[k] = naive.get(k, 0) + v / 4
    assert _max_diff(naive, reference) > 1e-3


def test_short_last_window_is_exact() -> None:
    """12 samples, batch 2, accumulation 4: windows of 4 and 2 micro-batches (lr 0 keeps weights fixed)."""
    data, tok = causal_lm_dataset(12)
    grads = _run(_module(len(tok)), data, tok, batch_size=2, accumulate=4, steps=2)
    assert len(grads) == 2
    assert _max_diff(grads[0], reference_grads(_module(len(tok)), _big_batch(data, tok, list(range(8))))) <= 1e-5
    assert _max_diff(grads[1], reference_grads(_module(len(tok)), _big_batch(data, tok, list(range(8, 12))))) <= 1e-5


def test_exact_with_clipping_and_limit_train_batches() -> None:
    data, tok = causal_lm_dataset(12)
    grads = _run(_module(len(tok)), data, tok, batch_size=2, accumulate=4, steps=2, limit_train_batches=5,
                 gradient_clip_val=1e-3)
    assert len(grads) == 2
    # the epoch is cut at 5 batches: the second window holds one micro-batch (samples 8, 9)
    for got, indices in zip(grads, (list(range(8)), [8, 9])):
        ref = reference_grads(_module(len(tok)), _big_batch(data, tok, indices))
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in ref.values())).item()
        assert norm > 1e-3, "clipping must be active"
        clipped = {k: v * (1e-3 / (norm + 1e-6)) for k, v in ref.items()}
        assert _max_diff(got, clipped) <= 1e-7


@pytest.mark.slow
@pytest.mark.distributed
def test_exact_across_two_ddp_processes(tmp_path: Path) -> None:
    """2 ranks x accumulation 2 x batch 2 == one batch of 8, with the window's tokens counted over ranks."""
    out = tmp_path / "grads.pt"
    run = subprocess.run([sys.executable, str(WORKER), "accumulation", str(out), "2"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(out)
    data, tok = causal_lm_dataset(8)
    module = _module(len(tok))
    module.load_state_dict(result["initial"])
    reference = reference_grads(module, _big_batch(data, tok, list(range(8))))
    assert _max_diff(result["grads"], reference) <= 1e-5


def test_a_one_batch_window_backpropagates_the_mean_without_a_rescale() -> None:
    """accumulate=1 on one process: the per-item mean goes to backward as is (transformers' way) and the
    gradients equal the whole batch's mean-loss gradients; nothing is rescaled at the step."""
    data, tok = causal_lm_dataset(8)
    module = _module(len(tok))
    reference = reference_grads(_module(len(tok)), _big_batch(data, tok, list(range(8))))
    grads = _run(module, data, tok, batch_size=8, accumulate=1, steps=1)[0]
    assert module.window_is_one_batch
    assert _max_diff(grads, reference) <= 1e-6


def test_the_cached_parameter_list_follows_replaced_parameters() -> None:
    """A strategy that re-registers every parameter (as FSDP2 does) in a later fit is seen at the next step."""
    module = _module(100)
    before = module.gradient_parameters()
    assert before == list(module.parameters()) and module.gradient_parameters() is before  # built once
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            setattr(sub, name, torch.nn.Parameter(param.detach().clone()))
    after = module.gradient_parameters()
    assert all(a is b for a, b in zip(after, module.parameters())) and not any(a is b for a, b in zip(after, before))
