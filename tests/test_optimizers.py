"""Every ``optim`` name that runs on CPU here, checked by its weights against transformers.Trainer.

Each case trains a tiny BERT for a few steps under both trainers (the facade) and under
``HFLightningModule`` + Lightning (the CLI's front door) against the same optimizer applied by hand;
the optimizers' own packages come from the ``optimizers`` extra.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import transformers

from hf_lightning.args import TrainingArguments
from hf_lightning.errors import ConfigError
from hf_lightning.trainer import Trainer
from tests.conftest import tiny_bert_classifier

GALORE = {"optim_target_modules": ["attention", "intermediate"], "optim_args": "rank=4,update_proj_gap=2"}
CASES = {
    "adafactor": {},
    "adamw_torch_fused": {},
    "lion_32bit": {"learning_rate": 1e-4},
    "ademamix": {},
    "grokadamw": {},
    "stable_adamw": {},
    "galore_adamw": GALORE,
    "galore_adafactor": GALORE,
    "schedule_free_adamw": {"eval_strategy": "steps", "eval_steps": 2, "warmup_steps": 2},
    "adamw_torch": {"optim_args": "amsgrad=True"},  # optim_args reaching a torch optimizer
}


def _args(cls, out: Path, optim: str, **overrides):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=8, num_train_epochs=1,
        learning_rate=1e-3, weight_decay=0.01, max_grad_norm=1.0, train_sampling_strategy="sequential",
        eval_strategy="no", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0, optim=optim,
    )
    base.update(overrides)
    return cls(**base)


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("optim", sorted(CASES))
def test_facade_matches_transformers_trainer(optim: str, cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    base = tiny_bert_classifier(len(demo_tokenizer))
    runs = {}
    for name, trainer_cls, args_cls in (("hf", transformers.Trainer, transformers.TrainingArguments),
                                        ("ours", Trainer, TrainingArguments)):
        model = copy.deepcopy(base)
        trainer = trainer_cls(model=model, args=_args(args_cls, tmp_path / name, optim, **CASES[optim]),
                              train_dataset=cls_dataset, eval_dataset=cls_dataset, processing_class=demo_tokenizer)
        trainer.train()
        runs[name] = (model, trainer)
    (hf_model, hf), (our_model, ours) = runs["hf"], runs["ours"]
    assert type(ours.optimizer) is type(getattr(hf.optimizer, "optimizer", hf.optimizer))
    assert _max_diff(hf_model, our_model) <= 1e-5
    assert _max_diff(base, our_model) > 1e-4, "the run must train for the comparison to mean anything"
    assert ours.state.global_step == hf.state.global_step == 5
    if "eval_steps" in CASES[optim]:
        evals = [e["eval_loss"] for e in ours.state.log_history if "eval_loss" in e]
        hf_evals = [e["eval_loss"] for e in hf.state.log_history if "eval_loss" in e]
        assert len(evals) >= 2 and evals == pytest.approx(hf_evals, abs=1e-6)


MODULE_CASES = {
    "adafactor": {},
    "lion_32bit": {"learning_rate": 1e-4},
    "galore_adamw": {"optim_target_modules": "all-linear", "optim_args": {"rank": 4, "update_proj_gap": 2}},
    "schedule_free_adamw": {"warmup_steps": 2},
}


@pytest.mark.parametrize("optim", sorted(MODULE_CASES))
def test_lightning_module_matches_the_optimizer_applied_by_hand(optim: str, task_files, demo_assets) -> None:
    """HFLightningModule under Lightning (validation every 2 steps) against a plain loop with the optimizer
    transformers builds for the same name; schedule-free's eval/train switches at the same points."""
    import lightning.pytorch as pl

    from hf_lightning.data import HFDataModule
    from hf_lightning.module import HFLightningModule
    from hf_lightning.optim import decay_parameter_groups

    settings = {"learning_rate": 1e-3, "weight_decay": 0.01, **MODULE_CASES[optim]}
    data = HFDataModule(dataset="json", data_files=task_files["cls"], tokenizer=demo_assets["tokenizer"],
                        task="sequence-classification", label_column="label", batch_size=8, max_length=16, shuffle=False)
    module = HFLightningModule(model={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                      "num_attention_heads": 2, "intermediate_size": 64, "hidden_dropout_prob": 0.0,
                                      "attention_probs_dropout_prob": 0.0},
                               task="sequence-classification", num_labels=data.num_labels, id2label=data.id2label,
                               vocab_size=data.vocab_size, pad_token_id=data.pad_token_id, optim=optim,
                               lr_scheduler_type="constant", **settings)
    by_hand = copy.deepcopy(module.model).train()

    class EvalPoints(pl.Callback):
        steps: list[int] = []

        def on_validation_start(self, trainer, pl_module) -> None:
            self.steps.append(trainer.global_step)

    points = EvalPoints()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, max_epochs=1, val_check_interval=2,
                         callbacks=[points])
    trainer.fit(module, datamodule=data)

    hf_args = transformers.TrainingArguments(output_dir="unused", optim=optim, report_to="none", use_cpu=True,
                                             **{**settings, "optim_args": None, "warmup_steps": settings.get("warmup_steps", 0)})
    if isinstance(settings.get("optim_args"), dict):
        hf_args.optim_args = ",".join(f"{k}={v}" for k, v in settings["optim_args"].items())
    cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(hf_args, by_hand)
    decay = set(transformers.Trainer.get_decay_parameter_names(None, by_hand))
    groups = kwargs.pop("params", None) or decay_parameter_groups(by_hand.named_parameters(), decay, hf_args.weight_decay)
    optimizer = cls(groups, **kwargs)
    modes = hasattr(optimizer, "train")
    data.setup("fit")
    for step, batch in enumerate(data.train_dataloader(), start=1):
        if modes:
            optimizer.train()
        by_hand(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if modes and step in points.steps:
            optimizer.eval()
    assert trainer.global_step == step == 3
    assert len(points.steps) >= 1
    assert _max_diff(by_hand, module.model) <= 1e-5
    # A validation after training evaluates schedule-free's averaged weights, as transformers does.
    eval_loss = trainer.validate(module, datamodule=data, verbose=False)[0]["eval_loss"]
    if modes:
        optimizer.eval()
    with torch.no_grad():
        losses = [(by_hand(**b).loss, len(b["labels"])) for b in data.val_dataloader()]
    expected = sum(loss.item() * n for loss, n in losses) / sum(n for _, n in losses)
    assert eval_loss == pytest.approx(expected, abs=1e-5)
    assert _max_diff(by_hand, module.model) <= 1e-5


def test_seed_galore_example_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    """Seed 001's GaLore block: optim_args as a dict naming ``galore_target_modules`` (taken as
    ``optim_target_modules``; keys GaLore does not know, like ``loraplus_lr_ratio``, are ignored as in HF)."""
    monkeypatch.chdir(tmp_path)
    training_args = TrainingArguments(
        optim="galore_adamw",
        optim_args={
            "loraplus_lr_ratio": 16.0,
            "galore_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]
        }
    )
    training_args.num_train_epochs, training_args.per_device_train_batch_size = 1, 4
    training_args.use_cpu, training_args.report_to, training_args.disable_tqdm = True, [], True
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    rows = [{"input_ids": [(i * 7 + j) % 64 for j in range(8)], "labels": [(i * 7 + j) % 64 for j in range(8)]}
            for i in range(8)]
    trainer = Trainer(model=model, args=training_args, train_dataset=rows)
    trainer.train()
    assert type(trainer.optimizer).__module__.startswith("galore_torch")
    projected = [g for g in trainer.optimizer.param_groups if "rank" in g]
    assert len(projected) == 1 and len(projected[0]["params"]) == 4  # q/k/v/o of the one layer
    assert not torch.equal(before, model.model.layers[0].self_attn.q_proj.weight)


def test_optimizer_setting_errors_are_one_line(monkeypatch) -> None:
    from hf_lightning.optim import build_optimizer

    model = tiny_bert_classifier(100)
    monkeypatch.setitem(sys.modules, "galore_torch", None)  # as if galore-torch were not installed
    with pytest.raises(ConfigError, match=r"optim: 'galore_adamw' needs the galore-torch package.*hf_lightning\[optimizers\]"):
        build_optimizer(model, optim="galore_adamw", optim_target_modules="all-linear")
    monkeypatch.delitem(sys.modules, "galore_torch")
    with pytest.raises(ConfigError, match="optim_target_modules: 'galore_adafactor' projects"):
        build_optimizer(model, optim="galore_adafactor")
    with pytest.raises(ConfigError, match="use 'galore_adamw'"):
        build_optimizer(model, optim="galore_adamw_layerwise", optim_target_modules="all-linear")
