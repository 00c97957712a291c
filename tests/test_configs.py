"""Every shipped config does what its comment says, end to end, offline, in a few seconds each.

Each test runs the real YAML file through the CLI in-process and only shrinks it (a tiny model, a
handful of rows, two optimizer steps); then it checks the thing the config exists for: focal loss
is the loss that is optimised, the teacher stays frozen and out of the checkpoint, NEFTune noise is
on during training and gone after, FGM runs a second forward pass, the learned task weights move.
Configs that need the Hub run with a config-dict model and the word-level tokenizer shipped in
``configs/data`` (their Hub form is parsed by ``tests/test_cli.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml

from hf_lightning.callbacks.hf_export import HFExportCallback
from hf_lightning.cli import HFLightningCLI, run_cli
from tests.conftest import REPO, TINY_MODELS

CONFIGS = REPO / "configs"
DATA = CONFIGS / "data"
WORD_TOKENIZER = str(DATA / "word_tokenizer")
# Two optimizer steps on 16 rows, one validation batch: enough to prove the wiring, seconds to run.
QUICK = [
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--data.max_train_samples=16",
    "--data.max_eval_samples=8",
    "--data.batch_size=8",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def tiny(name: str, **extra: Any) -> str:
    """A tiny model config as the JSON string the CLI accepts for ``--model.model``."""
    return json.dumps({**TINY_MODELS[name], **extra})


def fit(config: str, *overrides: str) -> HFLightningCLI:
    """Run ``hf-lightning fit --config configs/<config>`` in-process with QUICK and ``overrides``."""
    return run_cli(["fit", "--config", str(CONFIGS / config), *QUICK, *overrides])


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_assets: dict[str, str]) -> Path:
    """Run from an empty directory (outputs land there) with a clean argv, as a user would."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    return tmp_path


def exported(cli: HFLightningCLI) -> Path:
    """The folder HFExportCallback wrote after fit."""
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, HFExportCallback))
    assert callback.saved_to is not None and (callback.saved_to / "config.json").is_file()
    return callback.saved_to


def checkpoint_state(root: Path) -> dict[str, torch.Tensor]:
    """The state_dict of the single Lightning checkpoint written under ``root``."""
    (path,) = list(root.rglob("*.ckpt"))
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


class ForwardCounter(pl.Callback):
    """Counts the HF model's forward calls inside each training batch."""

    def __init__(self) -> None:
        self.per_batch: list[int] = []
        self._count = 0
        self._handle: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._handle = pl_module.model.register_forward_hook(lambda *_: self._tick())

    def _tick(self) -> None:
        self._count += 1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        self._count = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: Any, batch: Any, idx: int
    ) -> None:
        self.per_batch.append(self._count)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._handle.remove()


class EmbeddingNoiseProbe(pl.Callback):
    """Records whether the input embedding layer is noisy (two calls differ) during training."""

    def __init__(self) -> None:
        self.noisy: list[bool] = []
        self.ids: torch.Tensor | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        self.ids = batch["input_ids"][:1]
        self.noisy.append(embedding_is_noisy(pl_module.model, self.ids))


def embedding_is_noisy(model: torch.nn.Module, ids: torch.Tensor) -> bool:
    embeddings = model.get_input_embeddings()
    with torch.no_grad():
        return not torch.equal(embeddings(ids), embeddings(ids))


def callback(cli: HFLightningCLI, kind: type) -> Any:
    return next(c for c in cli.trainer.callbacks if isinstance(c, kind))


# ---------------------------------------------------------------------------------------- all configs
def test_expected_configs_ship() -> None:
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert names >= {
        "quickstart.yaml",
        "glue_sst2_bert.yaml",
        "gpt2_local_text.yaml",
        "t5_summarization_jsonl.yaml",
        "focal.yaml",
        "distill.yaml",
        "contrastive.yaml",
        "neftune.yaml",
        "multitask.yaml",
        "fgm.yaml",
    }


@pytest.mark.parametrize("config", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_local_paths_in_configs_exist(config: Path) -> None:
    """Configs run from the repo root; every local data file and tokenizer folder they name ships."""
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    files = data.get("data_files") or {}
    paths = (
        [files]
        if isinstance(files, str)
        else [p for v in files.values() for p in ([v] if isinstance(v, str) else v)]
    )
    if str(data.get("tokenizer", "")).startswith("configs/"):
        paths.append(data["tokenizer"])
    for path in paths:
        assert (REPO / path).exists(), f"{config.name} names {path}, which is not in the repo"


def test_word_tokenizer_covers_the_sample_data() -> None:
    """The shipped tokenizer was built from the sample files: no word of theirs maps to [UNK]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(WORD_TOKENIZER)
    texts = (DATA / "tiny_corpus.txt").read_text().splitlines()
    for line in (DATA / "tiny_summaries.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts += [row["text"], row["summary"]]
    for line in (DATA / "tiny_multitask.jsonl").read_text().splitlines():
        texts.append(" ".join(json.loads(line)["tokens"]))
    ids = tokenizer(texts)["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert 2_000 < (DATA / "tiny_corpus.txt").stat().st_size < 10_000


@pytest.mark.parametrize(
    "config", ["glue_sst2_bert.yaml", "gpt2_local_text.yaml", "t5_summarization_jsonl.yaml"]
)
def test_hub_configs_fail_fast_offline(config: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Offline, a config that needs the Hub stops at once with one line, not after ~26 s of retries."""
    with pytest.raises(SystemExit) as exit_info:
        fit(config)
    assert exit_info.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and "offline" in errors[0] and "Fix:" in errors[0], errors


# ---------------------------------------------------------------------------------------- local files
def test_gpt2_local_text_end_to_end(in_tmp: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cli = fit(
        "gpt2_local_text.yaml",
        f"--model.model={tiny('gpt2')}",
        f"--data.tokenizer={WORD_TOKENIZER}",
        f"--data.data_files={json.dumps({'train': str(DATA / 'tiny_corpus.txt')})}",
    )
    assert cli.trainer.global_step == 2
    lines = len((DATA / "tiny_corpus.txt").read_text().splitlines())
    assert len(cli.datamodule.raw["validation"]) == round(lines * 0.1)  # held out from the one file
    assert "eval_loss" in cli.model.last_eval_metrics and "eval_perplexity" in cli.model.last_eval_metrics
    export = exported(cli)
    model = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    inputs = tokenizer(["the river rose"], return_tensors="pt")
    assert model(**inputs).logits.shape == (1, inputs["input_ids"].shape[1], len(tokenizer))
    assert model.config.n_embd == 32 and model.config.vocab_size == len(tokenizer)


def test_t5_summarization_jsonl_end_to_end(in_tmp: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    cli = fit(
        "t5_summarization_jsonl.yaml",
        f"--model.model={tiny('t5')}",
        f"--data.tokenizer={WORD_TOKENIZER}",
        f"--data.data_files={json.dumps({'train': str(DATA / 'tiny_summaries.jsonl')})}",
    )
    assert cli.trainer.global_step == 2
    assert len(cli.datamodule.raw["validation"]) == 4
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert (batch["labels"] == -100).any(), "target padding is ignored by the loss"
    export = exported(cli)
    model = AutoModelForSeq2SeqLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    generated = model.generate(
        **tokenizer(["the ferry runs in summer"], return_tensors="pt"), max_new_tokens=3
    )
    assert generated.shape[0] == 1 and generated.shape[1] <= 4


# ---------------------------------------------------------------------------------------- losses
def test_focal_config_optimises_focal_loss(in_tmp: Path) -> None:
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    from hf_lightning.losses import FocalLoss, focal_loss

    cli = fit("focal.yaml", f"--model.model={tiny('bert')}")
    module = cli.model
    assert isinstance(module.loss_fn, FocalLoss) and module.loss_fn.gamma == 2.0
    batch = next(iter(cli.datamodule.val_dataloader()))
    module.eval()
    with torch.no_grad():
        result = module.compute_loss(batch)
    logits = result.outputs.logits
    assert torch.allclose(result.loss, focal_loss(logits, batch["labels"], gamma=2.0))
    assert not torch.allclose(result.loss, F.cross_entropy(logits, batch["labels"]))
    AutoModelForSequenceClassification.from_pretrained(exported(cli))


def test_distill_config_keeps_the_teacher_frozen_and_out_of_checkpoints(in_tmp: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from hf_lightning.losses import DistillationLoss

    # The comment in distill.yaml: train a teacher with the quickstart first; its export folder is
    # the teacher path the distill config names, so the config runs as shipped.
    teacher_cli = fit("quickstart.yaml", f"--model.model={tiny('bert', hidden_size=48)}")
    teacher_dir = exported(teacher_cli)
    assert (
        teacher_dir.resolve() == (in_tmp / "outputs/quickstart/lightning_logs/version_0/hf_model").resolve()
    )

    cli = fit("distill.yaml", f"--model.model={tiny('bert')}")
    loss = cli.model.loss_fn
    assert isinstance(loss, DistillationLoss) and loss.alpha == 0.5
    saved = AutoModelForSequenceClassification.from_pretrained(teacher_dir).state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loss.teacher.state_dict().items()), (
        "teacher weights changed"
    )
    assert not any(p.requires_grad for p in loss.teacher.parameters())
    optimised = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in loss.teacher.parameters()}

    state = checkpoint_state(in_tmp / "outputs/distill")
    student_keys = {f"model.{k}" for k in cli.model.model.state_dict()}
    assert not [k for k in state if k.startswith("loss_fn") or "teacher" in k]
    assert set(state) <= student_keys | {k for k in state if k.startswith("task_metrics.")}
    assert loss.teacher.config.hidden_size == 48 and cli.model.model.config.hidden_size == 32
    AutoModelForSequenceClassification.from_pretrained(exported(cli))


def test_contrastive_config_trains_on_two_views_of_raw_text(in_tmp: Path) -> None:
    from transformers import AutoModel

    from hf_lightning.losses import ContrastiveLoss, TwoViewCollator, nt_xent_loss, pool_hidden_states

    cli = fit("contrastive.yaml", f"--model.model={tiny('bert')}")
    data, module = cli.datamodule, cli.model
    assert isinstance(module.loss_fn, ContrastiveLoss) and isinstance(data.collator, TwoViewCollator)
    assert data.dataset("train").column_names == ["text"], "rows stay raw text; views are made per batch"
    assert data.num_labels is None, "labels are not read: the pairing is the supervision"
    batch = next(iter(data.train_dataloader()))
    assert "view2_input_ids" in batch and "labels" not in batch
    assert batch["view2_attention_mask"].sum() < batch["attention_mask"].sum(), "view two drops words"
    assert cli.trainer.global_step == 2 and torch.isfinite(torch.tensor(module.last_train_log["loss"]))
    assert "eval_loss" in module.last_eval_metrics and "eval_accuracy" not in module.last_eval_metrics

    module.eval()
    with torch.no_grad():
        loss, _ = module.loss_fn(module.model, batch)
        first, second = module.loss_fn.split_views(batch)
        z = [
            pool_hidden_states(
                module.model(**v, output_hidden_states=True).hidden_states[-1], v["attention_mask"], "mean"
            )
            for v in (first, second)
        ]
    assert torch.allclose(loss, nt_xent_loss(z[0], z[1], temperature=0.05))
    AutoModel.from_pretrained(exported(cli))


def test_neftune_config_noises_embeddings_only_during_training(in_tmp: Path) -> None:
    from transformers import AutoModelForCausalLM

    cli = fit(
        "neftune.yaml",
        f"--model.model={tiny('gpt2')}",
        "--trainer.callbacks+=tests.test_configs.EmbeddingNoiseProbe",
    )
    assert cli.model.neftune_noise_alpha == 5.0
    probe = callback(cli, EmbeddingNoiseProbe)
    assert probe.noisy == [True, True], "noise is on in every training batch"
    model = cli.model.model
    model.train()
    assert not embedding_is_noisy(model, probe.ids), "the hook is gone after fit, even in train mode"
    assert not model.get_input_embeddings()._forward_hooks
    assert "_hf_lightning_neftune_handle" not in model.__dict__
    reloaded = AutoModelForCausalLM.from_pretrained(exported(cli)).train()
    assert not embedding_is_noisy(reloaded, probe.ids)


def test_fgm_config_runs_a_second_adversarial_pass(in_tmp: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    cli = fit(
        "fgm.yaml", f"--model.model={tiny('bert')}", "--trainer.callbacks+=tests.test_configs.ForwardCounter"
    )
    assert cli.model.adversarial == {"epsilon": 1.0, "emb_name": None}
    assert callback(cli, ForwardCounter).per_batch == [2, 2], "clean + perturbed forward per batch"
    assert cli.trainer.global_step == 2
    model = AutoModelForSequenceClassification.from_pretrained(exported(cli))
    # The attack restores the embeddings before the optimizer step: the exported weights are the
    # trained ones, identical to the module's.
    assert torch.equal(model.get_input_embeddings().weight, cli.model.model.get_input_embeddings().weight)


MULTITASK_FILES = json.dumps({"train": str(DATA / "tiny_multitask.jsonl")})


def test_multitask_config_learns_task_weights(in_tmp: Path) -> None:
    from transformers import AutoModel

    from hf_lightning.losses import UncertaintyWeightedLoss

    cli = fit(
        "multitask.yaml",
        f"--data.data_files={MULTITASK_FILES}",
        f"--data.tokenizer={WORD_TOKENIZER}",
        "--data.batch_size=6",
        "--data.max_train_samples=12",
    )
    data, module = cli.datamodule, cli.model
    assert data.tag_names == ["B-LOC", "I-LOC", "O"] and data.label_names == ["negative", "positive"]
    batch = next(iter(data.train_dataloader()))
    assert batch["labels"].shape == (6,) and batch["ner_labels"].shape == batch["input_ids"].shape
    assert (batch["ner_labels"][batch["attention_mask"] == 0] == -100).all()
    assert isinstance(module.loss_fn, UncertaintyWeightedLoss) and cli.trainer.global_step == 2

    state = checkpoint_state(in_tmp / "outputs/multitask")
    assert state["loss_fn.log_vars"].shape == (2,)
    assert state["loss_fn.log_vars"].abs().min() > 0, "both learned task weights moved from 0"
    export = exported(cli)
    reloaded = AutoModel.from_pretrained(export)
    assert type(reloaded).__name__ == "MultiTaskModel" and reloaded.config.num_ner_labels == 3


def test_multitask_config_refuses_a_token_head_that_does_not_fit_the_tags(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = {**TINY_MODELS["bert"], "model_type": "hf_lightning_multitask", "num_ner_labels": 2}
    with pytest.raises(SystemExit) as exit_info:
        fit(
            "multitask.yaml",
            f"--data.data_files={MULTITASK_FILES}",
            f"--data.tokenizer={WORD_TOKENIZER}",
            f"--model.model={json.dumps(model)}",
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "num_ner_labels" in err and "set num_ner_labels: 3" in err
