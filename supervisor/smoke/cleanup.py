"""Step 5, `cleanup`, and the signal handling that makes sure it runs.

Every run ends with a cleanup that deletes the run's configs and dedup keys, whether the steps
passed, failed or were stopped. SIGINT (KeyboardInterrupt) and SIGTERM stop the steps and start
the cleanup. During the cleanup both signals are logged and otherwise ignored until it finishes.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from supervisor.smoke.errors import SmokeError, SmokeInterrupted
from supervisor.smoke.results import (
    EXIT_CLEANUP_FAILED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Status,
)

if TYPE_CHECKING:
    from supervisor.smoke.run import SmokeRun

logger = logging.getLogger(__name__)


def cleanup(run: SmokeRun) -> bool:
    """Delete this run's configs and dedup keys; return False when something was left."""
    started_s = run.clock.monotonic()
    problems: list[str] = []
    deleted_configs = deleted_keys = 0
    try:
        deleted_configs = run.store.delete(run.config_ids)
    except SmokeError as error:
        problems.append(f"configs {', '.join(run.config_ids)} may remain: {error}")
    if run.dedup_keys is not None:
        try:
            deleted_keys = run.dedup_keys.delete_events(run.event_ids)
        except SmokeError as error:
            problems.append(f"dedup keys of {len(run.event_ids)} events may remain: {error}")

    detail = (f"deleted {deleted_configs} remaining of {len(run.config_ids)} configs and "
              f"{deleted_keys} dedup keys of {len(run.event_ids)} events")
    if run.dedup_keys is None:
        detail += "; no Redis URL given, so dedup keys expire by their TTL"
    status = Status.FAIL if problems else Status.PASS
    run.record("cleanup", None, status, started_s, "; ".join([detail, *problems]),
               configs_deleted=deleted_configs, dedup_keys_deleted=deleted_keys)
    return not problems


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `SmokeInterrupted` while the steps run, so cleanup still happens."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signal_number: int, _frame: FrameType | None) -> None:
        raise SmokeInterrupted(signal.Signals(signal_number).name)

    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM during cleanup; the yielded list collects what arrived."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return

    def remember(signal_number: int, _frame: FrameType | None) -> None:
        arrived.append(signal_number)
        logger.warning("Received %s during cleanup; finishing cleanup first",
                       signal.Signals(signal_number).name)

    previous = {number: signal.signal(number, remember)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield arrived
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def execute(run: SmokeRun) -> int:
    """Run every step, then clean up whatever happened; return the exit code."""
    interrupted = False
    try:
        with interrupt_on_sigterm():
            run.run_steps()
    except (KeyboardInterrupt, SmokeInterrupted) as error:
        interrupted = True
        logger.warning("Smoke run %s interrupted (%s); cleaning up", run.options.run_id,
                       type(error).__name__)
        run.skip_all("interrupted", "the run was interrupted before its steps finished")
    finally:
        with deferred_signals():
            cleaned = cleanup(run)

    if not cleaned:
        return EXIT_CLEANUP_FAILED
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if run.failed else EXIT_OK
