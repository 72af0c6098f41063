"""Step 2, `disable` and `delete`: a config that is switched off stops receiving copy trades.

Config A of each lane is disabled, which the owner must notice at its next incremental refresh.
Config B is deleted, which shows only at the next full refresh, so that check is SKIPPED when
it would need longer than `--max-wait-s`. Config C stays, and its executions show that the
probe events still reach the owner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.smoke.probes import Probe, judge_probe, new_probe, run_probes
from supervisor.smoke.results import Status
from supervisor.smoke.targets import Lane

if TYPE_CHECKING:
    from supervisor.smoke.run import SmokeRun


def disable_and_delete(run: SmokeRun) -> None:
    """Disable config A and delete config B of each lane, then wait until both stop trading.

    Both changes start together, so the disable check (one incremental refresh) finishes
    while the delete check still waits for a full refresh.
    """
    probes: list[Probe] = []
    kinds: dict[int, str] = {}
    for lane in run.lanes:
        if not lane.picked_up:
            run.record("disable", lane.target.url, Status.SKIPPED, run.clock.monotonic(),
                       "its configs were never picked up (see pickup)")
            run.record("delete", lane.target.url, Status.SKIPPED, run.clock.monotonic(),
                       "its configs were never picked up (see pickup)")
            continue
        probe = _disable(run, lane)
        probes.append(probe)
        kinds[id(probe)] = "disable"

        deleted = _delete_within_budget(run, lane)
        if deleted is not None:
            probes.append(deleted)
            kinds[id(deleted)] = "delete"

    started_s = run.clock.monotonic()
    run_probes(run, probes)
    for probe in probes:
        if kinds[id(probe)] == "disable":
            judge_probe(run, "disable", probe, started_s, "the disabled config stopped trading",
                        run.refresh_ms(probe.lane.target), "incremental refresh")
        else:
            judge_probe(run, "delete", probe, started_s, "the deleted config stopped trading",
                        run.full_refresh_ms(probe.lane.target), "full refresh")


def _disable(run: SmokeRun, lane: Lane) -> Probe:
    """Disable config A and return the probe that waits for it to stop trading."""
    run.store.disable(lane.config_a)
    return new_probe(run, lane, (lane.config_c,), lane.config_a, run.refresh_ms(lane.target))


def _delete_within_budget(run: SmokeRun, lane: Lane) -> Probe | None:
    """Delete config B and return its probe, or record SKIPPED when the wait is over budget."""
    full_ms = run.full_refresh_ms(lane.target)
    needed_s = run.limit_s(full_ms, run.probe_period_s(full_ms)) + run.options.settle_s
    if needed_s > run.options.max_wait_s:
        run.record(
            "delete", lane.target.url, Status.SKIPPED, run.clock.monotonic(),
            f"a deleted config disappears only at the next full refresh, up to "
            f"{needed_s:.0f} s with full refresh every {full_ms} ms; that is longer "
            f"than --max-wait-s {run.options.max_wait_s:g}, so raise it to "
            f"{needed_s:.0f} to run this check",
            needed_s=round(needed_s, 3),
        )
        return None
    run.store.delete([lane.config_b])
    return new_probe(run, lane, (lane.config_c,), lane.config_b, full_ms)
