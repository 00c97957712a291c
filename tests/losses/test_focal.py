"""Focal loss against cross-entropy (gamma=0) and against a per-item float64 loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForTokenClassification

from hf_lightning.errors import ConfigError
from hf_lightning.losses import FocalLoss, focal_loss
from tests.conftest import tiny_bert_config


def _reference(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha) -> float:
    """Item-by-item focal loss in float64 Python arithmetic."""
    flat_logits = logits.reshape(-1, logits.shape[-1]).double().tolist()
    flat_labels = labels.reshape(-1).tolist()
    total, count = 0.0, 0
    for row, y in zip(flat_logits, flat_labels):
        if y == -100:
            continue
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        log_pt = row[y] - log_z
        weight = 1.0 if alpha is None else (alpha if isinstance(alpha, float) else alpha[y])
        total += -weight * (1.0 - math.exp(log_pt)) ** gamma * log_pt
        count += 1
    return total / count


def _data(shape: tuple[int, ...], c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, c, generator=gen) * 2
    labels = torch.randint(0, c, shape, generator=gen)
    labels.view(-1)[::4] = -100
    return logits, labels


@pytest.mark.parametrize("shape", [(9,), (3, 5)])
def test_gamma_zero_is_cross_entropy(shape: tuple[int, ...]) -> None:
    logits, labels = _data(shape, 6)
    reference = F.cross_entropy(logits.reshape(-1, 6), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(focal_loss(logits, labels, gamma=0.0), reference)


@pytest.mark.parametrize("shape", [(12,), (3, 5)])
@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [None, 0.25, [0.1, 0.2, 0.3, 0.4, 0.5, 2.0]])
def test_matches_loop_reference(shape: tuple[int, ...], gamma: float, alpha) -> None:
    logits, labels = _data(shape, 6, seed=3)
    ours = focal_loss(logits, labels, gamma=gamma, alpha=alpha)
    assert ours.item() == pytest.approx(_reference(logits, labels, gamma, alpha), rel=1e-5)


def test_alpha_tensor_and_list_agree_and_masked_tokens_are_ignored() -> None:
    logits, labels = _data((4, 6), 5, seed=4)
    alpha = [1.0, 0.5, 0.25, 2.0, 1.5]
    from_list = focal_loss(logits, labels, alpha=alpha)
    torch.testing.assert_close(focal_loss(logits, labels, alpha=torch.tensor(alpha)), from_list)
    noisy = logits.clone()
    noisy[labels == -100] = torch.randn_like(noisy[labels == -100]) * 100
    torch.testing.assert_close(focal_loss(noisy, labels, alpha=alpha), from_list)
    keep = labels != -100
    torch.testing.assert_close(focal_loss(logits[keep], labels[keep], alpha=alpha), from_list)


def test_confident_items_are_down_weighted_with_finite_gradients() -> None:
    logits = torch.tensor([[30.0, 0.0, 0.0], [0.2, 0.1, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    per_item_ce = F.cross_entropy(logits, labels, reduction="none")
    loss = focal_loss(logits, labels, gamma=2.0)
    assert loss.item() < per_item_ce.mean().item()
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_bad_arguments_raise_config_error() -> None:
    logits, labels = _data((8,), 3)
    with pytest.raises(ConfigError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ConfigError, match="alpha"):
        FocalLoss(alpha=[-0.5, 1.0])
    with pytest.raises(ConfigError, match="alpha"):
        focal_loss(logits, labels, alpha=[1.0, 1.0])  # 2 weights, 3 classes


def test_loss_object_on_token_classifier() -> None:
    torch.manual_seed(0)
    config = tiny_bert_config(num_labels=3)
    model = BertForTokenClassification(config).eval()
    labels = torch.randint(0, 3, (2, 5))
    labels[1, 3:] = -100
    batch = {"input_ids": torch.randint(1, 100, (2, 5)), "labels": labels}
    loss_fn = FocalLoss(gamma=1.5, alpha=[0.2, 0.3, 0.5])
    loss, outputs = loss_fn(model, batch)
    assert loss.item() == pytest.approx(
        _reference(outputs.logits.detach(), labels, 1.5, [0.2, 0.3, 0.5]), rel=1e-5
    )
    assert loss_fn.count_items(batch).item() == 8
    # Class weights are configuration, not trained state: they must not enter checkpoints.
    assert "alpha" not in loss_fn.state_dict()
