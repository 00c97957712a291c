"""FGM: delta norm/direction, bit-exact restore (also after exceptions), loss increase, emb_name selection."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from hf_lightning.adversarial import FGM, fgm_attack, fgm_delta
from hf_lightning.errors import ConfigError
from tests.conftest import tiny_bert_config

__all__: list[str] = []


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = tiny_bert_config(num_labels=2)
    return BertForSequenceClassification(config).eval()  # eval: no dropout, so losses are comparable


def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 100, (4, 8), generator=gen), "labels": torch.tensor([0, 1, 0, 1])}


def test_delta_norm_and_direction() -> None:
    grad = torch.randn(50, 16)
    delta = fgm_delta(grad, 0.7)
    assert torch.linalg.vector_norm(delta).item() == pytest.approx(0.7, rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(delta.flatten(), grad.flatten(), dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)


def test_delta_ignores_loss_scale_and_skips_bad_grads() -> None:
    grad = torch.randn(10, 4)
    torch.testing.assert_close(fgm_delta(grad * 65536.0, 1.0), fgm_delta(grad, 1.0))
    half = (grad * 1000).half()  # ||half|| overflows fp16 if computed in fp16
    assert torch.isfinite(fgm_delta(half, 1.0)).all()
    assert torch.linalg.vector_norm(fgm_delta(half, 1.0).float()).item() == pytest.approx(1.0, rel=1e-2)
    for bad in (torch.zeros(3, 3), torch.tensor([1.0, float("inf")]), torch.tensor([float("nan"), 1.0])):
        assert torch.equal(fgm_delta(bad, 1.0), torch.zeros_like(bad))
    with pytest.raises(ConfigError):
        fgm_delta(grad, -1.0)


def test_attack_restore_bit_exact_and_loss_increases() -> None:
    model = tiny_bert()
    weight = model.get_input_embeddings().weight
    clean_weight = weight.detach().clone()
    clean_loss = model(**batch()).loss
    clean_loss.backward()
    fgm = FGM(model, epsilon=1.0)
    fgm.attack()
    assert fgm.attacked
    moved = weight.detach() - clean_weight
    assert torch.linalg.vector_norm(moved).item() == pytest.approx(1.0, rel=1e-4)
    with torch.no_grad():
        adv_loss = model(**batch()).loss
    assert adv_loss.item() > clean_loss.item()
    fgm.restore()
    assert not fgm.attacked
    assert torch.equal(weight.detach(), clean_weight)
    fgm.restore()  # second restore is a no-op
    assert torch.equal(weight.detach(), clean_weight)


def test_context_manager_restores_after_backward_and_exception() -> None:
    model = tiny_bert()
    weight = model.get_input_embeddings().weight
    clean_weight = weight.detach().clone()
    model(**batch()).loss.backward()
    clean_grad = weight.grad.clone()
    with fgm_attack(model, epsilon=0.5):
        assert not torch.equal(weight.detach(), clean_weight)
        model(**batch()).loss.backward()
    assert torch.equal(weight.detach(), clean_weight)
    assert not torch.equal(weight.grad, clean_grad)  # adversarial gradients accumulated
    with pytest.raises(RuntimeError, match="inside"):
        with fgm_attack(model, epsilon=0.5):
            raise RuntimeError("inside")
    assert torch.equal(weight.detach(), clean_weight)


def test_no_grad_means_no_attack() -> None:
    model = tiny_bert()
    weight = model.get_input_embeddings().weight
    clean_weight = weight.detach().clone()
    with fgm_attack(model, epsilon=1.0) as fgm:
        assert not fgm.attacked
        assert torch.equal(weight.detach(), clean_weight)


def test_emb_name_selects_matching_parameters() -> None:
    model = tiny_bert()
    model(**batch()).loss.backward()
    fgm = FGM(model, epsilon=1.0, emb_name="embeddings.")
    assert set(fgm.params) == {
        n for n, _ in model.named_parameters() if "embeddings." in n
    }  # word, position, token_type, LayerNorm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fgm.attack()
    for name, param in model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        if name in fgm.params and param.grad is not None and param.grad.abs().sum() > 0:
            assert changed, name
            assert torch.linalg.vector_norm(param.detach() - before[name]).item() == pytest.approx(
                1.0, rel=1e-3
            )
        elif name not in fgm.params:
            assert not changed, name
    fgm.restore()
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    with pytest.raises(ConfigError):
        FGM(model, emb_name="no_such_param")
    with pytest.raises(ConfigError):
        FGM(torch.nn.Linear(2, 2))
