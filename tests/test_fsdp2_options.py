"""``fsdp_config`` options on the CPU FSDP2 path: the ones that can act, act; the FSDP1-only ones warn once.

``auto_wrap_policy`` (``SIZE_BASED_WRAP`` with ``min_num_params``, ``NO_WRAP``) decides which modules
become FSDP units and ``activation_checkpointing`` turns on the model's own checkpointing before
sharding; both are checked on a real ``fully_shard`` in a one-process gloo group (the gradients must
still match an unsharded twin). The two-process checks of sharding itself are in ``test_strategies.py``.
"""

from __future__ import annotations

import copy
import socket
import warnings
from typing import Any

import pytest
import torch
import torch.distributed as dist

from hf_lightning.strategies import build_strategy, shard_for_strategy
from hf_lightning.strategies.fsdp import FSDP1_ONLY
from tests.conftest import tiny_bert_config


@pytest.fixture
def one_process_group():
    if dist.is_initialized():
        pytest.fail("a process group is already open in this test process")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _bert():
    import transformers

    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2, hidden_dropout_prob=0.0,
                                                                     attention_probs_dropout_prob=0.0))


def _shard(model: torch.nn.Module, fsdp_config: dict[str, Any]) -> torch.nn.Module:
    """Shard as a run with ``fsdp="full_shard"`` and ``fsdp_config`` does: the strategy carries the options."""
    from torch.distributed.device_mesh import init_device_mesh

    strategy = build_strategy(fsdp="full_shard", fsdp_config=fsdp_config, accelerator="cpu", devices=1)
    return shard_for_strategy(model, strategy, mesh=init_device_mesh("cpu", (1,)))


def _units(model: torch.nn.Module) -> list[str]:
    from torch.distributed.fsdp import FSDPModule

    return [name for name, m in model.named_modules() if isinstance(m, FSDPModule)]


def _grads_match_unsharded(sharded: torch.nn.Module, reference: torch.nn.Module) -> None:
    batch = {"input_ids": torch.randint(0, 99, (4, 9), generator=torch.Generator().manual_seed(1)),
             "labels": torch.tensor([0, 1, 1, 0])}
    sharded.train()
    reference.train()
    sharded(**batch).loss.backward()
    reference(**batch).loss.backward()
    ref = dict(reference.named_parameters())
    for name, param in sharded.named_parameters():
        torch.testing.assert_close(param.grad.full_tensor(), ref[name].grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("policy", "min_num_params", "expected"),
    [
        ("TRANSFORMER_BASED_WRAP", 0, ["", "bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1"]),
        ("NO_WRAP", 0, [""]),
        ("SIZE_BASED_WRAP", 2500, None),
    ],
)
def test_auto_wrap_policy_decides_the_units(one_process_group, policy: str, min_num_params: int,
                                            expected: list[str] | None) -> None:
    model = _bert()
    reference = copy.deepcopy(model)
    _shard(model, {"auto_wrap_policy": policy, "min_num_params": min_num_params})
    units = _units(model)
    if expected is not None:
        assert units == expected
    else:  # units below the blocks (the attention's 4 x 1 056 parameters) and the embedding tables on their own
        assert {"bert.encoder.layer.0.attention.self", "bert.embeddings.word_embeddings"} <= set(units)
        assert "bert.embeddings" not in units
    _grads_match_unsharded(model, reference)


def test_activation_checkpointing_on_fsdp2(one_process_group) -> None:
    model = _bert()
    reference = copy.deepcopy(model)
    _shard(model, {"activation_checkpointing": True})
    assert model.is_gradient_checkpointing
    assert not reference.is_gradient_checkpointing
    _grads_match_unsharded(model, reference)


@pytest.mark.parametrize(("option", "inert", "reason"), FSDP1_ONLY)
def test_fsdp1_only_options_warn_once_on_the_cpu_path(option: str, inert: Any, reason: str) -> None:
    value = {"backward_prefetch": "BACKWARD_PRE"}.get(option, not inert)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            build_strategy(fsdp="full_shard", fsdp_config={option: value}, accelerator="cpu", devices=2)
    mine = [str(w.message) for w in caught if f"fsdp_config.{option} has no effect" in str(w.message)]
    assert mine == [f"fsdp_config.{option} has no effect on the CPU FSDP2 path: {reason}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_strategy(fsdp="full_shard", fsdp_config={option: inert} if inert is not None else {},
                       accelerator="cpu", devices=2)
    assert not [w for w in caught if "has no effect" in str(w.message)]
