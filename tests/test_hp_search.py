"""``Trainer.hyperparameter_search`` on real Optuna studies and a real Ray (local and a ``ray start`` cluster)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from transformers import TrainerCallback

from hf_lightning import ConfigError, Trainer, TrainingArguments

LRS = (3e-3, 2.0)  # a sensible learning rate and a hopeless one


def _dataset(n: int = 48, extra_bytes: int = 0):
    """A learnable tiny task: label = first token above the vocabulary's middle."""
    import datasets
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(5, 60, (n, 8), generator=gen)
    data = {"input_ids": x.tolist(), "attention_mask": [[1] * 8] * n, "labels": (x[:, 0] > 32).long().tolist()}
    if extra_bytes:  # a column the model never reads: makes the dataset big without slowing training
        data["blob"] = ["x" * (extra_bytes // n)] * n
    return datasets.Dataset.from_dict(data)


def _model_init(trial=None):
    from tests.conftest import tiny_bert_classifier

    return tiny_bert_classifier(vocab_size=64)


def _trainer(tmp_path: Path, dataset=None, **overrides) -> Trainer:
    values = dict(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=16, eval_strategy="steps",
                  eval_steps=3, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                  learning_rate=LRS[0])
    values.update(overrides)
    data = dataset if dataset is not None else _dataset()
    return Trainer(model_init=_model_init, args=TrainingArguments(**values), train_dataset=data, eval_dataset=data)


def _lr_space(trial):
    return {"learning_rate": trial.suggest_categorical("learning_rate", list(LRS))}


def _grid_sampler():
    import optuna

    return optuna.samplers.GridSampler({"learning_rate": list(LRS)}, seed=0)


def _plain_eval_loss(tmp_path: Path, lr: float) -> float:
    trainer = _trainer(tmp_path / f"plain-{lr}", learning_rate=lr)
    trainer.train()
    return trainer.evaluate()["eval_loss"]


@pytest.fixture(scope="module")
def plain_losses(tmp_path_factory: pytest.TempPathFactory) -> dict[float, float]:
    """Each learning rate trained alone with a plain ``train()``: what a search must reproduce and rank."""
    root = tmp_path_factory.mktemp("plain")
    return {lr: _plain_eval_loss(root, lr) for lr in LRS}


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_optuna_picks_the_best_trial_both_ways(tmp_path: Path, plain_losses, direction: str) -> None:
    best = _trainer(tmp_path).hyperparameter_search(
        hp_space=_lr_space, n_trials=2, direction=direction, backend="optuna", sampler=_grid_sampler())
    pick = min if direction == "minimize" else max
    expected_lr = pick(plain_losses, key=plain_losses.get)
    assert best.hyperparameters == {"learning_rate": expected_lr}
    # a trial reproduces a plain train() of its parameters (same seed, same data order)
    assert best.objective == pytest.approx(plain_losses[expected_lr], abs=1e-6)


def test_optuna_multi_objective_returns_the_pareto_front(tmp_path: Path, plain_losses) -> None:
    from transformers.trainer_utils import BestRun

    best = _trainer(tmp_path).hyperparameter_search(
        hp_space=_lr_space, n_trials=2, direction=["minimize", "maximize"], backend="optuna",
        compute_objective=lambda m: (m["eval_loss"], -m["eval_loss"]), sampler=_grid_sampler())
    assert isinstance(best, list) and all(isinstance(b, BestRun) for b in best)
    good = min(plain_losses, key=plain_losses.get)
    assert [b.hyperparameters for b in best] == [{"learning_rate": good}]  # it dominates the hopeless rate


def test_optuna_pruning_stops_a_trial(tmp_path: Path) -> None:
    import optuna

    class PruneSecondTrial(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return trial.number == 1

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    best = _trainer(tmp_path, max_steps=9).hyperparameter_search(
        hp_space=_lr_space, n_trials=2, backend="optuna", sampler=_grid_sampler(), pruner=PruneSecondTrial(),
        storage=storage, study_name="prune")
    trials = optuna.load_study(study_name="prune", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert sorted(trials[0].intermediate_values) == [3, 6, 9]
    assert sorted(trials[1].intermediate_values) == [3], "pruned at its first evaluation"
    assert best.run_id == "0"


def test_trials_write_to_run_folders_beside_existing_checkpoints(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, save_strategy="steps", save_steps=3)
    trainer.hyperparameter_search(hp_space=_lr_space, n_trials=2, backend="optuna", sampler=_grid_sampler())
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["run-0", "run-1"]
    assert (out / "run-1" / "checkpoint-6").is_dir()
    assert trainer.args.output_dir == str(out), "output_dir is restored after the search"
    with warnings.catch_warnings(record=True) as caught:  # a second search trains beside the first one's checkpoints
        warnings.simplefilter("always")
        trainer.hyperparameter_search(hp_space=_lr_space, n_trials=1, backend="optuna", sampler=_grid_sampler())
    assert any("checkpoint-3, checkpoint-6" in str(w.message) for w in caught)


def test_bad_search_input_is_one_line(tmp_path: Path) -> None:
    data = _dataset()
    no_init = Trainer(model=_model_init(), args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
                      train_dataset=data)
    cases = [
        (lambda: no_init.hyperparameter_search(n_trials=1, backend="optuna"), "model_init"),
        (lambda: _trainer(tmp_path).hyperparameter_search(backend="wandb"), "optuna, ray"),
        (lambda: _trainer(tmp_path).hyperparameter_search(backend="sigopt"), "optuna, ray"),
        (lambda: _trainer(tmp_path).hyperparameter_search(direction="down", backend="optuna"), "direction"),
        (lambda: _trainer(tmp_path).hyperparameter_search(
            hp_space=lambda t: {"lerning_rate": t.suggest_float("lerning_rate", 1e-4, 1e-3)}, n_trials=1,
            backend="optuna"), "hp_space.lerning_rate"),
    ]
    for call, field in cases:
        with pytest.raises(ConfigError) as info:
            call()
        assert field in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("hidden", "extra"), [(("ray",), "ray"), (("optuna",), "optuna"), (("ray", "optuna"), "optuna")])
def test_a_missing_backend_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch, hidden, extra) -> None:
    """Without the extra installed (its package hidden from the import system), the error names what to install."""
    import sys

    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)  # find_spec() and import then see no such package
    backend = None if len(hidden) == 2 else hidden[0]
    with pytest.raises(ConfigError) as info:
        _trainer(tmp_path).hyperparameter_search(n_trials=1, backend=backend)
    message = str(info.value)
    assert message.startswith("backend: ") and f'"hf-lightning[{extra}]"' in message and "\n" not in message


def test_transformers_style_script_runs_with_the_import_changed(tmp_path: Path) -> None:
    """The hyperparameter_search example from transformers' docs, with only ``from hf_lightning import``."""
    script = f'''
from hf_lightning import Trainer, TrainingArguments  # instead of: from transformers import ...
from tests.test_hp_search import _dataset, _model_init

train_dataset = eval_dataset = _dataset()

def optuna_hp_space(trial):
    return {{
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [8, 16]),
    }}

def compute_objective(metrics):
    return metrics["eval_loss"]

training_args = TrainingArguments(output_dir={str(tmp_path)!r}, eval_strategy="epoch", num_train_epochs=1,
                                  report_to="none", disable_tqdm=True)
trainer = Trainer(model=None, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                  model_init=_model_init)
best_trial = trainer.hyperparameter_search(direction="minimize", backend="optuna", hp_space=optuna_hp_space,
                                           n_trials=2, compute_objective=compute_objective)
print(best_trial)
'''
    namespace: dict = {}
    exec(compile(script, "hp_script.py", "exec"), namespace)
    best = namespace["best_trial"]
    assert math.isfinite(best.objective) and set(best.hyperparameters) == {"learning_rate", "per_device_train_batch_size"}


# ---------------------------------------------------------------- Ray Tune
@pytest.mark.slow
def test_ray_picks_the_best_trial_and_asha_stops_the_hopeless_one(ray_local, tmp_path: Path, plain_losses) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainer = _trainer(tmp_path, eval_steps=2)  # three evaluations: ASHA's rungs
    best = trainer.hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.grid_search(list(LRS))}, n_trials=1, backend="ray",
        scheduler=ASHAScheduler(metric="objective", mode="min", max_t=3, grace_period=1, reduction_factor=2),
        max_concurrent_trials=1, storage_path=str(tmp_path / "ray"), resources_per_trial={"cpu": 1})
    assert best.hyperparameters == {"learning_rate": LRS[0]}
    iterations = {t.config["learning_rate"]: t.last_result["training_iteration"] for t in best.run_summary.trials}
    assert iterations[LRS[0]] == 3 and iterations[LRS[1]] == 1, iterations
    assert best.objective == pytest.approx(plain_losses[LRS[0]], abs=1e-6), "a trial reproduces a plain train()"


@pytest.mark.slow
def test_ray_maximize_picks_the_trial_with_the_largest_objective(ray_local, tmp_path: Path, plain_losses) -> None:
    from ray import tune

    best = _trainer(tmp_path).hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.grid_search(list(LRS))}, n_trials=1, backend="ray",
        direction="maximize", storage_path=str(tmp_path / "ray"), resources_per_trial={"cpu": 1})
    worst = max(plain_losses, key=plain_losses.get)
    assert best.hyperparameters == {"learning_rate": worst}
    assert best.objective == pytest.approx(plain_losses[worst], abs=1e-6)


@pytest.mark.slow
def test_ray_retries_a_failed_trial_from_its_checkpoint(ray_local, tmp_path: Path) -> None:
    """A trial that raises once is restarted by Ray from the checkpoint it reported, and reaches the same result."""
    from transformers import TrainerCallback

    marker = tmp_path / "failed-once"

    class FailOnce(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4 and not marker.exists():
                marker.write_text("1")
                raise RuntimeError("simulated node failure")

    trainer = _trainer(tmp_path, save_strategy="steps", save_steps=3)
    trainer.add_callback(FailOnce())
    best = trainer.hyperparameter_search(
        hp_space=lambda _: {"learning_rate": LRS[0]}, n_trials=1, backend="ray", max_failures=1,
        storage_path=str(tmp_path / "ray"), resources_per_trial={"cpu": 1})
    assert marker.exists()
    trial = best.run_summary.trials[0]
    assert trial.status == "TERMINATED" and trial.num_failures == 1
    plain = _trainer(tmp_path / "plain")
    plain.train()
    assert best.objective == pytest.approx(plain.evaluate()["eval_loss"], abs=1e-6), "resumed exactly"


@pytest.mark.slow
def test_ray_ships_a_large_dataset_through_the_object_store(ray_local, tmp_path: Path, caplog) -> None:
    from ray import tune

    data = _dataset(n=64, extra_bytes=40 * 2**20)  # 40 MiB: above Ray's warning size for a pickled trainable
    trainer = _trainer(tmp_path, dataset=data, max_steps=3)
    best = trainer.hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.choice([LRS[0]])}, n_trials=2, backend="ray",
        storage_path=str(tmp_path / "ray"), resources_per_trial={"cpu": 1})
    assert math.isfinite(best.objective)
    assert not [r for r in caplog.records if "is very large" in r.getMessage()]


@pytest.mark.slow
def test_ray_search_on_a_started_cluster(ray_cluster, tmp_path: Path) -> None:
    import ray
    from ray import tune

    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    best = _trainer(tmp_path).hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.grid_search(list(LRS))}, n_trials=1, backend="ray",
        storage_path=str(tmp_path / "ray"), resources_per_trial={"cpu": 1})
    assert best.hyperparameters == {"learning_rate": LRS[0]}


class RecordLr(TrainerCallback):
    """Appends, per trial run folder, where each train() began, the optimizer's learning rate at each step
    and the learning rate each step logged."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, args, **row) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"run": Path(args.output_dir).name, **row}) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self._write(args, event="begin", step=state.global_step, config_lr=args.learning_rate)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self._write(args, event="step", step=state.global_step + 1, lr=optimizer.param_groups[0]["lr"])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "learning_rate" in logs and "loss" in logs:
            self._write(args, event="log", step=state.global_step, lr=logs["learning_rate"])


def _halve_lr(config: dict) -> dict:
    """PBT's explore step, deterministic: the clone's learning rate is half its donor's."""
    return {**config, "learning_rate": config["learning_rate"] / 2}


@pytest.mark.slow
def test_ray_pbt_clone_restores_a_better_trial_and_trains_with_its_own_learning_rate(ray_local, tmp_path: Path) -> None:
    """PBT through hyperparameter_search: the hopeless trial restores the good one's checkpoint and trains on
    with its own explored learning rate (HF's ``_hp_search_setup`` sets it), not the donor's from the restored
    optimizer. Read from Ray's PBT log and the learning rate each step logged, not from timing."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    log = tmp_path / "lr.jsonl"
    trainer = _trainer(tmp_path, max_steps=6, eval_steps=2, save_strategy="steps", save_steps=2, logging_steps=1,
                       lr_scheduler_type="constant")  # constant: every step's lr is the trial's own value
    trainer.add_callback(RecordLr(str(log)))
    pbt = PopulationBasedTraining(time_attr="training_iteration", metric="objective", mode="min",
                                  perturbation_interval=2, synch=True, custom_explore_fn=_halve_lr)
    best = trainer.hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.grid_search(list(LRS))}, n_trials=1, backend="ray", scheduler=pbt,
        max_concurrent_trials=2, storage_path=str(tmp_path / "ray"), name="pbt", resources_per_trial={"cpu": 1})
    # Ray's PBT log, one line per exploit: [trial tag, donor tag, trial's iteration, donor's iteration,
    # donor config, explored config]; a tag starts with the trial's index ("1_learning_rate=2.0000")
    exploits = [json.loads(line) for line in (tmp_path / "ray" / "pbt" / "pbt_global.txt").read_text().splitlines()]
    assert exploits, "no trial exploited another"
    runs = {t.experiment_tag.split("_")[0]: f"run-{t.trial_id}" for t in best.run_summary.trials}
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    for tag, donor_tag, _, _, donor_config, explored in exploits:
        run, donor, lr = runs[tag.split("_")[0]], runs[donor_tag.split("_")[0]], explored["learning_rate"]
        assert lr == pytest.approx(donor_config["learning_rate"] / 2)
        begins = [i for i, r in enumerate(rows) if r["run"] == run and r["event"] == "begin"
                  and r["step"] > 0 and r["config_lr"] == pytest.approx(lr)]
        assert begins, f"{run} never began from a restored checkpoint with lr {lr}: {rows}"
        restored_step = rows[begins[0]]["step"]
        donor_steps = {r["step"] for r in rows[:begins[0]] if r["run"] == donor and r["event"] == "log"}
        assert restored_step in donor_steps and restored_step % 2 == 0, "restored the donor's evaluation checkpoint"
        after = [r for r in rows[begins[0] + 1:] if r["run"] == run]
        after = after[:next((i for i, r in enumerate(after) if r["step"] <= restored_step), len(after))]
        assert {r["event"] for r in after} == {"step", "log"}, f"{run} did not train on after step {restored_step}"
        # the clone trains (optimizer) and logs (scheduler) its explored learning rate, not the donor's that the
        # restored optimizer and scheduler states held
        assert [r["lr"] for r in after] == pytest.approx([lr] * len(after), rel=1e-9), after
    assert all(t.status == "TERMINATED" for t in best.run_summary.trials)
