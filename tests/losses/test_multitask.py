"""Multi-task losses on the reference multi-task model, and that model's save/load round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from hf_lightning.errors import ConfigError
from hf_lightning.losses import MultiTaskLoss, UncertaintyWeightedLoss
from hf_lightning.models import build_model
from hf_lightning.multitask_model import MultiTaskConfig, MultiTaskModel

TINY = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def _model(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    return MultiTaskModel(MultiTaskConfig(**TINY, num_labels=3, num_ner_labels=5)).eval()


def _batch(seed: int = 0, ner: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "input_ids": torch.randint(1, 100, (4, 6), generator=gen),
        "attention_mask": torch.ones(4, 6, dtype=torch.long),
        "labels": torch.randint(0, 3, (4,), generator=gen),
    }
    if ner:
        ner_labels = torch.randint(0, 5, (4, 6), generator=gen)
        ner_labels[:, 0] = -100
        batch["ner_labels"] = ner_labels
    return batch


def test_model_reports_each_task_loss() -> None:
    model, batch = _model(), _batch()
    out = model(**batch)
    assert out.logits.shape == (4, 3) and out.ner_logits.shape == (4, 6, 5)
    torch.testing.assert_close(out.classification_loss, F.cross_entropy(out.logits, batch["labels"]))
    reference_ner = F.cross_entropy(
        out.ner_logits.reshape(-1, 5), batch["ner_labels"].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.ner_loss, reference_ner)
    torch.testing.assert_close(out.loss, out.classification_loss + out.ner_loss)
    assert model(input_ids=batch["input_ids"]).loss is None


def test_save_and_load_through_the_auto_classes(tmp_path) -> None:
    model, batch = _model(), _batch()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).num_ner_labels == 5
    for auto_cls in (AutoModel, AutoModelForSequenceClassification):
        loaded = auto_cls.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, MultiTaskModel)
        torch.testing.assert_close(loaded(**batch).ner_logits, model(**batch).ner_logits)
    via_build = build_model(str(tmp_path), "sequence-classification").eval()
    torch.testing.assert_close(via_build(**batch).logits, model(**batch).logits)
    from_dict = build_model({"model_type": "hf_lightning_multitask", **TINY}, "sequence-classification")
    assert isinstance(from_dict, MultiTaskModel)


def test_weighted_sum_of_task_losses() -> None:
    model, batch = _model(), _batch()
    loss_fn = MultiTaskLoss({"classification": 1.0, "ner": 0.25})
    loss, out = loss_fn(model, batch)
    torch.testing.assert_close(loss, out.classification_loss + 0.25 * out.ner_loss)
    assert loss_fn.count_items(batch).item() == 4


def test_missing_task_loss_names_the_key() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="'ner_loss'"):
        MultiTaskLoss({"classification": 1.0, "ner": 1.0})(model, _batch(ner=False))
    with pytest.raises(ConfigError, match="'sentiment_loss'"):
        UncertaintyWeightedLoss(["sentiment"])(model, _batch())
    with pytest.raises(ConfigError, match="task_weights.ner"):
        MultiTaskLoss({"ner": -1.0})
    with pytest.raises(ConfigError, match="tasks"):
        UncertaintyWeightedLoss([])


def test_uncertainty_weighting_formula() -> None:
    model, batch = _model(), _batch()
    loss_fn = UncertaintyWeightedLoss(["classification", "ner"])
    with torch.no_grad():
        loss_fn.log_vars.copy_(torch.tensor([0.5, -0.3]))
    loss, out = loss_fn(model, batch)
    expected = (
        torch.exp(torch.tensor(-0.5)) * out.classification_loss
        + 0.5
        + torch.exp(torch.tensor(0.3)) * out.ner_loss
        - 0.3
    )
    torch.testing.assert_close(loss, expected)
    assert loss_fn.task_weights()["ner"] == pytest.approx(torch.exp(torch.tensor(0.3)).item())


def test_log_vars_learn_and_survive_state_dict_round_trip() -> None:
    model, batch = _model(), _batch()
    model.train()
    owner = torch.nn.ModuleDict(
        {"model": model, "loss_fn": UncertaintyWeightedLoss(["classification", "ner"])}
    )
    loss_fn = owner["loss_fn"]
    assert "loss_fn.log_vars" in owner.state_dict()
    optimizer = torch.optim.SGD(owner.parameters(), lr=0.1)
    loss, _ = loss_fn(model, batch)
    loss.backward()
    assert loss_fn.log_vars.grad is not None and loss_fn.log_vars.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(loss_fn.log_vars.detach(), torch.zeros(2))

    restored = UncertaintyWeightedLoss(["classification", "ner"])
    restored.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(restored.log_vars, loss_fn.log_vars)
