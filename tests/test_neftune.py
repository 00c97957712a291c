"""NEFTune: noise magnitude, train/eval gating, mask-aware variant, parity with transformers, hook hygiene."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertForSequenceClassification

from hf_lightning.errors import ConfigError
from hf_lightning.neftune import NEFTuneCallback, activate_neftune, deactivate_neftune, neftune_noise
from tests.conftest import tiny_bert_config

__all__: list[str] = []


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = tiny_bert_config(num_labels=2)
    return BertForSequenceClassification(config)


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(("length", "width"), [(8, 16), (64, 32), (128, 256)])
def test_noise_magnitude(length: int, width: int) -> None:
    alpha = 5.0
    x = torch.randn(4, length, width)
    gen = torch.Generator().manual_seed(1)
    noise = neftune_noise(x, alpha, generator=gen) - x
    bound = alpha / math.sqrt(length * width)
    peak = noise.abs().max().item()
    assert peak <= bound * (1 + 1e-5)
    assert peak > 0.9 * bound
    assert noise.abs().mean().item() == pytest.approx(bound / 2, rel=0.05)


def test_input_not_modified_and_generator_reproducible() -> None:
    x = torch.randn(2, 5, 8)
    before = x.clone()
    a = neftune_noise(x, 1.0, generator=torch.Generator().manual_seed(3))
    b = neftune_noise(x, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, before)
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_mask_aware_per_row_length_and_padding_untouched() -> None:
    alpha, width, length = 4.0, 64, 100
    mask = torch.zeros(2, length, dtype=torch.long)
    mask[0, :] = 1  # full row: L_0 = 100
    mask[1, :25] = 1  # short row: L_1 = 25
    x = torch.randn(2, length, width)
    noise = neftune_noise(x, alpha, attention_mask=mask, generator=torch.Generator().manual_seed(0)) - x
    assert torch.equal(noise[1, 25:], torch.zeros_like(noise[1, 25:]))
    for row, real_len in ((0, 100), (1, 25)):
        bound = alpha / math.sqrt(real_len * width)
        part = noise[row, :real_len]
        assert part.abs().max().item() <= bound * (1 + 1e-5)
        assert part.abs().max().item() > 0.9 * bound
        assert part.abs().mean().item() == pytest.approx(bound / 2, rel=0.05)


def test_bad_inputs_raise_config_error() -> None:
    x = torch.randn(2, 3, 4)
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError):
            neftune_noise(x, alpha)
    with pytest.raises(ConfigError):
        neftune_noise(x, 1.0, attention_mask=torch.ones(2, 4))
    with pytest.raises(ConfigError):
        activate_neftune(tiny_bert(), 0)
    with pytest.raises(ConfigError):
        NEFTuneCallback(-5.0)


def test_matches_transformers_hook_bit_for_bit() -> None:
    from transformers.integrations.neftune import neftune_post_forward_hook

    emb = torch.nn.Embedding(100, 48).train()
    emb.neftune_noise_alpha = 7.5
    for length in (3, 17, 64):
        out = emb(torch.randint(0, 100, (3, length))).detach()
        torch.manual_seed(123)
        theirs = neftune_post_forward_hook(emb, None, out)
        torch.manual_seed(123)
        ours = neftune_noise(out, 7.5)
        assert torch.equal(ours, theirs)


def test_hook_noise_only_in_train_mode() -> None:
    model = tiny_bert()
    ids = torch.randint(0, 100, (2, 6))
    emb = model.get_input_embeddings()
    clean = emb(ids)
    activate_neftune(model, 5.0)
    model.train()
    noisy = emb(ids)
    assert not torch.equal(noisy, clean)
    assert (noisy - clean).abs().max().item() <= 5.0 / math.sqrt(6 * 32) * (1 + 1e-5)
    model.eval()
    assert torch.equal(emb(ids), clean)
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.equal(a, b)
    deactivate_neftune(model)


def test_activate_twice_does_not_stack_and_deactivate_is_idempotent() -> None:
    model = tiny_bert()
    baseline = hook_count(model)
    first = activate_neftune(model, 5.0)
    second = activate_neftune(model, 10.0)
    assert hook_count(model) == baseline + 1
    assert not first.active and second.active and second.alpha == 10.0
    deactivate_neftune(model)
    deactivate_neftune(model)
    assert hook_count(model) == baseline
    activate_neftune(model, 5.0, mask_aware=True)
    assert hook_count(model) == baseline + 2
    deactivate_neftune(model)
    assert hook_count(model) == baseline


def test_mask_aware_hook_leaves_padding_clean() -> None:
    model = tiny_bert().train()
    emb = model.get_input_embeddings()
    ids = torch.randint(1, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    seen: list[torch.Tensor] = []
    activate_neftune(model, 5.0, mask_aware=True)
    probe = emb.register_forward_hook(lambda m, a, out: seen.append(out.detach()))  # runs after NEFTune's
    model(input_ids=ids, attention_mask=mask)
    probe.remove()
    deactivate_neftune(model)
    noise = seen[0] - emb(ids)
    assert torch.equal(noise[1, 5:], torch.zeros_like(noise[1, 5:]))
    assert noise[1, :5].abs().max().item() <= 5.0 / math.sqrt(5 * 32) * (1 + 1e-5)
    assert noise[1, :5].abs().max().item() > 5.0 / math.sqrt(8 * 32)  # larger than the padded-length bound
    assert 0 < noise[0].abs().max().item() <= 5.0 / math.sqrt(8 * 32) * (1 + 1e-5)


def test_save_pretrained_round_trip_has_no_hooks(tmp_path) -> None:
    model = tiny_bert()
    baseline = hook_count(model)
    activate_neftune(model, 5.0, mask_aware=True)
    model.save_pretrained(tmp_path / "while_active")  # hooks are not part of the saved state
    deactivate_neftune(model)
    assert hook_count(model) == baseline
    model.save_pretrained(tmp_path / "after")
    for folder in ("while_active", "after"):
        loaded = BertForSequenceClassification.from_pretrained(tmp_path / folder)
        assert hook_count(loaded) == baseline
        assert not hasattr(loaded, "_hf_lightning_neftune_handle")
    assert not hasattr(loaded.get_input_embeddings(), "neftune_noise_alpha")
    loaded.train()
    ids = torch.randint(0, 100, (1, 4))
    emb = loaded.get_input_embeddings()
    assert torch.equal(emb(ids), emb(ids))


class TinyModule(pl.LightningModule):
    def __init__(self, fail_at_step: int | None = None) -> None:
        super().__init__()
        self.model = tiny_bert()
        self.fail_at_step = fail_at_step
        self.hooks_seen: list[int] = []

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        self.hooks_seen.append(len(self.model.get_input_embeddings()._forward_hooks))
        if self.fail_at_step is not None and batch_idx == self.fail_at_step:
            raise RuntimeError("boom")
        return self.model(input_ids=ids, labels=labels).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(module: TinyModule) -> None:
    data = TensorDataset(torch.randint(0, 100, (8, 6)), torch.randint(0, 2, (8,)))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[NEFTuneCallback(5.0)],
    )
    trainer.fit(module, DataLoader(data, batch_size=4))


def test_callback_active_during_fit_and_removed_after() -> None:
    module = TinyModule()
    baseline = hook_count(module.model)
    _fit(module)
    assert module.hooks_seen == [1, 1]
    assert hook_count(module.model) == baseline


def test_callback_removes_hook_on_exception() -> None:
    module = TinyModule(fail_at_step=1)
    baseline = hook_count(module.model)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(module)
    assert module.hooks_seen == [1, 1]
    assert hook_count(module.model) == baseline
