"""The run's report: one line per step as text, or one JSON object with `--json`."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from supervisor.smoke.results import EXIT_OK, Status

if TYPE_CHECKING:
    from supervisor.smoke.run import SmokeRun

def format_report(run: SmokeRun, exit_code: int) -> str:
    """Return the report as text: one line per step, then the result."""
    lines = [f"supervisor smoke, run {run.options.run_id}, {len(run.options.targets)} target(s)"]
    for result in run.results:
        lines.append(
            f"{result.status.value:<8} {result.step:<22} {result.target or '-':<28} "
            f"{result.duration_s:8.3f} s  {result.detail}"
        )
    counts = {status: sum(r.status is status for r in run.results) for status in Status}
    verdict = "PASS" if exit_code == EXIT_OK else "FAIL"
    lines.append(
        f"Result: {verdict} ({counts[Status.PASS]} passed, {counts[Status.FAIL]} failed, "
        f"{counts[Status.SKIPPED]} skipped); exit code {exit_code}"
    )
    return "\n".join(lines)


def report_json(run: SmokeRun, exit_code: int) -> dict[str, Any]:
    """Return the report as a JSON-ready object."""
    return {
        "run_id": run.options.run_id,
        "result": "PASS" if exit_code == EXIT_OK else "FAIL",
        "exit_code": exit_code,
        "targets": [asdict(target) for target in run.targets],
        "steps": [result.to_json() for result in run.results],
        "created": {"config_ids": run.config_ids, "event_ids": run.event_ids},
    }
