"""Step 4, `metrics`: each target's `/metrics` reports a healthy pool, queue and refresh.

The pool size must match the expected one, the queue metrics must exist, the incremental
refresh timestamp must advance within its interval, and the last full refresh must be recent.
The full refresh must also advance during the run when `--max-wait-s` leaves time to see it.
The full refresh's age compares this host's wall clock with the target's timestamp, so clock
skew between the hosts adds to the age.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from supervisor.smoke.errors import TargetError
from supervisor.smoke.metrics import (
    POOL_SIZE_METRIC,
    QUEUE_METRICS,
    describe_timestamp,
    has_family,
    refresh_timestamp,
)
from supervisor.smoke.results import Status
from supervisor.smoke.targets import TargetInfo

if TYPE_CHECKING:
    from supervisor.smoke.run import SmokeRun


def check_metrics(run: SmokeRun) -> None:
    """Check pool size, queue metrics and both refresh timestamps on every target."""
    for target in run.targets:
        started_s = run.clock.monotonic()
        try:
            problems, notes, measured = _metric_findings(run, target)
        except TargetError as error:
            run.record("metrics", target.url, Status.FAIL, started_s, str(error))
            continue
        status = Status.FAIL if problems else Status.PASS
        run.record("metrics", target.url, status, started_s,
                   "; ".join(problems + notes), **measured)


def _metric_findings(
    run: SmokeRun, target: TargetInfo
) -> tuple[list[str], list[str], dict[str, float | int | None]]:
    samples = run.metrics(target)
    problems: list[str] = []
    notes: list[str] = []

    pool = samples.get(POOL_SIZE_METRIC, {}).get(())
    expected_pool = run.options.expected_pool_size
    if pool is None:
        problems.append(f"{POOL_SIZE_METRIC} is missing")
    elif expected_pool is None:
        notes.append(f"pool size {pool:g} (no expected value given)")
    elif int(pool) != expected_pool:
        problems.append(f"{POOL_SIZE_METRIC} is {pool:g}, expected {expected_pool}")
    else:
        notes.append(f"pool size {pool:g} as expected")

    missing = [name for name in QUEUE_METRICS if not has_family(samples, name)]
    if missing:
        problems.append(f"queue metrics missing: {', '.join(missing)}")
    else:
        notes.append("queue metrics present")

    incremental_s = _incremental_advance(run, target, samples, problems)
    if incremental_s is not None:
        notes.append(f"incremental refresh advanced after {incremental_s:.2f} s")
    full_age_s = _full_refresh_age(run, target, samples, problems, notes)
    measured: dict[str, float | int | None] = {
        "pool_size": pool, "incremental_advance_s": incremental_s, "full_age_s": full_age_s,
    }
    return problems, notes, measured


def _incremental_advance(run: SmokeRun, target: TargetInfo, samples: Any,
                         problems: list[str]) -> float | None:
    """Wait for the incremental timestamp to advance; return how long that took."""
    interval_ms = run.refresh_ms(target)
    period_s = run.probe_period_s(interval_ms)
    limit_s = run.limit_s(interval_ms, period_s)
    first = refresh_timestamp(samples, "incremental")
    started_s = run.clock.monotonic()
    while run.clock.monotonic() - started_s <= min(limit_s, run.options.max_wait_s):
        run.clock.sleep(period_s)
        latest = refresh_timestamp(run.metrics(target), "incremental")
        if latest is not None and (first is None or latest > first):
            return round(run.clock.monotonic() - started_s, 3)
    problems.append(
        f"incremental refresh timestamp did not advance within {limit_s:.2f} s "
        f"(interval {interval_ms} ms; last success {describe_timestamp(first)})"
    )
    return None


def _full_refresh_age(run: SmokeRun, target: TargetInfo, samples: Any, problems: list[str],
                      notes: list[str]) -> float | None:
    """Check the full refresh's age and, when the budget allows, that it advanced."""
    interval_ms = run.full_refresh_ms(target)
    limit_s = interval_ms / 1000.0 + run.options.tolerance_s
    latest = refresh_timestamp(samples, "full")
    if latest is None:
        problems.append("full refresh timestamp is missing: no full refresh succeeded")
        return None
    age_s = run.clock.time() - latest
    if age_s > limit_s:
        problems.append(
            f"last full refresh is {age_s:.1f} s old, over the limit {limit_s:.1f} s"
        )
        return round(age_s, 3)

    at_discovery = run.full_refresh_at_discovery.get(target.url)
    remaining_s = limit_s - (run.clock.monotonic() - run.discovered_at_s)
    if at_discovery is None or latest > at_discovery:
        notes.append(f"full refresh {age_s:.1f} s ago and advanced during the run")
    elif remaining_s > run.options.max_wait_s:
        notes.append(f"full refresh {age_s:.1f} s ago; its advance was not checked because "
                     f"that needs {remaining_s:.0f} s more than --max-wait-s allows")
    elif _wait_full_advance(run, target, at_discovery, remaining_s):
        notes.append(f"full refresh {age_s:.1f} s ago and advanced during the run")
    else:
        problems.append(f"full refresh timestamp did not advance within {limit_s:.1f} s "
                        f"(interval {interval_ms} ms)")
    return round(age_s, 3)


def _wait_full_advance(run: SmokeRun, target: TargetInfo, first: float, wait_s: float) -> bool:
    period_s = run.probe_period_s(run.full_refresh_ms(target))
    deadline_s = run.clock.monotonic() + max(0.0, wait_s)
    while run.clock.monotonic() < deadline_s:
        run.clock.sleep(period_s)
        latest = refresh_timestamp(run.metrics(target), "full")
        if latest is not None and latest > first:
            return True
    return False
