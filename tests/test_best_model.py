"""``load_best_model_at_end`` ends with the best checkpoint's weights in every save format, or fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from hf_lightning import Trainer, TrainingArguments
from hf_lightning.best_model import load_model_weights
from hf_lightning.errors import ConfigError
from tests.conftest import tiny_bert_classifier


class ShardedBert(transformers.BertForSequenceClassification):
    """Saves in several shards with an index, as large models do."""

    def save_pretrained(self, save_directory, **kwargs):
        kwargs["max_shard_size"] = "20KB"
        return super().save_pretrained(save_directory, **kwargs)


class PickleBert(transformers.BertForSequenceClassification):
    """Saves ``pytorch_model.bin`` instead of safetensors (transformers 4's ``save_safetensors=False``)."""

    def save_pretrained(self, save_directory, **kwargs):
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(save_directory)
        torch.save(self.state_dict(), Path(save_directory) / "pytorch_model.bin")


def _model(kind: str, vocab: int):
    base = tiny_bert_classifier(vocab)
    if kind == "sharded":
        return ShardedBert(base.config)
    if kind == "bin":
        return PickleBert(base.config)
    if kind == "adapter":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"]))
    return base


class _FirstIsBest:
    """A metric that is best at the first evaluation, so the best checkpoint is not the last one."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, prediction) -> dict[str, float]:
        self.calls += 1
        return {"score": -float(self.calls)}


def _state(model) -> dict[str, torch.Tensor]:
    if hasattr(model, "peft_config"):
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _saved(kind: str, folder: Path, vocab: int) -> dict[str, torch.Tensor]:
    """The folder's weights read independently of the trainer: from_pretrained, or peft's own loader."""
    if kind == "adapter":
        from peft.utils import load_peft_weights

        return load_peft_weights(str(folder), device="cpu")
    return _state(transformers.BertForSequenceClassification.from_pretrained(folder))


@pytest.mark.parametrize("kind", ["safetensors", "sharded", "bin", "adapter"])
def test_weights_after_train_are_the_best_checkpoints(kind: str, cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    vocab = len(demo_tokenizer)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, learning_rate=5e-2,
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True,
        metric_for_best_model="score", greater_is_better=True, report_to="none", use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=_model(kind, vocab), args=args, train_dataset=cls_dataset,
                      eval_dataset=cls_dataset.select(range(8)), processing_class=demo_tokenizer,
                      compute_metrics=_FirstIsBest())
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    if kind == "sharded":
        assert (tmp_path / "checkpoint-2" / "model.safetensors.index.json").is_file()
    best, last = _saved(kind, tmp_path / "checkpoint-2", vocab), _saved(kind, tmp_path / "checkpoint-4", vocab)
    got = _state(trainer.model)
    assert set(best) <= set(got)
    for key, value in best.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=f"{key} is not the best checkpoint's")
    assert any(not torch.equal(best[k], last[k]) for k in best), "the last checkpoint differs (the test can fail)"


def _rewrite(folder: Path, drop: str, add: str) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    weights[add] = weights.pop(drop)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_missing_and_unexpected_keys_are_named_and_nothing_is_loaded(demo_tokenizer, tmp_path: Path) -> None:
    tiny_bert_classifier(len(demo_tokenizer), seed=1).save_pretrained(tmp_path)
    _rewrite(tmp_path, drop="classifier.weight", add="classifier.renamed")
    model = tiny_bert_classifier(len(demo_tokenizer), seed=2)
    before = _state(model)
    with pytest.raises(ConfigError) as info:
        load_model_weights(model, tmp_path)
    message = str(info.value)
    assert "missing keys [classifier.weight]" in message and "unexpected keys [classifier.renamed]" in message
    assert all(torch.equal(before[k], v) for k, v in _state(model).items()), "nothing was loaded in part"


def test_tied_weights_left_out_by_save_pretrained_are_not_missing(demo_tokenizer, tmp_path: Path) -> None:
    config = transformers.BertConfig(vocab_size=len(demo_tokenizer), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, tie_word_embeddings=True)
    torch.manual_seed(1)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)
    torch.manual_seed(2)
    model = transformers.BertForMaskedLM(config)
    load_model_weights(model, tmp_path)
    expected = transformers.BertForMaskedLM.from_pretrained(tmp_path).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_a_folder_without_weights_is_an_error(demo_tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no model weights"):
        load_model_weights(tiny_bert_classifier(len(demo_tokenizer)), tmp_path)
