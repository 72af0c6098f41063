"""Run bundle: the folder a load test writes and the only input of the analysis.

A bundle copied from staging or production works the same as one recorded here, so nothing in
the analysis may reach back to the live services. The layout is described in
docs/interfaces.md ("Run bundle"); `load_bundle` reads it and checks that the files the
analysis needs are there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


class BundleError(ValueError):
    """A run bundle is missing a file or a column the analysis needs."""


@dataclass(frozen=True)
class LoadStep:
    """One constant-rate stretch of a run."""

    step: int
    start_unix_s: float
    end_unix_s: float
    rate_per_s: float

    @property
    def duration_s(self) -> float:
        return self.end_unix_s - self.start_unix_s


@dataclass
class RunBundle:
    """The contents of a run bundle, as data frames and the metadata dictionary."""

    path: Path
    metadata: dict[str, Any]
    series: pd.DataFrame
    event_timings: pd.DataFrame
    execution_timings: pd.DataFrame
    configs: pd.DataFrame
    stub_series: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def load_steps(self) -> list[LoadStep]:
        return [
            LoadStep(
                step=int(item["step"]),
                start_unix_s=float(item["start_unix_s"]),
                end_unix_s=float(item["end_unix_s"]),
                rate_per_s=float(item["rate_per_s"]),
            )
            for item in self.metadata.get("load_steps", [])
        ]

    @property
    def supervisor_settings(self) -> dict[str, Any]:
        """The `instance` part of the first target's `/stats`."""
        settings = self.metadata.get("supervisor_settings") or {}
        if isinstance(settings, dict) and settings and all(
            isinstance(value, dict) for value in settings.values()
        ):
            first: dict[str, Any] = next(iter(settings.values()))
            return first
        if isinstance(settings, list) and settings:
            return dict(settings[0])
        return dict(settings) if isinstance(settings, dict) else {}


_REQUIRED_FILES = ("metadata.json", "supervisor_series.csv", "event_timings.csv")
_EVENT_COLUMNS = ("event_id", "channel", "outcome", "received_unix_s", "started_unix_s",
                  "finished_unix_s")
_EXECUTION_COLUMNS = ("event_id", "config_id", "started_unix_s", "duration_s", "outcome")


def load_bundle(path: str | Path) -> RunBundle:
    """Read a run bundle folder; raise `BundleError` naming what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(
            f"run bundle {folder} is not a folder: pass a folder written by "
            "`locust -f loadtests --bundle-dir DIR`"
        )
    missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise BundleError(
            f"run bundle {folder} lacks {', '.join(missing)}: record it with "
            "`locust -f loadtests --bundle-dir DIR`"
        )

    metadata = json.loads((folder / "metadata.json").read_text())
    series = pd.read_csv(folder / "supervisor_series.csv")
    events = _read_optional(folder / "event_timings.csv", _EVENT_COLUMNS)
    executions = _read_optional(folder / "execution_timings.csv", _EXECUTION_COLUMNS)
    configs = _read_optional(folder / "configs.csv", ("id", "channel"))
    stub_series = _read_optional(folder / "stub_series.csv", ())
    return RunBundle(folder, metadata, series, events, executions, configs, stub_series)


def _read_optional(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(columns))
    frame = pd.read_csv(path)
    absent = [column for column in columns if column not in frame.columns]
    if absent:
        raise BundleError(f"{path} lacks the columns {', '.join(absent)}")
    return frame
