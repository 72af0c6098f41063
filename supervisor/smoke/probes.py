"""Probes: repeated probe events that show when a config change reaches its owner's cache.

A probe event is sent to the owner every probe period. The execution stub's `GET /keys` returns
the execution count of each idempotency key `<event_id>:<config_id>`, so it tells which configs
executed the event. A change counts as seen when the watched config appears (or stays absent)
for a probe event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from supervisor.smoke.errors import TargetError
from supervisor.smoke.results import Status
from supervisor.smoke.targets import Lane

if TYPE_CHECKING:
    from supervisor.smoke.run import SmokeRun

MIN_PROBE_PERIOD_S = 0.1
MAX_PROBE_PERIOD_S = 2.0
PROBES_PER_INTERVAL = 10
LATE_WAIT_FACTOR = 3.0
"""A change still unseen at its limit is waited for up to this many limits to report how late."""


@dataclass
class Probe:
    """Waits for the stub to show, for one probe event, every `needed` config and not `lacking`.

    Without `lacking` the first such event is the evidence. With it, the watched trade must stay
    absent for the settle time, because the configs of one event may execute in any order.
    """

    lane: Lane
    needed: tuple[str, ...]
    lacking: str | None
    changed_at_s: float
    period_s: float
    limit_s: float
    wait_s: float
    sent: list[str] = field(default_factory=list)
    absent_since_s: dict[str, float] = field(default_factory=dict)
    seen_after_s: float | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.seen_after_s is not None or self.error is not None

    def observe(self, counts: dict[str, int], now_s: float, settle_s: float) -> None:
        for event_id in self.sent:
            if not all(counts.get(f"{event_id}:{config}", 0) for config in self.needed):
                continue
            if self.lacking is None:
                self.seen_after_s = now_s - self.changed_at_s
                return
            if counts.get(f"{event_id}:{self.lacking}", 0):
                self.absent_since_s.pop(event_id, None)
                continue
            since_s = self.absent_since_s.setdefault(event_id, now_s)
            if now_s - since_s >= settle_s:
                self.seen_after_s = since_s - self.changed_at_s
                return


def new_probe(run: SmokeRun, lane: Lane, needed: tuple[str, ...], lacking: str | None,
              interval_ms: int) -> Probe:
    """Start a probe of a change made now, with the limit and wait of `interval_ms`."""
    period_s = run.probe_period_s(interval_ms)
    limit_s = run.limit_s(interval_ms, period_s)
    wait_s = min(LATE_WAIT_FACTOR * limit_s, run.options.max_wait_s) + run.options.settle_s
    return Probe(lane=lane, needed=needed, lacking=lacking,
                 changed_at_s=run.clock.monotonic(), period_s=period_s, limit_s=limit_s,
                 wait_s=wait_s)


def run_probes(run: SmokeRun, probes: Sequence[Probe]) -> None:
    """Send probe events to each pending probe's owner and poll the stub until all are done."""
    while True:
        now_s = run.clock.monotonic()
        for probe in probes:
            if not probe.done and now_s - probe.changed_at_s > probe.wait_s:
                probe.error = f"not seen within {probe.wait_s:.2f} s"
        pending = [probe for probe in probes if not probe.done]
        if not pending:
            return

        _send_probe_events(run, pending)
        run.clock.sleep(min(probe.period_s for probe in pending))
        try:
            counts = run.stub_counts()
        except TargetError as error:
            for probe in pending:
                probe.error = str(error)
            return
        now_s = run.clock.monotonic()
        for probe in pending:
            probe.observe(counts, now_s, run.options.settle_s)


def _send_probe_events(run: SmokeRun, pending: Sequence[Probe]) -> None:
    by_lane: dict[int, list[Probe]] = {}
    for probe in pending:
        by_lane.setdefault(id(probe.lane), []).append(probe)
    for lane_probes in by_lane.values():
        lane = lane_probes[0].lane
        event_id = run.new_event_id()
        try:
            run.send_event(lane.target.url, event_id, lane.channel)
        except TargetError as error:
            for probe in lane_probes:
                probe.error = str(error)
            continue
        for probe in lane_probes:
            probe.sent.append(event_id)


def judge_probe(run: SmokeRun, step: str, probe: Probe, started_s: float, what: str,
                interval_ms: int, refresh_kind: str) -> bool:
    """Record the probe's step as PASS or FAIL against its limit; return True on PASS."""
    target = probe.lane.target.url
    measured = {"seen_after_s": probe.seen_after_s, "limit_s": round(probe.limit_s, 3),
                "interval_ms": interval_ms, "probe_events": len(probe.sent)}
    if probe.seen_after_s is None:
        run.record(step, target, Status.FAIL, started_s,
                   f"{what}: {probe.error}; the {refresh_kind} interval is {interval_ms} ms "
                   f"and the limit {probe.limit_s:.2f} s", **measured)
        return False
    if probe.seen_after_s > probe.limit_s:
        run.record(step, target, Status.FAIL, started_s,
                   f"{what} only after {probe.seen_after_s:.2f} s, later than the limit "
                   f"{probe.limit_s:.2f} s ({refresh_kind} every {interval_ms} ms)",
                   **measured)
        return False
    run.record(step, target, Status.PASS, started_s,
               f"{what} after {probe.seen_after_s:.2f} s (limit {probe.limit_s:.2f} s)",
               **measured)
    return True
