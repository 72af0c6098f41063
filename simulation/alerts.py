"""Alert evaluation over a sampled series, with the semantics of Prometheus alerting rules.

A sampled series (columns as in docs/interfaces.md, "Sampled series") contains one row per
scrape and per target, from the model or from a load-test run. `evaluate_rules` replays the
supervisor's alerting rules over it the way Prometheus would:

- rules are evaluated at fixed times, every `evaluation_interval_s` (by default the scrape
  interval), from the first scrape to the last;
- a gauge is read at an evaluation time as the latest scrape at or before it, within the
  5-minute lookback; an empty cell is a series missing from that scrape (a stale series);
- `rate()` over a window `[t - w, t]` takes the counter's scrapes inside it, adds the value
  before each counter reset, and extrapolates towards the window's edges as Prometheus 2.40
  and later do, so rate ratios match what the server computes;
- an alert becomes pending at the first evaluation where its condition holds, fires at the
  first evaluation where it has held at every evaluation for at least `for_s`, and ends at the
  first evaluation where the condition no longer holds (a pending alert that ends never fired).

Per-instance expressions are evaluated per target and give one alert per target. The error
ratio sums the rates of all targets before dividing, as the PromQL `sum` does, and gives one
alert whose target is `ALL_TARGETS` (`*`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import pandas as pd

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Prometheus' default `--query.lookback-delta`: a gauge older than this reads as absent.
LOOKBACK_DELTA_MS = 300_000
# Prometheus extrapolates a rate to a window edge only if the gap is below 1.1 sample spacings.
EXTRAPOLATION_THRESHOLD_FACTOR = 1.1

ALL_TARGETS = "*"

QUEUE_DEPTH_ALERT = "SupervisorQueueDepthHigh"
QUEUE_LAG_ALERT = "SupervisorQueueLagHigh"
EXECUTION_ERRORS_ALERT = "SupervisorExecutionErrorRateHigh"
FULL_REFRESH_STALE_ALERT = "SupervisorFullRefreshStale"
FULL_REFRESH_MISSING_ALERT = "SupervisorFullRefreshMissing"


class AlertEvaluationError(ValueError):
    """A rule or a series cannot be evaluated as given."""


class ExpressionKind(StrEnum):
    """The expression an alert rule compares with its threshold."""

    QUEUE_DEPTH_RATIO = "queue_depth_ratio"
    """`queue_depth / queue_capacity`, both gauges."""
    QUEUE_DEPTH = "queue_depth"
    """`queue_depth` in events, for judging a capacity other than the series' own."""
    LAG_MEAN = "lag_mean"
    """`rate(lag_sum_s[w]) / rate(lag_count[w])`: mean lag in seconds over the window."""
    ERROR_RATIO = "error_ratio"
    """`sum(rate(execution_errors_total[w])) / sum(rate(executions_total[w]))` over targets."""
    FULL_REFRESH_AGE = "full_refresh_age"
    """`time() - full_refresh_last_success_unix_s` in seconds."""
    FULL_REFRESH_MISSING = "full_refresh_missing"
    """The target is scraped but has no full refresh timestamp. The threshold is unused."""


WINDOWED_KINDS = frozenset({ExpressionKind.LAG_MEAN, ExpressionKind.ERROR_RATIO})
AGGREGATED_KINDS = frozenset({ExpressionKind.ERROR_RATIO})

REQUIRED_COLUMNS: Mapping[ExpressionKind, tuple[str, ...]] = {
    ExpressionKind.QUEUE_DEPTH_RATIO: ("queue_depth", "queue_capacity"),
    ExpressionKind.QUEUE_DEPTH: ("queue_depth",),
    ExpressionKind.LAG_MEAN: ("lag_sum_s", "lag_count"),
    ExpressionKind.ERROR_RATIO: ("execution_errors_total", "executions_total"),
    ExpressionKind.FULL_REFRESH_AGE: ("full_refresh_last_success_unix_s",),
    ExpressionKind.FULL_REFRESH_MISSING: ("full_refresh_last_success_unix_s", "queue_capacity"),
}


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule: fire when `kind`'s value is above `threshold` for `for_s` seconds.

    `window_s` is the range of `rate()` for the windowed kinds and is ignored by the others.
    """

    name: str
    kind: ExpressionKind
    threshold: float
    for_s: float
    window_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise AlertEvaluationError("alert rule name is empty; give the rule an alert name")
        if not np.isfinite(self.threshold):
            raise AlertEvaluationError(
                f"threshold={self.threshold!r} of rule {self.name} is invalid: use a finite number"
            )
        if self.for_s < 0:
            raise AlertEvaluationError(
                f"for_s={self.for_s!r} of rule {self.name} is invalid: use 0 or more seconds"
            )
        if self.kind in WINDOWED_KINDS and self.window_s <= 0:
            raise AlertEvaluationError(
                f"window_s={self.window_s!r} of rule {self.name} is invalid: a {self.kind.value} "
                "rule needs a rate window of more than 0 seconds"
            )


@dataclass(frozen=True)
class AlertEpisode:
    """One alert from pending to its end, with times in the series' `timestamp` seconds.

    `fired_at` is None when the alert ended while pending, and `resolved_at` is None when the
    condition still held at the last evaluation.
    """

    target: str
    pending_at: float
    fired_at: float | None
    resolved_at: float | None


@dataclass(frozen=True)
class AlertEvaluation:
    """Result of one rule over one series.

    `conditions` has one row per evaluation and per alert target, with columns `eval_time_s`,
    `target`, `value` (the expression, NaN where PromQL returns nothing) and `active` (the
    condition holds).
    """

    rule: AlertRule
    episodes: list[AlertEpisode]
    conditions: pd.DataFrame = field(repr=False)

    @property
    def fired(self) -> list[AlertEpisode]:
        """Episodes that reached the firing state."""
        return [episode for episode in self.episodes if episode.fired_at is not None]


def default_rules(
    *,
    queue_capacity: int | None = None,
    full_refresh_interval_ms: int = 300_000,
) -> list[AlertRule]:
    """Build the suggested rollout alerts.

    With `queue_capacity` None the depth rule divides by the series' own capacity gauge, as the
    committed PromQL does. With a number it compares the depth in events with 80% of that
    capacity, to ask how a series would have alerted under another `SUPERVISOR_QUEUE_MAX_SIZE`.
    """
    if full_refresh_interval_ms <= 0:
        raise AlertEvaluationError(
            f"full_refresh_interval_ms={full_refresh_interval_ms} is invalid: use the "
            "SUPERVISOR_CONFIG_FULL_REFRESH_MS value, more than 0"
        )
    full_refresh_interval_s = full_refresh_interval_ms / 1000

    if queue_capacity is None:
        depth_rule = AlertRule(QUEUE_DEPTH_ALERT, ExpressionKind.QUEUE_DEPTH_RATIO, 0.8, 300)
    elif queue_capacity > 0:
        depth_threshold = 0.8 * queue_capacity
        depth_rule = AlertRule(QUEUE_DEPTH_ALERT, ExpressionKind.QUEUE_DEPTH, depth_threshold, 300)
    else:
        raise AlertEvaluationError(
            f"queue_capacity={queue_capacity} is invalid: use SUPERVISOR_QUEUE_MAX_SIZE, more "
            "than 0, or None to read the capacity from the series"
        )

    return [
        depth_rule,
        AlertRule(QUEUE_LAG_ALERT, ExpressionKind.LAG_MEAN, 5.0, 300, window_s=60),
        AlertRule(EXECUTION_ERRORS_ALERT, ExpressionKind.ERROR_RATIO, 0.02, 0, window_s=600),
        AlertRule(
            FULL_REFRESH_STALE_ALERT,
            ExpressionKind.FULL_REFRESH_AGE,
            2 * full_refresh_interval_s,
            0,
        ),
        AlertRule(
            FULL_REFRESH_MISSING_ALERT,
            ExpressionKind.FULL_REFRESH_MISSING,
            0.0,
            2 * full_refresh_interval_s,
        ),
    ]


def evaluate_rules(
    series: pd.DataFrame,
    rules: Iterable[AlertRule],
    *,
    evaluation_interval_s: float | None = None,
) -> dict[str, AlertEvaluation]:
    """Evaluate each rule over `series`, keyed by rule name (names must be unique)."""
    evaluator = SeriesEvaluator(series, evaluation_interval_s=evaluation_interval_s)
    results: dict[str, AlertEvaluation] = {}
    for rule in rules:
        if rule.name in results:
            raise AlertEvaluationError(
                f"rule name {rule.name} appears twice; use SeriesEvaluator.evaluate to compare "
                "variants of one rule"
            )
        results[rule.name] = evaluator.evaluate(rule)
    return results


def episodes_from_condition(
    eval_times_ms: Sequence[int] | IntArray,
    active: Sequence[bool] | BoolArray,
    for_ms: int,
    *,
    target: str,
) -> list[AlertEpisode]:
    """Turn the condition at each evaluation into alert episodes with `for:` semantics."""
    episodes: list[AlertEpisode] = []
    pending_ms: int | None = None
    fired_ms: int | None = None

    for time_ms, holds in zip(eval_times_ms, active, strict=True):
        if holds:
            if pending_ms is None:
                pending_ms = int(time_ms)
            if fired_ms is None and time_ms - pending_ms >= for_ms:
                fired_ms = int(time_ms)
        elif pending_ms is not None:
            episodes.append(_episode(target, pending_ms, fired_ms, int(time_ms)))
            pending_ms = fired_ms = None

    if pending_ms is not None:
        episodes.append(_episode(target, pending_ms, fired_ms, None))
    return episodes


def _episode(
    target: str, pending_ms: int, fired_ms: int | None, end_ms: int | None
) -> AlertEpisode:
    return AlertEpisode(
        target=target,
        pending_at=pending_ms / 1000,
        fired_at=None if fired_ms is None else fired_ms / 1000,
        resolved_at=None if end_ms is None else end_ms / 1000,
    )


@dataclass(frozen=True)
class _TargetSamples:
    times_ms: IntArray
    columns: dict[str, FloatArray]


class SeriesEvaluator:
    """A series prepared for evaluation, reusable for many rules.

    Expression values depend only on the kind and the window, so they are computed once and
    cached. Evaluating many thresholds and `for:` durations of one kind is therefore cheap.
    """

    def __init__(self, series: pd.DataFrame, *, evaluation_interval_s: float | None = None) -> None:
        _require_columns(series, ("timestamp", "target"))
        if series.empty:
            raise AlertEvaluationError("the series has no rows; evaluate a series with scrapes")

        self._series = series
        self._targets = _split_targets(series)
        interval_s = (
            _scrape_interval_s(self._targets)
            if evaluation_interval_s is None
            else evaluation_interval_s
        )
        if not interval_s > 0:
            raise AlertEvaluationError(
                f"evaluation_interval_s={interval_s!r} is invalid: use more than 0 seconds"
            )
        self.evaluation_interval_s = float(interval_s)
        self.eval_times_ms = _evaluation_times_ms(self._targets, round(interval_s * 1000))
        self._cache: dict[tuple[ExpressionKind, int], dict[str, FloatArray]] = {}

    @property
    def eval_times_s(self) -> FloatArray:
        return self.eval_times_ms.astype(np.float64) / 1000

    @property
    def duration_s(self) -> float:
        """Time from the first to the last evaluation."""
        return float(self.eval_times_ms[-1] - self.eval_times_ms[0]) / 1000

    def evaluate(self, rule: AlertRule) -> AlertEvaluation:
        """Evaluate one rule: its condition at each evaluation and its alert episodes."""
        values_by_target = self.expression_values(rule.kind, rule.window_s)
        for_ms = round(rule.for_s * 1000)
        frames: list[pd.DataFrame] = []
        episodes: list[AlertEpisode] = []

        for target, values in values_by_target.items():
            active = _condition(rule, values)
            episodes.extend(
                episodes_from_condition(self.eval_times_ms, active, for_ms, target=target)
            )
            frames.append(
                pd.DataFrame(
                    {
                        "eval_time_s": self.eval_times_s,
                        "target": target,
                        "value": values,
                        "active": active,
                    }
                )
            )

        episodes.sort(key=lambda episode: (episode.pending_at, episode.target))
        conditions = pd.concat(frames, ignore_index=True)
        logger.debug(
            "rule %s: %d episodes, %d fired",
            rule.name,
            len(episodes),
            sum(e.fired_at is not None for e in episodes),
        )
        return AlertEvaluation(rule=rule, episodes=episodes, conditions=conditions)

    def expression_values(
        self, kind: ExpressionKind, window_s: float = 0.0
    ) -> dict[str, FloatArray]:
        """Return the expression's value at each evaluation, per alert target."""
        _require_columns(self._series, REQUIRED_COLUMNS[kind])
        window_ms = round(window_s * 1000) if kind in WINDOWED_KINDS else 0
        key = (kind, window_ms)
        if key not in self._cache:
            self._cache[key] = self._compute(kind, window_ms)
        return self._cache[key]

    def _compute(self, kind: ExpressionKind, window_ms: int) -> dict[str, FloatArray]:
        if kind is ExpressionKind.ERROR_RATIO:
            errors = self._sum_over_targets("execution_errors_total", window_ms)
            executions = self._sum_over_targets("executions_total", window_ms)
            with np.errstate(divide="ignore", invalid="ignore"):
                return {ALL_TARGETS: errors / executions}
        return {
            target: _target_expression(kind, samples, self.eval_times_ms, window_ms)
            for target, samples in self._targets.items()
        }

    def _sum_over_targets(self, column: str, window_ms: int) -> FloatArray:
        # PromQL's sum() skips series without a result and returns nothing if none has one.
        rates = np.vstack(
            [
                prometheus_rate(
                    samples.times_ms, samples.columns[column], self.eval_times_ms, window_ms
                )
                for samples in self._targets.values()
            ]
        )
        has_any = ~np.all(np.isnan(rates), axis=0)
        total = np.nansum(rates, axis=0)
        return np.where(has_any, total, np.nan)


def _condition(rule: AlertRule, values: FloatArray) -> BoolArray:
    if rule.kind is ExpressionKind.FULL_REFRESH_MISSING:
        return ~np.isnan(values)
    # NaN compares false, like a PromQL comparison that drops the series.
    with np.errstate(invalid="ignore"):
        return np.asarray(values > rule.threshold, dtype=np.bool_)


def _target_expression(
    kind: ExpressionKind, samples: _TargetSamples, eval_ms: IntArray, window_ms: int
) -> FloatArray:
    columns = samples.columns
    times_ms = samples.times_ms

    if kind is ExpressionKind.QUEUE_DEPTH:
        return instant_values(times_ms, columns["queue_depth"], eval_ms)
    if kind is ExpressionKind.QUEUE_DEPTH_RATIO:
        depth = instant_values(times_ms, columns["queue_depth"], eval_ms)
        capacity = instant_values(times_ms, columns["queue_capacity"], eval_ms)
        with np.errstate(divide="ignore", invalid="ignore"):
            return depth / capacity
    if kind is ExpressionKind.LAG_MEAN:
        lag_sum = prometheus_rate(times_ms, columns["lag_sum_s"], eval_ms, window_ms)
        lag_count = prometheus_rate(times_ms, columns["lag_count"], eval_ms, window_ms)
        with np.errstate(divide="ignore", invalid="ignore"):
            return lag_sum / lag_count
    if kind is ExpressionKind.FULL_REFRESH_AGE:
        last_full = instant_values(times_ms, columns["full_refresh_last_success_unix_s"], eval_ms)
        return eval_ms.astype(np.float64) / 1000 - last_full
    if kind is ExpressionKind.FULL_REFRESH_MISSING:
        last_full = instant_values(times_ms, columns["full_refresh_last_success_unix_s"], eval_ms)
        capacity = instant_values(times_ms, columns["queue_capacity"], eval_ms)
        # `capacity unless on (job, instance) last_full`: a value only while no full refresh.
        return np.where(np.isnan(last_full), capacity, np.nan)
    raise AlertEvaluationError(f"expression kind {kind!r} is not evaluated per target")


def instant_values(times_ms: IntArray, values: FloatArray, eval_ms: IntArray) -> FloatArray:
    """Read a gauge at each evaluation time like a PromQL instant selector.

    The latest scrape at or before the evaluation counts if it is at most the lookback delta
    old. An empty cell in that scrape means the series was missing from it, and Prometheus marks
    a series stale when a scrape no longer contains it, so the result is NaN.
    """
    result = np.full(len(eval_ms), np.nan)
    if len(times_ms) == 0:
        return result
    index = np.searchsorted(times_ms, eval_ms, side="right") - 1
    clipped = np.clip(index, 0, len(times_ms) - 1)
    found = (index >= 0) & (eval_ms - times_ms[clipped] <= LOOKBACK_DELTA_MS)
    result[found] = values[clipped[found]]
    return result


def prometheus_rate(
    times_ms: IntArray, values: FloatArray, eval_ms: IntArray, window_ms: int
) -> FloatArray:
    """Compute PromQL `rate(counter[window])` at each evaluation time, NaN where it is empty.

    The window is `[t - window, t]`, closed on the left as in Prometheus 2.x. At each counter
    reset the value before the reset is added. The increase is extrapolated towards the
    window's edges (only half a sample spacing past a gap of 1.1 spacings, and never past the
    counter's zero point) and divided by the window length.
    """
    # NOTE: Prometheus 3 made range windows open on the left, so a scrape exactly at
    # `t - window` no longer counts; ratios of rates change only slightly.
    present = ~np.isnan(values)
    times_ms = times_ms[present]
    values = values[present]
    result = np.full(len(eval_ms), np.nan)
    if len(values) < 2:
        return result

    first = np.searchsorted(times_ms, eval_ms - window_ms, side="left")
    last = np.searchsorted(times_ms, eval_ms, side="right") - 1
    usable = (last - first) >= 1
    first = first[usable]
    last = last[usable]

    increase = _counter_increase(values, first, last)
    first_value = values[first]
    sampled_s = (times_ms[last] - times_ms[first]) / 1000
    to_start_s = (times_ms[first] - (eval_ms[usable] - window_ms)) / 1000
    to_end_s = (eval_ms[usable] - times_ms[last]) / 1000
    spacing_s = sampled_s / (last - first)

    # A counter cannot be negative, so extrapolation to the left stops at its zero point.
    with np.errstate(divide="ignore", invalid="ignore"):
        to_zero_s = sampled_s * (first_value / increase)
    stops_at_zero = (increase > 0) & (first_value >= 0) & (to_zero_s < to_start_s)
    to_start_s = np.where(stops_at_zero, to_zero_s, to_start_s)

    limit_s = spacing_s * EXTRAPOLATION_THRESHOLD_FACTOR
    extended_s = (
        sampled_s
        + np.where(to_start_s < limit_s, to_start_s, spacing_s / 2)
        + np.where(to_end_s < limit_s, to_end_s, spacing_s / 2)
    )
    # The factor is formed before it multiplies the increase, in the order of Prometheus 2.40
    # and later, so the result is bit-for-bit the server's.
    factor = (extended_s / sampled_s) / (window_ms / 1000)
    result[usable] = increase * factor
    return result


def _counter_increase(values: FloatArray, first: IntArray, last: IntArray) -> FloatArray:
    """Compute `values[last] - values[first]` plus the value before each reset in between.

    The float operations follow Prometheus' order (difference first, then each correction in
    turn), so a ratio that lands exactly on a threshold compares the same way.
    """
    increase = values[last] - values[first]
    is_reset = np.concatenate(([False], values[1:] < values[:-1]))
    resets_before = np.cumsum(is_reset)
    has_reset = resets_before[last] - resets_before[first] > 0

    for position in np.flatnonzero(has_reset):
        start, end = int(first[position]), int(last[position])
        for index in range(start + 1, end + 1):
            if is_reset[index]:
                increase[position] += values[index - 1]
    return increase


def _require_columns(series: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [column for column in columns if column not in series.columns]
    if missing:
        raise AlertEvaluationError(
            f"series lacks column(s) {', '.join(missing)}; pass a sampled series with the "
            "columns listed in docs/interfaces.md under 'Sampled series'"
        )


def _split_targets(series: pd.DataFrame) -> dict[str, _TargetSamples]:
    targets: dict[str, _TargetSamples] = {}
    for target, rows in series.groupby("target", sort=True):
        rows = rows.sort_values("timestamp", kind="stable")
        times_ms = np.round(rows["timestamp"].to_numpy(dtype=np.float64) * 1000).astype(np.int64)
        if np.any(np.diff(times_ms) == 0):
            raise AlertEvaluationError(
                f"target {target} has two scrapes with the same timestamp; keep one row per "
                "scrape and target"
            )
        columns = {
            name: pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=np.float64)
            for name in rows.columns
            if name not in ("timestamp", "target")
        }
        targets[str(target)] = _TargetSamples(times_ms=times_ms, columns=columns)
    return targets


def _scrape_interval_s(targets: Mapping[str, _TargetSamples]) -> float:
    gaps_ms = np.concatenate([np.diff(samples.times_ms) for samples in targets.values()])
    if len(gaps_ms) == 0:
        raise AlertEvaluationError(
            "cannot infer the scrape interval from a single scrape; pass evaluation_interval_s"
        )
    return float(np.median(gaps_ms)) / 1000


def _evaluation_times_ms(targets: Mapping[str, _TargetSamples], interval_ms: int) -> IntArray:
    start_ms = min(int(samples.times_ms[0]) for samples in targets.values())
    end_ms = max(int(samples.times_ms[-1]) for samples in targets.values())
    return np.arange(start_ms, end_ms + 1, interval_ms, dtype=np.int64)
