"""Distillation: the formula against independent references, and the teacher kept out of training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from hf_lightning.errors import ConfigError
from hf_lightning.losses import DistillationLoss, count_label_items, distillation_loss

TINY_BERT = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def _loop_reference(student, teacher, labels, temperature: float, alpha: float) -> float:
    s_rows = student.reshape(-1, student.shape[-1]).double().tolist()
    t_rows = teacher.reshape(-1, teacher.shape[-1]).double().tolist()
    total, count = 0.0, 0

    def log_softmax(row: list[float]) -> list[float]:
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        return [v - log_z for v in row]

    for s, t, y in zip(s_rows, t_rows, labels.reshape(-1).tolist()):
        if y == -100:
            continue
        log_ps = log_softmax([v / temperature for v in s])
        log_pt = log_softmax([v / temperature for v in t])
        kl = sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps))
        ce = -log_softmax(s)[y]
        total += alpha * temperature**2 * kl + (1 - alpha) * ce
        count += 1
    return total / count


def _logits(shape: tuple[int, ...], c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, shape, generator=gen)
    labels.view(-1)[1::3] = -100
    return torch.randn(*shape, c, generator=gen) * 2, torch.randn(*shape, c, generator=gen) * 2, labels


@pytest.mark.parametrize("shape", [(7,), (2, 5)])
@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (2.0, 0.7), (4.0, 1.0), (3.0, 0.0)])
def test_matches_loop_reference(shape: tuple[int, ...], temperature: float, alpha: float) -> None:
    student, teacher, labels = _logits(shape, 6, seed=len(shape))
    ours = distillation_loss(student, teacher, labels, temperature, alpha)
    assert ours.item() == pytest.approx(
        _loop_reference(student, teacher, labels, temperature, alpha), rel=1e-5
    )


def test_matches_the_batchmean_kl_formula_without_padding() -> None:
    gen = torch.Generator().manual_seed(9)
    student, teacher = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    labels = torch.randint(0, 4, (8,), generator=gen)
    t, a = 2.0, 0.7
    soft = F.kl_div(F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="batchmean") * t**2
    reference = a * soft + (1 - a) * F.cross_entropy(student, labels)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, t, a), reference)


def test_identical_teacher_leaves_only_the_hard_term() -> None:
    student, _, labels = _logits((3, 4), 5, seed=1)
    hard = F.cross_entropy(student.reshape(-1, 5), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(distillation_loss(student, student.clone(), labels, 2.0, 0.4), 0.6 * hard)


def test_bad_arguments() -> None:
    student, teacher, labels = _logits((4,), 3, seed=0)
    with pytest.raises(ConfigError, match="teacher"):
        distillation_loss(student, teacher[:, :2], labels)
    with pytest.raises(ConfigError, match="alpha"):
        distillation_loss(student, teacher, labels, alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        DistillationLoss(BertForSequenceClassification(BertConfig(**TINY_BERT)), temperature=-1.0)


class Owner(nn.Module):
    """Stands in for the training module: holds the student and the loss as submodules."""

    def __init__(self, student: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model = student
        self.loss_fn = loss


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 100, (4, 6), generator=gen),
        "attention_mask": torch.ones(4, 6, dtype=torch.long),
        "labels": torch.tensor([0, 1, 2, 1]),
    }


def test_teacher_is_frozen_hidden_and_stays_in_eval() -> None:
    torch.manual_seed(0)
    student = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=3))
    loss_fn = DistillationLoss(
        {"model_type": "bert", **TINY_BERT}, temperature=2.0, alpha=0.5, teacher_kwargs={"num_labels": 3}
    )
    teacher = loss_fn.teacher
    owner = Owner(student, loss_fn)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("loss_fn") for k in owner.state_dict())
    assert sum(p.numel() for p in owner.parameters()) == sum(p.numel() for p in student.parameters())

    owner.train()
    assert not teacher.training and student.training
    teacher.train()  # even after someone flips the teacher, switching the loss to train mode restores eval
    loss_fn.train()
    assert not teacher.training
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = student.classifier.weight.detach().clone()
    optimizer = torch.optim.AdamW(owner.parameters(), lr=1e-2)
    for step in range(3):
        loss, _ = loss_fn(student, _batch(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert not torch.equal(student.classifier.weight, student_before)


def test_value_matches_and_teacher_follows_student_dtype(tmp_path) -> None:
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=3))
    teacher.save_pretrained(tmp_path / "teacher")
    student = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=3)).eval()
    loss_fn = DistillationLoss(str(tmp_path / "teacher"), temperature=3.0, alpha=0.25)
    batch = _batch()
    loss, outputs = loss_fn(student, batch)
    teacher.eval()
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(
        loss, distillation_loss(outputs.logits, teacher_logits, batch["labels"], 3.0, 0.25)
    )
    assert loss_fn.count_items(batch).item() == 4

    student.double()
    loss_fn(student, batch)
    assert next(loss_fn.teacher.parameters()).dtype == torch.float64


def test_causal_lm_teacher_shifts_labels() -> None:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    student, teacher = GPT2LMHeadModel(config).eval(), GPT2LMHeadModel(config)
    loss_fn = DistillationLoss(teacher, temperature=2.0, alpha=0.5, teacher_task="causal-lm")
    ids = torch.randint(0, 40, (2, 7))
    labels = ids.clone()
    labels[0, 4:] = -100
    batch = {"input_ids": ids, "labels": labels}
    loss, outputs = loss_fn(student, batch)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids).logits
    reference = _loop_reference(
        outputs.logits[:, :-1].detach(), teacher_logits[:, :-1], labels[:, 1:], 2.0, 0.5
    )
    assert loss.item() == pytest.approx(reference, rel=1e-5)
    assert loss_fn.count_items(batch).item() == count_label_items(labels, shift=True).item() == 3 + 6
