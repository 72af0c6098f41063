"""Two supervisor shards sharing Redis and a config database, against the execution stub.

Every event goes to both shards, as a broadcast feed would, with 10% of the events sent twice.
The stub's per-key counts must show each (event, config) copy trade executed exactly once.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from helpers_processes import http_json, migrate, running_stub, running_supervisor, wait_idle

from supervisor.db import create_engine_from_url, list_configs, seed_configs

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

UNIQUE_EVENTS = 1000
DUPLICATE_RATIO = 0.1
BATCH_SIZE = 100


def test_two_shards_execute_each_copy_trade_once(
    tmp_path: Path, redis_server_url: str, redis_key_prefix: str
) -> None:
    database_url = f"sqlite:///{tmp_path / 'configs.db'}"
    migrate(database_url)
    engine = create_engine_from_url(database_url)
    seed_configs(engine, 40, 8, seed=3)
    configs_by_channel = Counter(row.channel for row in list_configs(engine))
    engine.dispose()
    channels = [*sorted(configs_by_channel), "unfollowed"]

    rng = random.Random(11)
    events = [{"event_id": f"e2e-{i}", "channel": rng.choice(channels), "symbol": "BTC",
               "side": "buy", "quantity": 1} for i in range(UNIQUE_EVENTS)]  # fmt: skip
    feed = events + rng.sample(events, int(UNIQUE_EVENTS * DUPLICATE_RATIO))
    rng.shuffle(feed)

    base_env = {
        "SUPERVISOR_DATABASE_URL": database_url,
        "SUPERVISOR_REDIS_URL": redis_server_url,
        "SUPERVISOR_DEDUP_KEY_PREFIX": redis_key_prefix,
        "SUPERVISOR_SHARD_COUNT": "2",
        "SUPERVISOR_WORKER_POOL_SIZE": "8",
        "SUPERVISOR_QUEUE_MAX_SIZE": "5000",
    }
    with running_stub(tmp_path) as stub:
        base_env["SUPERVISOR_EXECUTION_URL"] = stub.url
        with (
            running_supervisor(tmp_path, {**base_env, "SUPERVISOR_SHARD_INDEX": "0"}) as shard0,
            running_supervisor(tmp_path, {**base_env, "SUPERVISOR_SHARD_INDEX": "1"}) as shard1,
        ):
            for start in range(0, len(feed), BATCH_SIZE):
                batch = {"events": feed[start : start + BATCH_SIZE]}
                for shard in (shard0, shard1):
                    status, _ = http_json(shard.url + "/events", batch)
                    assert status in (200, 202)
            stats = [wait_idle(shard.url) for shard in (shard0, shard1)]
        _, keys = http_json(stub.url + "/keys")

    expected_keys = {
        f"{event['event_id']}:{row_id}"
        for event in events
        for row_id in _config_ids(database_url, event["channel"])
    }
    assert set(keys["counts"]) == expected_keys
    assert set(keys["counts"].values()) == {1}

    for snapshot in stats:
        counts = snapshot["events"]
        settled = sum(v for k, v in counts.items() if k not in ("received", "in_flight"))
        assert counts["received"] == settled + counts["in_flight"]
        assert counts["received"] == len(feed)
        assert counts["failed"] == 0
        assert counts["dropped"] == 0
    assert sum(s["events"]["processed"] for s in stats) == UNIQUE_EVENTS
    assert all(s["events"]["not_owned"] > 0 for s in stats)


_IDS: dict[str, dict[str, list[str]]] = {}


def _config_ids(database_url: str, channel: str) -> list[str]:
    if database_url not in _IDS:
        engine = create_engine_from_url(database_url)
        by_channel: dict[str, list[str]] = {}
        for row in list_configs(engine):
            by_channel.setdefault(row.channel, []).append(row.id)
        engine.dispose()
        _IDS[database_url] = by_channel
    return _IDS[database_url].get(channel, [])
