"""RNG snapshots must survive torch.save / torch.load(weights_only=True) and replay the same numbers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from hf_lightning.rng import capture_rng_state, restore_rng_state

__all__: list[str] = []


def _draw() -> tuple[list[float], list[float], list[float], list[float]]:
    # Gaussians too: both python and numpy cache a second normal value inside their state.
    return (
        [random.random(), random.gauss(0.0, 1.0)],
        np.random.rand(3).tolist() + [float(np.random.randn())],
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


def test_round_trip_through_weights_only_load_replays_all_generators(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0.0, 1.0)  # leave a cached gaussian in the python state
    np.random.randn()  # and an odd number of numpy normals, so has_gauss is set
    state = capture_rng_state()
    expected = _draw()

    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    _draw()  # move every generator on, so a no-op restore would be caught
    restore_rng_state(loaded)

    assert _draw() == expected


def test_snapshot_uses_only_plain_types():
    def check(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str)
                check(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                check(item)
        else:
            assert value is None or isinstance(value, (int, float, str, bytes)), type(value)

    check(capture_rng_state())


def test_restore_rejects_unknown_version():
    state = capture_rng_state()
    state["version"] = 99
    with pytest.raises(ValueError, match="version"):
        restore_rng_state(state)
