"""Pass or fail of a run: each check compares one measured figure with its limit.

A check whose figure could not be measured (for example no event finished, so there is no
p95) is recorded as skipped with the reason, and does not fail the run on its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from _options import Thresholds


@dataclass(frozen=True)
class Check:
    """One pass/fail figure; `value` is None when it could not be measured."""

    name: str
    value: float | None
    limit: float
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class RunFigures:
    """What the run measured, summed over targets, for the checks."""

    expected_events: float
    sent_events: int
    requests: int
    request_failures: int
    owned_events: int
    dropped_events: int
    e2e_p95_s: float | None
    executions: int
    execution_errors: int
    late_sends: int
    sends: int
    cpu_warning: bool


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole > 0 else None


def _limit_check(name: str, value: float | None, limit: float, unit: str = "") -> Check:
    if value is None:
        return Check(name, None, limit, True, "skipped: nothing to measure")
    passed = value <= limit
    relation = "at or below" if passed else "above"
    return Check(name, value, limit, passed, f"{value:.4g}{unit} is {relation} {limit:g}{unit}")


def offered_rate_check(expected_events: float, sent_events: int, max_shortfall: float) -> Check:
    """Fail when the events sent differ from the profile's by more than `max_shortfall`."""
    if expected_events <= 0:
        return Check("offered_rate_error", None, max_shortfall, True, "skipped: rate 0")
    error = abs(sent_events - expected_events) / expected_events
    passed = error <= max_shortfall
    detail = (
        f"sent {sent_events} events against {expected_events:.0f} offered by the profile "
        f"({error:.2%} off, limit {max_shortfall:.0%})"
    )
    return Check("offered_rate_error", error, max_shortfall, passed, detail)


def evaluate(figures: RunFigures, thresholds: Thresholds) -> list[Check]:
    """Return every check of the run, in the order the summary prints them."""
    p95_ms = None if figures.e2e_p95_s is None else figures.e2e_p95_s * 1000.0
    cpu_detail = (
        "Locust reported CPU usage above 90%: the offered rate is not trustworthy; "
        "add worker processes (--processes) or lower the rate"
        if figures.cpu_warning
        else "no Locust CPU warning"
    )
    return [
        offered_rate_check(
            figures.expected_events, figures.sent_events, thresholds.max_offered_shortfall
        ),
        _limit_check(
            "late_send_ratio", _ratio(figures.late_sends, figures.sends), thresholds.max_late_ratio
        ),
        _limit_check(
            "request_failure_rate",
            _ratio(figures.request_failures, figures.requests),
            thresholds.max_request_failure_rate,
        ),
        _limit_check(
            "drop_rate",
            _ratio(figures.dropped_events, figures.owned_events),
            thresholds.max_drop_rate,
        ),
        _limit_check("p95_e2e_ms", p95_ms, thresholds.max_p95_e2e_ms, " ms"),
        _limit_check(
            "execution_error_rate",
            _ratio(figures.execution_errors, figures.executions),
            thresholds.max_execution_error_rate,
        ),
        Check("cpu_warning", float(figures.cpu_warning), 0.0, not figures.cpu_warning, cpu_detail),
    ]


def passed(checks: list[Check]) -> bool:
    return all(check.passed for check in checks)


def format_summary(checks: list[Check]) -> str:
    lines = [f"Load test verdict: {'PASS' if passed(checks) else 'FAIL'}"]
    for check in checks:
        mark = "ok  " if check.passed else "FAIL"
        lines.append(f"  {mark} {check.name}: {check.detail}")
    return "\n".join(lines)


def percentile(values: list[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile of `values` (fraction in (0, 1]), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]
