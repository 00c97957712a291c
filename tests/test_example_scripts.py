"""HF-style example scripts run with one changed import line and leave what transformers leaves.

Each script under ``tests/examples/`` is written for ``transformers``; the test runs it as written and
again with its one ``from transformers import Trainer...`` line pointed at ``hf_lightning``, on a tiny
local model and local data, with the same command line. Both runs must leave the same files in
``output_dir`` (results JSONs, trainer state, model card, an HF-format model) and close metrics.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # two subprocess runs per script

EXAMPLES = REPO / "tests" / "examples"
IMPORT_LINES = {
    "run_classification.py": "from transformers import Trainer, TrainingArguments",
    "run_summarization.py": "from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments",
    "run_ner.py": "from transformers import Trainer, TrainingArguments",
    "run_clm.py": "from transformers import Trainer, TrainingArguments",
    "run_mlm.py": "from transformers import Trainer, TrainingArguments",
    "run_qa.py": "from transformers import Trainer, TrainingArguments",
}
WORDS = "the film was good not bad great dull acting plot ending boring".split()
COMMON = ["--do_train", "--do_eval", "--max_steps", "6", "--per_device_train_batch_size", "4",
          "--per_device_eval_batch_size", "4", "--learning_rate", "5e-3", "--train_sampling_strategy", "sequential",
          "--logging_steps", "2", "--save_steps", "3", "--use_cpu", "--report_to", "none", "--seed", "0"]
# Files both trainers must write; the logger folders and optimizer internals are compared elsewhere.
EXPECTED = {"train_results.json", "eval_results.json", "all_results.json", "trainer_state.json", "README.md",
            "config.json", "model.safetensors", "training_args.bin", "tokenizer.json", "tokenizer_config.json"}


def _start(tmp_path: Path, script: str, backend: str, argv: list[str]) -> tuple[subprocess.Popen, Path]:
    """Start ``script`` as written (transformers) or with its one import line changed (hf_lightning)."""
    source = (EXAMPLES / script).read_text()
    line = IMPORT_LINES[script]
    assert source.count(line) == 1
    if backend == "hf_lightning":
        source = source.replace(line, line.replace("from transformers", "from hf_lightning"))
    path = tmp_path / f"{backend}_{script}"
    path.write_text(source)
    out = tmp_path / f"out_{backend}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / f"cache_{backend}")}
    with (tmp_path / f"{backend}.log").open("w") as log:  # the child keeps its own handle
        process = subprocess.Popen([sys.executable, str(path), *argv, "--output_dir", str(out)], cwd=tmp_path,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, out


def _run_both(tmp_path: Path, script: str, argv: list[str]) -> dict[str, Path]:
    """Both runs at once (each is mostly start-up on one thread), each with its own datasets cache."""
    started = {backend: _start(tmp_path, script, backend, argv) for backend in ("transformers", "hf_lightning")}
    try:
        codes = {backend: process.wait(timeout=600) for backend, (process, _) in started.items()}
    finally:
        for process, _ in started.values():
            if process.poll() is None:  # a timeout: leave no process behind
                process.kill()
    for backend, code in codes.items():
        assert code == 0, (backend, (tmp_path / f"{backend}.log").read_text()[-6000:])
    return {backend: out for backend, (_, out) in started.items()}


def _compare(tmp_path: Path, script: str, argv: list[str], tolerance: float,
             loss_scale: float = 1.0) -> dict[str, dict]:
    """Run ``script`` under both trainers; ``loss_scale`` is the known ratio of our losses to theirs."""
    outs = _run_both(tmp_path, script, argv)
    files = {backend: {p.name for p in out.iterdir() if p.is_file()} for backend, out in outs.items()}
    assert EXPECTED <= files["transformers"], files["transformers"]
    assert EXPECTED <= files["hf_lightning"], files["hf_lightning"] - files["transformers"]
    checkpoints = {backend: sorted(p.name for p in out.glob("checkpoint-*")) for backend, out in outs.items()}
    assert checkpoints["hf_lightning"] == checkpoints["transformers"] == ["checkpoint-3", "checkpoint-6"]
    results = {b: json.loads((out / "all_results.json").read_text()) for b, out in outs.items()}
    assert set(results["hf_lightning"]) == set(results["transformers"])
    for key in ("train_loss", "eval_loss"):
        expected = results["transformers"][key] * loss_scale
        assert results["hf_lightning"][key] == pytest.approx(expected, abs=tolerance), key
    states = {b: json.loads((out / "trainer_state.json").read_text()) for b, out in outs.items()}
    assert states["hf_lightning"]["global_step"] == states["transformers"]["global_step"] == 6
    for out in outs.values():  # a plain transformers process reloads what either trainer saved
        assert transformers.AutoConfig.from_pretrained(out).architectures
        assert "generated_from_trainer" in (out / "README.md").read_text()
    return results


def _tokenizer(demo_assets):
    return transformers.AutoTokenizer.from_pretrained(demo_assets["tokenizer"])


def test_text_classification_script(tmp_path: Path, demo_assets) -> None:
    tokenizer = _tokenizer(demo_assets)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    argv = ["--model_name_or_path", str(tmp_path / "model"), "--train_file", demo_assets["train"],
            "--validation_file", demo_assets["validation"], "--max_train_samples", "64", *COMMON]
    results = _compare(tmp_path, "run_classification.py", argv, tolerance=1e-4)
    assert results["hf_lightning"]["eval_accuracy"] == pytest.approx(results["transformers"]["eval_accuracy"], abs=1e-6)


def test_summarization_script(tmp_path: Path, demo_assets) -> None:
    tokenizer = _tokenizer(demo_assets)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.cls_token_id))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    words = "the film was good not bad great dull acting plot ending boring".split()
    for split, n in (("train", 24), ("validation", 8)):  # eval batches full: Seq2SeqTrainer's loss weighting agrees
        rows = [" ".join(words[(i * 5 + j) % len(words)] for j in range(4 + i % 5)) for i in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(
            json.dumps({"text": r, "summary": " ".join(r.split()[:2])}) for r in rows) + "\n")
    argv = ["--model_name_or_path", str(tmp_path / "model"), "--train_file", str(tmp_path / "train.jsonl"),
            "--validation_file", str(tmp_path / "validation.jsonl"), "--predict_with_generate", *COMMON]
    results = _compare(tmp_path, "run_summarization.py", argv, tolerance=1e-4)
    for key in ("eval_word_recall", "eval_gen_len"):
        assert results["hf_lightning"][key] == pytest.approx(results["transformers"][key], abs=1e-6), key


def _model_dir(tmp_path: Path, tokenizer, model) -> str:
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def _bert_config(tokenizer, **kwargs) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64, **kwargs)


def _write_jsonl(tmp_path: Path, rows_by_split: dict[str, list[dict]]) -> list[str]:
    argv = []
    for split, rows in rows_by_split.items():
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        argv += [f"--{split}_file", str(tmp_path / f"{split}.jsonl")]
    return argv


def test_token_classification_script(tmp_path: Path, demo_assets) -> None:
    tokenizer = _tokenizer(demo_assets)
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(_bert_config(tokenizer, num_labels=3))  # B-NEG, B-POS, O
    tags = {"good": "B-POS", "great": "B-POS", "bad": "B-NEG", "dull": "B-NEG", "boring": "B-NEG"}

    def rows(n: int, shift: int) -> list[dict]:
        sentences = [[WORDS[(i * 5 + j + shift) % len(WORDS)] for j in range(4 + i % 5)] for i in range(n)]
        return [{"tokens": s, "ner_tags": [tags.get(w, "O") for w in s]} for s in sentences]

    argv = ["--model_name_or_path", _model_dir(tmp_path, tokenizer, model),
            *_write_jsonl(tmp_path, {"train": rows(24, 0), "validation": rows(8, 3)}), *COMMON]
    results = _compare(tmp_path, "run_ner.py", argv, tolerance=1e-4)
    for key in ("eval_accuracy", "eval_entity_recall"):
        assert results["hf_lightning"][key] == pytest.approx(results["transformers"][key], abs=1e-6), key


def test_causal_lm_script(tmp_path: Path, demo_assets) -> None:
    tokenizer = _tokenizer(demo_assets)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, pad_token_id=tokenizer.pad_token_id))
    argv = ["--model_name_or_path", _model_dir(tmp_path, tokenizer, model), "--train_file", demo_assets["train"],
            "--validation_file", demo_assets["validation"], "--max_train_samples", "24", "--max_eval_samples", "8",
            *COMMON]
    # transformers 5 divides GPT-2's loss by the unshifted label count (README, "one known difference"): 16
    # per 16-token block where 15 are scored, so its train_loss and eval_loss are 15/16 of the per-token mean
    # we report, and its perplexity exp(15/16 * ours).
    results = _compare(tmp_path, "run_clm.py", argv, tolerance=1e-4, loss_scale=16 / 15)
    expected = math.exp(math.log(results["transformers"]["perplexity"]) * 16 / 15)
    assert results["hf_lightning"]["perplexity"] == pytest.approx(expected, rel=1e-4)


def test_masked_lm_script(tmp_path: Path, demo_assets) -> None:
    tokenizer = _tokenizer(demo_assets)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(_bert_config(tokenizer))
    argv = ["--model_name_or_path", _model_dir(tmp_path, tokenizer, model), "--train_file", demo_assets["train"],
            "--validation_file", demo_assets["validation"], "--max_train_samples", "24", "--max_eval_samples", "8",
            *COMMON]
    results = _compare(tmp_path, "run_mlm.py", argv, tolerance=1e-4)
    assert results["hf_lightning"]["eval_accuracy"] == pytest.approx(results["transformers"]["eval_accuracy"], abs=1e-6)


def test_question_answering_script(tmp_path: Path, demo_assets) -> None:
    tokenizer = _tokenizer(demo_assets)
    torch.manual_seed(0)
    model = transformers.BertForQuestionAnswering(_bert_config(tokenizer))

    def rows(n: int, shift: int) -> list[dict]:
        # The question is one word of the context; the answer is the word after it.
        out = []
        for i in range(n):
            words = [WORDS[(i * 7 + j + shift) % len(WORDS)] for j in range(6 + i % 6)]
            k = i % (len(words) - 1)
            start = len(" ".join(words[:k + 1])) + 1
            out.append({"id": f"q{shift}-{i}", "question": words[k], "context": " ".join(words),
                        "answers": {"text": [words[k + 1]], "answer_start": [start]}})
        return out

    argv = ["--model_name_or_path", _model_dir(tmp_path, tokenizer, model),
            *_write_jsonl(tmp_path, {"train": rows(24, 0), "validation": rows(8, 3)}), *COMMON]
    results = _compare(tmp_path, "run_qa.py", argv, tolerance=1e-4)
    for key in ("eval_exact_match", "eval_f1"):
        assert results["hf_lightning"][key] == pytest.approx(results["transformers"][key], abs=1e-6), key
