"""Settings tests: defaults, parsing, messages that name variable, value and range, masking."""

from __future__ import annotations

import pytest

from supervisor.settings import VARIABLES, Settings, SettingsError, mask_url


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})

    assert settings.worker_pool_size == 8
    assert settings.queue_max_size == 1000
    assert settings.config_refresh_ms == 5000
    assert settings.config_full_refresh_ms == 300_000
    assert settings.shard_count == 1
    assert settings.shard_index == 0
    assert settings.redis_url is None
    assert settings.dedup_backend == "memory"
    assert settings.target_latency_ms == 250
    assert settings.http_host == "127.0.0.1"
    assert settings.http_port == 8080
    assert settings.database_url.startswith("sqlite:///")
    assert settings.database_url.endswith("supervisor.db")


def test_values_parsed_and_stripped() -> None:
    settings = Settings.from_env(
        {
            "SUPERVISOR_WORKER_POOL_SIZE": " 32 ",
            "SUPERVISOR_SHARD_COUNT": "4",
            "SUPERVISOR_SHARD_INDEX": "3",
            "SUPERVISOR_REDIS_URL": "redis://127.0.0.1:6379/0",
            "SUPERVISOR_QUEUE_MAX_SIZE": "",
        }
    )

    assert settings.worker_pool_size == 32
    assert settings.shard_index == 3
    assert settings.queue_max_size == 1000
    assert settings.dedup_backend == "redis"


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("SUPERVISOR_WORKER_POOL_SIZE", "0", ["SUPERVISOR_WORKER_POOL_SIZE=0", "1 to 10000"]),
        ("SUPERVISOR_WORKER_POOL_SIZE", "eight", ["SUPERVISOR_WORKER_POOL_SIZE='eight'", "1 to"]),
        ("SUPERVISOR_QUEUE_MAX_SIZE", "-5", ["SUPERVISOR_QUEUE_MAX_SIZE=-5", "1 to 10000000"]),
        ("SUPERVISOR_CONFIG_REFRESH_MS", "1.5", ["SUPERVISOR_CONFIG_REFRESH_MS='1.5'", "10 to"]),
        ("SUPERVISOR_CONFIG_FULL_REFRESH_MS", "5", ["SUPERVISOR_CONFIG_FULL_REFRESH_MS=5", "100"]),
        ("SUPERVISOR_HTTP_PORT", "70000", ["SUPERVISOR_HTTP_PORT=70000", "0 to 65535"]),
        ("SUPERVISOR_TARGET_LATENCY_MS", "0", ["SUPERVISOR_TARGET_LATENCY_MS=0", "1 to 600000"]),
        ("SUPERVISOR_DATABASE_URL", "supervisor.db", ["SUPERVISOR_DATABASE_URL=", "sqlite:///"]),
        ("SUPERVISOR_REDIS_URL", "localhost", ["SUPERVISOR_REDIS_URL='localhost'", "redis://"]),
        (
            "SUPERVISOR_REDIS_URL",
            "http://:pw@cache:6379/0",
            ["SUPERVISOR_REDIS_URL='http://:***@cache:6379/0'", "'http'", "rediss://"],
        ),
        (
            "SUPERVISOR_EXECUTION_URL",
            "grpc://exec:9000",
            ["SUPERVISOR_EXECUTION_URL='grpc://exec:9000'", "http:// or https://"],
        ),
    ],
)
def test_bad_value_names_variable_value_range(
    variable: str, raw: str, expected: list[str]
) -> None:
    with pytest.raises(SettingsError) as error_info:
        Settings.from_env({variable: raw})

    message = str(error_info.value)
    for part in expected:
        assert part in message
    assert "\n" not in message


def test_shard_index_must_be_below_count() -> None:
    with pytest.raises(SettingsError) as error_info:
        Settings.from_env({"SUPERVISOR_SHARD_COUNT": "2", "SUPERVISOR_SHARD_INDEX": "2"})

    message = str(error_info.value)
    assert "SUPERVISOR_SHARD_INDEX=2" in message
    assert "SUPERVISOR_SHARD_COUNT=2" in message
    assert "0 to 1" in message


def test_every_variable_has_prefix() -> None:
    assert all(variable.startswith("SUPERVISOR_") for variable in VARIABLES)
    assert "SUPERVISOR_WORKER_POOL_SIZE" in VARIABLES
    assert "SUPERVISOR_CONFIG_FULL_REFRESH_MS" in VARIABLES


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:pa55@db.example:5432/main", "postgresql://app:***@db.example:5432/main"),
        ("redis://:pa55@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("postgresql://app@127.0.0.1/main", "postgresql://app@127.0.0.1/main"),
        ("sqlite:///supervisor.db", "sqlite:///supervisor.db"),
        ("postgresql://app:pa55@[::1]:5432/main", "postgresql://app:***@[::1]:5432/main"),
        (None, None),
    ],
)
def test_mask_url(url: str | None, expected: str | None) -> None:
    assert mask_url(url) == expected


def test_repr_hides_secrets() -> None:
    settings = Settings(
        database_url="postgresql://app:pa55@127.0.0.1/main",
        redis_url="redis://:pa55@127.0.0.1:6379/0",
        ingest_token="tok3n",
    )

    shown = repr(settings)

    assert "pa55" not in shown
    assert "tok3n" not in shown
    assert "app:***@127.0.0.1" in shown
    assert "ingest_token='***'" in shown
