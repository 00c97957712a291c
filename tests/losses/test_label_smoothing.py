"""Label smoothing must agree with the HF Trainer's smoother and with torch's built-in option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
from transformers.trainer_pt_utils import LabelSmoother

from hf_lightning.errors import ConfigError
from hf_lightning.losses import LabelSmoothingLoss, count_label_items, label_smoothed_cross_entropy
from tests.conftest import tiny_bert_config


def _token_batch(
    seed: int = 0, b: int = 3, length: int = 7, c: int = 11
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, length, c, generator=gen) * 3
    labels = torch.randint(0, c, (b, length), generator=gen)
    labels[0, :2] = -100
    labels[1, -3:] = -100
    labels[2, 4] = -100
    return logits, labels


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_matches_hf_label_smoother(shift: bool, epsilon: float) -> None:
    logits, labels = _token_batch()
    ours = label_smoothed_cross_entropy(logits, labels, epsilon, shift_labels=shift)
    reference = LabelSmoother(epsilon=epsilon)({"logits": logits}, labels, shift_labels=shift)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_matches_torch_cross_entropy_label_smoothing(epsilon: float) -> None:
    logits, labels = _token_batch(seed=1)
    c = logits.shape[-1]
    reference = F.cross_entropy(
        logits.view(-1, c), labels.view(-1), label_smoothing=epsilon, ignore_index=-100
    )
    torch.testing.assert_close(label_smoothed_cross_entropy(logits, labels, epsilon), reference)
    # (N, C) classification layout too.
    flat_logits, flat_labels = logits[:, 0], labels[:, 3]
    reference_2d = F.cross_entropy(flat_logits, flat_labels, label_smoothing=epsilon, ignore_index=-100)
    torch.testing.assert_close(label_smoothed_cross_entropy(flat_logits, flat_labels, epsilon), reference_2d)


def test_masked_positions_do_not_matter_and_all_masked_is_zero() -> None:
    logits, labels = _token_batch(seed=2)
    before = label_smoothed_cross_entropy(logits, labels, 0.1)
    changed = logits.clone()
    changed[labels == -100] = 1e4  # garbage at ignored positions must not leak in
    torch.testing.assert_close(label_smoothed_cross_entropy(changed, labels, 0.1), before)

    leaf = logits.clone().requires_grad_(True)
    loss = label_smoothed_cross_entropy(leaf, torch.full_like(labels, -100), 0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(leaf.grad) == 0


def test_bad_input_raises_config_error() -> None:
    logits, labels = _token_batch()
    with pytest.raises(ConfigError, match="epsilon"):
        label_smoothed_cross_entropy(logits, labels, 1.5)
    with pytest.raises(ConfigError, match="labels"):
        label_smoothed_cross_entropy(logits, labels[:, :-1], 0.1)
    with pytest.raises(ConfigError, match="epsilon"):
        LabelSmoothingLoss(epsilon=-0.1)


def test_loss_object_runs_sequence_classifier() -> None:
    torch.manual_seed(0)
    config = tiny_bert_config(num_labels=4)
    model = BertForSequenceClassification(config).eval()
    batch = {
        "input_ids": torch.randint(1, 100, (5, 6)),
        "attention_mask": torch.ones(5, 6, dtype=torch.long),
        "labels": torch.tensor([0, 3, 1, -100, 2]),
    }
    loss_fn = LabelSmoothingLoss(epsilon=0.2)
    loss, outputs = loss_fn(model, batch)
    reference = F.cross_entropy(outputs.logits, batch["labels"], label_smoothing=0.2)
    torch.testing.assert_close(loss, reference)
    assert loss_fn.count_items(batch).item() == 4


def test_loss_object_shifts_for_causal_lm() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    input_ids = torch.randint(0, 50, (2, 8))
    labels = input_ids.clone()
    labels[1, 5:] = -100
    batch = {"input_ids": input_ids, "labels": labels}
    loss_fn = LabelSmoothingLoss(epsilon=0.1, shift_labels=True)
    loss, outputs = loss_fn(model, batch)
    reference = LabelSmoother(epsilon=0.1)(outputs, labels, shift_labels=True)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert loss_fn.count_items(batch).item() == count_label_items(labels, shift=True).item() == 7 + 4
