"""Tests for hf_lightning.strategies: precision flags, DeepSpeed "auto" resolution, FSDP options, strategy
choice, and a real two-process FSDP2 run on CPU that must match an unsharded model exactly.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import weakref
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import transformers.integrations.deepspeed as hf_ds
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, TrainingArguments

from hf_lightning.errors import ConfigError
from hf_lightning.strategies import (
    FSDP2Strategy,
    build_strategy,
    export_full_state_dict,
    fsdp_options,
    fully_shard_hf_model,
    precision_from_flags,
    resolve_deepspeed_config,
    save_full_pretrained,
)
from hf_lightning.strategies.deepspeed import _fill_deepspeed

HIDDEN = 32
NO_CUDA = not torch.cuda.is_available()


def _tiny_config() -> BertConfig:
    return BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=99,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(_tiny_config())


@pytest.fixture(scope="module")
def bert() -> BertForSequenceClassification:
    return _tiny_bert()


def _args(**overrides: Any) -> SimpleNamespace:
    """The TrainingArguments fields DeepSpeed resolution reads, with non-default values to catch mix-ups."""
    fields: dict[str, Any] = {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 3,
        "max_grad_norm": 0.7,
        "learning_rate": 3e-4,
        "adam_beta1": 0.8,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-7,
        "weight_decay": 0.01,
        "warmup_steps": 0.1,
        "save_on_each_node": False,
        "fp16": False,
        "fp16_full_eval": False,
        "bf16": True,
        "bf16_full_eval": False,
        "auto_find_batch_size": False,
        "world_size": 1,
    }
    fields.update(overrides)
    return SimpleNamespace(**fields)


def _ds_template(stage: int, offload: bool = False) -> dict[str, Any]:
    """The shape of transformers' documented ZeRO templates, every tunable left on "auto"."""
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "fp16": {"enabled": "auto", "loss_scale": 0},
        "bf16": {"enabled": "auto"},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": "auto",
                "warmup_max_lr": "auto",
                "warmup_num_steps": "auto",
                "total_num_steps": "auto",
            },
        },
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }


@pytest.fixture(autouse=True)
def _no_leaked_deepspeed_global():
    """Every test must leave transformers' DeepSpeed global as it found it (None)."""
    assert hf_ds.deepspeed_config() is None
    yield
    assert hf_ds.deepspeed_config() is None


# ------------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, "32-true"),
        ({"bf16": True}, "bf16-mixed"),
        ({"bf16": True, "bf16_full": True}, "bf16-true"),
        ({"bf16_full": True}, "bf16-true"),
        ({"bf16": True, "half_precision_backend": "auto"}, "bf16-mixed"),
        ({"bf16": True, "half_precision_backend": "cpu_amp"}, "bf16-mixed"),
    ],
)
def test_precision_mapping_on_cpu(flags: dict[str, Any], expected: str) -> None:
    assert precision_from_flags(accelerator="cpu", **flags) == expected


def test_fp16_on_cpu_names_field_and_fix() -> None:
    with pytest.raises(ConfigError) as info:
        precision_from_flags(fp16=True, accelerator="cpu")
    assert info.value.field == "fp16"
    assert "use bf16=True on CPU" in info.value.fix
    assert "\n" not in str(info.value)


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="needs a CPU-only box"
)
def test_fp16_with_auto_accelerator_on_cpu_only_machine() -> None:
    with pytest.raises(ConfigError, match="fp16"):
        precision_from_flags(fp16=True, accelerator="auto")


@pytest.mark.parametrize("other", [{"bf16": True}, {"bf16_full": True}])
def test_fp16_and_bf16_together_rejected(other: dict[str, bool]) -> None:
    with pytest.raises(ConfigError) as info:
        precision_from_flags(fp16=True, accelerator="cpu", **other)
    assert info.value.field == "fp16"


@pytest.mark.parametrize("backend", ["apex", "turbo"])
def test_unsupported_half_precision_backend(backend: str) -> None:
    with pytest.raises(ConfigError) as info:
        precision_from_flags(bf16=True, accelerator="cpu", half_precision_backend=backend)
    assert info.value.field == "half_precision_backend"


# ------------------------------------------------------------------------------------------- DeepSpeed


@pytest.mark.parametrize(("stage", "offload"), [(1, False), (2, False), (3, False), (3, True)])
def test_deepspeed_auto_values_resolved(tmp_path: Path, bert, stage: int, offload: bool) -> None:
    path = tmp_path / f"ds_zero{stage}.json"
    path.write_text(json.dumps(_ds_template(stage, offload)))
    args = _args()

    config = resolve_deepspeed_config(str(path), args, bert, num_training_steps=100, world_size=2)

    assert '"auto"' not in json.dumps(config)
    assert json.loads(path.read_text()) == _ds_template(stage, offload), "the file must not be rewritten"
    assert config["train_micro_batch_size_per_gpu"] == args.per_device_train_batch_size
    assert config["gradient_accumulation_steps"] == args.gradient_accumulation_steps
    assert (
        config["train_batch_size"] == 2 * args.per_device_train_batch_size * args.gradient_accumulation_steps
    )
    assert config["gradient_clipping"] == args.max_grad_norm
    assert config["optimizer"]["params"] == {
        "lr": args.learning_rate,
        "betas": [args.adam_beta1, args.adam_beta2],
        "eps": args.adam_epsilon,
        "weight_decay": args.weight_decay,
    }
    assert config["scheduler"]["params"] == {
        "warmup_min_lr": 0,
        "warmup_max_lr": args.learning_rate,
        "warmup_num_steps": 10,  # warmup_steps=0.1 is a ratio of the 100 steps
        "total_num_steps": 100,
    }
    assert config["bf16"]["enabled"] is True
    assert config["fp16"]["enabled"] is False
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["reduce_bucket_size"] == HIDDEN * HIDDEN
    if stage == 3:
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * HIDDEN * HIDDEN)
        assert zero["stage3_param_persistence_threshold"] == 10 * HIDDEN
    if offload:
        assert zero["offload_optimizer"]["device"] == "cpu"
        assert zero["offload_param"]["device"] == "cpu"


def test_deepspeed_with_real_training_arguments(tmp_path: Path, bert) -> None:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=True,
        learning_rate=1e-3,
        warmup_steps=5,
        max_grad_norm=2.0,
    )
    config = resolve_deepspeed_config(_ds_template(2), args, bert, num_training_steps=50, world_size=1)
    assert config["optimizer"]["params"]["lr"] == 1e-3
    assert config["scheduler"]["params"]["warmup_num_steps"] == 5
    assert config["gradient_clipping"] == 2.0
    assert config["train_batch_size"] == args.per_device_train_batch_size


def test_deepspeed_dict_input_not_mutated(bert) -> None:
    template = _ds_template(3)
    resolve_deepspeed_config(template, _args(), bert, num_training_steps=10)
    assert template == _ds_template(3)


def test_deepspeed_resolution_without_deepspeed_package_matches(bert) -> None:
    """The fallback used when deepspeed is not installed gives the same answer as transformers' class."""
    resolved = resolve_deepspeed_config(_ds_template(3, offload=True), _args(), bert, num_training_steps=40)
    from hf_lightning.strategies.deepspeed import _args_view

    detached = _fill_deepspeed(
        _ds_template(3, offload=True), _args_view(_args(), None, 40), bert, 40, detached=True
    ).config
    assert detached == resolved


def test_deepspeed_invalid_json(tmp_path: Path, bert) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ConfigError) as info:
        resolve_deepspeed_config(str(path), _args(), bert, num_training_steps=10)
    assert info.value.field == "deepspeed"
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_deepspeed_missing_file(tmp_path: Path, bert) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_deepspeed_config(str(tmp_path / "nope.json"), _args(), bert, num_training_steps=10)
    assert info.value.field == "deepspeed"
    assert "nope.json" in str(info.value)


def test_deepspeed_mismatch_reported_and_global_cleared(bert) -> None:
    config = _ds_template(2)
    config["optimizer"]["params"]["lr"] = 0.5
    with pytest.raises(ConfigError) as info:
        resolve_deepspeed_config(config, _args(), bert, num_training_steps=10)
    assert info.value.field == "deepspeed"
    assert "lr" in str(info.value)
    assert "\n" not in str(info.value)
    assert hf_ds.deepspeed_config() is None


def test_deepspeed_leftover_auto_rejected(bert) -> None:
    # A ZeRO-3-only key on a stage-2 config: transformers leaves it on "auto", DeepSpeed would choke on it.
    config = {"zero_optimization": {"stage": 2, "stage3_prefetch_bucket_size": "auto"}}
    with pytest.raises(ConfigError, match="zero_optimization.stage3_prefetch_bucket_size"):
        resolve_deepspeed_config(config, _args(), bert, num_training_steps=10)


def test_deepspeed_hidden_size_needed(bert) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_deepspeed_config(_ds_template(3), _args(), torch.nn.Linear(2, 2), num_training_steps=10)
    assert info.value.field == "deepspeed"


def test_deepspeed_global_restored_not_clobbered(bert) -> None:
    """A DeepSpeed config registered by someone else before us is still registered afterwards."""

    class Registered:  # weakref-able stand-in for a user's HfDeepSpeedConfig
        config = {"zero_optimization": {"stage": 3}}

    owner = Registered()
    hf_ds._hf_deepspeed_config_weak_ref = weakref.ref(owner)
    try:
        resolve_deepspeed_config(_ds_template(1), _args(), bert, num_training_steps=10)
        assert hf_ds.deepspeed_config() is owner.config
    finally:
        hf_ds.unset_hf_deepspeed_config()


# ------------------------------------------------------------------------------------------------ FSDP


def test_fsdp_legacy_string() -> None:
    opts = fsdp_options("full_shard auto_wrap", None)
    assert opts["enabled"] is True
    assert opts["sharding_strategy"] == "FULL_SHARD"
    assert opts["reshard_after_forward"] is True
    assert opts["cpu_offload"] is False
    assert opts["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert opts["transformer_layer_cls_to_wrap"] is None


def test_fsdp_shard_grad_op_offload_list() -> None:
    opts = fsdp_options(["shard_grad_op", "offload"], None)
    assert opts["sharding_strategy"] == "SHARD_GRAD_OP"
    assert opts["reshard_after_forward"] is False
    assert opts["cpu_offload"] is True


def test_fsdp_disabled() -> None:
    assert fsdp_options(None, None)["enabled"] is False
    assert fsdp_options("", {"cpu_offload": True})["enabled"] is False


def test_fsdp_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "fsdp.json"
    path.write_text(
        json.dumps(
            {
                "fsdp_transformer_layer_cls_to_wrap": "BertLayer",
                "activation_checkpointing": "true",
                "cpu_ram_efficient_loading": True,
                "sync_module_states": False,
                "forward_prefetch": True,
                "limit_all_gathers": "false",
                "backward_prefetch": "backward_pre",
                "state_dict_type": "SHARDED_STATE_DICT",
            }
        )
    )
    opts = fsdp_options("full_shard", str(path))
    assert opts["transformer_layer_cls_to_wrap"] == ["BertLayer"]
    assert opts["activation_checkpointing"] is True
    assert opts["cpu_ram_efficient_loading"] is True
    assert opts["sync_module_states"] is False
    assert opts["forward_prefetch"] is True
    assert opts["limit_all_gathers"] is False
    assert opts["backward_prefetch"] == "BACKWARD_PRE"
    assert opts["state_dict_type"] == "SHARDED_STATE_DICT"


def test_fsdp_min_num_params_selects_size_policy() -> None:
    opts = fsdp_options("full_shard auto_wrap", {"min_num_params": 1000})
    assert opts["auto_wrap_policy"] == "SIZE_BASED_WRAP"
    assert opts["min_num_params"] == 1000


def test_fsdp_accepts_what_training_arguments_normalised(tmp_path: Path) -> None:
    """transformers rewrites fsdp/fsdp_config in __post_init__; that output must parse to the same thing."""
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        fsdp="shard_grad_op offload",
        fsdp_config={"transformer_layer_cls_to_wrap": "BertLayer"},
    )
    opts = fsdp_options(args.fsdp, args.fsdp_config)
    assert opts["sharding_strategy"] == "SHARD_GRAD_OP"
    assert opts["cpu_offload"] is True
    assert opts["transformer_layer_cls_to_wrap"] == ["BertLayer"]


@pytest.mark.parametrize(
    ("fsdp", "config", "field"),
    [
        (
            "full_shard",
            {"transformer_layer_cls_to_wrapp": ["BertLayer"]},
            "fsdp_config.transformer_layer_cls_to_wrapp",
        ),
        ("full_shard", {"bogus": 1}, "fsdp_config.bogus"),
        ("full_shard offlaod", None, "fsdp"),
        ("full_shard shard_grad_op", None, "fsdp"),
        ("full_shard", {"reshard_after_forward": False}, "fsdp"),
        (
            "full_shard",
            {"min_num_params": 10, "transformer_layer_cls_to_wrap": ["BertLayer"]},
            "fsdp_config.min_num_params",
        ),
        ("full_shard", {"activation_checkpointing": "maybe"}, "fsdp_config.activation_checkpointing"),
        ("full_shard", {"xla": True}, "fsdp_config.xla"),
        ("full_shard", {"auto_wrap_policy": "LAYER_WRAP"}, "fsdp_config.auto_wrap_policy"),
    ],
)
def test_fsdp_bad_input(fsdp: str, config: dict[str, Any] | None, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        fsdp_options(fsdp, config)
    assert info.value.field == field


def test_fsdp_unknown_key_suggests_spelling() -> None:
    with pytest.raises(ConfigError, match="did you mean 'transformer_layer_cls_to_wrap'"):
        fsdp_options(True, {"transformer_layer_cls_to_wrapp": ["BertLayer"]})


# -------------------------------------------------------------------------------------------- strategy


def test_ddp_on_cpu_uses_gloo(bert) -> None:
    strategy = build_strategy(
        accelerator="cpu",
        devices=2,
        model=bert,
        ddp_find_unused_parameters=False,
        ddp_bucket_cap_mb=10,
        ddp_broadcast_buffers=False,
        ddp_timeout=600,
    )
    assert isinstance(strategy, DDPStrategy)
    assert strategy.process_group_backend == "gloo"
    assert strategy._timeout == timedelta(seconds=600)
    assert strategy._ddp_kwargs == {
        "find_unused_parameters": False,
        "bucket_cap_mb": 10,
        "broadcast_buffers": False,
    }


def test_ddp_find_unused_default_follows_transformers(bert) -> None:
    strategy = build_strategy(accelerator="cpu", devices="2", model=bert)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs == {"find_unused_parameters": True}


def test_ddp_from_num_nodes_or_explicit_name(bert) -> None:
    assert isinstance(build_strategy(accelerator="cpu", devices=1, num_nodes=2, model=bert), DDPStrategy)
    spawn = build_strategy(accelerator="cpu", devices=1, strategy="ddp_spawn", model=bert)
    assert isinstance(spawn, DDPStrategy) and spawn._start_method == "spawn"


def test_single_process_is_auto_and_strings_pass_through(bert) -> None:
    assert build_strategy(accelerator="cpu", devices=1, model=bert) == "auto"
    assert build_strategy(accelerator="cpu", devices=1, strategy="single_device") == "single_device"


def test_fsdp_on_cpu_is_model_parallel(bert) -> None:
    strategy = build_strategy(fsdp="full_shard auto_wrap", accelerator="cpu", devices=2, model=bert)
    assert isinstance(strategy, ModelParallelStrategy)
    assert strategy._data_parallel_size == 2
    assert strategy._tensor_parallel_size == 1
    assert strategy.process_group_backend == "gloo"


def test_fsdp_on_cpu_carries_the_options_fully_shard_needs(bert) -> None:
    """offload, shard_grad_op and the layer classes reach configure_model on the strategy (see the 2-process
    tests in test_distributed.py for their effect on the sharded model)."""
    default = build_strategy(fsdp="full_shard auto_wrap", accelerator="cpu", devices=2, model=bert)
    assert isinstance(default, FSDP2Strategy)
    assert default.fsdp_options.reshard_after_forward and not default.fsdp_options.cpu_offload
    assert default.fsdp_options.transformer_layer_cls_to_wrap is None
    strategy = build_strategy(
        fsdp="shard_grad_op auto_wrap offload",
        fsdp_config={"transformer_layer_cls_to_wrap": ["BertAttention"]},
        accelerator="cpu",
        devices=2,
        model=bert,
    )
    assert isinstance(strategy, FSDP2Strategy)
    assert strategy.fsdp_options.cpu_offload is True
    assert strategy.fsdp_options.reshard_after_forward is False
    assert strategy.fsdp_options.transformer_layer_cls_to_wrap == ["BertAttention"]


def test_hybrid_shard_on_cpu_rejected(bert) -> None:
    with pytest.raises(ConfigError) as info:
        build_strategy(fsdp="hybrid_shard", accelerator="cpu", devices=2, model=bert)
    assert info.value.field == "fsdp"


def test_deepspeed_on_cpu_rejected_with_fsdp_fix(tmp_path: Path, bert) -> None:
    with pytest.raises(ConfigError) as info:
        build_strategy(
            deepspeed=_ds_template(2), args=_args(), model=bert, num_training_steps=10, accelerator="cpu"
        )
    assert info.value.field == "deepspeed"
    assert "GPU" in str(info.value) and "FSDP2" in info.value.fix


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"fsdp": "full_shard", "deepspeed": {"zero_optimization": {"stage": 2}}}, "deepspeed"),
        ({"fsdp": "full_shard", "strategy": "ddp"}, "strategy"),
        ({"devices": 2, "ddp_backend": "nccl"}, "ddp_backend"),
        ({"devices": 2, "ddp_backend": "glooo"}, "ddp_backend"),
        ({"devices": 0}, "devices"),
        ({"devices": 2, "ddp_timeout": -1}, "ddp_timeout"),
        ({"num_nodes": 0}, "num_nodes"),
    ],
)
def test_build_strategy_bad_input(bert, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_strategy(accelerator="cpu", model=bert, **kwargs)
    assert info.value.field == field


def test_fsdp1_strategy_construction_for_gpu_runs() -> None:
    """The CUDA branch only constructs objects, so its wiring is checkable on any machine."""
    model = BertForMaskedLM(_tiny_config())
    strategy = build_strategy(
        fsdp="shard_grad_op offload",
        fsdp_config={"activation_checkpointing": True},
        accelerator="gpu",
        devices=1,
        model=model,
    )
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP"
    assert strategy.cpu_offload.offload_params is True
    wrapped = strategy.kwargs["auto_wrap_policy"]._module_classes
    # BertEmbeddings is in _no_split_modules but holds the weight tied to the MLM head: not its own unit.
    assert {cls.__name__ for cls in wrapped} == {"BertLayer"}
    assert strategy._activation_checkpointing_kwargs


def test_fsdp1_unknown_layer_class(bert) -> None:
    with pytest.raises(ConfigError) as info:
        build_strategy(
            fsdp="full_shard",
            fsdp_config={"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]},
            accelerator="gpu",
            model=bert,
        )
    assert info.value.field == "fsdp_config.transformer_layer_cls_to_wrap"


def test_export_without_process_group_is_plain_state_dict(bert) -> None:
    state = export_full_state_dict(bert)
    assert state is not None and state.keys() == bert.state_dict().keys()


# ----------------------------------------------------------------------------------- two-process FSDP2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fsdp2_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Shard, train one step and export; every rank checks itself against an unsharded twin."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = _tiny_bert()
        reference = copy.deepcopy(model)
        mesh = init_device_mesh("cpu", (world_size,))
        sharded = fully_shard_hf_model(model, mesh=mesh)
        assert fully_shard_hf_model(sharded, mesh=mesh) is sharded, "a second call must be a no-op"
        assert isinstance(sharded.bert.encoder.layer[0], FSDPModule)
        assert isinstance(sharded, BertForSequenceClassification)

        generator = torch.Generator().manual_seed(1)
        batch = {
            "input_ids": torch.randint(0, 99, (4, 9), generator=generator),
            "labels": torch.tensor([0, 1, 1, 0]),
        }
        loss = sharded(**batch).loss
        loss.backward()
        ref_loss = reference(**batch).loss
        ref_loss.backward()
        assert abs(loss.item() - ref_loss.item()) < 1e-5, (loss.item(), ref_loss.item())
        ref_params = dict(reference.named_parameters())
        for name, param in sharded.named_parameters():
            torch.testing.assert_close(param.grad.full_tensor(), ref_params[name].grad, atol=1e-5, rtol=1e-4)

        torch.optim.SGD(sharded.parameters(), lr=0.5).step()
        torch.optim.SGD(reference.parameters(), lr=0.5).step()
        with torch.no_grad():
            sharded_logits = sharded(input_ids=batch["input_ids"]).logits
            ref_logits = reference(input_ids=batch["input_ids"]).logits
        torch.testing.assert_close(sharded_logits, ref_logits, atol=1e-5, rtol=1e-4)

        state = export_full_state_dict(sharded)
        if rank == 0:
            assert state is not None and set(state) == set(reference.state_dict())
            for name, tensor in reference.state_dict().items():
                assert state[name].device.type == "cpu"
                torch.testing.assert_close(state[name], tensor, atol=1e-6, rtol=1e-5)
        else:
            assert state is None

        wrote = save_full_pretrained(sharded, out_dir)
        assert wrote is (rank == 0)
        dist.barrier()
        if rank == 0:
            saved = json.loads((Path(out_dir) / "config.json").read_text())
            assert saved["architectures"] == ["BertForSequenceClassification"]
            loaded = BertForSequenceClassification.from_pretrained(out_dir).eval()
            with torch.no_grad():
                loaded_logits = loaded(input_ids=batch["input_ids"]).logits
            torch.testing.assert_close(loaded_logits, sharded_logits, atol=1e-6, rtol=1e-5)

        # Tied embeddings (MLM head shares the word embedding): the embedding block must stay in the root.
        torch.manual_seed(0)
        mlm = BertForMaskedLM(_tiny_config())
        mlm_ref = copy.deepcopy(mlm)
        fully_shard_hf_model(mlm, mesh=mesh)
        assert not isinstance(mlm.bert.embeddings, FSDPModule)
        mlm_loss = mlm(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        mlm_loss.backward()
        ref_mlm_loss = mlm_ref(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        assert abs(mlm_loss.item() - ref_mlm_loss.item()) < 1e-5
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_two_processes_match_unsharded(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_fsdp2_worker, args=(2, _free_port(), str(tmp_path / "export")), nprocs=2, join=True)
    assert (tmp_path / "export" / "config.json").is_file()


# ------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_gpu_builds_fsdp_strategy(bert) -> None:
    strategy = build_strategy(fsdp="full_shard auto_wrap", accelerator="auto", devices=1, model=bert)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy.name == "FULL_SHARD"
    wrapped = {cls.__name__ for cls in strategy.kwargs["auto_wrap_policy"]._module_classes}
    assert wrapped == {"BertLayer", "BertEmbeddings"}
    assert strategy.process_group_backend is None  # Lightning picks nccl


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_gpu_builds_deepspeed_strategy(bert) -> None:
    pytest.importorskip("deepspeed")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = build_strategy(
        deepspeed=_ds_template(3, offload=True),
        args=_args(),
        model=bert,
        num_training_steps=20,
        accelerator="auto",
        devices=1,
    )
    assert isinstance(strategy, DeepSpeedStrategy)
    assert strategy.config["zero_optimization"]["stage"] == 3
    assert strategy.config["train_micro_batch_size_per_gpu"] == 4
    assert '"auto"' not in json.dumps(strategy.config)
