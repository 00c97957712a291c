"""checkpoint-N folders interchangeable with transformers.Trainer, and resume as lenient as HF's.

The runs: 40 rows, batch 4, sequential order (the data order is the same under both trainers), warmup,
weight decay, clipping, 2 epochs = 20 optimizer steps; a checkpoint every 5 steps. Without dropout both
trainers compute the same steps, so "the same weights as an uninterrupted run" can be checked across them.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from hf_lightning import Trainer, TrainingArguments
from tests.conftest import tiny_bert_classifier

# The two trainers agree to ~1e-6 on these runs (tests/test_trainer.py: parity within 1e-5); a resume
# that restored a wrong optimizer state, scheduler step or data position is off by more than 1e-3.
CROSS_TOLERANCE = 1e-5


def _args(cls, out: Path, **overrides):
    base = dict(output_dir=str(out), per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-3,
                weight_decay=0.01, warmup_steps=2, max_grad_norm=0.05, train_sampling_strategy="sequential",
                logging_steps=1, save_strategy="steps", save_steps=5, report_to="none", optim="adamw_torch",
                use_cpu=True, disable_tqdm=True, seed=0)
    base.update(overrides)
    return cls(**base)


def _hf_trainer(model, out: Path, data, tok, **overrides) -> transformers.Trainer:
    trainer = transformers.Trainer(model=model, args=_args(transformers.TrainingArguments, out, **overrides),
                                   train_dataset=data, processing_class=tok)
    trainer.model_accepts_loss_kwargs = False  # HF's exact accumulation path for BERT (see tests/test_trainer.py)
    return trainer


def _ours(model, out: Path, data, tok, **overrides) -> Trainer:
    return Trainer(model=model, args=_args(TrainingArguments, out, **overrides), train_dataset=data,
                   processing_class=tok)


def _diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


def _resume_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    shutil.copytree(src, dst / src.name)
    return dst / src.name


@pytest.fixture(scope="module")
def runs(cls_dataset, demo_tokenizer, tmp_path_factory):
    """Uninterrupted runs of both trainers, each leaving checkpoint-5 ... checkpoint-20."""
    root = tmp_path_factory.mktemp("interop")
    base = tiny_bert_classifier(len(demo_tokenizer))
    hf = _hf_trainer(copy.deepcopy(base), root / "hf", cls_dataset, demo_tokenizer)
    hf.train()
    ours = _ours(copy.deepcopy(base), root / "ours", cls_dataset, demo_tokenizer)
    ours.train()
    assert hf.state.global_step == ours.state.global_step == 20
    assert _diff(hf.model, ours.model) <= CROSS_TOLERANCE
    assert _diff(base, ours.model) > 1e-3, "the runs must train for the comparison to mean anything"
    return {"root": root, "base": base, "hf": hf.model, "ours": ours.model}


def test_folder_holds_hf_files_and_no_tensor_twice(runs) -> None:
    folder = runs["root"] / "ours" / "checkpoint-15"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "model.safetensors",
                 "lightning.ckpt"):
        assert (folder / name).is_file(), name
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    assert set(optimizer) == {"state", "param_groups"} and len(optimizer["state"]) > 0
    assert torch.load(folder / "scheduler.pt", weights_only=True)["last_epoch"] == 15
    lightning_state = torch.load(folder / "lightning.ckpt", weights_only=True)
    assert lightning_state["optimizer_states"] == [] and lightning_state["lr_schedulers"] == []
    assert not [k for k in lightning_state["state_dict"] if k.startswith("model.")], "weights live in model.safetensors"


@pytest.mark.parametrize("step", [15, 10])  # mid-epoch; after an epoch's last step
def test_transformers_resumes_an_hf_lightning_checkpoint(runs, cls_dataset, demo_tokenizer, tmp_path, step) -> None:
    folder = _resume_dir(runs["root"] / "ours" / f"checkpoint-{step}", tmp_path / "run")
    hf = _hf_trainer(copy.deepcopy(runs["base"]), tmp_path / "run", cls_dataset, demo_tokenizer)
    hf.train(resume_from_checkpoint=str(folder))
    assert hf.state.global_step == 20
    assert _diff(hf.model, runs["hf"]) <= CROSS_TOLERANCE
    logged = [e["step"] for e in hf.state.log_history if "loss" in e]
    assert logged == list(range(1, 21)), "transformers continued the log history where it stopped"


@pytest.mark.parametrize("step", [15, 10])
def test_hf_lightning_resumes_a_transformers_checkpoint(runs, cls_dataset, demo_tokenizer, tmp_path, step) -> None:
    folder = runs["root"] / "hf" / f"checkpoint-{step}"
    assert not (folder / "lightning.ckpt").exists() and (folder / "rng_state.pth").is_file()
    _resume_dir(folder, tmp_path / "run")
    ours = _ours(copy.deepcopy(runs["base"]), tmp_path / "run", cls_dataset, demo_tokenizer)
    ours.train(resume_from_checkpoint=True)  # the latest checkpoint, written by transformers.Trainer
    assert ours.state.global_step == 20
    assert _diff(ours.model, runs["ours"]) <= CROSS_TOLERANCE
    assert _diff(ours.model, runs["hf"]) <= CROSS_TOLERANCE
    logged = [e["step"] for e in ours.state.log_history if "loss" in e]
    assert logged == list(range(1, 21))


def test_crafted_rng_state_is_refused_without_running(runs, cls_dataset, demo_tokenizer, tmp_path) -> None:
    """HF's rng_state.pth holds NumPy arrays; only their types are allowed, a pickle payload never runs."""
    import os

    folder = _resume_dir(runs["root"] / "hf" / "checkpoint-15", tmp_path / "run")
    ran = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    torch.save({"python": Payload()}, folder / "rng_state.pth")
    ours = _ours(copy.deepcopy(runs["base"]), tmp_path / "run", cls_dataset, demo_tokenizer)
    with pytest.raises(ValueError, match=r"rng_state\.pth.*(refused without running it|nothing in it was run)"):
        ours.train(resume_from_checkpoint=str(folder))
    assert not ran.exists()


def test_missing_checkpoint_errors_are_hf_texts(cls_dataset, demo_tokenizer, tmp_path) -> None:
    trainer = _ours(tiny_bert_classifier(len(demo_tokenizer)), tmp_path / "out", cls_dataset, demo_tokenizer)
    with pytest.raises(ValueError, match=r"No valid checkpoint found in output directory"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=r"Can't find a valid checkpoint at .*nope"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "nope"))


def test_resaved_sharded_weights_resume_exactly_with_a_warning(runs, cls_dataset, demo_tokenizer, tmp_path) -> None:
    """The folder's weights re-saved sharded (as transformers does with max_shard_size): the manifest no longer
    matches, the resume warns and still ends bit for bit on the uninterrupted run."""
    folder = _resume_dir(runs["root"] / "ours" / "checkpoint-15", tmp_path / "run")
    model = transformers.BertForSequenceClassification.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="40KB")
    assert (folder / "model.safetensors.index.json").is_file()
    ours = _ours(copy.deepcopy(runs["base"]), tmp_path / "run", cls_dataset, demo_tokenizer)
    with pytest.warns(UserWarning, match="missing model.safetensors.*resuming from it anyway"):
        ours.train(resume_from_checkpoint=str(folder))
    assert _diff(ours.model, runs["ours"]) == 0.0


class _HFWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_changed_batch_and_dataset_size_resume_with_hf_warnings(runs, cls_dataset, demo_tokenizer, tmp_path) -> None:
    folder = _resume_dir(runs["root"] / "ours" / "checkpoint-5", tmp_path / "run")
    handler = _HFWarnings()
    hf_logger = transformers.utils.logging.get_logger("transformers.trainer_utils")
    hf_logger.addHandler(handler)
    try:
        ours = _ours(copy.deepcopy(runs["base"]), tmp_path / "run", cls_dataset.select(range(32)), demo_tokenizer,
                     per_device_train_batch_size=8, num_train_epochs=1, max_steps=8)
        with pytest.warns(UserWarning, match="data order changed.*data_source_len 40 -> 32"):
            ours.train(resume_from_checkpoint=str(folder))
    finally:
        hf_logger.removeHandler(handler)
    assert ours.state.global_step == 8
    assert any("per_device_train_batch_size: 8 (from args) != 4" in m for m in handler.messages), handler.messages


class _CountingModel(nn.Module):
    """A user's module with an extra buffer and its own ``load_state_dict`` (as HF calls it on resume)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.own_loads = 0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        if self.training:
            self.steps_seen += 1
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        self.own_loads += 1
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def test_resume_loads_through_the_models_own_load_state_dict(cls_dataset, demo_tokenizer, tmp_path) -> None:
    def model() -> _CountingModel:
        return _CountingModel(tiny_bert_classifier(len(demo_tokenizer)))

    full = _ours(model(), tmp_path / "full", cls_dataset, demo_tokenizer, num_train_epochs=1)
    full.train()
    assert int(full.model.steps_seen) == 10
    _resume_dir(tmp_path / "full" / "checkpoint-5", tmp_path / "run")
    resumed = _ours(model(), tmp_path / "run", cls_dataset, demo_tokenizer, num_train_epochs=1)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.model.own_loads >= 1, "the weights went in through the model's load_state_dict"
    assert int(resumed.model.steps_seen) == 10, "the extra buffer was restored"
    assert _diff(resumed.model, full.model) == 0.0



class _Timer(transformers.TrainerCallback):
    """Needs on_train_begin's state in on_train_end, as timing and tracking callbacks do."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append("on_train_begin")
        self.began_at = state.global_step

    def on_log(self, args, state, control, **kwargs):
        self.events.append("on_log")

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append("on_step_end")

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append("on_train_end")
        self.steps_run = state.global_step - self.began_at


def test_resuming_a_finished_run_begins_and_ends_as_hf(runs, cls_dataset, demo_tokenizer, tmp_path) -> None:
    events = {}
    for name, make in (("hf", _hf_trainer), ("ours", _ours)):
        _resume_dir(runs["root"] / name / "checkpoint-20", tmp_path / name)
        timer = _Timer()
        trainer = make(copy.deepcopy(runs["base"]), tmp_path / name, cls_dataset, demo_tokenizer)
        trainer.add_callback(timer)
        trainer.train(resume_from_checkpoint=True)
        assert trainer.state.global_step == 20 and timer.steps_run == 0
        events[name] = timer.events
    assert events["ours"] == events["hf"] == ["on_train_begin", "on_log", "on_train_end"]


def test_rng_files_per_rank_round_trip_in_hfs_layout(tmp_path) -> None:
    """Several processes: one rng_state_<rank>.pth each, in the layout transformers' _load_rng_state reads."""
    import random

    import numpy as np

    from hf_lightning.checkpoint_interop import _write_hf_files, hf_rng_to_plain, read_hf_rng
    from hf_lightning.rng import capture_rng_state

    ranks = []
    for seed in (1, 2):
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        ranks.append({"rng": capture_rng_state(), "window": None, "grads": None})
    _write_hf_files({"hf_lightning_exact_resume": {"ranks": ranks}}, tmp_path, None)
    for rank, local in enumerate(ranks):
        hf = read_hf_rng(tmp_path / f"rng_state_{rank}.pth")
        assert set(hf) >= {"python", "numpy", "cpu"} and isinstance(hf["numpy"][1], np.ndarray)
        assert hf_rng_to_plain(hf) == local["rng"]
    assert not (tmp_path / "rng_state.pth").exists()


def test_rebuilt_loop_state_is_what_lightning_saves(runs) -> None:
    """The loop state built for a transformers checkpoint equals the one Lightning wrote at the same step."""
    import lightning.pytorch as pl

    from hf_lightning.lightning_compat import loop_state_after_step

    template = pl.Trainer(max_steps=20, logger=False, enable_checkpointing=False).fit_loop.state_dict()
    for step, epoch, batches, last in ((15, 1, 5, False), (10, 0, 10, True), (5, 0, 5, False)):
        saved = torch.load(runs["root"] / "ours" / f"checkpoint-{step}" / "lightning.ckpt", weights_only=True)
        built = loop_state_after_step(template, epoch=epoch, batches_in_epoch=batches, batches_before=epoch * 10,
                                      steps=step, steps_before_epoch=epoch * 10, last_batch=last)
        assert built == saved["loops"]["fit_loop"], step
