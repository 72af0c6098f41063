"""Step 3, `dedup` and `dedup_repeat`: an event sent to every target is executed once.

Each picked-up lane's event goes to every target. Only its owner may execute it, so the stub
must count one execution of config C, and sending the same event id again must not add one.
The `/stats` outcome counters must agree: `processed` rises by the number of events once, and
every other copy is `not_owned` or `duplicate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from supervisor.smoke.counters import Snapshot
from supervisor.smoke.errors import TargetError
from supervisor.smoke.probes import MIN_PROBE_PERIOD_S
from supervisor.smoke.results import Status
from supervisor.smoke.targets import Lane

if TYPE_CHECKING:
    from supervisor.smoke.run import SmokeRun


def dedup(run: SmokeRun) -> None:
    """Send one event per lane to every target; each must execute once, by its owner."""
    lanes = [lane for lane in run.lanes if lane.picked_up]
    if not lanes:
        run.skip_all("dedup", "no lane's configs were picked up, so no copy trade can show")
        run.skip_all("dedup_repeat", "the dedup step did not run")
        return

    event_ids = {id(lane): run.new_event_id() for lane in lanes}
    executed_once = _broadcast(run, "dedup", lanes, event_ids, None)
    if executed_once is None:
        run.skip_all("dedup_repeat", "the dedup step could not send its events")
        return
    _broadcast(run, "dedup_repeat", lanes, event_ids, executed_once)


def _broadcast(run: SmokeRun, step: str, lanes: Sequence[Lane], event_ids: dict[int, str],
               earlier: dict[str, int] | None) -> dict[str, int] | None:
    """Send each lane's event to every target and judge executions and counter deltas.

    `earlier` contains the execution counts after the first broadcast; a repeat must leave
    them unchanged. Returns this broadcast's execution counts, or None when sending failed.
    """
    started_s = run.clock.monotonic()
    try:
        before = {target.url: run.snapshot(target) for target in run.targets}
        for lane in lanes:
            for target in run.targets:
                run.send_event(target.url, event_ids[id(lane)], lane.channel)
        counts, deltas = _await_accounting(run, lanes, event_ids, before, earlier is None)
    except TargetError as error:
        run.record(step, None, Status.FAIL, started_s, str(error))
        return None

    executions = {
        lane.target.url: counts.get(f"{event_ids[id(lane)]}:{lane.config_c}", 0)
        for lane in lanes
    }
    for lane in lanes:
        _judge_executions(run, step, lane, executions, earlier, started_s)
    _judge_counters(run, step, deltas, len(lanes), repeat=earlier is not None,
                    started_s=started_s)
    return executions


def _await_accounting(
    run: SmokeRun, lanes: Sequence[Lane], event_ids: dict[int, str], before: dict[str, Snapshot],
    expect_execution: bool,
) -> tuple[dict[str, int], dict[str, Snapshot]]:
    """Poll until every target finished the events (and, first time, the stub shows them).

    Then wait the settle time once more, so a second execution has time to show.
    """
    wait_s = min(run.options.max_wait_s, max(5.0, 5 * run.options.tolerance_s))
    deadline_s = run.clock.monotonic() + wait_s
    while True:
        run.clock.sleep(MIN_PROBE_PERIOD_S)
        counts = run.stub_counts()
        deltas = {t.url: run.snapshot(t).delta(before[t.url]) for t in run.targets}
        finished = all(d.finished >= len(lanes) for d in deltas.values())
        shown = not expect_execution or all(
            counts.get(f"{event_ids[id(lane)]}:{lane.config_c}", 0) for lane in lanes
        )
        if (finished and shown) or run.clock.monotonic() >= deadline_s:
            break
    run.clock.sleep(run.options.settle_s)
    counts = run.stub_counts()
    deltas = {t.url: run.snapshot(t).delta(before[t.url]) for t in run.targets}
    return counts, deltas


def _judge_executions(run: SmokeRun, step: str, lane: Lane, executions: dict[str, int],
                      earlier: dict[str, int] | None, started_s: float) -> None:
    url = lane.target.url
    count = executions[url]
    expected = 1 if earlier is None else earlier[url]
    what = "sent to every target" if earlier is None else "sent again to every target"
    if count == expected == 1:
        run.record(step, url, Status.PASS, started_s,
                   f"the event on {lane.channel}, {what}, was executed once",
                   executions=count)
    elif earlier is not None and count == expected:
        run.record(step, url, Status.PASS, started_s,
                   f"the event on {lane.channel}, {what}, was not executed again "
                   f"({count} executions before and after)", executions=count)
    else:
        run.record(step, url, Status.FAIL, started_s,
                   f"the event on {lane.channel}, {what}, has {count} executions of config "
                   f"{lane.config_c} at the stub; expected {expected}", executions=count)


def _judge_counters(run: SmokeRun, step: str, deltas: dict[str, Snapshot], events: int, *,
                    repeat: bool, started_s: float) -> None:
    """Check the outcome deltas when only this run's events reached the targets."""
    summary = "; ".join(
        f"{url}: received +{d.received}, processed +{d.outcomes['processed']}, not_owned "
        f"+{d.outcomes['not_owned']}, duplicate +{d.outcomes['duplicate']}"
        for url, d in deltas.items()
    )
    if any(d.received != events for d in deltas.values()):
        run.record(f"{step}_counters", None, Status.SKIPPED, started_s,
                   f"other traffic reached the targets, so the deltas are not this run's "
                   f"alone ({summary})")
        return

    processed = sum(d.outcomes["processed"] for d in deltas.values())
    skipped = sum(d.outcomes["not_owned"] + d.outcomes["duplicate"] for d in deltas.values())
    expected_processed = 0 if repeat else events
    expected_skipped = events * len(deltas) - expected_processed
    status = Status.PASS
    if processed != expected_processed or skipped != expected_skipped:
        status = Status.FAIL
    run.record(f"{step}_counters", None, status, started_s,
               f"processed +{processed} (expected {expected_processed}), not_owned or "
               f"duplicate +{skipped} (expected {expected_skipped}); {summary}",
               processed=processed, not_owned_or_duplicate=skipped)
