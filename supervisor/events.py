"""Signal events as the ingest endpoint accepts them, and their validation.

A request body is either one event object or a batch `{"events": [...]}`. Validation checks
each field on its own and raises `EventValidationError` naming the first bad field and the
reason, so a 400 response tells the sender exactly what to fix. Unknown fields are ignored, so a
source may send more than the supervisor reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Side = Literal["buy", "sell"]

MAX_ID_CHARS = 200
"""Maximum length of `event_id`, `channel` and `symbol`; the event id also becomes a Redis key."""


class EventValidationError(ValueError):
    """An event or a request body is invalid; `field` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    """One validated signal event; `emitted_at_unix_s` is the source time, when given."""

    event_id: str
    channel: str
    symbol: str
    side: Side
    quantity: float
    price: float | None = None
    emitted_at_unix_s: float | None = None


def _reject_constant(name: str) -> float:
    raise EventValidationError("body", f"{name} is not a valid JSON number")


def decode_body(body: bytes) -> Any:
    """Decode a JSON request body, rejecting NaN and Infinity, which JSON does not allow."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EventValidationError("body", f"invalid JSON ({error})") from None


def _text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        raise EventValidationError(name, "missing")
    if not isinstance(value, str):
        raise EventValidationError(name, f"must be a string, got {type(value).__name__}")
    if not value:
        raise EventValidationError(name, "must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise EventValidationError(name, f"longer than {MAX_ID_CHARS} characters")
    return value


# A tuple, because `int | float` would build a new union object on every call.
_NUMBER_TYPES = (int, float)


def _positive_number(data: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = data.get(name)
    if value is None:
        if required:
            raise EventValidationError(name, "missing")
        return None
    if isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES):
        raise EventValidationError(name, f"must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise EventValidationError(name, f"must be a positive finite number, got {value!r}")
    return number


def _side(data: dict[str, Any]) -> Side:
    value = data.get("side")
    if value is None:
        raise EventValidationError("side", "missing")
    if value == "buy":
        return "buy"
    if value == "sell":
        return "sell"
    raise EventValidationError("side", f"must be 'buy' or 'sell', got {value!r}")


def _emitted_at(data: dict[str, Any]) -> float | None:
    value = data.get("emitted_at")
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventValidationError("emitted_at", "must be an RFC 3339 time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise EventValidationError(
            "emitted_at", f"invalid RFC 3339 time {value!r}; use e.g. 2026-02-06T11:12:03.250Z"
        ) from None
    if moment.tzinfo is None:
        raise EventValidationError(
            "emitted_at", f"{value!r} has no UTC offset; add Z or +00:00 as RFC 3339 requires"
        )
    return moment.timestamp()


def parse_event(data: Any) -> Event:
    """Validate one decoded event object; raises `EventValidationError` on the first bad field."""
    if not isinstance(data, dict):
        raise EventValidationError("event", f"must be a JSON object, got {type(data).__name__}")
    event_id = _text_field(data, "event_id")
    channel = _text_field(data, "channel")
    symbol = _text_field(data, "symbol")
    side = _side(data)
    quantity = _positive_number(data, "quantity", required=True)
    assert quantity is not None
    return Event(
        event_id=event_id,
        channel=channel,
        symbol=symbol,
        side=side,
        quantity=quantity,
        price=_positive_number(data, "price", required=False),
        emitted_at_unix_s=_emitted_at(data),
    )


def batch_items(data: Any) -> list[Any] | None:
    """Return the raw items of a batch body, or None when the body is a single event.

    Raises `EventValidationError` when `events` is present but is not a list.
    """
    if not isinstance(data, dict) or "events" not in data:
        return None
    items = data["events"]
    if not isinstance(items, list):
        raise EventValidationError("events", f"must be a list, got {type(items).__name__}")
    return items
