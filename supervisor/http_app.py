"""The HTTP interface of one instance: ingest, metrics, stats, timings and health.

`POST /events` takes one event or a batch `{"events": [...]}` and runs the ingest half of the
data flow for each: validate, shard filter, dedup claim, then offer to the bounded queue. Every
event gets exactly one first state, counted in `Metrics` in the same synchronous step that
decides it. docs/service.md lists the responses and their status codes.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from supervisor.clock import Clock
from supervisor.dedup import Dedup, DedupUnavailable
from supervisor.events import Event, EventValidationError, batch_items, decode_body, parse_event
from supervisor.http_server import Handler, HttpServer, Request, Response
from supervisor.metrics import Metrics
from supervisor.pool import QueuedEvent, WorkerPool
from supervisor.settings import Settings
from supervisor.sharding import ShardFilter
from supervisor.timings import TimingsBuffer, UnixTimeBase
from supervisor.work_queue import WorkQueue

logger = logging.getLogger(__name__)

DEDUP_RETRY_AFTER_S = 1
MAX_TIMINGS_PAGE = 10_000
DEFAULT_WINDOW_S = 10.0

_JSON = "application/json"


def _constant(status: int, payload: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(payload).encode()


# Responses to single events, encoded once because they are sent thousands of times a second.
ACCEPTED = _constant(202, {"status": "accepted"})
DUPLICATE = _constant(200, {"status": "duplicate"})
NOT_OWNED = _constant(200, {"status": "not_owned"})
QUEUE_FULL = _constant(503, {"status": "dropped", "error": "queue full"})
DRAINING = _constant(
    503, {"status": "dropped", "error": "draining: the instance is shutting down"}
)
DEDUP_DOWN = _constant(
    503, {"status": "dropped", "error": "dedup unavailable: Redis does not answer; retry later"}
)


def _not_yet() -> bool:
    return False


@dataclass
class RuntimeState:
    """Lifecycle flags that the HTTP handlers read.

    `config_ready` reports whether the first full config refresh has succeeded; the service
    points it at the refresh loop.
    """

    config_ready: Callable[[], bool] = _not_yet
    draining: bool = False

    @property
    def ready(self) -> bool:
        """True once configs are loaded, until draining starts."""
        return self.config_ready() and not self.draining


@dataclass
class Runtime:
    """Everything the HTTP handlers need from one running instance."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    shards: ShardFilter
    dedup: Dedup
    queue: WorkQueue[QueuedEvent]
    pool: WorkerPool
    timings: TimingsBuffer
    time_base: UnixTimeBase
    instance: dict[str, Any]
    state: RuntimeState = field(default_factory=RuntimeState)


def _respond(answer: tuple[int, bytes], headers: dict[str, str] | None = None) -> Response:
    return Response(answer[0], answer[1], _JSON, headers)


def _json(status: int, payload: dict[str, Any], **headers: str) -> Response:
    return Response.json(status, payload, headers)


def _rejected(error: EventValidationError) -> dict[str, Any]:
    return {"status": "rejected", "field": error.field, "error": str(error)}


class Ingest:
    """The ingest half of the data flow, shared by single and batch posts."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._metrics = runtime.metrics
        self._clock = runtime.clock

    def _observe_age(self, event: Event) -> None:
        if event.emitted_at_unix_s is not None:
            self._metrics.observe_event_age(self._rt.clock.time() - event.emitted_at_unix_s)

    def _offer(self, event: Event, received_s: float) -> bool:
        """Offer a claimed event to the queue and count it; False means dropped (queue full)."""
        now = self._clock.monotonic()
        if self._rt.queue.offer(QueuedEvent(event, received_s, now), now):
            self._metrics.count_enqueued()
            self._rt.pool.notify_enqueued()
            return True
        self._metrics.count_dropped_on_arrival()
        unix = self._rt.time_base.unix
        self._rt.timings.add_event(
            event_id=event.event_id,
            channel=event.channel,
            outcome="dropped",
            received_unix_s=unix(received_s),
            enqueued_unix_s=unix(now),
            started_unix_s=None,
            finished_unix_s=None,
            fanout=0,
        )
        self._rt.pool.release_in_background(event.event_id)
        return False

    async def single(self, data: Any, received_s: float) -> Response:
        """Run one event through ingest and build its response."""
        try:
            event = parse_event(data)
        except EventValidationError as error:
            self._metrics.count_rejected()
            return _json(400, _rejected(error))
        self._observe_age(event)

        if self._rt.state.draining:
            self._metrics.count_dropped_on_arrival()
            return _respond(DRAINING)
        if not self._rt.shards.owns(event.channel):
            self._metrics.count_not_owned()
            return _respond(NOT_OWNED)

        try:
            (claimed,) = await self._rt.dedup.claim_many((event.event_id,))
        except DedupUnavailable:
            self._metrics.count_dedup(error=1)
            self._metrics.count_dropped_on_arrival()
            return _respond(DEDUP_DOWN, {"Retry-After": str(DEDUP_RETRY_AFTER_S)})
        if not claimed:
            self._metrics.count_dedup(hit=1)
            self._metrics.count_duplicate()
            return _respond(DUPLICATE)
        self._metrics.count_dedup(miss=1)

        if self._rt.state.draining:
            self._metrics.count_dropped_on_arrival()
            self._rt.pool.release_in_background(event.event_id)
            return _respond(DRAINING)
        return _respond(ACCEPTED if self._offer(event, received_s) else QUEUE_FULL)

    async def batch(self, items: list[Any], received_s: float) -> Response:
        """Run a batch through ingest with one dedup round trip; one result per event, in order."""
        results: list[dict[str, Any]] = [{} for _ in items]
        owned: list[tuple[int, Event]] = []
        draining = self._rt.state.draining
        for index, item in enumerate(items):
            try:
                event = parse_event(item)
            except EventValidationError as error:
                self._metrics.count_rejected()
                results[index] = _rejected(error)
                continue
            self._observe_age(event)
            if draining:
                self._metrics.count_dropped_on_arrival()
                results[index] = {"event_id": event.event_id, "status": "dropped",
                                  "error": "draining"}  # fmt: skip
            elif self._rt.shards.owns(event.channel):
                owned.append((index, event))
            else:
                self._metrics.count_not_owned()
                results[index] = {"event_id": event.event_id, "status": "not_owned"}

        retry_after = await self._claim_and_offer(owned, results, received_s)
        return self._batch_response(results, draining, retry_after)

    async def _claim_and_offer(
        self, owned: list[tuple[int, Event]], results: list[dict[str, Any]], received_s: float
    ) -> bool:
        """Claim and enqueue the owned events; return True when dedup was unavailable."""
        if not owned:
            return False
        try:
            claims = await self._rt.dedup.claim_many([event.event_id for _, event in owned])
        except DedupUnavailable:
            self._metrics.count_dedup(error=len(owned))
            self._metrics.count_dropped_on_arrival(len(owned))
            for index, event in owned:
                results[index] = {"event_id": event.event_id, "status": "dropped",
                                  "error": "dedup unavailable"}  # fmt: skip
            return True

        for (index, event), claimed in zip(owned, claims, strict=True):
            results[index] = self._settle_claimed(event, claimed, received_s)
        return False

    def _settle_claimed(self, event: Event, claimed: bool, received_s: float) -> dict[str, Any]:
        if not claimed:
            self._metrics.count_dedup(hit=1)
            self._metrics.count_duplicate()
            return {"event_id": event.event_id, "status": "duplicate"}
        self._metrics.count_dedup(miss=1)
        if self._rt.state.draining:
            self._metrics.count_dropped_on_arrival()
            self._rt.pool.release_in_background(event.event_id)
            return {"event_id": event.event_id, "status": "dropped", "error": "draining"}
        if self._offer(event, received_s):
            return {"event_id": event.event_id, "status": "accepted"}
        return {"event_id": event.event_id, "status": "dropped", "error": "queue full"}

    @staticmethod
    def _batch_response(
        results: list[dict[str, Any]], draining: bool, dedup_down: bool
    ) -> Response:
        counts = dict.fromkeys(("accepted", "duplicate", "not_owned", "rejected", "dropped"), 0)
        for result in results:
            counts[result["status"]] += 1
        if counts["accepted"]:
            status = 202
        elif counts["dropped"]:
            status = 503
        else:
            status = 200
        headers = {"Retry-After": str(DEDUP_RETRY_AFTER_S)} if dedup_down else {}
        return _json(status, {"counts": counts, "results": results}, **headers)


def _authorized(request: Request, token: str) -> bool:
    # HTTP matches authentication schemes in any case, so "bearer" is as good as "Bearer".
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.encode(), token.encode())


class BadQuery(ValueError):
    """A query parameter has a value the endpoint cannot use."""


def _query_number(request: Request, name: str, default: float, low: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= low:
        raise BadQuery(f"{name}={raw!r} is invalid: use a number >= {low}")
    return value


def instance_snapshot(runtime: Runtime) -> dict[str, Any]:
    """Return the `instance` part of `/stats`."""
    instance = dict(runtime.instance)
    instance["uptime_s"] = runtime.clock.monotonic() - runtime.time_base.start_monotonic_s
    instance["ready"] = runtime.state.ready
    instance["draining"] = runtime.state.draining
    return instance


class Endpoints:
    """The handlers of one instance's endpoints."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.ingest = Ingest(runtime)
        limit = runtime.settings.max_body_bytes
        self.too_large = _json(413, {"error": f"body larger than {limit} bytes"})

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/events"): self.post_events,
            ("GET", "/metrics"): self.get_metrics,
            ("GET", "/stats"): self.get_stats,
            ("GET", "/timings"): self.get_timings,
            ("GET", "/healthz"): self.get_healthz,
            ("GET", "/readyz"): self.get_readyz,
        }

    async def post_events(self, request: Request) -> Response:
        """Handle `POST /events`: one event or a batch."""
        runtime = self.runtime
        settings = runtime.settings
        if settings.ingest_token and not _authorized(request, settings.ingest_token):
            return _json(
                401,
                {"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"},
                **{"WWW-Authenticate": "Bearer"},
            )
        received_s = runtime.clock.monotonic()
        try:
            data = decode_body(request.body)
            items = batch_items(data)
        except EventValidationError as error:
            runtime.metrics.count_rejected()
            return _json(400, _rejected(error))
        if items is None:
            return await self.ingest.single(data, received_s)
        if len(items) > settings.max_batch_events:
            return _json(
                413,
                {"error": f"batch of {len(items)} events is over the limit of "
                          f"{settings.max_batch_events} (SUPERVISOR_MAX_BATCH_EVENTS)"},
            )  # fmt: skip
        return await self.ingest.batch(items, received_s)

    async def get_metrics(self, request: Request) -> Response:
        """Handle `GET /metrics`: Prometheus text format."""
        body = generate_latest(self.runtime.metrics.registry)
        return Response(200, body, CONTENT_TYPE_LATEST)

    async def get_stats(self, request: Request) -> Response:
        """Handle `GET /stats?window_s=N`: the JSON snapshot."""
        runtime = self.runtime
        try:
            window_s = _query_number(request, "window_s", DEFAULT_WINDOW_S, 0.001)
        except BadQuery as error:
            return _json(400, {"error": str(error)})
        snapshot = {"instance": instance_snapshot(runtime), **runtime.metrics.stats(window_s)}
        return _json(200, snapshot)

    async def get_timings(self, request: Request) -> Response:
        """Handle `GET /timings?after=SEQ&limit=N`."""
        try:
            after = int(_query_number(request, "after", 0, 0))
            limit = int(min(_query_number(request, "limit", 1000, 1), MAX_TIMINGS_PAGE))
        except BadQuery as error:
            return _json(400, {"error": str(error)})
        return _json(200, self.runtime.timings.page(after, limit))

    async def get_healthz(self, request: Request) -> Response:
        """Handle `GET /healthz`: 200 while the process serves requests."""
        return _json(200, {"status": "ok"})

    async def get_readyz(self, request: Request) -> Response:
        """Handle `GET /readyz`: 200 once the first full refresh is done and Redis responds."""
        runtime = self.runtime
        state = runtime.state
        if state.draining:
            return _json(503, {"status": "not ready", "reason": "draining"})
        if not state.ready:
            reason = "waiting for the first full config refresh"
            return _json(503, {"status": "not ready", "reason": reason})
        if not await runtime.dedup.ping():
            reason = "dedup unavailable: Redis does not answer"
            return _json(503, {"status": "not ready", "reason": reason})
        return _json(200, {"status": "ready"})


def build_server(runtime: Runtime) -> HttpServer:
    """Build the HTTP server of one instance; `HttpServer.start` makes it listen."""
    endpoints = Endpoints(runtime)
    return HttpServer(endpoints.routes(), max_body_bytes=runtime.settings.max_body_bytes,
                      too_large=endpoints.too_large)  # fmt: skip
