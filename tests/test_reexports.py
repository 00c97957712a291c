"""The names an HF script imports beside ``Trainer`` come through ``hf_lightning``, as transformers' objects."""

from __future__ import annotations

import subprocess
import sys

import pytest
import transformers

import hf_lightning
from tests.conftest import REPO


@pytest.mark.parametrize("name", hf_lightning.TRANSFORMERS_REEXPORTS)
def test_reexport_is_transformers_own_object(name: str) -> None:
    assert getattr(hf_lightning, name) is getattr(transformers, name)
    assert name in hf_lightning.__all__


def test_a_script_import_line_works() -> None:
    namespace: dict = {}
    exec(
        "from hf_lightning import (Trainer, TrainingArguments, HfArgumentParser, TrainerCallback, "
        "EarlyStoppingCallback, EvalPrediction, IntervalStrategy, set_seed, DataCollatorWithPadding, "
        "default_data_collator, get_scheduler)",
        namespace,
    )
    assert namespace["EarlyStoppingCallback"] is transformers.EarlyStoppingCallback


def test_importing_the_package_stays_lazy() -> None:
    code = "import sys, hf_lightning; print(sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.stdout.strip() == "[]"


def test_readme_lists_every_reexport() -> None:
    text = (REPO / "README.md").read_text()
    missing = [name for name in hf_lightning.TRANSFORMERS_REEXPORTS if f"`{name}`" not in text]
    assert not missing, f"README does not list {missing}"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Trainerr'"):
        hf_lightning.Trainerr  # noqa: B018


def test_model_card_when_transformers_trainer_is_replaced(tmp_path, monkeypatch) -> None:
    """Some suites run transformers' own scripts with ``transformers.Trainer = hf_lightning.Trainer``."""
    from tests.conftest import tiny_bert_classifier

    monkeypatch.setattr(transformers, "Trainer", hf_lightning.Trainer)
    monkeypatch.setattr(transformers.trainer, "Trainer", hf_lightning.Trainer)
    args = hf_lightning.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = transformers.Trainer(model=tiny_bert_classifier(100), args=args)
    trainer.create_model_card(finetuned_from="tiny-bert", tasks="text-classification")
    assert "tiny-bert" in (tmp_path / "README.md").read_text()
