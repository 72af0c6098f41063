"""Unit tests of the load tests' pure parts: profiles, pacing, events, series and verdict."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest

LOADTESTS_DIR = Path(__file__).resolve().parent.parent / "loadtests"
# Locust imports the helpers by bare name with this folder on sys.path; the tests do the same.
sys.path.insert(0, str(LOADTESTS_DIR))

from _event_source import EventSource, ZipfChannelChooser, derive_seed  # noqa: E402
from _options import Thresholds  # noqa: E402
from _pacing import LatenessStats, UserPacer, user_count_for, user_gap_s  # noqa: E402
from _profiles import (  # noqa: E402
    ArrivalClock,
    ProfileError,
    ProfileParameters,
    build_load_steps,
    expected_events,
    rate_at,
)
from _series import interval_mean, supervisor_row  # noqa: E402
from _timings import LatencyHistogram, end_to_end_s  # noqa: E402
from _verdict import RunFigures, evaluate, offered_rate_check, passed  # noqa: E402


def test_loadtests_folder_has_one_locustfile() -> None:
    locustfiles = [p.name for p in LOADTESTS_DIR.glob("*.py") if not p.name.startswith("_")]

    assert locustfiles == ["supervisor_load.py"]


def test_step_profile_rates_and_bounds() -> None:
    params = ProfileParameters(step_count=3, step_duration_s=10, step_start_rate_per_s=50,
                               step_rate_increment_per_s=25)

    steps = build_load_steps("step", params)

    assert [(s.start_s, s.end_s, s.rate_per_s) for s in steps] == [
        (0, 10, 50), (10, 20, 75), (20, 30, 100)
    ]
    assert rate_at(steps, 9.99) == 50
    assert rate_at(steps, 10.0) == 75
    assert rate_at(steps, 30.0) == 0


def test_spike_profile_has_three_steps() -> None:
    params = ProfileParameters(rate_per_s=10, duration_s=60, spike_start_s=20,
                               spike_duration_s=5)

    steps = build_load_steps("spike", params)

    assert [(s.start_s, s.end_s, s.rate_per_s) for s in steps] == [
        (0, 20, 10), (20, 25, 50), (25, 60, 10)
    ]


def test_spike_past_end_is_rejected() -> None:
    params = ProfileParameters(duration_s=30, spike_start_s=25, spike_duration_s=10)

    with pytest.raises(ProfileError, match="spike-start-s"):
        build_load_steps("spike", params)


def test_unknown_profile_names_choices() -> None:
    with pytest.raises(ProfileError, match="constant, step, spike, soak"):
        build_load_steps("ramp", ProfileParameters())


def test_soak_profile_uses_soak_duration() -> None:
    steps = build_load_steps("soak", ProfileParameters(rate_per_s=20, soak_duration_s=7200))

    assert [(s.start_s, s.end_s, s.rate_per_s) for s in steps] == [(0, 7200, 20)]


def test_arrival_clock_inverts_cumulative_events() -> None:
    steps = build_load_steps("step", ProfileParameters(
        step_count=3, step_duration_s=10, step_start_rate_per_s=0, step_rate_increment_per_s=10))
    clock = ArrivalClock(steps)

    for n in (0.0, 1.0, 99.5, 150.0, 299.9):
        t = clock.time_of(n)
        assert t is not None
        assert expected_events(steps, t) == pytest.approx(n)
    assert clock.time_of(300.0) is None
    assert clock.time_of(0.0) == 10.0


def test_users_together_send_profile_total() -> None:
    steps = build_load_steps("step", ProfileParameters(
        step_count=2, step_duration_s=10, step_start_rate_per_s=100,
        step_rate_increment_per_s=200))
    clock = ArrivalClock(steps)
    rng = random.Random(5)
    user_count = 40

    pacers = [UserPacer(clock, user_count=user_count, batch_size=1, phase=rng.random())
              for _ in range(user_count)]

    for t_s in (5.0, 10.0, 15.0, 20.0):
        sent = sum(pacer.sends_until(t_s) for pacer in pacers)
        assert abs(sent - expected_events(steps, t_s)) <= user_count


def test_batches_divide_send_rate() -> None:
    clock = ArrivalClock(build_load_steps("constant", ProfileParameters(rate_per_s=100,
                                                                        duration_s=10)))

    pacer = UserPacer(clock, user_count=2, batch_size=5, phase=0.0)

    assert pacer.sends_until(10.0) == 100
    assert user_gap_s(100, 2, 5) == pytest.approx(0.1)


def test_pacer_due_times_ignore_response_time() -> None:
    clock = ArrivalClock(build_load_steps("constant", ProfileParameters(rate_per_s=10,
                                                                        duration_s=1)))
    pacer = UserPacer(clock, user_count=2, batch_size=1, phase=0.5)

    due = []
    while (t := pacer.next_due_s()) is not None:
        due.append(t)
        pacer.advance()

    assert due == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])


def test_user_count_covers_response_budget() -> None:
    assert user_count_for(1000, 1, 250, 10) == 250
    assert user_count_for(1000, 10, 250, 10) == 25
    assert user_count_for(10, 1, 250, 10) == 10


def test_lateness_counts_late_sends() -> None:
    stats = LatenessStats(late_threshold_s=0.1)

    for lateness_s in (0.0, 0.05, 0.2, -0.01, 0.5):
        stats.record(lateness_s)

    assert stats.sends == 5
    assert stats.late_sends == 2
    assert stats.max_lateness_s == 0.5
    assert stats.late_ratio == pytest.approx(0.4)


def test_zipf_choice_follows_rank_weights() -> None:
    chooser = ZipfChannelChooser(["a", "b", "c", "d"], exponent=1.0)
    rng = random.Random(11)

    counts = Counter(chooser.choose(rng) for _ in range(40_000))

    harmonic = 1 + 1 / 2 + 1 / 3 + 1 / 4
    for rank, channel in enumerate("abcd"):
        expected = 40_000 / (rank + 1) / harmonic
        assert counts[channel] == pytest.approx(expected, rel=0.05)


def test_zipf_exponent_zero_is_uniform() -> None:
    chooser = ZipfChannelChooser(["a", "b"], exponent=0.0)

    assert chooser.probabilities == [0.5, 0.5]


def _source(duplicate_ratio: float, seed: int = 3) -> EventSource:
    return EventSource(id_prefix="run-w0-u0", chooser=ZipfChannelChooser(["x", "y"], 1.0),
                       duplicate_ratio=duplicate_ratio, rng=random.Random(seed))


def test_event_ids_unique_without_duplicates() -> None:
    source = _source(0.0)

    ids = [source.next_event("2026-01-01T00:00:00Z")["event_id"] for _ in range(1000)]

    assert len(set(ids)) == 1000
    assert ids[0] == "run-w0-u0-0"


def test_duplicate_ratio_resends_recent_ids() -> None:
    source = _source(0.3)

    events = [source.next_event("2026-01-01T00:00:00Z") for _ in range(10_000)]

    ids = [event["event_id"] for event in events]
    repeats = len(ids) - len(set(ids))
    assert repeats == source.duplicate_events
    assert repeats / len(ids) == pytest.approx(0.3, abs=0.02)
    assert source.new_events + source.duplicate_events == 10_000


def test_event_has_interface_fields() -> None:
    event = _source(0.0).next_event("2026-01-01T00:00:00Z")

    assert set(event) == {"event_id", "channel", "symbol", "side", "quantity", "price",
                          "emitted_at"}
    assert event["side"] in ("buy", "sell")
    assert event["quantity"] > 0


def test_derived_seeds_differ_per_worker() -> None:
    seeds = {derive_seed(7, "worker", index) for index in range(8)}

    assert len(seeds) == 8
    assert derive_seed(7, "worker", 0) == derive_seed(7, "worker", 0)


def test_interval_mean_uses_deltas() -> None:
    assert interval_mean(1.0, 10, 3.0, 14) == pytest.approx(0.5)
    assert interval_mean(1.0, 10, 1.0, 10) is None
    assert interval_mean(None, None, 2.0, 4) == pytest.approx(0.5)


def _snapshot(lag_sum: float, lag_count: int, window_events: int) -> dict[str, object]:
    return {
        "events": {"received": lag_count},
        "queue": {"depth": 3, "capacity": 100},
        "workers": {"pool_size": 8, "busy": 2},
        "lag_s": {"sum": lag_sum, "count": lag_count},
        "end_to_end_latency_s": {"sum": lag_sum * 2, "count": lag_count},
        "window": {"events": window_events, "lag_p95_s": 0.04, "e2e_p95_s": 0.09},
        "executions": {"success": 10, "error": 1, "timeout": 2, "rejected": 0},
        "refresh": {"full": {"last_success_unix_s": 12.5}, "incremental": {}},
        "process": {"cpu_seconds": 1.5},
    }


def test_supervisor_row_interval_columns() -> None:
    previous = _snapshot(1.0, 10, 5)
    current = _snapshot(2.0, 20, 5)

    row = supervisor_row(timestamp=100.0, t_s=3.0, target="t", snapshot=current,
                         previous=previous)

    assert row["lag_mean_s"] == pytest.approx(0.1)
    assert row["e2e_mean_s"] == pytest.approx(0.2)
    assert row["lag_p95_s"] == 0.04
    assert row["executions_total"] == 13
    assert row["execution_errors_total"] == 3
    assert row["full_refresh_last_success_unix_s"] == 12.5
    assert row["incremental_refresh_last_success_unix_s"] is None
    assert row["queue_depth"] == 3


def test_supervisor_row_empty_interval_leaves_blanks() -> None:
    snapshot = _snapshot(1.0, 10, 0)

    row = supervisor_row(timestamp=1.0, t_s=0.0, target="t", snapshot=snapshot,
                         previous=snapshot)

    assert row["lag_mean_s"] is None
    assert row["lag_p95_s"] is None
    assert row["e2e_p95_s"] is None


def test_histogram_quantile_within_one_percent() -> None:
    histogram = LatencyHistogram()
    values = [i / 1000.0 for i in range(1, 1001)]

    for value in values:
        histogram.add(value)

    p95 = histogram.quantile_s(0.95)
    assert p95 is not None
    assert p95 == pytest.approx(0.95, rel=0.011)
    assert LatencyHistogram().quantile_s(0.95) is None


def test_end_to_end_skips_dropped_events() -> None:
    processed = {"outcome": "processed", "received_unix_s": 1.0, "finished_unix_s": 1.25}
    dropped = {"outcome": "dropped", "received_unix_s": 1.0, "finished_unix_s": None}

    assert end_to_end_s(processed) == pytest.approx(0.25)
    assert end_to_end_s(dropped) is None


THRESHOLDS = Thresholds(max_drop_rate=0.01, max_p95_e2e_ms=250, max_execution_error_rate=0.02,
                        max_request_failure_rate=0.01, max_offered_shortfall=0.05,
                        max_late_ratio=0.05)


def _figures(**changes: object) -> RunFigures:
    values: dict[str, object] = dict(
        expected_events=1000.0, sent_events=1000, requests=1000, request_failures=0,
        owned_events=1000, dropped_events=0, e2e_p95_s=0.1, executions=3000,
        execution_errors=0, late_sends=0, sends=1000, cpu_warning=False,
    )
    values.update(changes)
    return RunFigures(**values)  # type: ignore[arg-type]


def test_verdict_passes_healthy_run() -> None:
    checks = evaluate(_figures(), THRESHOLDS)

    assert passed(checks)


@pytest.mark.parametrize(
    ("changes", "failed_check"),
    [
        ({"sent_events": 900}, "offered_rate_error"),
        ({"late_sends": 60}, "late_send_ratio"),
        ({"request_failures": 20}, "request_failure_rate"),
        ({"dropped_events": 20}, "drop_rate"),
        ({"e2e_p95_s": 0.3}, "p95_e2e_ms"),
        ({"execution_errors": 100}, "execution_error_rate"),
        ({"cpu_warning": True}, "cpu_warning"),
    ],
)
def test_verdict_fails_each_limit(changes: dict[str, object], failed_check: str) -> None:
    checks = evaluate(_figures(**changes), THRESHOLDS)

    assert not passed(checks)
    assert [c.name for c in checks if not c.passed] == [failed_check]


def test_unmeasured_figure_is_skipped() -> None:
    checks = evaluate(_figures(e2e_p95_s=None, executions=0), THRESHOLDS)

    skipped = {c.name for c in checks if c.value is None}
    assert skipped == {"p95_e2e_ms", "execution_error_rate"}
    assert passed(checks)


def test_offered_rate_within_five_percent() -> None:
    assert offered_rate_check(1000, 951, 0.05).passed
    assert not offered_rate_check(1000, 949, 0.05).passed
    assert not offered_rate_check(1000, 1051, 0.05).passed
