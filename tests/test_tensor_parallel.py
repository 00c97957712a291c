"""Tensor parallelism: plans, refusals, and real 2-process gloo runs against one process.

``TrainingArguments(tp_size=2)`` on 2 CPU processes must train a tiny BERT and a tiny Llama to the
one-process run's losses and weights (within 1e-5) with token-exact accumulation over padded causal-LM
rows, evaluate each row once, feed both ranks the same batches, and export HF files that
``from_pretrained`` reloads with the same logits. The samplers are checked on a 2 x 2 (data x tensor)
mesh: they split by data-parallel rank, not by global rank.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from hf_lightning import TrainingArguments
from hf_lightning.errors import ConfigError
from hf_lightning.plan import lightning_trainer_kwargs
from hf_lightning.strategies import TensorParallelStrategy, build_strategy
from hf_lightning.strategies.tensor_parallel import BERT_TP_PLAN, resolve_tp_plan

WORKER = Path(__file__).parent / "workers" / "tp_worker.py"


def _llama() -> transformers.PreTrainedModel:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32))


def _bert() -> transformers.PreTrainedModel:
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))


# ------------------------------------------------------------------ plans and refusals (one process)


def test_llama_plan_is_transformers_own_under_the_base_model_prefix() -> None:
    plan = resolve_tp_plan(_llama())
    own = transformers.LlamaConfig.base_model_tp_plan
    assert plan == {f"model.{pattern}": style for pattern, style in own.items()}


def test_bert_gets_the_megatron_plan() -> None:
    plan = resolve_tp_plan(_bert(), "auto")
    assert plan == {f"bert.{pattern}": style for pattern, style in BERT_TP_PLAN.items()}
    assert plan["bert.encoder.layer.*.attention.output.dense"] == "rowwise"
    assert plan["bert.encoder.layer.*.intermediate.dense"] == "colwise"


def test_gpt2_conv1d_is_refused_in_one_line() -> None:
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=40))
    with pytest.raises(ConfigError) as err:
        resolve_tp_plan(gpt2)
    text = str(err.value)
    assert "\n" not in text and "tp_size" in text and "Conv1D" in text and "tp_size=1" in text


@pytest.mark.parametrize(
    ("tp_plan", "expected"),
    [
        ({"model.layers.*.self_attn.q_proj": "colwise_gather_output"}, "style 'colwise_gather_output'"),
        ({"model.layers.*.attn.q": "colwise"}, "matches no module"),
        ({"model.layers.*.input_layernorm": "colwise"}, "not an nn.Linear"),
        ("sequence", "unknown plan"),
    ],
)
def test_bad_plans_are_one_line_errors_naming_tp_plan(tp_plan, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as err:
        resolve_tp_plan(_llama(), tp_plan)
    assert str(err.value).startswith("tp_plan") and "\n" not in str(err.value)


def test_a_model_without_a_plan_asks_for_one() -> None:
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(ConfigError, match="has no tensor-parallel plan.*pass tp_plan="):
        resolve_tp_plan(t5)


def test_training_arguments_tp_size_builds_the_tensor_parallel_strategy(tmp_path: Path) -> None:
    plan = {"model.layers.*.mlp.up_proj": "colwise", "model.layers.*.mlp.down_proj": "rowwise"}
    args = TrainingArguments(output_dir=str(tmp_path), tp_size=2, tp_plan=plan, devices=2, use_cpu=True,
                             report_to="none")
    strategy = lightning_trainer_kwargs(args, None, 3)["strategy"]
    assert isinstance(strategy, TensorParallelStrategy)
    assert strategy.tp_plan == plan and strategy._tensor_parallel_size == 2
    assert TrainingArguments(output_dir=str(tmp_path), tp_size=2).to_dict()["tp_size"] == 2


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"tp_size": 2, "devices": 1}, "tp_size=2 needs a multiple of 2 processes"),
        ({"tp_size": 2, "devices": 3}, "needs a multiple of 2"),
        ({"tp_size": 0, "devices": 2}, "tp_size: must be a positive integer"),
        ({"tp_size": 2, "devices": 2, "strategy": "ddp"}, "conflicts with tp_size=2"),
        ({"tp_size": 1, "devices": 2, "tp_plan": {"a": "colwise"}}, "tp_plan: is set but tp_size is 1"),
        ({"tp_size": 2, "devices": 2, "tp_plan": {"a": "sequence_parallel"}}, "style 'sequence_parallel'"),
    ],
)
def test_bad_tp_settings_are_refused_before_training(kwargs: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build_strategy(accelerator="cpu", **kwargs)


# ------------------------------------------------------------------ real runs (gloo)


def _launch(cmd: list[str], cwd: Path) -> None:
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.fixture(scope="module")
def tp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict]]:
    """(one process, 2 tensor-parallel processes) for each model; the reference runs in this process."""
    from tests.workers.tp_worker import facade

    root = tmp_path_factory.mktemp("tp")
    _launch([sys.executable, str(WORKER), "facade", str(root / "tp"), "2"], root)
    runs = {}
    for kind in ("bert", "llama"):
        facade(kind, root / f"single-{kind}.pt", 1)
        runs[kind] = (torch.load(root / f"single-{kind}.pt"), torch.load(root / f"tp-{kind}.pt"))
    return runs


def _reload(kind: str, folder: str) -> transformers.PreTrainedModel:
    auto = transformers.AutoModelForSequenceClassification if kind == "bert" else transformers.AutoModelForCausalLM
    return auto.from_pretrained(folder).eval()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_two_tensor_parallel_processes_match_one_process(kind: str, tp_runs) -> None:
    single, tp = tp_runs[kind]
    assert tp["strategy"] == "TensorParallelStrategy"
    # 3 optimizer steps of 2 micro-batches (the Llama rows are padded to different lengths: token-exact windows).
    assert len(tp["losses"]) == len(single["losses"]) == 3
    assert tp["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert tp["eval_loss"] == pytest.approx(single["eval_loss"], abs=1e-5)
    w_single, w_tp = _reload(kind, single["export"]).state_dict(), _reload(kind, tp["export"]).state_dict()
    assert set(w_single) == set(w_tp)
    assert max((w_single[k] - w_tp[k]).abs().max().item() for k in w_single) <= 1e-5


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_tensor_parallel_export_reloads_with_the_same_logits(kind: str, tp_runs) -> None:
    _, tp = tp_runs[kind]
    with torch.no_grad():
        reloaded = _reload(kind, tp["export"])(**tp["batch"]).logits
    assert (reloaded - tp["logits"]).abs().max().item() <= 1e-5  # full tensors, not one rank's shard


@pytest.mark.slow
@pytest.mark.distributed
def test_tensor_parallel_ranks_read_the_same_batches_and_evaluate_each_row_once(tp_runs) -> None:
    single, tp = tp_runs["bert"]
    assert len(tp["orders"]) == 2 and tp["orders"][0] == tp["orders"][1] == single["orders"][0]
    assert tp["eval_rows"] == single["eval_rows"] == 5  # not 10: the ranks' copies are not gathered twice


@pytest.mark.slow
@pytest.mark.distributed
def test_samplers_split_by_data_parallel_rank_on_a_2x2_mesh(tmp_path: Path) -> None:
    out = tmp_path / "mesh.pt"
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", str(WORKER),
             "mesh", str(out)], tmp_path)
    ranks = sorted(torch.load(out), key=lambda r: r["rank"])
    assert [r["dp_rank"] for r in ranks] == [0, 0, 1, 1]
    for first, second in ((ranks[0], ranks[1]), (ranks[2], ranks[3])):  # one tensor-parallel group each
        assert first["train"] == second["train"] and first["eval"] == second["eval"]
    # The two data-parallel groups split the 10 training rows and the 9 evaluation rows between them.
    assert sorted(ranks[0]["train"] + ranks[2]["train"]) == list(range(10))
    assert ranks[0]["eval"] == [0, 2, 4, 6, 8] and ranks[2]["eval"][: ranks[2]["eval_real"]] == [1, 3, 5, 7]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.device_count() < 4, reason="2-D (FSDP2 x tensor parallel) needs 4 processes: 4 GPUs")
def test_fsdp2_by_tensor_parallel_on_four_gpus(tmp_path: Path) -> None:
    """tp_size=2 on 4 GPUs: 2 data-parallel groups (FSDP2) of 2 tensor-parallel ranks, against one GPU."""
    from tests.workers.tp_worker import facade

    _launch([sys.executable, str(WORKER), "facade", str(tmp_path / "2d"), "4", "2", "gpu"], tmp_path)
    for kind in ("bert", "llama"):
        facade(kind, tmp_path / f"one-{kind}.pt", 1, None, "gpu")
        single, two_d = torch.load(tmp_path / f"one-{kind}.pt"), torch.load(tmp_path / f"2d-{kind}.pt")
        assert two_d["strategy"] == "TensorParallelStrategy"
        assert two_d["losses"] == pytest.approx(single["losses"], abs=1e-4)
        w_single, w_2d = _reload(kind, single["export"]).state_dict(), _reload(kind, two_d["export"]).state_dict()
        assert max((w_single[k] - w_2d[k]).abs().max().item() for k in w_single) <= 1e-4
        assert two_d["orders"][0] == two_d["orders"][1] != two_d["orders"][2] == two_d["orders"][3]


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_trains_with_the_tensor_parallel_strategy_and_exports_full_weights(tmp_path: Path, demo_assets) -> None:
    """``--trainer.strategy`` naming TensorParallelStrategy on 2 CPU processes: trains, writes a loadable HF model."""
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "hf_lightning", "fit", "--config", str(repo / "configs/quickstart.yaml"),
         "--trainer.devices=2", "--trainer.accelerator=cpu",
         "--trainer.strategy=hf_lightning.strategies.TensorParallelStrategy",
         "--trainer.strategy.tensor_parallel_size=2", "--trainer.max_steps=2", "--trainer.max_epochs=1",
         "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--data.max_train_samples=64", "--data.batch_size=32",
         "--data.max_eval_samples=8",
         '--model.model={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, '
         '"intermediate_size": 64}'],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Run summary (2 optimizer steps" in run.stdout  # rank 0 prints it; the log dir is read on both ranks
    export = next(tmp_path.rglob("hf_model"))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(export)
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape == (32, 32)  # gathered, not a half
    assert model.bert.encoder.layer[0].output.dense.weight.shape == (32, 64)
