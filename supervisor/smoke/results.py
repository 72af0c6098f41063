"""Step results and exit codes: what a smoke run reports.

Each step on each target adds one `StepResult`. The exit code follows from the results and the
cleanup: any FAIL gives `EXIT_FAILED`, and a failed cleanup or an interrupt overrides it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_OPTION = 2
EXIT_CLEANUP_FAILED = 3
EXIT_INTERRUPTED = 130


class Status(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


@dataclass
class StepResult:
    """One reported step on one target; `measured` contains the step's figures in seconds."""

    step: str
    target: str | None
    status: Status
    duration_s: float
    detail: str
    measured: dict[str, float | int | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data
