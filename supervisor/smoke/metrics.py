"""Reading the targets' Prometheus metrics: the names the smoke test checks and a parser."""

from __future__ import annotations

import time
from typing import Any

QUEUE_METRICS = (
    "supervisor_queue_depth",
    "supervisor_queue_capacity",
    "supervisor_queue_lag_seconds",
)
REFRESH_TIMESTAMP_METRIC = "supervisor_config_refresh_last_success_timestamp_seconds"
POOL_SIZE_METRIC = "supervisor_worker_pool_size"


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parse Prometheus text into sample name -> sorted label pairs -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = float(sample.value)
    return samples


def refresh_timestamp(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]], kind: str
) -> float | None:
    """Return the last-success timestamp of refresh `kind`, or None while it is absent."""
    return samples.get(REFRESH_TIMESTAMP_METRIC, {}).get((("kind", kind),))


def has_family(samples: dict[str, Any], name: str) -> bool:
    return any(key == name or key.startswith(name + "_") for key in samples)


def describe_timestamp(unix_s: float | None) -> str:
    if unix_s is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))
