"""NT-Xent against a slow per-anchor loop, and the two-view data path end to end on a tiny BERT."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

from hf_lightning.errors import ConfigError
from hf_lightning.losses import ContrastiveLoss, TwoViewCollator, drop_words, nt_xent_loss, pool_hidden_states

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "red", "big", "house", "in", "park"]


def _loop_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """Per-anchor InfoNCE with explicit sums, float64."""
    z = torch.cat([z1, z2]).double().tolist()
    n, b = len(z), z1.shape[0]

    def cos(u: list[float], v: list[float]) -> float:
        dot = sum(x * y for x, y in zip(u, v))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    total = 0.0
    for i in range(n):
        positive = (i + b) % n
        denominator = sum(math.exp(cos(z[i], z[k]) / temperature) for k in range(n) if k != i)
        total += -math.log(math.exp(cos(z[i], z[positive]) / temperature) / denominator)
    return total / n


@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_matches_loop_reference(temperature: float, batch: int) -> None:
    gen = torch.Generator().manual_seed(batch)
    z1, z2 = torch.randn(batch, 8, generator=gen), torch.randn(batch, 8, generator=gen)
    ours = nt_xent_loss(z1, z2, temperature)
    assert ours.item() == pytest.approx(_loop_reference(z1, z2, temperature), rel=1e-5, abs=1e-6)


def test_symmetric_scale_invariant_and_rewards_aligned_views() -> None:
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 16, generator=gen), torch.randn(6, 16, generator=gen)
    loss = nt_xent_loss(z1, z2, 0.1)
    torch.testing.assert_close(nt_xent_loss(z2, z1, 0.1), loss)
    torch.testing.assert_close(nt_xent_loss(3.0 * z1, 0.5 * z2, 0.1), loss)
    aligned = nt_xent_loss(z1, z1 + 0.01 * z2, 0.1)
    assert aligned.item() < loss.item()


def test_bad_shapes_and_temperature() -> None:
    with pytest.raises(ConfigError, match="z1/z2"):
        nt_xent_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ConfigError, match="temperature"):
        nt_xent_loss(torch.randn(3, 4), torch.randn(3, 4), temperature=0.0)
    with pytest.raises(ConfigError, match="pooling"):
        ContrastiveLoss(pooling="max")


def test_mean_pooling_ignores_padding() -> None:
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = pool_hidden_states(hidden, mask, "mean")
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))
    torch.testing.assert_close(pool_hidden_states(hidden, mask, "cls"), hidden[:, 0])


def _tokenizer() -> BertTokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def _bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )


def test_collator_builds_both_views() -> None:
    tok = _tokenizer()
    collate = TwoViewCollator(tok, max_length=6)
    examples = [
        {"text": "the cat sat", "text_2": "a dog ran to the park"},
        {"text": "red house", "text_2": "big"},
    ]
    batch = collate(examples)
    expected_1 = tok(
        ["the cat sat", "red house"], padding=True, truncation=True, max_length=6, return_tensors="pt"
    )
    expected_2 = tok(
        ["a dog ran to the park", "big"], padding=True, truncation=True, max_length=6, return_tensors="pt"
    )
    assert torch.equal(batch["input_ids"], expected_1["input_ids"])
    assert torch.equal(batch["view2_input_ids"], expected_2["input_ids"])
    assert torch.equal(batch["view2_attention_mask"], expected_2["attention_mask"])
    assert batch["view2_input_ids"].shape[1] == 6  # truncated to max_length


def test_collator_augments_deterministically_per_example() -> None:
    tok = _tokenizer()
    text = " ".join(WORDS)
    collate = TwoViewCollator(tok, max_length=32, word_dropout=0.4, seed=7)
    first = collate([{"text": text, "idx": 0}, {"text": text, "idx": 1}])
    again = collate([{"text": text, "idx": 0}, {"text": text, "idx": 1}])
    assert torch.equal(first["view2_input_ids"], again["view2_input_ids"])
    assert not torch.equal(
        first["view2_input_ids"][0], first["input_ids"][0][: first["view2_input_ids"].shape[1]]
    )
    # A different idx is a different example: its augmentation differs (fixed seeds, checked once).
    assert not torch.equal(first["view2_input_ids"][0], first["view2_input_ids"][1])
    dropped = drop_words(text, 0.4, random.Random("7:0"))
    assert set(dropped.split()) < set(WORDS)
    with pytest.raises(ConfigError, match="text_field"):
        collate([{"sentence": "the cat"}])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_loss_runs_model_on_both_views(pooling: str) -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(_bert_config()).eval()
    batch = TwoViewCollator(_tokenizer(), max_length=12)(
        [
            {"text": "the cat sat on the mat", "text_2": "a cat sat"},
            {"text": "a dog ran", "text_2": "the big dog ran"},
        ]
    )
    batch["labels"] = torch.tensor([0, 1])  # must be ignored, not passed to the model
    loss_fn = ContrastiveLoss(temperature=0.2, pooling=pooling)
    loss, outputs = loss_fn(model, batch)

    def embed(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        return torch.stack([hidden[i, mask[i].bool()].mean(0) for i in range(hidden.shape[0])])

    z1 = embed(batch["input_ids"], batch["attention_mask"])
    z2 = embed(batch["view2_input_ids"], batch["view2_attention_mask"])
    torch.testing.assert_close(loss, nt_xent_loss(z1, z2, 0.2))
    assert outputs.loss is None  # labels were dropped
    assert loss_fn.count_items(batch).item() == 2
    loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_loss_works_with_a_bare_encoder_and_needs_the_second_view() -> None:
    torch.manual_seed(0)
    model = BertModel(_bert_config()).eval()
    ids = torch.randint(5, 100, (3, 4))
    batch = {"input_ids": ids, "view2_input_ids": ids.flip(1)}
    loss, _ = ContrastiveLoss(temperature=0.5)(model, batch)
    hidden_1 = model(input_ids=ids).last_hidden_state[:, 0]
    hidden_2 = model(input_ids=ids.flip(1)).last_hidden_state[:, 0]
    torch.testing.assert_close(loss, nt_xent_loss(hidden_1, hidden_2, 0.5))
    with pytest.raises(ConfigError, match="view2_"):
        ContrastiveLoss()(model, {"input_ids": ids})


def test_seed_formula_agrees() -> None:
    """The chapter's version (diagonal filled with -1e9, two halves averaged) is the same loss."""
    gen = torch.Generator().manual_seed(5)
    z1 = F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    z2 = F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    sim = torch.cat([z1, z2]) @ torch.cat([z1, z2]).T / 0.07
    sim.fill_diagonal_(-1e9)
    idx = torch.arange(4)
    seed_loss = (F.cross_entropy(sim[:4], idx + 4) + F.cross_entropy(sim[4:], idx)) / 2
    torch.testing.assert_close(nt_xent_loss(z1, z2, 0.07), seed_loss)
