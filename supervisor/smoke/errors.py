"""The smoke test's exceptions: one hierarchy under `SmokeError`, plus the SIGTERM interrupt."""

from __future__ import annotations


class SmokeError(Exception):
    """Base of the smoke test's errors."""


class SmokeOptionError(SmokeError):
    """An option has a value the smoke test cannot run with."""


class TargetError(SmokeError):
    """A target or the execution service did not respond as the interface describes."""


class ConfigStoreError(SmokeError):
    """A write to the config database failed."""


class SmokeInterrupted(BaseException):
    """SIGTERM arrived; raised like KeyboardInterrupt so cleanup still runs."""
