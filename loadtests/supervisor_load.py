"""Locust load test of the supervisor: open-model signal events on every target.

Run with `locust -f loadtests --headless` (see docs/loadtests.md for the options). This is the
only locustfile in the folder: helpers live in `_`-prefixed modules, which Locust 2.47 skips
when it loads a directory, and this file contains the one LoadTestShape of the folder. Locust puts
this folder on `sys.path` while it imports the file, so the helpers import by their bare names.

Glossary:
    run time: seconds since the test started; the first load step begins after the lead-in.
    send: one POST /events of `--batch-size` events to every target.
    lateness: how long after its due time a send left; late sends are counted, never skipped.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import _options
import _run
import gevent
from _configs_db import ChannelSourceError
from _event_source import EventSource
from _options import DEFAULT_TARGET, OptionError
from _pacing import UserPacer
from locust import LoadTestShape, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 3600.0
MASTER_RUN: list[_run.MasterRun] = []


def _add_options(parser: Any, **_kwargs: Any) -> None:
    _options.add_arguments(parser)


def _fail_start(message: str) -> None:
    logger.error("Load test cannot start: %s", message)
    print(f"locust: {message}", file=sys.stderr)
    sys.exit(2)


def _on_init(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    try:
        run = _run.setup_master(environment)
    except (OptionError, ChannelSourceError, ValueError) as error:
        _fail_start(str(error))
        return
    MASTER_RUN.append(run)
    if isinstance(runner, MasterRunner):
        runner.register_message(
            _run.REPORT_MESSAGE, lambda msg, **_: run.on_worker_report(msg.data)
        )


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    if MASTER_RUN:
        _run.start_master(MASTER_RUN[0])
    if isinstance(environment.runner, MasterRunner):
        return
    try:
        _run.prepare_process(environment)
    except (OptionError, ValueError) as error:
        _fail_start(str(error))
    plan = _run.STATE.plan
    assert plan is not None
    SupervisorEventsUser.host = plan.targets[0]
    SupervisorEventsUser.network_timeout = plan.request_timeout_s
    SupervisorEventsUser.connection_timeout = plan.request_timeout_s
    SupervisorEventsUser.concurrency = max(10, len(plan.targets))
    if isinstance(environment.runner, WorkerRunner):
        _run.start_worker_reports(environment)


def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner) and _run.STATE.plan is not None:
        runner.send_message(_run.REPORT_MESSAGE, _run.STATE.report())


def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    if not MASTER_RUN:
        return
    run = MASTER_RUN.pop()
    environment.process_exit_code = _run.finish_master(run)


class SupervisorEventsUser(FastHttpUser):
    """Sends signal events at the due times of its share of the run's arrival schedule."""

    host = DEFAULT_TARGET
    network_timeout = 2.0
    connection_timeout = 2.0

    def on_start(self) -> None:
        self.pacer: UserPacer
        self.source: EventSource
        self.pacer, self.source = _run.STATE.new_user()
        self.targets = _run.STATE.plan.targets if _run.STATE.plan else [DEFAULT_TARGET]

    def wait_time(self) -> float:
        due_s = self.pacer.next_due_s()
        if due_s is None:
            return IDLE_WAIT_S
        return max(0.0, due_s - _run.STATE.load_time_s())

    @task
    def send_due_events(self) -> None:
        state = _run.STATE
        due_s = self.pacer.next_due_s()
        while due_s is not None and due_s <= (now_s := state.load_time_s()):
            state.lateness.record(now_s - due_s)
            self._send()
            self.pacer.advance()
            due_s = self.pacer.next_due_s()

    def _send(self) -> None:
        plan = _run.STATE.plan
        assert plan is not None
        emitted_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        before_new, before_dup = self.source.new_events, self.source.duplicate_events
        batch = self.source.next_batch(plan.batch_size, emitted_at)
        _run.STATE.new_events += self.source.new_events - before_new
        _run.STATE.duplicate_events += self.source.duplicate_events - before_dup
        body = json.dumps(batch[0] if plan.batch_size == 1 else {"events": batch})

        if len(self.targets) == 1:
            self._post(self.targets[0], body)
            return
        gevent.joinall([gevent.spawn(self._post, target, body) for target in self.targets])

    def _post(self, target: str, body: str) -> None:
        with self.client.post(
            f"{target}/events",
            data=body,
            headers={"Content-Type": "application/json"},
            name=f"{target}/events",
            catch_response=True,
        ) as response:
            # A 503 whose body says "dropped" is the supervisor dropping an offered event
            # (queue full, draining, dedup down): delivered load, counted at the supervisor.
            status = response.status_code
            if status in (200, 202) or (
                status == 503 and b'"dropped"' in (response.content or b"")
            ):
                response.success()
            else:
                text = (response.text or "")[:200] if status else str(response.error)
                response.failure(f"HTTP {status}: {text}")


class SupervisorLoadShape(LoadTestShape):
    """Keeps the run's user count from the start until the drain after the last step ends."""

    def tick(self) -> tuple[int, float] | None:
        if not MASTER_RUN:
            return None
        plan = MASTER_RUN[0].plan
        if self.get_run_time() > _run.run_length_s(plan):  # type: ignore[no-untyped-call]
            return None
        spawn_rate = plan.user_count * 2.0 / max(plan.lead_in_s, 1.0)
        return plan.user_count, spawn_rate


# Locust's EventHook.add_listener has no annotations, hence the ignores.
events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_on_test_start)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_on_test_stop)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]
