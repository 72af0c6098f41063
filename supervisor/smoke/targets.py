"""Targets and the channels they own: discovery through `/stats` and `/metrics`.

Each target gets one test channel that its shard owns (its lane), so a copy trade on that
channel may be executed by that target only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from supervisor.smoke.errors import SmokeError, TargetError
from supervisor.smoke.metrics import refresh_timestamp
from supervisor.smoke.results import Status

if TYPE_CHECKING:
    from supervisor.smoke.run import SmokeRun


@dataclass(frozen=True, kw_only=True)
class TargetInfo:
    """Settings a target reports about itself in the `instance` part of `/stats`."""

    url: str
    instance_id: str
    shard_index: int
    shard_count: int
    pool_size: int
    config_refresh_ms: int
    config_full_refresh_ms: int
    dedup_backend: str

    @classmethod
    def from_stats(cls, url: str, stats: Any) -> TargetInfo:
        try:
            instance = stats["instance"]
            return cls(
                url=url,
                instance_id=str(instance["instance_id"]),
                shard_index=int(instance["shard_index"]),
                shard_count=int(instance["shard_count"]),
                pool_size=int(instance["pool_size"]),
                config_refresh_ms=int(instance["config_refresh_ms"]),
                config_full_refresh_ms=int(instance["config_full_refresh_ms"]),
                dedup_backend=str(instance.get("dedup_backend", "unknown")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise TargetError(
                f"GET {url}/stats has no valid 'instance' object ({error!r})"
            ) from error


@dataclass
class Lane:
    """The configs of one target's test channel: `A` is disabled, `B` deleted, `C` stays."""

    target: TargetInfo
    channel: str
    config_a: str = ""
    config_b: str = ""
    config_c: str = ""
    picked_up: bool = False


def channel_owned_by(prefix: str, target: TargetInfo, position: int) -> str:
    """Return the first channel `PREFIXt<position>-<k>` that the target's shard owns."""
    from supervisor.sharding import shard_for

    for attempt in range(100_000):
        channel = f"{prefix}t{position}-{attempt}"
        if shard_for(channel, target.shard_count) == target.shard_index:
            return channel
    raise SmokeError(f"no channel found for shard {target.shard_index} of {target.shard_count}")


def discover(run: SmokeRun) -> bool:
    """Read every target's `/stats` and `/metrics`; return False when one is unusable."""
    ok = True
    for url in run.options.targets:
        started_s = run.clock.monotonic()
        try:
            stats = run.http.get_json(f"{url}/stats")
            target = TargetInfo.from_stats(url, stats)
            ready = bool(stats["instance"].get("ready", True))
            samples = run.metrics(target)
        except TargetError as error:
            run.record("discover", url, Status.FAIL, started_s, str(error))
            ok = False
            continue
        if not ready:
            run.record("discover", url, Status.FAIL, started_s, "the instance is not ready")
            ok = False
            continue
        run.targets.append(target)
        run.full_refresh_at_discovery[url] = refresh_timestamp(samples, "full")
        run.record(
            "discover", url, Status.PASS, started_s,
            f"instance {target.instance_id}, shard {target.shard_index} of "
            f"{target.shard_count}, refresh {target.config_refresh_ms} ms, full refresh "
            f"{target.config_full_refresh_ms} ms, pool {target.pool_size}, dedup "
            f"{target.dedup_backend}",
        )
    run.discovered_at_s = run.clock.monotonic()
    return ok
