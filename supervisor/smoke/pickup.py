"""Step 1, `pickup`: a config created in the config database reaches its owner's cache.

Each target gets a lane: a channel its shard owns with three new configs, A, B and C. The owner
must execute a probe event for all three within the incremental refresh interval (plus the
tolerance and one probe period). Later steps use only lanes that passed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.smoke.probes import Probe, judge_probe, new_probe, run_probes
from supervisor.smoke.targets import Lane, TargetInfo, channel_owned_by

if TYPE_CHECKING:
    from supervisor.smoke.run import SmokeRun


def pickup(run: SmokeRun) -> None:
    """Create three configs on a channel each target owns and wait for the owner to use them."""
    probes: list[Probe] = []
    for position, target in enumerate(run.targets):
        lane = _open_lane(run, target, position)
        probes.append(new_probe(run, lane, (lane.config_a, lane.config_b, lane.config_c), None,
                                run.refresh_ms(target)))

    started_s = run.clock.monotonic()
    run_probes(run, probes)
    for probe in probes:
        probe.lane.picked_up = judge_probe(
            run, "pickup", probe, started_s, "the owner's cache had the 3 new configs",
            run.refresh_ms(probe.lane.target), "incremental refresh",
        )


def _open_lane(run: SmokeRun, target: TargetInfo, position: int) -> Lane:
    """Create configs A, B and C on a channel the target owns; cleanup deletes them later."""
    lane = Lane(target=target, channel=channel_owned_by(run.name_prefix, target, position))
    run.lanes.append(lane)
    user_id = f"{run.name_prefix}user"
    for name in ("config_a", "config_b", "config_c"):
        config_id = run.store.add(channel=lane.channel, user_id=user_id)
        run.config_ids.append(config_id)
        setattr(lane, name, config_id)
    return lane
