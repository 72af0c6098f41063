"""Sharding: jump consistent hash over a BLAKE2b key, stable across processes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from supervisor.sharding import ShardFilter, channel_key, jump_hash, shard_for

# Computed from the definitions: BLAKE2b-64 of the UTF-8 name, then the jump hash loop.
KNOWN_SHARDS = {
    ("alpha", 2): 0,
    ("alpha", 8): 6,
    ("beta", 8): 2,
    ("ch-0", 4): 1,
    ("ch-1", 4): 2,
    ("ch-17", 10): 9,
}


def test_channel_key_is_blake2b_prefix() -> None:
    assert channel_key("alpha") == 0x5306D220EAC8089A


@pytest.mark.parametrize(("channel", "shards"), sorted(KNOWN_SHARDS))
def test_known_channels_map_to_fixed_shards(channel: str, shards: int) -> None:
    assert shard_for(channel, shards) == KNOWN_SHARDS[(channel, shards)]


@pytest.mark.parametrize(
    ("key", "buckets", "expected"),
    [
        # Values of ClickHouse's jumpConsistentHash on the same inputs (its function tests).
        (1, 1, 0),
        (42, 57, 43),
        (256, 1024, 520),
        (3735883980, 1, 0),
        (3735883980, 666, 361),
        (16045690984833335023, 255, 237),
    ],
)
def test_jump_hash_matches_reference(key: int, buckets: int, expected: int) -> None:
    assert jump_hash(key, buckets) == expected


def test_same_shard_in_another_process() -> None:
    code = "from supervisor.sharding import shard_for; print(shard_for('alpha', 8))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert int(output) == shard_for("alpha", 8)


def test_channels_move_only_to_the_new_shard() -> None:
    channels = [f"ch-{i}" for i in range(2000)]

    for shards in range(1, 9):
        before = [shard_for(c, shards) for c in channels]
        after = [shard_for(c, shards + 1) for c in channels]
        moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]

        assert all(a == shards for _, a in moved)
        assert len(moved) / len(channels) == pytest.approx(1 / (shards + 1), abs=0.04)


def test_shards_are_balanced() -> None:
    counts = Counter(shard_for(f"ch-{i}", 4) for i in range(8000))

    assert sorted(counts) == [0, 1, 2, 3]
    assert all(1800 <= count <= 2200 for count in counts.values())


def test_filters_partition_channels() -> None:
    filters = [ShardFilter(index, 3) for index in range(3)]

    for i in range(300):
        owners = [f.shard_index for f in filters if f.owns(f"ch-{i}")]
        assert owners == [shard_for(f"ch-{i}", 3)]


def test_single_shard_owns_everything() -> None:
    assert ShardFilter(0, 1).owns("anything")


def test_filter_rejects_index_out_of_range() -> None:
    with pytest.raises(ValueError, match="shard_index=2"):
        ShardFilter(2, 2)


def test_jump_hash_rejects_zero_buckets() -> None:
    with pytest.raises(ValueError, match="buckets=0"):
        jump_hash(1, 0)
