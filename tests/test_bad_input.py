"""Bad input: one line naming the field and the fix, before expensive work, exit code 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import transformers

from hf_lightning import Trainer, TrainingArguments
from hf_lightning.errors import ConfigError
from tests.conftest import REPO, tiny_bert_classifier

QUICK = ["--trainer.max_steps=1", "--data.max_train_samples=8", "--data.max_eval_samples=8"]


def _cli(args: list[str], cwd: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "hf_lightning", "fit", "--config", str(REPO / "configs/quickstart.yaml"), *args]
    run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    return run.returncode, run.stderr


def _cli_in_process(args: list[str], cwd: Path, capsys, monkeypatch) -> tuple[int, str]:
    """The same entry point as the console script, without paying Python start-up per case."""
    from hf_lightning.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(REPO / "configs/quickstart.yaml"), *args])
    return int(info.value.code or 0), capsys.readouterr().err


def _files(tmp: Path) -> dict[str, str]:
    (tmp / "data.xlsx").write_text("not a table")
    (tmp / "empty.csv").write_text("text,label\n")
    (tmp / "garbage.ckpt").write_bytes(b"\x00not a checkpoint")
    three = tmp / "three_labels"
    model = tiny_bert_classifier(300, num_labels=3)
    model.save_pretrained(three)
    return {"xlsx": str(tmp / "data.xlsx"), "empty": str(tmp / "empty.csv"), "garbage": str(tmp / "garbage.ckpt"),
            "three": str(three)}


CLI_CASES = {
    "unknown config key": (["--model.learning_rat=0.1"], "learning_rat"),
    "wrong type": (["--model.learning_rate=fast"], "learning_rate"),
    "abbreviated key (no silent prefix match)": (["--trainer.max_epoch=1"], "max_epoch"),
    "missing text column": (["--data.text_column=body"], "data.text_column"),
    "missing label column": (["--data.label_column=sentiment"], "data.label_column"),
    "label outside num_labels": (["--data.label_names=[negative]"], "outside"),
    "model path does not exist": (["--model.model=./no_such_model"], "does not exist"),
    "no model given": (["--model.model=null"], "model: no model given"),
    "hub model while offline": (["--model.model=bert-base-uncased"], "offline"),
    "typo in the model config": (["--model.model.hiden_size=8"], "hiden_size"),
    "tokenizer missing": (["--data.tokenizer=./no_such_tokenizer"], "data.tokenizer"),
    "unknown optimizer": (["--model.optim=adamw_torh"], "optim"),
    "unknown scheduler": (["--model.lr_scheduler_type=cosin"], "lr_scheduler_type"),
    "unsupported file format": (["--data.dataset=csv", "--data.data_files={train: {xlsx}}"], "unsupported file format"),
    "empty dataset": (["--data.dataset=csv", "--data.data_files={train: {empty}}"], "no rows"),
    "resume path does not exist": (["--ckpt_path=./missing.ckpt"], "ckpt_path"),
    "corrupt resume file": (["--ckpt_path={garbage}"], "corrupt"),
    "num_labels mismatch with the model": (["--model.model={three}"], "num_labels"),
    "linked field set in the config": (["--model.num_labels=3"], "model.num_labels"),
    "negative batch size": (["--data.batch_size=0"], "batch_size"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _files(tmp_path_factory.mktemp("bad"))


def _check(code: int, stderr: str, expected: str, tmp_path: Path) -> None:
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert code == 2, stderr[-3000:]
    assert len(errors) == 1 and expected in errors[0] and "Fix:" in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert not list(tmp_path.rglob("*.ckpt")), "no output is written for bad input"


def _fill(args: list[str], bad_files: dict[str, str]) -> list[str]:
    args = [a.format(**bad_files) if "{" in a and "train:" not in a else a for a in args]
    return [a.replace("{xlsx}", bad_files["xlsx"]).replace("{empty}", bad_files["empty"]) for a in args]


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input(case: str, bad_files: dict[str, str], tmp_path: Path, demo_assets, capsys, monkeypatch) -> None:
    args, expected = CLI_CASES[case]
    code, stderr = _cli_in_process(_fill(args, bad_files) + QUICK, tmp_path, capsys, monkeypatch)
    _check(code, stderr, expected, tmp_path)


@pytest.mark.parametrize("case", ["unknown config key", "missing label column", "corrupt resume file"])
def test_console_script_bad_input(case: str, bad_files: dict[str, str], tmp_path: Path, demo_assets) -> None:
    """A few cases through a real process: exit status 2 and one line on stderr."""
    args, expected = CLI_CASES[case]
    code, stderr = _cli(_fill(args, bad_files) + QUICK, tmp_path)
    _check(code, stderr, expected, tmp_path)


def _trainer(tmp_path: Path, dataset, tokenizer, **kw) -> Trainer:
    args = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, report_to="none",
                use_cpu=True, disable_tqdm=True, save_strategy="no")
    extra = {k: kw.pop(k) for k in list(kw) if k in {"eval_dataset", "compute_metrics"}}
    args.update(kw)
    return Trainer(model=tiny_bert_classifier(len(tokenizer)), args=TrainingArguments(**args), train_dataset=dataset,
                   processing_class=tokenizer, **extra)


def _raises(fn, field: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        fn()
    message = str(info.value)
    assert message.startswith(field) and text in message and "Fix:" in message and "\n" not in message, message


def test_python_api_bad_input(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    tok, ds = demo_tokenizer, cls_dataset
    _raises(lambda: TrainingArguments(output_dir=str(tmp_path), gradient_accumulation_steps=0),
            "gradient_accumulation_steps", ">= 1")
    _raises(lambda: TrainingArguments(output_dir=str(tmp_path), optim="adamw_torh"), "optim", "adamw_torch")
    _raises(lambda: TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="cosin"), "lr_scheduler_type", "cosine")
    _raises(lambda: TrainingArguments(output_dir=str(tmp_path), num_train_epochs=0), "num_train_epochs", "nothing would train")
    bad_json = tmp_path / "ds.json"
    bad_json.write_text('{"zero_optimization": {"stage": 2,}')
    _raises(lambda: TrainingArguments(output_dir=str(tmp_path), deepspeed=str(bad_json)), "deepspeed", "not valid JSON")
    _raises(lambda: _trainer(tmp_path, ds, tok, fp16=True).train(), "fp16", "")
    _raises(lambda: _trainer(tmp_path, ds, tok, eval_strategy="steps").train(), "eval_strategy", "eval_dataset")
    _raises(lambda: _trainer(tmp_path, ds, tok, eval_dataset=ds, eval_strategy="steps", metric_for_best_model="f1").train(),
            "metric_for_best_model", "f1")
    _raises(lambda: _trainer(tmp_path, ds.select([]), tok).train(), "train_dataset", "empty")
    _raises(lambda: _trainer(tmp_path, ds, tok).train(resume_from_checkpoint=str(tmp_path / "nope")),
            "resume_from_checkpoint", "does not exist")
    half = tmp_path / "out" / "checkpoint-5"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    _raises(lambda: _trainer(tmp_path, ds, tok).train(resume_from_checkpoint=str(half)), "resume_from_checkpoint", "")
    _raises(lambda: _trainer(tmp_path, ds, tok).train(resume_from_checkpoint=True), "resume_from_checkpoint",
            "No valid checkpoint found in output directory")


def test_output_dir_holding_another_run(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    first = _trainer(tmp_path, cls_dataset, demo_tokenizer, save_strategy="steps", save_steps=2)
    first.train()
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    from hf_lightning.facade.checkpoints import resolve_resume

    # As transformers.Trainer: a new run trains there from scratch (resuming only when asked), and says so.
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    with pytest.warns(UserWarning, match="already holds checkpoint-2.*from scratch"):
        second = _trainer(tmp_path, cls_dataset, demo_tokenizer)
        second.train()
    assert second._resumed_from is None and second.state.global_step > 0
    assert set(before) <= {p.name for p in (tmp_path / "out").iterdir()}, "nothing lost"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # overwrite_output_dir: the same, without the warning
        resolve_resume(TrainingArguments(output_dir=str(tmp_path / "out"), overwrite_output_dir=True), None)


def test_search_space_with_unknown_distribution() -> None:
    from hf_lightning.tune import parse_search_space

    _raises(lambda: parse_search_space({"learning_rate": {"distribution": "log_uniform", "low": 1e-5, "high": 1e-3}}),
            "search_space.learning_rate", "loguniform")
    _raises(lambda: parse_search_space({"learning_rate": {"distribution": "loguniform", "low": 0, "high": 1e-3}}),
            "search_space.learning_rate", "low > 0")
    assert len(parse_search_space({"seed": {"distribution": "choice", "values": [1, 2]}})) == 1


def test_unknown_task_and_model_type() -> None:
    from hf_lightning.module import HFLightningModule

    _raises(lambda: HFLightningModule(model={"model_type": "bert"}, task="summarisation"), "task", "sequence-classification")
    _raises(lambda: HFLightningModule(model={"model_type": "bret"}), "model", "model_type")
    json.dumps(transformers.__version__)
