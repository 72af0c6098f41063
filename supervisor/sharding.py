"""Channel sharding: which instance owns which channel.

A channel maps to a shard by jump consistent hash (Lamping and Veach, "A Fast, Minimal Memory,
Consistent Hash Algorithm", 2014) over a stable 64-bit key: the first 8 bytes of the BLAKE2b
digest of the channel name in UTF-8. Python's built-in `hash()` is salted per process, so it
would give each instance a different result. Jump hash keeps the mapping stable across
processes and hosts, and when the shard count grows from n to n+1 only about 1/(n+1) of the
channels move, all of them to the new shard.

The shard filter only saves work. The Redis claim is the authority, so two instances that
disagree on the shard count during a rollout still process an event once.
"""

from __future__ import annotations

import hashlib

_MASK_64 = 0xFFFF_FFFF_FFFF_FFFF
_JUMP_MULTIPLIER = 2862933555777941757
"""The 64-bit linear congruential multiplier from the jump hash paper."""


def channel_key(channel: str) -> int:
    """Return the stable unsigned 64-bit key of a channel name."""
    digest = hashlib.blake2b(channel.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def jump_hash(key: int, buckets: int) -> int:
    """Return the bucket in [0, buckets) of a 64-bit key by jump consistent hash."""
    if buckets < 1:
        raise ValueError(f"buckets={buckets} is invalid: it must be at least 1")
    key &= _MASK_64
    bucket = -1
    candidate = 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK_64
        candidate = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def shard_for(channel: str, shard_count: int) -> int:
    """Return the shard index that owns `channel` among `shard_count` shards."""
    return jump_hash(channel_key(channel), shard_count)


class ShardFilter:
    """Decides whether this instance (`shard_index` of `shard_count`) owns a channel.

    Results are cached per channel because the hash loop costs a few microseconds and the
    number of channels is small next to the number of events.
    """

    def __init__(self, shard_index: int, shard_count: int, *, max_cached: int = 100_000) -> None:
        if not 0 <= shard_index < shard_count:
            raise ValueError(
                f"shard_index={shard_index} is invalid: it must be in 0 to {shard_count - 1}"
            )
        self.shard_index = shard_index
        self.shard_count = shard_count
        self._owned: dict[str, bool] = {}
        self._max_cached = max_cached

    def owns(self, channel: str) -> bool:
        """Return True when this instance's shard owns `channel`."""
        if self.shard_count == 1:
            return True
        owned = self._owned.get(channel)
        if owned is None:
            owned = shard_for(channel, self.shard_count) == self.shard_index
            if len(self._owned) >= self._max_cached:
                self._owned.clear()
            self._owned[channel] = owned
        return owned
