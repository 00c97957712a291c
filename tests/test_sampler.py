"""ResumableSampler: deterministic order, rank split, one-time resume skip, real DataLoader behaviour."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from hf_lightning.errors import ConfigError
from hf_lightning.sampler import ResumableSampler, length_grouped_order

__all__: list[str] = []


class _Indexed(Dataset[int]):
    """Returns the index itself, so batches show exactly which samples were drawn."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def test_same_seed_and_epoch_give_same_order_and_epochs_differ():
    a = ResumableSampler(50, seed=7)
    b = ResumableSampler(50, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert sorted(a) == list(range(50))
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(ResumableSampler(50, seed=8)) != list(ResumableSampler(50, seed=7))
    assert list(ResumableSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "n, replicas, drop_last", [(10, 3, False), (10, 3, True), (12, 4, False), (2, 3, False)]
)
def test_rank_split_covers_the_dataset(n, replicas, drop_last):
    shards = [
        ResumableSampler(n, seed=1, num_replicas=replicas, rank=r, drop_last=drop_last)
        for r in range(replicas)
    ]
    parts = [list(s) for s in shards]
    assert all(len(p) == len(shards[0]) for p in parts)
    merged = [i for p in parts for i in p]
    if drop_last:
        assert len(merged) == (n // replicas) * replicas
        assert len(set(merged)) == len(merged)
    else:
        assert set(merged) == set(range(n))
        assert len(merged) == -(-n // replicas) * replicas
    # interleaved split of one permutation, padded by wrapping around: rank r holds positions r, r + replicas, ...
    full = ResumableSampler(n, seed=1).epoch_indices(0)
    padded = [full[i % n] for i in range(len(merged))]
    for rank, part in enumerate(parts):
        assert part == padded[rank::replicas]


def test_resume_position_skips_consumed_indices_exactly_once():
    sampler = ResumableSampler(20, seed=3, num_replicas=2, rank=1)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_resume_position(2, 4)
    assert sampler.epoch == 2 and sampler.pending_skip == 4
    assert len(sampler) == 10  # Lightning needs the full epoch length, see the module docstring
    sampler.set_epoch(2)  # Lightning repeats set_epoch for the resumed epoch: the skip must survive
    assert list(sampler) == whole[4:]
    assert sampler.pending_skip == 0
    assert list(sampler) == whole  # a second pass over the same epoch is whole again
    sampler.set_epoch(3)
    assert len(list(sampler)) == 10


def test_resume_position_set_epoch_past_it_drops_skip_and_full_epoch_rolls_over():
    sampler = ResumableSampler(8, seed=0)
    sampler.set_resume_position(1, 3)
    sampler.set_epoch(2)
    assert sampler.pending_skip == 0 and sampler.resume_position is None
    assert len(list(sampler)) == 8

    sampler.set_resume_position(4, 8)  # whole epoch consumed -> start of the next one
    assert sampler.epoch == 5 and sampler.pending_skip == 0

    with pytest.raises(ConfigError, match="resume_from_checkpoint"):
        sampler.set_resume_position(0, 9)


def _batches(sampler: ResumableSampler, num_workers: int, epochs: list[int]) -> list[list[int]]:
    loader = DataLoader(
        _Indexed(sampler.data_source_len),
        batch_size=4,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.extend(batch.tolist() for batch in loader)
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_resumed_sequence_equals_tail_of_uninterrupted_one(num_workers):
    n, batch = 26, 4  # 7 batches per epoch, the last one partial
    uninterrupted = _batches(ResumableSampler(n, seed=11), num_workers, [0, 1, 2])

    # "crash" after 3 batches of epoch 1: the loop saved 3 * batch consumed samples
    saved = ResumableSampler(n, seed=11)
    saved.set_epoch(1)
    state = saved.state_dict(consumed_on_this_rank=3 * batch)

    resumed_sampler = ResumableSampler(n, seed=11)
    resumed_sampler.load_state_dict(state)
    # DataLoader workers pull indices as soon as the iterator exists, before Lightning's set_epoch:
    # the epoch must already be right after load_state_dict.
    assert resumed_sampler.epoch == 1
    resumed = _batches(resumed_sampler, num_workers, [1, 2])

    per_epoch = -(-n // batch)
    assert resumed == uninterrupted[per_epoch + 3 :]


def test_state_dict_round_trip_and_epoch_end_convention():
    sampler = ResumableSampler(30, seed=5, num_replicas=3, rank=2)
    sampler.set_epoch(4)
    state = sampler.state_dict(consumed_on_this_rank=6)
    assert (state["epoch"], state["consumed_on_this_rank"]) == (4, 6)

    copy = ResumableSampler(30, seed=5, num_replicas=3, rank=2)
    copy.load_state_dict(state)
    assert copy.resume_position == (4, 6)
    assert copy.state_dict() == state  # an unused resume position is what the state reports
    assert list(copy) == sampler.epoch_indices(4)[6:]

    finished = sampler.state_dict(consumed_on_this_rank=3, epoch_finished=True)
    assert (finished["epoch"], finished["consumed_on_this_rank"]) == (5, 0)
    overshoot = sampler.state_dict(consumed_on_this_rank=12)  # ready * batch_size past a partial batch
    assert (overshoot["epoch"], overshoot["consumed_on_this_rank"]) == (5, 0)


def test_load_state_dict_warns_on_a_different_data_order_and_resumes():
    """As transformers: a changed dataset, seed or device count resumes at the saved position, with a warning."""
    state = ResumableSampler(30, seed=5).state_dict(consumed_on_this_rank=2)
    for changed, what in (
        (ResumableSampler(31, seed=5), "data_source_len 30 -> 31"),
        (ResumableSampler(30, seed=6), "seed 5 -> 6"),
        (ResumableSampler(30, seed=5, num_replicas=2, rank=0), "num_replicas 1 -> 2"),
    ):
        with pytest.warns(UserWarning, match=f"data order changed.*{what}"):
            changed.load_state_dict(state)
        assert changed.pending_skip == 2
    shrunk = ResumableSampler(10, seed=5)
    with pytest.warns(UserWarning, match="data_source_len 30 -> 10"):
        shrunk.load_state_dict(ResumableSampler(30, seed=5).state_dict(consumed_on_this_rank=20))
    assert (shrunk.epoch, shrunk.pending_skip) == (1, 0), "past the new epoch's end: the next epoch starts"
    with pytest.raises(ConfigError, match="version"):
        changed.load_state_dict({**state, "version": 99})


def test_group_by_length_groups_similar_lengths():
    n, batch = 400, 4
    lengths = [(i * 37) % 101 for i in range(n)]
    sampler = ResumableSampler(n, seed=0, lengths=lengths, group_by_length=True, batch_size=batch)
    order = list(sampler)
    assert sorted(order) == list(range(n))
    assert lengths[order[0]] == max(lengths)  # longest first, so an OOM shows up on step one
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in zip(*[iter(order)] * batch)]
    random_spread = [
        max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in zip(*[iter(range(n))] * batch)
    ]
    assert sum(spread) * 5 < sum(random_spread)
    # megabatches of mult * batch_size, each sorted longest first (mult = min(50, n // (4 * batch)) = 25);
    # only the first element of each may differ, as the longest sample was swapped to the front
    mega = 25 * batch
    for start in range(0, n, mega):
        chunk = [lengths[i] for i in order[start + 1 : start + mega]]
        assert chunk == sorted(chunk, reverse=True)
    # different epochs still shuffle
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_length_grouped_order_is_a_permutation_for_tiny_inputs():
    assert length_grouped_order([], [], 4) == []
    assert sorted(length_grouped_order([2, 0, 1], [5, 9, 1], 8)) == [0, 1, 2]


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="group_by_length"):
        ResumableSampler(3, group_by_length=True)
    with pytest.raises(ConfigError, match="lengths"):
        ResumableSampler(3, lengths=[1, 2])
    with pytest.raises(ConfigError, match="rank"):
        ResumableSampler(3, num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="batch_size"):
        ResumableSampler(3, batch_size=0)
