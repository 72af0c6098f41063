"""In-process dedup: claim, done, release and expiry on the fake clock."""

from __future__ import annotations

from supervisor.clock import FakeClock
from supervisor.dedup import LogLimiter, MemoryDedup


def make_dedup(clock: FakeClock, instance_id: str = "a") -> MemoryDedup:
    return MemoryDedup(clock, instance_id=instance_id, claim_ttl_ms=1000, done_ttl_ms=5000)


async def test_first_claim_misses_and_second_hits() -> None:
    dedup = make_dedup(FakeClock())

    assert await dedup.claim_many(["e1", "e2", "e1"]) == [True, True, False]
    assert await dedup.claim_many(["e2"]) == [False]


async def test_claim_expires_after_claim_ttl() -> None:
    clock = FakeClock()
    dedup = make_dedup(clock)
    await dedup.claim_many(["e1"])

    await clock.advance(0.999)
    assert await dedup.claim_many(["e1"]) == [False]
    await clock.advance(0.001)
    assert await dedup.claim_many(["e1"]) == [True]


async def test_done_mark_lasts_dedup_ttl() -> None:
    clock = FakeClock()
    dedup = make_dedup(clock)
    await dedup.claim_many(["e1"])
    await dedup.mark_done("e1")

    await clock.advance(4.9)
    assert await dedup.claim_many(["e1"]) == [False]
    await clock.advance(0.1)
    assert await dedup.claim_many(["e1"]) == [True]


async def test_release_allows_a_new_claim() -> None:
    dedup = make_dedup(FakeClock())
    await dedup.claim_many(["e1"])

    await dedup.release("e1")

    assert await dedup.claim_many(["e1"]) == [True]


async def test_release_after_done_keeps_done_mark() -> None:
    dedup = make_dedup(FakeClock())
    await dedup.claim_many(["e1"])
    await dedup.mark_done("e1")

    await dedup.release("e1")

    assert await dedup.claim_many(["e1"]) == [False]


async def test_sweep_forgets_expired_entries() -> None:
    clock = FakeClock()
    dedup = make_dedup(clock)
    await dedup.claim_many([f"e{i}" for i in range(100)])

    await clock.advance(2.0)
    await dedup.claim_many(["fresh"])

    assert len(dedup) == 1


async def test_log_limiter_counts_suppressed_messages() -> None:
    clock = FakeClock()
    limiter = LogLimiter(clock, interval_s=10.0)

    assert limiter.allow() == 0
    assert limiter.allow() is None
    assert limiter.allow() is None
    await clock.advance(10.0)
    assert limiter.allow() == 2


async def test_settle_later_marks_done_or_releases_at_once() -> None:
    clock = FakeClock()
    dedup = make_dedup(clock)
    await dedup.claim_many(["e1", "e2"])

    dedup.settle_later("e1", done=True)
    dedup.settle_later("e2", done=False)

    await clock.advance(4.9)
    assert await dedup.claim_many(["e1", "e2"]) == [False, True]


async def test_settle_later_leaves_a_claim_of_another_instance() -> None:
    clock = FakeClock()
    owner = make_dedup(clock, "a")
    await owner.claim_many(["e1"])
    # The same store seen by another instance id cannot settle a claim it does not own.
    other = make_dedup(clock, "b")
    other._entries = owner._entries

    other.settle_later("e1", done=False)

    assert await owner.claim_many(["e1"]) == [False]
