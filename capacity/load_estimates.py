"""Database and Redis load estimates of the supervisor.

Database and Redis load are arithmetic on the refresh cadence and the dedup key lifetimes,
carried over a (low, high) range of each uncertain input. `measure_bytes_per_key` measures the
Redis key size that the memory estimate takes as input.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capacity.recommend_errors import RecommendationError, require_positive

RangeInput = float | tuple[float, float]


@dataclass(frozen=True)
class Estimate:
    """A computed quantity: its value from the central inputs and its low and high bounds."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """Return the three numbers as a dict."""
        return {"value": self.value, "low": self.low, "high": self.high}


def _as_range(name: str, value: RangeInput) -> tuple[float, float, float]:
    """Return (central, low, high) of a number or a (low, high) pair; central is the midpoint."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise RecommendationError(f"{name}={value!r} is invalid: give a number or (low, high)")
        low, high = float(value[0]), float(value[1])
    else:
        low = high = float(value)
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise RecommendationError(
            f"{name}={value!r} is invalid: give a number >= 0 or a pair (low, high) with "
            "0 <= low <= high"
        )
    return (low + high) / 2.0, low, high


def _estimate(function: Any, *ranges: tuple[float, float, float]) -> Estimate:
    """Evaluate a function that rises with every argument at the central, low and high inputs."""
    return Estimate(
        value=float(function(*(r[0] for r in ranges))),
        low=float(function(*(r[1] for r in ranges))),
        high=float(function(*(r[2] for r in ranges))),
    )


def pages_per_read(rows: float, page_size: int) -> float:
    """Return the queries of one keyset-paged read of `rows` rows.

    The reader stops at the first page shorter than `page_size`, so a read of `n` rows takes
    `floor(n / page_size) + 1` queries (an exact multiple costs one extra, empty page).
    """
    return math.floor(rows / page_size) + 1


@dataclass(frozen=True)
class DatabaseLoad:
    """Queries and rows per second that the config refreshes put on the database.

    Every shard caches the whole table, so each shard runs the same reads and the totals are
    `shard_count` times one instance's. Values are upper estimates: a refresh interval counts
    from the end of the previous refresh, so real refreshes come slightly less often.
    """

    shard_count: int
    incremental_rows_per_refresh: Estimate
    incremental_queries_per_s: Estimate
    incremental_rows_per_s: Estimate
    full_queries_per_s: Estimate
    full_rows_per_s: Estimate
    queries_per_s: Estimate
    rows_per_s: Estimate
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """Return every figure as JSON-ready values."""
        data: dict[str, Any] = {"shard_count": self.shard_count, "notes": list(self.notes)}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Estimate):
                data[name] = value.as_dict()
        return data


def database_load(
    *,
    shard_count: int,
    refresh_interval_ms: float,
    full_refresh_interval_ms: float,
    configs_total: RangeInput,
    changed_rows_per_s: RangeInput,
    page_size: int,
    overlap_ms: float = 5000.0,
    active_fraction: RangeInput = 1.0,
) -> DatabaseLoad:
    """Estimate the refresh load on the database across all shards.

    An incremental refresh reads the rows changed since its watermark minus `overlap_ms`, so
    about `changed_rows_per_s x (refresh_interval + overlap)` rows. A full refresh reads the
    largest `"updatedAt"` in one query and then every active, auto-executing row
    (`configs_total x active_fraction`). Each read is keyset-paged by `page_size`.
    `configs_total`, `changed_rows_per_s` and `active_fraction` take a number or a
    (low, high) range, which is carried to the low and high bounds of every figure.
    """
    if not (isinstance(shard_count, int) and shard_count >= 1):
        raise RecommendationError(f"shard_count={shard_count!r} is invalid: use an integer >= 1")
    if not (isinstance(page_size, int) and page_size >= 1):
        raise RecommendationError(f"page_size={page_size!r} is invalid: use an integer >= 1")
    require_positive("refresh_interval_ms", refresh_interval_ms)
    require_positive("full_refresh_interval_ms", full_refresh_interval_ms)
    if not (math.isfinite(overlap_ms) and overlap_ms >= 0):
        raise RecommendationError(f"overlap_ms={overlap_ms!r} is invalid: use 0 or more")
    configs = _as_range("configs_total", configs_total)
    changed = _as_range("changed_rows_per_s", changed_rows_per_s)
    active = _as_range("active_fraction", active_fraction)
    if active[2] > 1.0:
        raise RecommendationError(f"active_fraction={active_fraction!r} is invalid: use at most 1")

    incremental_s = refresh_interval_ms / 1000.0
    full_s = full_refresh_interval_ms / 1000.0
    read_window_s = incremental_s + overlap_ms / 1000.0

    def incremental_rows(rate: float) -> float:
        return rate * read_window_s

    def incremental_queries(rate: float) -> float:
        return shard_count * pages_per_read(incremental_rows(rate), page_size) / incremental_s

    def full_queries(total: float, fraction: float) -> float:
        return shard_count * (1 + pages_per_read(total * fraction, page_size)) / full_s

    def full_rows(total: float, fraction: float) -> float:
        return shard_count * total * fraction / full_s

    incremental_q = _estimate(incremental_queries, changed)
    incremental_r = _estimate(
        lambda rate: shard_count * incremental_rows(rate) / incremental_s, changed
    )
    full_q = _estimate(full_queries, configs, active)
    full_r = _estimate(full_rows, configs, active)
    return DatabaseLoad(
        shard_count=shard_count,
        incremental_rows_per_refresh=_estimate(incremental_rows, changed),
        incremental_queries_per_s=incremental_q,
        incremental_rows_per_s=incremental_r,
        full_queries_per_s=full_q,
        full_rows_per_s=full_r,
        queries_per_s=_sum_estimates(incremental_q, full_q),
        rows_per_s=_sum_estimates(incremental_r, full_r),
        notes=(
            "every shard reads the whole table, so the load grows with the shard count",
            "the overlap window makes each incremental refresh read recent rows again",
        ),
    )


def _sum_estimates(first: Estimate, second: Estimate) -> Estimate:
    return Estimate(
        value=first.value + second.value, low=first.low + second.low, high=first.high + second.high
    )


@dataclass(frozen=True)
class RedisMemory:
    """Dedup keys alive in Redis and the memory they take, with low and high bounds.

    `done_keys` are the done marks of processed events, alive for the dedup TTL; `claim_keys`
    are claims of events in flight. Memory is keys x bytes per key x fragmentation ratio.
    """

    done_keys: Estimate
    claim_keys: Estimate
    keys: Estimate
    memory_bytes: Estimate

    def as_dict(self) -> dict[str, Any]:
        """Return every figure as JSON-ready values."""
        return {
            "done_keys": self.done_keys.as_dict(),
            "claim_keys": self.claim_keys.as_dict(),
            "keys": self.keys.as_dict(),
            "memory_bytes": self.memory_bytes.as_dict(),
            "memory_mib": {k: v / 2**20 for k, v in self.memory_bytes.as_dict().items()},
        }


def redis_memory(
    *,
    event_rate_per_s: RangeInput,
    dedup_ttl_ms: float,
    bytes_per_key: RangeInput,
    duplicate_ratio: float = 0.0,
    in_flight_s: RangeInput = 1.0,
    fragmentation_ratio: RangeInput = 1.0,
) -> RedisMemory:
    """Estimate the dedup keys alive in Redis and their memory, by Little's law.

    Unique events arrive at `event_rate_per_s x (1 - duplicate_ratio)`. Each leaves a done
    mark for `dedup_ttl_ms`, and keeps a claim while in flight for about `in_flight_s` (the
    mean end-to-end latency). `bytes_per_key` is best measured with `measure_bytes_per_key`.
    Dropped and failed events release their key at once and are counted as done marks here, so
    the estimate is high by the drop and failure rate.
    """
    require_positive("dedup_ttl_ms", dedup_ttl_ms)
    if not 0.0 <= duplicate_ratio < 1.0:
        raise RecommendationError(
            f"duplicate_ratio={duplicate_ratio!r} is invalid: use a fraction in [0, 1)"
        )
    rate = _as_range("event_rate_per_s", event_rate_per_s)
    size = _as_range("bytes_per_key", bytes_per_key)
    in_flight = _as_range("in_flight_s", in_flight_s)
    fragmentation = _as_range("fragmentation_ratio", fragmentation_ratio)
    ttl_s = dedup_ttl_ms / 1000.0
    unique = 1.0 - duplicate_ratio

    done = _estimate(lambda r: r * unique * ttl_s, rate)
    claims = _estimate(lambda r, t: r * unique * t, rate, in_flight)
    keys = _sum_estimates(done, claims)
    memory = Estimate(
        value=keys.value * size[0] * fragmentation[0],
        low=keys.low * size[1] * fragmentation[1],
        high=keys.high * size[2] * fragmentation[2],
    )
    return RedisMemory(done_keys=done, claim_keys=claims, keys=keys, memory_bytes=memory)


@dataclass(frozen=True)
class KeySizeMeasurement:
    """`MEMORY USAGE` of sample dedup keys, in bytes."""

    samples: int
    mean_bytes: float
    min_bytes: int
    max_bytes: int

    @property
    def range(self) -> tuple[float, float]:
        """(min, max) bytes per key, ready for `redis_memory(bytes_per_key=...)`."""
        return float(self.min_bytes), float(self.max_bytes)


def measure_bytes_per_key(
    redis_url: str,
    prefix: str,
    samples: int = 200,
    *,
    event_id_length: int = 36,
    ttl_ms: int = 60_000,
) -> KeySizeMeasurement:
    """Write `samples` done marks shaped like the supervisor's, read `MEMORY USAGE`, delete them.

    Keys are `{prefix}{event id}` with event ids of `event_id_length` characters and the value
    `done` with a TTL of `ttl_ms`, as the supervisor's dedup writes them. Every key written is
    deleted before returning, also when a command fails.
    """
    import redis

    if samples < 1:
        raise RecommendationError(f"samples={samples} is invalid: use 1 or more keys")
    if event_id_length < 1:
        raise RecommendationError(f"event_id_length={event_id_length} is invalid: use 1 or more")
    client = redis.Redis.from_url(redis_url)
    keys = [prefix + _sample_event_id(event_id_length) for _ in range(samples)]
    try:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, "done", px=ttl_ms)
            pipe.execute()
        sizes = [_memory_usage(client, key) for key in keys]
    finally:
        client.delete(*keys)
        client.close()
    return KeySizeMeasurement(
        samples=samples,
        mean_bytes=float(np.mean(sizes)),
        min_bytes=int(min(sizes)),
        max_bytes=int(max(sizes)),
    )


def _sample_event_id(length: int) -> str:
    text = ""
    while len(text) < length:
        text += uuid.uuid4().hex
    return text[:length]


def _memory_usage(client: Any, key: str) -> int:
    size = client.memory_usage(key, samples=0)
    if size is None:
        raise RecommendationError(f"MEMORY USAGE returned nothing for {key!r}: the key expired")
    return int(size)
