"""The field walk: every ``transformers.TrainingArguments`` field acts here or warns once that it cannot.

Each field of ``transformers.TrainingArguments`` and ``Seq2SeqTrainingArguments`` is in exactly one table:

* ``ACTS``: a non-default value and the observer that sees it act. The observer builds a tiny
  ``Trainer`` twice, once with the field's value and once without it (both with the case's ``extra``
  context), and describes what the field should change: the train/eval ``DataLoader``, the optimizer
  and its learning rates, the ``lightning.Trainer`` keyword arguments the facade builds, the
  ``TrainerModule``, an ``evaluate``/``predict``, a 3-step run (log history, files, weights) or a
  resumed run. The two descriptions must differ. An error is a description too: a value that
  transformers refuses here (``tf32`` without CUDA, ``deepspeed`` on CPU) must be refused.
* ``NO_EFFECT`` (``hf_lightning.args``): the value warns once, naming the field and the reason.
* ``SCRIPT_ONLY``: fields that ``transformers.Trainer`` does not read either (HF's own help says so).
* ``DEDICATED``: fields whose effect needs a setting this walk cannot build in seconds (a GPU, a
  seq2seq model, a stateful callback); each names the test that checks it, and the walk checks that
  the test exists.
* ``PENDING``: acting fields with no observable here and no test yet; listed, not skipped silently.

A field that a future transformers adds falls in none of them and fails ``test_every_field_is_classified``
with its name.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import hf_lightning
from hf_lightning.args import NO_EFFECT
from tests.conftest import tiny_bert_classifier

BASE = dict(report_to="none", disable_tqdm=True, use_cpu=True, seed=0, per_device_train_batch_size=4,
            per_device_eval_batch_size=4, learning_rate=1e-3, max_steps=3, logging_steps=1, save_strategy="no")


@dataclass
class Case:
    """A non-default ``value`` for one field, the observer that sees it, and the context both builds share."""

    value: Any
    observer: str
    extra: dict[str, Any] = field(default_factory=dict)
    part: str | None = None  # the part of the description that must change (default: any part)


_EVAL = dict(eval_strategy="steps", eval_steps=1)
_SAVE = dict(save_strategy="steps", save_steps=1)
_DDP = dict(strategy="ddp", devices=2, accelerator="cpu")
_WORKERS = dict(dataloader_num_workers=1)

ACTS: dict[str, Case] = {
    "output_dir": Case("<out>/elsewhere", "plan"),
    "per_device_train_batch_size": Case(2, "loader"),
    "num_train_epochs": Case(2.0, "plan", dict(max_steps=-1)),
    "max_steps": Case(5, "plan"),
    "learning_rate": Case(1e-2, "optimizer"),
    "lr_scheduler_type": Case("cosine", "optimizer"),
    "lr_scheduler_kwargs": Case({"num_cycles": 3}, "optimizer", dict(lr_scheduler_type="cosine_with_restarts")),
    "warmup_steps": Case(3, "optimizer"),
    "optim": Case("sgd", "optimizer"),
    "optim_args": Case("momentum=0.9", "optimizer", dict(optim="sgd")),
    "weight_decay": Case(0.1, "optimizer"),
    "adam_beta1": Case(0.5, "optimizer"),
    "adam_beta2": Case(0.9, "optimizer"),
    "adam_epsilon": Case(1e-3, "optimizer"),
    "optim_target_modules": Case(["attention"], "optimizer", dict(optim="galore_adamw")),
    "gradient_accumulation_steps": Case(2, "plan"),
    "max_grad_norm": Case(0.5, "plan"),
    "label_smoothing_factor": Case(0.2, "evaluate"),
    "bf16": Case(True, "plan"),
    "fp16": Case(True, "plan"),  # refused on CPU, as transformers refuses it
    "bf16_full_eval": Case(True, "evaluate"),
    "fp16_full_eval": Case(True, "evaluate"),
    "tf32": Case(True, "construct"),  # transformers raises without an Ampere GPU
    "activation_checkpointing": Case(True, "module"),
    "activation_checkpointing_kwargs": Case({"use_reentrant": True}, "module", dict(activation_checkpointing=True)),
    "gradient_checkpointing": Case(True, "module"),  # HF 5: a deprecated alias of activation_checkpointing
    "gradient_checkpointing_kwargs": Case({"use_reentrant": True}, "module", dict(gradient_checkpointing=True)),
    "torch_compile": Case(True, "module"),
    "torch_compile_backend": Case("eager", "module", dict(torch_compile=True)),
    "torch_compile_mode": Case("reduce-overhead", "module", dict(torch_compile=True)),
    "use_cache": Case(True, "model"),
    "neftune_noise_alpha": Case(5.0, "run", part="weights"),
    "torch_empty_cache_steps": Case(2, "plan"),
    "logging_strategy": Case("no", "run"),
    "logging_steps": Case(2, "run"),
    "logging_first_step": Case(True, "run", dict(logging_steps=2)),
    "logging_nan_inf_filter": Case(False, "nan_run"),
    "log_on_each_node": Case(False, "node_log_level", dict(log_level="error")),
    "include_num_input_tokens_seen": Case("all", "run", part="tokens"),
    "log_level": Case("error", "log_level"),
    "log_level_replica": Case("error", "replica_log_level"),
    "disable_tqdm": Case(False, "callbacks"),  # HF's ProgressCallback draws the bar (Lightning's is off)
    "report_to": Case("tensorboard", "plan"),
    "run_name": Case("walk", "plan", dict(report_to="tensorboard")),
    "eval_strategy": Case("steps", "run", dict(eval_steps=1)),
    "eval_steps": Case(2, "run", dict(eval_strategy="steps")),
    "eval_delay": Case(2, "run", _EVAL),
    "per_device_eval_batch_size": Case(2, "eval_loader"),
    "prediction_loss_only": Case(True, "evaluate"),
    "eval_on_start": Case(True, "run"),
    "eval_do_concat_batches": Case(False, "evaluate", part="predictions"),
    "include_for_metrics": Case(["inputs"], "evaluate"),
    "batch_eval_metrics": Case(True, "evaluate"),
    "save_only_model": Case(True, "run", _SAVE, part="files"),
    "save_strategy": Case("steps", "run", dict(save_steps=2)),
    "save_steps": Case(2, "run", dict(save_strategy="steps")),
    "save_total_limit": Case(1, "run", _SAVE, part="files"),
    "load_best_model_at_end": Case(True, "run", dict(**_EVAL, **_SAVE, metric_for_best_model="eval_loss",
                                                     greater_is_better=True), part="weights"),
    "metric_for_best_model": Case("eval_loss", "run", dict(**_EVAL, **_SAVE), part="best"),
    "greater_is_better": Case(True, "run", dict(**_EVAL, **_SAVE, metric_for_best_model="eval_loss"), part="best"),
    "ignore_data_skip": Case(True, "resume", dict(max_steps=4, resume_from_checkpoint="<out>/first/checkpoint-2"),
                             part="weights"),
    "full_determinism": Case(True, "plan"),
    "seed": Case(1, "loader"),
    "data_seed": Case(1, "loader"),
    "use_cpu": Case(False, "plan"),
    "dataloader_drop_last": Case(True, "loader"),
    "dataloader_num_workers": Case(1, "loader"),
    "dataloader_persistent_workers": Case(True, "loader", _WORKERS),
    "dataloader_prefetch_factor": Case(4, "loader", _WORKERS),
    "dataloader_multiprocessing_context": Case("spawn", "loader", _WORKERS),
    "remove_unused_columns": Case(False, "loader"),  # the extra "rank" column reaches the batch
    "label_names": Case(["label_ids"], "evaluate"),
    "train_sampling_strategy": Case("sequential", "loader"),
    # as in transformers, the length column must survive column pruning to be read
    "length_column_name": Case("rank", "loader", dict(train_sampling_strategy="group_by_length",
                                                     remove_unused_columns=False)),
    "ddp_find_unused_parameters": Case(False, "plan", _DDP),  # None means True here, as in transformers
    "ddp_bucket_cap_mb": Case(5, "plan", _DDP),
    "ddp_broadcast_buffers": Case(False, "plan", _DDP),
    "ddp_static_graph": Case(True, "plan", _DDP),
    "ddp_backend": Case("mpi", "plan", _DDP),
    "ddp_timeout": Case(60, "plan", _DDP),
    "fsdp": Case("full_shard", "plan", dict(devices=2, accelerator="cpu")),
    "fsdp_config": Case({"reshard_after_forward": False}, "plan", dict(fsdp="full_shard", devices=2,
                                                                       accelerator="cpu")),
    "deepspeed": Case({"zero_optimization": {"stage": 2}}, "plan"),  # refused on CPU with the FSDP fix
    "skip_memory_metrics": Case(False, "evaluate"),
    "resume_from_checkpoint": Case("<out>/first/checkpoint-2", "resume", dict(max_steps=4)),
}

# Values refused here as transformers refuses them on this CPU-only machine (the refusal is the action).
REFUSED = {"fp16", "tf32", "deepspeed"}

# Fields transformers.Trainer does not read either: HF's help text says so (checked below).
SCRIPT_ONLY: dict[str, str] = {
    "do_train": "Not directly used by Trainer",
    "do_eval": "Not directly used by Trainer",
    "do_predict": "Not directly used by Trainer",
    "local_rank": "we need this for the parser",
}

# Acting fields whose effect this walk cannot build in seconds; each names the test that checks it.
DEDICATED: dict[str, str] = {
    "dataloader_pin_memory": "tests/test_gpu.py::test_pin_memory_follows_dataloader_pin_memory",  # needs a GPU
    "restore_callback_states_from_checkpoint":
        "tests/test_trainer_callback_restore.py::test_patience_counter_is_restored_only_when_asked",
    "predict_with_generate": "tests/test_seq2seq_trainer.py::test_without_predict_with_generate_predictions_are_logits",
    "generation_max_length": "tests/test_seq2seq_trainer.py::test_evaluate_generates_as_transformers",
    "generation_num_beams": "tests/test_seq2seq_trainer.py::test_evaluate_generates_as_transformers",
    "generation_config": "tests/test_seq2seq_trainer.py::test_generation_config_from_a_folder_sets_the_model_generation",
}

# Acting fields with no observable on this CPU-only machine and no GPU test yet; to be moved when one exists.
PENDING: dict[str, str] = {
    # evaluation-memory work: predictions on an accelerator move to the host every N batches (on the CPU they
    # are on the host already); needs a GPU test comparing device memory
    "eval_accumulation_steps": "acts on accelerator tensors only; no GPU test yet",
}

# Values for the warned fields (anything away from the default).
WARN_VALUES: dict[str, Any] = {
    "average_tokens_across_devices": False,
    "use_liger_kernel": True,
    "liger_kernel_config": {"rope": True},
    "auto_find_batch_size": True,
    "project": "walk",
    "trackio_space_id": "me/space",
    "trackio_bucket_id": "me/bucket",
    "trackio_static_space_id": "me/static",
    "eval_use_gather_object": True,
    "save_on_each_node": True,
    "enable_jit_checkpoint": True,
    "push_to_hub": True,
    "hub_token": "hf_x",
    "hub_private_repo": True,
    "hub_model_id": "me/model",
    "hub_strategy": "end",
    "hub_always_push": True,
    "hub_revision": "dev",
    "accelerator_config": {"split_batches": True},
    "parallelism_config": "parallelism",
    "dataloader_in_order": False,
    "debug": "underflow_overflow",
    "sortish_sampler": True,
}


def _all_fields() -> list[str]:
    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    names |= {f.name for f in dataclasses.fields(transformers.Seq2SeqTrainingArguments)}
    return sorted(names)


def test_every_field_is_classified() -> None:
    tables = {"ACTS": set(ACTS), "NO_EFFECT": set(NO_EFFECT) | {"sortish_sampler"}, "SCRIPT_ONLY": set(SCRIPT_ONLY),
              "DEDICATED": set(DEDICATED), "PENDING": set(PENDING)}
    unclassified = [n for n in _all_fields() if not any(n in t for t in tables.values())]
    assert not unclassified, (
        f"transformers.TrainingArguments fields neither acting nor warning here: {unclassified}; make each act "
        "(and add it to ACTS with an observer) or warn (hf_lightning.args.NO_EFFECT with the reason)"
    )
    twice = {n: [k for k, t in tables.items() if n in t] for n in _all_fields()}
    assert {n: k for n, k in twice.items() if len(k) > 1} == {}
    stale = sorted(set().union(*tables.values()) - set(_all_fields()))
    assert not stale, f"listed but not a transformers field: {stale}"


@pytest.mark.parametrize("name", sorted(SCRIPT_ONLY))
def test_script_only_fields_are_unused_by_transformers_too(name: str) -> None:
    help_text = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(transformers.TrainingArguments)}
    assert SCRIPT_ONLY[name] in help_text[name]


@pytest.mark.parametrize("name", sorted(DEDICATED))
def test_dedicated_tests_exist(name: str) -> None:
    path, test = DEDICATED[name].split("::")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert callable(getattr(module, test, None)), f"{DEDICATED[name]} (the test for {name}) is missing"


@pytest.mark.parametrize("name", sorted(set(NO_EFFECT) | {"sortish_sampler"}))
def test_no_effect_fields_warn_once_with_a_reason(name: str, tmp_path: Path) -> None:
    value = WARN_VALUES[name]
    if name == "parallelism_config":
        from accelerate.parallelism_config import ParallelismConfig

        value = ParallelismConfig()
    cls = hf_lightning.Seq2SeqTrainingArguments
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            try:
                cls(output_dir=str(tmp_path), **{name: value})
            except Exception as exc:  # transformers' own check of the value may refuse it after the warning
                assert name in ("use_liger_kernel", "liger_kernel_config", "debug"), exc
    mine = [w for w in caught if f".{name} has no effect" in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    reason = str(mine[0].message).split("has no effect", 1)[1].strip(" :()")
    assert len(reason) > 10, f"{name} warns without saying why"


# ------------------------------------------------------------------ building and observing
@pytest.fixture(scope="module")
def walk_data(cls_dataset):
    train = cls_dataset.remove_columns("text").add_column("rank", [(i * 7) % 40 for i in range(len(cls_dataset))])
    return train, cls_dataset.select(range(8))


def _build(tmp: Path, data: Any, tokenizer: Any, kwargs: dict[str, Any], **trainer_kwargs: Any) -> Any:
    train, evaluation = data
    args = hf_lightning.TrainingArguments(**{**BASE, "output_dir": str(tmp), **kwargs})
    return hf_lightning.Trainer(model=tiny_bert_classifier(len(tokenizer)), args=args, train_dataset=train,
                                eval_dataset=evaluation, processing_class=tokenizer, **trainer_kwargs)


def _plain(value: Any, depth: int = 0) -> Any:
    """A comparable, address-free description of ``value``."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else str(value)
    if isinstance(value, timedelta):
        return str(value)
    if value is None or isinstance(value, (int, str, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, depth) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, torch.Tensor):
        return [list(value.shape), str(value.dtype)]
    if depth < 2 and hasattr(value, "__dict__"):
        return [type(value).__name__, {k: _plain(v, depth + 1) for k, v in sorted(vars(value).items())
                                       if not k.startswith("__") and not callable(v)}]
    return type(value).__name__


def _loader(loader: Any) -> dict[str, Any]:
    # Iterated in this process only: worker processes (a "spawn" one costs ~10 s) show in the attributes.
    batches = [b for _, b in zip(range(3), loader)] if loader.num_workers == 0 else []
    first = [batch["input_ids"][:, :2].tolist() for batch in batches]
    return {"batch_size": loader.batch_size, "drop_last": loader.drop_last, "num_workers": loader.num_workers,
            "persistent_workers": loader.persistent_workers, "prefetch_factor": loader.prefetch_factor,
            "pin_memory": loader.pin_memory, "context": _plain(loader.multiprocessing_context),
            "keys": sorted(batches[0]) if batches else None, "first_batches": first, "batches": len(loader)}


def observe_loader(trainer: Any) -> Any:
    return _loader(trainer.get_train_dataloader())


def observe_eval_loader(trainer: Any) -> Any:
    return _loader(trainer.get_eval_dataloader())


def observe_optimizer(trainer: Any) -> Any:
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    opt, sched = trainer.optimizer, trainer.lr_scheduler
    groups = [{k: _plain(v) for k, v in g.items() if k != "params"} | {"n": len(g["params"])} for g in opt.param_groups]
    lrs = []
    for _ in range(10):
        lrs.append(round(opt.param_groups[0]["lr"], 8))
        opt.step()
        sched.step()
    return {"class": type(opt).__name__, "groups": groups, "lrs": lrs}


def observe_plan(trainer: Any) -> Any:
    from hf_lightning.plan import lightning_trainer_kwargs, total_optimizer_steps

    steps = total_optimizer_steps(trainer.args, len(trainer.get_train_dataloader()))
    plan = lightning_trainer_kwargs(trainer.args, trainer.model, steps)
    return {k: _plain(v) for k, v in plan.items()}


def observe_module(trainer: Any) -> Any:
    """What ``train()`` builds before ``fit``: the module's compile settings and the model's checkpointing."""
    from hf_lightning.facade.fit import build_module

    module = build_module(trainer)
    checkpointing = sorted({repr(getattr(m, "_gradient_checkpointing_func", None).keywords)
                            for m in trainer.model.modules()
                            if getattr(m, "_gradient_checkpointing_func", None) is not None})
    return {"compile": _plain(module.torch_compile), "checkpointing": checkpointing,
            "is_checkpointing": trainer.model.is_gradient_checkpointing}


def observe_model(trainer: Any) -> Any:
    return _plain(trainer.model.config.to_dict())


def observe_callbacks(trainer: Any) -> Any:
    return [type(cb).__name__ for cb in trainer.callback_handler.callbacks]


def observe_construct(trainer: Any) -> Any:
    return "built"


def observe_log_level(trainer: Any) -> Any:
    return [logging.getLogger("hf_lightning").level, transformers.logging.get_verbosity()]


def _log_level_as(trainer: Any, rank: int, local_rank: int) -> Any:
    """The levels ``log_level``/``log_level_replica`` give a process that torchrun numbered so."""
    from hf_lightning.log import set_verbosity_from_args

    old = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK")}
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank))
    try:
        set_verbosity_from_args(trainer.args)
        return observe_log_level(trainer)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def observe_replica_log_level(trainer: Any) -> Any:
    return _log_level_as(trainer, rank=1, local_rank=1)  # a second process on the first machine


def observe_node_log_level(trainer: Any) -> Any:
    return _log_level_as(trainer, rank=2, local_rank=0)  # the first process on the second machine


def _metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in metrics.items()
            if not any(clock in k for clock in ("runtime", "per_second", "preparation_time"))}


class _Metrics:
    """compute_metrics that records what it was given (also as batch_eval_metrics' per-batch form)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self, p: Any, compute_result: bool = True) -> dict[str, float]:
        self.seen.append([p.inputs is not None, p.label_ids is not None, compute_result])
        return {"calls": float(len(self.seen))}


def observe_evaluate(trainer: Any) -> Any:
    metrics = _Metrics()
    trainer.compute_metrics = metrics
    out = trainer.evaluate()
    pred = trainer.predict(trainer.eval_dataset)
    return {"metrics": _metrics(out), "seen": metrics.seen, "dtype": str(next(trainer.model.parameters()).dtype),
            "predictions": _plain(pred.predictions), "labels": _plain(pred.label_ids)}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "lock" not in p.name)


def observe_run(trainer: Any) -> Any:
    out = trainer.train()
    state = trainer.state
    weights = sum(float(p.double().sum()) for p in trainer.model.parameters())
    return {"log": [_metrics(e) for e in state.log_history], "files": _tree(Path(trainer.args.output_dir)),
            "metrics": sorted(out.metrics), "best": [_plain(state.best_metric), state.best_model_checkpoint and
                                                     Path(state.best_model_checkpoint).name],
            "tokens": state.num_input_tokens_seen, "weights": round(weights, 5)}


def observe_nan_run(trainer: Any) -> Any:
    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        value = torch.nn.functional.cross_entropy(outputs.logits, labels)
        return value * float("nan") if trainer._walk_calls.append(1) or len(trainer._walk_calls) == 2 else value

    trainer._walk_calls = []
    trainer.compute_loss_func = loss
    trainer.train()
    return [_metrics(e) for e in trainer.state.log_history if "loss" in e]


def observe_resume(trainer: Any) -> Any:
    """A 4-step run resumed from ``<out>/first/checkpoint-2`` when the args say so (its checkpoint at
    step 2 comes from a 4-step run made here first): where its log starts, what it ends with."""
    first = dataclasses.replace(trainer.args, save_strategy="steps", save_steps=2, ignore_data_skip=False,
                                resume_from_checkpoint=None, output_dir=str(Path(trainer.args.output_dir) / "first"))
    ref = hf_lightning.Trainer(model=tiny_bert_classifier(trainer.model.config.vocab_size), args=first,
                               train_dataset=trainer.train_dataset, processing_class=trainer.processing_class)
    ref.train()
    out = trainer.train()
    weights = sum(float(p.double().sum()) for p in trainer.model.parameters())
    return {"train_loss": round(out.training_loss, 6), "steps": out.global_step,
            "weights": round(weights, 6)}


OBSERVERS: dict[str, Callable[[Any], Any]] = {
    name.removeprefix("observe_"): fn for name, fn in globals().items() if name.startswith("observe_")
}


def _strip(value: Any, root: str) -> Any:
    if isinstance(value, str):
        return value.replace(root, "<out>")
    if isinstance(value, list):
        return [_strip(v, root) for v in value]
    if isinstance(value, dict):
        return {k: _strip(v, root) for k, v in value.items()}
    return value


def _observe(case: Case, kwargs: dict[str, Any], tmp: Path, data: Any, tokenizer: Any) -> Any:
    """The observer's description of a trainer built with ``kwargs`` (paths under ``tmp`` read ``<out>``);
    a refusal is described by its type."""
    kwargs = {k: v.replace("<out>", str(tmp)) if isinstance(v, str) else v for k, v in kwargs.items()}
    return _strip(_observe_in(case, kwargs, tmp, data, tokenizer), str(tmp))


def _observe_in(case: Case, kwargs: dict[str, Any], tmp: Path, data: Any, tokenizer: Any) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = _build(tmp, data, tokenizer, kwargs)
            return OBSERVERS[case.observer](trainer)
    except Exception as exc:  # noqa: BLE001 - a refusal is an observable outcome
        return ["raised", type(exc).__name__]
    finally:
        logging.getLogger("hf_lightning").setLevel(logging.NOTSET)
        transformers.logging.set_verbosity_warning()


@pytest.mark.parametrize("name", sorted(ACTS))
def test_field_acts(name: str, tmp_path: Path, walk_data, demo_tokenizer) -> None:
    case = ACTS[name]
    assert case.observer in OBSERVERS
    default = _observe(case, dict(case.extra), tmp_path / "default", walk_data, demo_tokenizer)
    changed = _observe(case, {**case.extra, name: case.value}, tmp_path / "changed", walk_data, demo_tokenizer)
    refused = isinstance(changed, list) and changed[:1] == ["raised"]
    assert refused == (name in REFUSED), f"TrainingArguments.{name}={case.value!r}: {changed}"
    if case.part is not None:
        default, changed = default[case.part], changed[case.part]
    where = f"{case.observer}" + (f" ({case.part})" if case.part else "")
    assert changed != default, f"TrainingArguments.{name}={case.value!r} changes nothing the {where} shows"


@pytest.mark.parametrize("observer", sorted({c.observer for c in ACTS.values()} - {"construct"}))
def test_observers_are_deterministic(observer: str, tmp_path: Path, walk_data, demo_tokenizer) -> None:
    """The control: the same arguments twice give the same description (so a difference is the field's)."""
    case = Case(None, observer)
    first = _observe(case, {}, tmp_path / "a", walk_data, demo_tokenizer)
    second = _observe(case, {}, tmp_path / "b", walk_data, demo_tokenizer)
    assert first == second
    assert first[0] != "raised" if isinstance(first, list) and first else True, first


# ------------------------------------------------------------------ the Trainer's own optimizer arguments
def test_optimizers_and_optimizer_cls_and_kwargs_act(tmp_path: Path, walk_data, demo_tokenizer) -> None:
    """``Trainer(optimizers=(opt, sched))`` trains with those objects; ``optimizer_cls_and_kwargs`` builds its class."""
    model = tiny_bert_classifier(len(demo_tokenizer))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    args = hf_lightning.TrainingArguments(**{**BASE, "output_dir": str(tmp_path / "given")})
    trainer = hf_lightning.Trainer(model=model, args=args, train_dataset=walk_data[0], optimizers=(opt, sched),
                                   processing_class=demo_tokenizer)
    trainer.train()
    assert trainer.optimizer is opt and trainer.lr_scheduler is sched
    assert [e["learning_rate"] for e in trainer.state.log_history if "loss" in e] == [0.1, 0.05, 0.025]

    args = hf_lightning.TrainingArguments(**{**BASE, "output_dir": str(tmp_path / "cls")})
    trainer = hf_lightning.Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=args,
                                   train_dataset=walk_data[0], processing_class=demo_tokenizer,
                                   optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.2, "momentum": 0.5}))
    trainer.train()
    assert type(trainer.optimizer) is torch.optim.SGD
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.5
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 0.2
