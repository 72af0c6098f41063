"""Alert evaluation over hand-made sampled series whose firing times are known exactly."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from simulation.alerts import (
    ALL_TARGETS,
    EXECUTION_ERRORS_ALERT,
    FULL_REFRESH_MISSING_ALERT,
    FULL_REFRESH_STALE_ALERT,
    QUEUE_DEPTH_ALERT,
    QUEUE_LAG_ALERT,
    AlertEpisode,
    AlertEvaluationError,
    AlertRule,
    ExpressionKind,
    SeriesEvaluator,
    default_rules,
    episodes_from_condition,
    evaluate_rules,
    instant_values,
    prometheus_rate,
)

SCRAPE_S = 15.0


def make_series(
    steps: int,
    *,
    target: str = "model",
    scrape_s: float = SCRAPE_S,
    start_s: float = 0.0,
    **columns: npt.ArrayLike,
) -> pd.DataFrame:
    """Build a sampled series of `steps` scrapes; unnamed columns get quiet defaults."""
    t_s = np.arange(steps) * scrape_s
    defaults: dict[str, npt.ArrayLike] = {
        "queue_depth": 0.0,
        "queue_capacity": 1000.0,
        "lag_sum_s": np.arange(steps) * 0.1,
        "lag_count": np.arange(steps) * 10.0,
        "executions_total": np.arange(steps) * 100.0,
        "execution_errors_total": 0.0,
        "full_refresh_last_success_unix_s": start_s,
    }
    defaults.update(columns)
    frame = pd.DataFrame({"timestamp": start_s + t_s, "t_s": t_s, "target": target})
    for name, values in defaults.items():
        frame[name] = values
    return frame


def depth_rule(for_s: float) -> AlertRule:
    return AlertRule(QUEUE_DEPTH_ALERT, ExpressionKind.QUEUE_DEPTH_RATIO, 0.8, for_s)


def high_depth(steps: int, high_steps: range) -> list[float]:
    return [900.0 if step in high_steps else 100.0 for step in range(steps)]


def test_depth_fires_after_for_duration() -> None:
    series = make_series(60, queue_depth=high_depth(60, range(4, 40)))

    result = evaluate_rules(series, [depth_rule(300)])[QUEUE_DEPTH_ALERT]

    assert result.episodes == [AlertEpisode("model", 60.0, 360.0, 600.0)]


def test_depth_one_break_resets_pending_timer() -> None:
    high = set(range(4, 40)) - {15}
    series = make_series(60, queue_depth=[900.0 if step in high else 100.0 for step in range(60)])

    result = evaluate_rules(series, [depth_rule(300)])[QUEUE_DEPTH_ALERT]

    # Pending from 60 s, broken at 225 s, pending again from 240 s: fires 300 s later.
    assert result.episodes == [
        AlertEpisode("model", 60.0, None, 225.0),
        AlertEpisode("model", 240.0, 540.0, 600.0),
    ]


def test_depth_for_zero_fires_at_once() -> None:
    series = make_series(20, queue_depth=high_depth(20, range(5, 7)))

    result = evaluate_rules(series, [depth_rule(0)])[QUEUE_DEPTH_ALERT]

    assert result.episodes == [AlertEpisode("model", 75.0, 75.0, 105.0)]


def test_depth_at_threshold_does_not_hold() -> None:
    series = make_series(10, queue_depth=800.0)

    result = evaluate_rules(series, [depth_rule(0)])[QUEUE_DEPTH_ALERT]

    assert result.episodes == []
    assert result.conditions["value"].eq(0.8).all()


def test_depth_still_firing_at_end() -> None:
    series = make_series(30, queue_depth=high_depth(30, range(2, 30)))

    result = evaluate_rules(series, [depth_rule(60)])[QUEUE_DEPTH_ALERT]

    assert result.episodes == [AlertEpisode("model", 30.0, 90.0, None)]
    assert len(result.fired) == 1


def test_depth_absolute_rule_uses_given_capacity() -> None:
    series = make_series(30, queue_depth=[1700.0] * 25 + [1500.0] * 5, queue_capacity=1000.0)
    rules = default_rules(queue_capacity=2000)

    result = evaluate_rules(series, rules)[QUEUE_DEPTH_ALERT]

    assert result.rule.kind is ExpressionKind.QUEUE_DEPTH
    assert result.rule.threshold == 1600.0
    assert result.episodes == [AlertEpisode("model", 0.0, 300.0, 375.0)]


def test_evaluation_interval_coarser_than_scrapes() -> None:
    # Depth is high from 50 s; evaluations every 60 s see it first at 60 s.
    steps = 100
    series = make_series(steps, scrape_s=10.0, queue_depth=high_depth(steps, range(5, 100)))

    result = evaluate_rules(series, [depth_rule(120)], evaluation_interval_s=60)[QUEUE_DEPTH_ALERT]

    assert result.conditions["eval_time_s"].tolist() == [60.0 * k for k in range(17)]
    assert result.episodes == [AlertEpisode("model", 60.0, 180.0, None)]


def test_gauge_older_than_lookback_is_absent() -> None:
    times_ms = np.array([0, 60_000], dtype=np.int64)
    values = np.array([1.0, 2.0])
    eval_ms = np.array([30_000, 360_000, 360_001], dtype=np.int64)

    result = instant_values(times_ms, values, eval_ms)

    assert result[0] == 1.0
    assert result[1] == 2.0
    assert math.isnan(result[2])


def test_rate_matches_prometheus_extrapolation() -> None:
    # promtool 2.42 returns 0.8333 for rate(c[2m]) at 3m over samples 0 0 100 100 100 at 1m steps:
    # the window [1m, 3m] keeps 0, 100, 100 and the zero point stops the left extrapolation.
    times_ms = np.arange(5, dtype=np.int64) * 60_000
    values = np.array([0.0, 0.0, 100.0, 100.0, 100.0])

    result = prometheus_rate(times_ms, values, np.array([180_000], dtype=np.int64), 120_000)

    assert result[0] == pytest.approx(100 / 120)


def test_rate_extrapolates_to_window_start() -> None:
    # Two scrapes at 30 s and 60 s in a 60 s window ending at 60 s: the left gap (30 s) is
    # below 1.1 spacings and the zero point is further away, so extrapolation reaches 0 s.
    times_ms = np.array([30_000, 60_000], dtype=np.int64)
    values = np.array([100.0, 130.0])

    result = prometheus_rate(times_ms, values, np.array([60_000, 120_000], dtype=np.int64), 60_000)

    assert result[0] == pytest.approx(60 / 60)
    # At 120 s only the scrape at 60 s is in the window: no result.
    assert math.isnan(result[1])


def test_rate_extrapolates_half_spacing_after_gap() -> None:
    # Scrapes at 50 s and 60 s in the window [0, 60]: the 50 s gap exceeds 1.1 spacings of 10 s,
    # so the increase of 10 is stretched by half a spacing only: 10 * 15 / 10 over 60 s.
    times_ms = np.array([50_000, 60_000], dtype=np.int64)
    values = np.array([100.0, 110.0])

    result = prometheus_rate(times_ms, values, np.array([60_000], dtype=np.int64), 60_000)

    assert result[0] == pytest.approx(15 / 60)


def test_rate_counts_value_after_reset() -> None:
    times_ms = np.arange(5, dtype=np.int64) * 15_000
    values = np.array([100.0, 110.0, 5.0, 15.0, 25.0])

    result = prometheus_rate(times_ms, values, np.array([60_000], dtype=np.int64), 60_000)

    # Increase 10 + 5 + 10 + 10 = 35 over exactly the sampled 60 s window.
    assert result[0] == pytest.approx(35 / 60)


def test_lag_alert_survives_counter_reset() -> None:
    steps = 60
    count = np.arange(steps) * 10.0
    count[30:] = (np.arange(steps - 30) + 1) * 10.0
    series = make_series(steps, lag_count=count, lag_sum_s=count * 6.0)
    rule = AlertRule(QUEUE_LAG_ALERT, ExpressionKind.LAG_MEAN, 5.0, 300, window_s=60)

    result = evaluate_rules(series, [rule])[QUEUE_LAG_ALERT]

    # The first window with two scrapes ends at 15 s; the mean lag is 6 s throughout.
    values = result.conditions["value"]
    assert math.isnan(values.iloc[0])
    assert np.allclose(values.iloc[1:], 6.0)
    assert result.episodes == [AlertEpisode("model", 15.0, 315.0, None)]


def test_lag_without_dequeues_has_no_value() -> None:
    series = make_series(20, lag_count=50.0, lag_sum_s=500.0)
    rule = AlertRule(QUEUE_LAG_ALERT, ExpressionKind.LAG_MEAN, 5.0, 0, window_s=60)

    result = evaluate_rules(series, [rule])[QUEUE_LAG_ALERT]

    assert result.conditions["value"].isna().all()
    assert result.episodes == []


def test_error_ratio_sums_targets() -> None:
    steps = 80
    executions = np.arange(steps) * 100.0
    failing = make_series(
        steps,
        target="http://a",
        executions_total=executions,
        execution_errors_total=executions * 0.05,
    )
    healthy = make_series(steps, target="http://b", executions_total=executions)
    busy_healthy = make_series(steps, target="http://b", executions_total=executions * 3)
    rule = AlertRule(EXECUTION_ERRORS_ALERT, ExpressionKind.ERROR_RATIO, 0.02, 0, window_s=600)

    even = evaluate_rules(pd.concat([failing, healthy]), [rule])[EXECUTION_ERRORS_ALERT]
    uneven = evaluate_rules(pd.concat([failing, busy_healthy]), [rule])[EXECUTION_ERRORS_ALERT]

    assert even.conditions["target"].unique().tolist() == [ALL_TARGETS]
    assert even.conditions["value"].iloc[1:].to_numpy() == pytest.approx(0.025)
    assert even.episodes == [AlertEpisode(ALL_TARGETS, 15.0, 15.0, None)]
    assert uneven.conditions["value"].iloc[1:].to_numpy() == pytest.approx(0.0125)
    assert uneven.episodes == []


def test_error_ratio_window_lets_burst_expire() -> None:
    steps = 100
    executions = np.arange(steps) * 100.0
    errors = np.zeros(steps)
    errors[10:] = 300.0  # 300 errors between 135 s and 150 s, none after
    series = make_series(steps, executions_total=executions, execution_errors_total=errors)
    rule = AlertRule(EXECUTION_ERRORS_ALERT, ExpressionKind.ERROR_RATIO, 0.02, 0, window_s=600)

    result = evaluate_rules(series, [rule])[EXECUTION_ERRORS_ALERT]

    # The burst leaves the 600 s window [t - 600, t] once the scrape at 135 s is older than
    # its left edge, at t = 750 s.
    assert result.episodes == [AlertEpisode(ALL_TARGETS, 150.0, 150.0, 750.0)]


def test_full_refresh_stale_after_twice_interval() -> None:
    start_s = 1_700_000_000.0
    refreshed = np.where(np.arange(100) < 20, start_s, start_s + 300.0)
    series = make_series(100, start_s=start_s, full_refresh_last_success_unix_s=refreshed)
    rules = default_rules(full_refresh_interval_ms=300_000)

    result = evaluate_rules(series, rules)[FULL_REFRESH_STALE_ALERT]

    # The last success was at start + 300 s; the age passes 600 s at start + 915 s.
    assert result.episodes == [AlertEpisode("model", start_s + 915.0, start_s + 915.0, None)]


def test_full_refresh_missing_fires_per_target() -> None:
    steps = 80
    never = make_series(steps, target="http://a", full_refresh_last_success_unix_s=np.nan)
    late = np.full(steps, np.nan)
    late[50:] = 700.0
    recovering = make_series(steps, target="http://b", full_refresh_last_success_unix_s=late)
    rules = default_rules(full_refresh_interval_ms=300_000)

    results = evaluate_rules(pd.concat([never, recovering]), rules)

    assert results[FULL_REFRESH_MISSING_ALERT].episodes == [
        AlertEpisode("http://a", 0.0, 600.0, None),
        AlertEpisode("http://b", 0.0, 600.0, 750.0),
    ]
    assert results[FULL_REFRESH_STALE_ALERT].episodes == []


def test_episodes_from_condition_table() -> None:
    eval_ms = [0, 1000, 2000, 3000, 4000, 5000]

    cases = [
        ([True, True, True, False, False, False], 2000, [(0.0, 2.0, 3.0)]),
        ([True, False, True, True, True, True], 2000, [(0.0, None, 1.0), (2.0, 4.0, None)]),
        ([False, True, False, True, False, False], 0, [(1.0, 1.0, 2.0), (3.0, 3.0, 4.0)]),
        ([False] * 6, 0, []),
    ]

    for active, for_ms, expected in cases:
        episodes = episodes_from_condition(eval_ms, active, for_ms, target="t")
        got = [(e.pending_at, e.fired_at, e.resolved_at) for e in episodes]
        assert got == expected, (active, for_ms)


def test_evaluator_caches_expression_values() -> None:
    series = make_series(30, queue_depth=high_depth(30, range(5, 25)))
    evaluator = SeriesEvaluator(series)

    first = evaluator.expression_values(ExpressionKind.QUEUE_DEPTH_RATIO)
    second = evaluator.expression_values(ExpressionKind.QUEUE_DEPTH_RATIO)

    assert first is second
    assert evaluator.evaluation_interval_s == SCRAPE_S
    assert evaluator.duration_s == 29 * SCRAPE_S


def test_rule_validation_names_value() -> None:
    with pytest.raises(AlertEvaluationError, match="for_s=-1"):
        AlertRule("X", ExpressionKind.QUEUE_DEPTH_RATIO, 0.8, -1)
    with pytest.raises(AlertEvaluationError, match="window_s=0"):
        AlertRule("X", ExpressionKind.LAG_MEAN, 5.0, 60)
    with pytest.raises(AlertEvaluationError, match="queue_capacity=0"):
        default_rules(queue_capacity=0)


def test_series_validation_names_column() -> None:
    series = make_series(10).drop(columns=["lag_sum_s"])
    rule = AlertRule(QUEUE_LAG_ALERT, ExpressionKind.LAG_MEAN, 5.0, 0, window_s=60)

    with pytest.raises(AlertEvaluationError, match="lag_sum_s"):
        evaluate_rules(series, [rule])


def test_duplicate_rule_names_rejected() -> None:
    with pytest.raises(AlertEvaluationError, match="appears twice"):
        evaluate_rules(make_series(10), [depth_rule(0), depth_rule(60)])


def test_duplicate_scrape_rejected() -> None:
    series = pd.concat([make_series(5), make_series(5)])

    with pytest.raises(AlertEvaluationError, match="same timestamp"):
        SeriesEvaluator(series)
