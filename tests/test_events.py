"""Validation of signal events: each bad field is rejected with its name and the reason."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.events import (
    EventValidationError,
    batch_items,
    decode_body,
    parse_event,
)

VALID: dict[str, Any] = {
    "event_id": "evt-1",
    "channel": "alpha",
    "symbol": "BTCUSDT",
    "side": "buy",
    "quantity": 0.5,
}


def with_fields(**changes: Any) -> dict[str, Any]:
    data = dict(VALID)
    for name, value in changes.items():
        if value is _REMOVE:
            del data[name]
        else:
            data[name] = value
    return data


_REMOVE = object()


def test_valid_event_parses_every_field() -> None:
    event = parse_event(
        with_fields(price=64000, emitted_at="2026-02-06T11:12:03.250Z", extra="ignored")
    )

    assert event.event_id == "evt-1"
    assert event.channel == "alpha"
    assert event.symbol == "BTCUSDT"
    assert event.side == "buy"
    assert event.quantity == 0.5
    assert event.price == 64000.0
    assert event.emitted_at_unix_s == pytest.approx(1770376323.25)


def test_optional_fields_default_to_none() -> None:
    event = parse_event(VALID)

    assert event.price is None
    assert event.emitted_at_unix_s is None


@pytest.mark.parametrize(
    ("changes", "field", "reason_part"),
    [
        ({"event_id": _REMOVE}, "event_id", "missing"),
        ({"event_id": ""}, "event_id", "empty"),
        ({"event_id": 12}, "event_id", "string"),
        ({"event_id": "x" * 201}, "event_id", "200"),
        ({"channel": _REMOVE}, "channel", "missing"),
        ({"channel": ["a"]}, "channel", "string"),
        ({"symbol": _REMOVE}, "symbol", "missing"),
        ({"side": _REMOVE}, "side", "missing"),
        ({"side": "hold"}, "side", "'buy' or 'sell'"),
        ({"quantity": _REMOVE}, "quantity", "missing"),
        ({"quantity": 0}, "quantity", "positive"),
        ({"quantity": -1.5}, "quantity", "positive"),
        ({"quantity": "1"}, "quantity", "number"),
        ({"quantity": True}, "quantity", "number"),
        ({"price": 0}, "price", "positive"),
        ({"price": "cheap"}, "price", "number"),
        ({"emitted_at": "yesterday"}, "emitted_at", "RFC 3339"),
        ({"emitted_at": "2026-02-06T11:12:03"}, "emitted_at", "UTC offset"),
        ({"emitted_at": 1770376323}, "emitted_at", "RFC 3339"),
    ],
)
def test_bad_field_is_named(changes: dict[str, Any], field: str, reason_part: str) -> None:
    with pytest.raises(EventValidationError) as caught:
        parse_event(with_fields(**changes))

    assert caught.value.field == field
    assert reason_part in caught.value.reason


def test_non_object_event_is_rejected() -> None:
    with pytest.raises(EventValidationError) as caught:
        parse_event(["not", "an", "object"])

    assert caught.value.field == "event"


@pytest.mark.parametrize("body", [b"{", b"NaN", b'{"quantity": Infinity}', b"\xff"])
def test_invalid_json_body_names_body(body: bytes) -> None:
    with pytest.raises(EventValidationError) as caught:
        decode_body(body)

    assert caught.value.field == "body"


def test_huge_number_is_not_finite() -> None:
    with pytest.raises(EventValidationError) as caught:
        parse_event(decode_body(b'{"event_id": "e", "channel": "c", "symbol": "s", '
                                b'"side": "sell", "quantity": 1e400}'))

    assert caught.value.field == "quantity"


def test_batch_items_distinguishes_single_and_batch() -> None:
    assert batch_items(VALID) is None
    assert batch_items({"events": [VALID, VALID]}) == [VALID, VALID]


def test_batch_events_must_be_a_list() -> None:
    with pytest.raises(EventValidationError) as caught:
        batch_items({"events": {"event_id": "e"}})

    assert caught.value.field == "events"
