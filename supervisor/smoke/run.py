"""The smoke run: its state, the requests every step shares, and the order of the steps.

`SmokeRun` records what the run created (configs, event ids) so cleanup can remove it, and the
result of every step. The steps live in their own modules as functions of the run. Every config,
channel and event id contains `name_prefix`, which contains the run id, so the run never touches
other data.
"""

from __future__ import annotations

import logging

from supervisor.smoke.clock import SmokeClock
from supervisor.smoke.counters import Snapshot
from supervisor.smoke.dedup_check import dedup
from supervisor.smoke.disable_delete import disable_and_delete
from supervisor.smoke.errors import SmokeError, TargetError
from supervisor.smoke.http_client import HttpClient
from supervisor.smoke.metrics import parse_metrics
from supervisor.smoke.metrics_check import check_metrics
from supervisor.smoke.options import SmokeOptions
from supervisor.smoke.pickup import pickup
from supervisor.smoke.probes import MAX_PROBE_PERIOD_S, MIN_PROBE_PERIOD_S, PROBES_PER_INTERVAL
from supervisor.smoke.results import Status, StepResult
from supervisor.smoke.stores import ConfigStore, DedupKeyStore
from supervisor.smoke.targets import Lane, TargetInfo, discover

logger = logging.getLogger(__name__)


class SmokeRun:
    """One smoke run: its steps, the resources it created, and its report."""

    def __init__(
        self,
        options: SmokeOptions,
        *,
        http: HttpClient,
        store: ConfigStore,
        dedup_keys: DedupKeyStore | None,
        clock: SmokeClock,
    ) -> None:
        self.options = options
        self.http = http
        self.store = store
        self.dedup_keys = dedup_keys
        self.clock = clock
        self.results: list[StepResult] = []
        self.targets: list[TargetInfo] = []
        self.lanes: list[Lane] = []
        self.config_ids: list[str] = []
        self.event_ids: list[str] = []
        self.name_prefix = f"{options.channel_prefix}{options.run_id}-"
        self._event_sequence = 0
        self.discovered_at_s = 0.0
        self.full_refresh_at_discovery: dict[str, float | None] = {}

    # -- reporting ------------------------------------------------------------------------

    def record(
        self,
        step: str,
        target: str | None,
        status: Status,
        started_s: float,
        detail: str,
        **measured: float | int | None,
    ) -> StepResult:
        result = StepResult(
            step=step,
            target=target,
            status=status,
            duration_s=round(self.clock.monotonic() - started_s, 3),
            detail=detail,
            measured=measured,
        )
        self.results.append(result)
        log = logger.warning if status is Status.FAIL else logger.info
        log("Smoke step %s on %s: %s (%s)", step, target or "all targets", status.value, detail)
        return result

    def skip_all(self, step: str, reason: str) -> None:
        self.record(step, None, Status.SKIPPED, self.clock.monotonic(), reason)

    @property
    def failed(self) -> bool:
        return any(result.status is Status.FAIL for result in self.results)

    # -- helpers ----------------------------------------------------------------------------

    def limit_s(self, interval_ms: int, period_s: float) -> float:
        """Return how long a change may take: the interval, the tolerance and one probe period."""
        return interval_ms / 1000.0 + self.options.tolerance_s + period_s

    def refresh_ms(self, target: TargetInfo) -> int:
        return self.options.expected_refresh_ms or target.config_refresh_ms

    def full_refresh_ms(self, target: TargetInfo) -> int:
        return self.options.expected_full_refresh_ms or target.config_full_refresh_ms

    def new_event_id(self) -> str:
        self._event_sequence += 1
        event_id = f"{self.name_prefix}e{self._event_sequence}"
        self.event_ids.append(event_id)
        return event_id

    def send_event(self, target_url: str, event_id: str, channel: str) -> None:
        event = {
            "event_id": event_id,
            "channel": channel,
            "symbol": "SMOKEUSDT",
            "side": "buy",
            "quantity": 1.0,
        }
        self.http.post_json(f"{target_url}/events", event)

    def stub_counts(self) -> dict[str, int]:
        answer = self.http.get_json(f"{self.options.stub_url}/keys")
        try:
            counts = answer["counts"]
            return {str(key): int(value) for key, value in counts.items()}
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise TargetError(
                f"GET {self.options.stub_url}/keys did not return {{'counts': {{...}}}}"
            ) from error

    def snapshot(self, target: TargetInfo) -> Snapshot:
        stats = self.http.get_json(f"{target.url}/stats")
        try:
            return Snapshot.from_stats(stats)
        except (KeyError, TypeError, ValueError) as error:
            raise TargetError(f"GET {target.url}/stats has no valid 'events' object") from error

    def metrics(self, target: TargetInfo) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        text = self.http.get_text(f"{target.url}/metrics")
        try:
            return parse_metrics(text)
        except ValueError as error:
            raise TargetError(
                f"GET {target.url}/metrics is not Prometheus text: {error}"
            ) from error

    def probe_period_s(self, interval_ms: int) -> float:
        """Return the probe period: a tenth of the interval within fixed bounds."""
        period_s = interval_ms / 1000.0 / PROBES_PER_INTERVAL
        return min(MAX_PROBE_PERIOD_S, max(MIN_PROBE_PERIOD_S, period_s))

    # -- steps ------------------------------------------------------------------------------

    def run_steps(self) -> None:
        """Run the steps in order; metrics are checked even after a step stopped early."""
        if not discover(self):
            self.skip_all("pickup", "a target could not be read (see discover)")
            return
        try:
            pickup(self)
            disable_and_delete(self)
            dedup(self)
        except SmokeError as error:
            self.record("steps", None, Status.FAIL, self.clock.monotonic(),
                        f"the steps stopped early: {error}")
        check_metrics(self)
