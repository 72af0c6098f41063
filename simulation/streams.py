"""Random number streams of one replication: one independent generator per random input.

Each stream comes from `numpy.random.SeedSequence(seed, spawn_key=(replication, index))`, where
`index` is the stream's fixed position in `STREAM_NAMES`. So a stream depends only on the run
seed, the replication index and its own name: two runs that differ in pool size, queue capacity
or anything else that does not change the draws get the same arrivals, channels, duplicate flags
and per-call latencies (common random numbers). New streams go at the end of `STREAM_NAMES`, so
existing streams keep their values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STREAM_NAMES: tuple[str, ...] = (
    "arrivals",
    "channels",
    "duplicates",
    "latency",
    "errors",
    "jitter",
)


@dataclass(frozen=True)
class ReplicationStreams:
    """One `numpy.random.Generator` per random input of the model."""

    arrivals: np.random.Generator
    channels: np.random.Generator
    duplicates: np.random.Generator
    latency: np.random.Generator
    errors: np.random.Generator
    jitter: np.random.Generator


def replication_streams(seed: int, replication: int) -> ReplicationStreams:
    """Create the streams of replication `replication` of a run seeded with `seed`."""
    if seed < 0 or replication < 0:
        raise ValueError(
            f"seed={seed} and replication={replication} must both be >= 0 to seed the streams"
        )
    generators = {
        name: np.random.Generator(
            np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(replication, index)))
        )
        for index, name in enumerate(STREAM_NAMES)
    }
    return ReplicationStreams(**generators)
