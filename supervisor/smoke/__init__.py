"""The staging smoke test: `supervisor smoke --targets URL[,URL...]`.

It runs the rollout's verification steps against live supervisor instances and reports each
step as PASS, FAIL or SKIPPED with its measured time:

1. `pickup`: a config created in the config database reaches its owner's cache within the
   incremental refresh interval.
2. `disable` and `delete`: a disabled config stops receiving copy trades after the next
   incremental refresh, and a deleted one after the full refresh.
3. `dedup` and `dedup_repeat`: an event sent to every target is executed once, by its owner,
   and the same event id sent again is not executed again.
4. `metrics`: pool size, refresh timestamps and queue metrics on each target's `/metrics`.
5. `cleanup`: the configs and dedup keys of this run are removed, also after a failure or
   SIGINT/SIGTERM.

Evidence of a copy trade comes from the execution service's `GET /keys`, which counts
executions per idempotency key `<event_id>:<config_id>`. A probe event is sent to the owner
every probe period, and a change counts as seen when the stub shows (or stops showing) the
watched config for a probe event. Times are measured from the database commit to the poll that
saw the change, so they overstate the true delay by at most one probe period.

Every config, channel and event id contains the run id, so the run never touches other data.

The package has one module per concept:

- `options`: the command line and its validation; `run`: the run's state and the step order.
- `targets`: discovery, lanes and channel ownership; `probes`: probe events and stub polling.
- One module per step: `pickup`, `disable_delete`, `dedup_check`, `metrics_check` and
  `cleanup`, which also contains the signal handling.
- `metrics` and `counters` read `/metrics` and `/stats`; `stores` and `http_client` talk to the
  config database, Redis and HTTP; `clock`, `results`, `errors` and `report` complete it.
"""

from __future__ import annotations

import argparse
import json
import sys

from supervisor.smoke.cleanup import deferred_signals, execute, interrupt_on_sigterm
from supervisor.smoke.clock import SmokeClock, SystemSmokeClock
from supervisor.smoke.counters import Snapshot
from supervisor.smoke.errors import (
    ConfigStoreError,
    SmokeError,
    SmokeInterrupted,
    SmokeOptionError,
    TargetError,
)
from supervisor.smoke.http_client import HttpClient
from supervisor.smoke.metrics import parse_metrics, refresh_timestamp
from supervisor.smoke.options import SmokeOptions, add_arguments, build_options
from supervisor.smoke.probes import Probe
from supervisor.smoke.report import format_report, report_json
from supervisor.smoke.results import (
    EXIT_CLEANUP_FAILED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID_OPTION,
    EXIT_OK,
    Status,
    StepResult,
)
from supervisor.smoke.run import SmokeRun
from supervisor.smoke.stores import ConfigStore, DbConfigStore, DedupKeyStore, RedisDedupKeys
from supervisor.smoke.targets import Lane, TargetInfo, channel_owned_by

__all__ = [
    "EXIT_CLEANUP_FAILED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID_OPTION",
    "EXIT_OK",
    "ConfigStore",
    "ConfigStoreError",
    "DbConfigStore",
    "DedupKeyStore",
    "HttpClient",
    "Lane",
    "Probe",
    "RedisDedupKeys",
    "SmokeClock",
    "SmokeError",
    "SmokeInterrupted",
    "SmokeOptionError",
    "SmokeOptions",
    "SmokeRun",
    "Snapshot",
    "Status",
    "StepResult",
    "SystemSmokeClock",
    "TargetError",
    "TargetInfo",
    "add_arguments",
    "build_options",
    "channel_owned_by",
    "deferred_signals",
    "execute",
    "format_report",
    "interrupt_on_sigterm",
    "main",
    "parse_metrics",
    "refresh_timestamp",
    "report_json",
]


def main(args: argparse.Namespace) -> int:
    """Run the smoke test, print its report and return the exit code (0 when it passed)."""
    try:
        options = build_options(args)
        store = DbConfigStore(options.database_url)
    except SmokeOptionError as error:
        print(f"supervisor smoke: {error}", file=sys.stderr)
        return EXIT_INVALID_OPTION

    dedup_keys: DedupKeyStore | None = None
    if options.redis_url:
        dedup_keys = RedisDedupKeys(options.redis_url, options.dedup_key_prefix,
                                    options.http_timeout_s)
    run = SmokeRun(options, http=HttpClient(options.http_timeout_s, options.token), store=store,
                   dedup_keys=dedup_keys, clock=SystemSmokeClock())
    try:
        exit_code = execute(run)
    finally:
        store.close()
        if dedup_keys is not None:
            dedup_keys.close()

    if options.json_output:
        print(json.dumps(report_json(run, exit_code), indent=2))
    else:
        print(format_report(run, exit_code))
    return exit_code
