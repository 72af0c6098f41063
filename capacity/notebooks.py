"""Notebooks of the capacity plan: their parameters, their settings and their execution.

The three notebooks in `notebooks/` explain what the capacity plan computed: the pool size sweep,
simulated against measured, and the alert thresholds. Each starts with a cell tagged
`parameters` that sets `bundle_dir`, `report_dir` and `fast`. Papermill injects new values
after it when `execute_notebooks` runs them into a report folder, and `pytest --nbmake` runs
them as committed.

An empty `bundle_dir` means the sample bundle in `examples/sample-bundle`, and `fast = None`
means "read `CAPACITY_FAST`", which `.ci/run` sets to 1 so that each notebook runs in well under a
minute.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_SOURCE_DIR = REPO_ROOT / "notebooks"
SAMPLE_BUNDLE_DIR = REPO_ROOT / "examples" / "sample-bundle"
FAST_ENVIRONMENT_VARIABLE = "CAPACITY_FAST"
NOTEBOOK_NAMES = ("capacity_sweep", "simulated_vs_measured", "alert_thresholds")
CELL_TIMEOUT_S = 600
KERNEL_NAME = "python3"


class NotebookError(RuntimeError):
    """A notebook is missing or one of its cells failed."""


@dataclass(frozen=True, kw_only=True)
class AnalysisSettings:
    """Sizes of the simulated work: replications and model run lengths, per plan mode.

    `fast` is for CI and notebook tests, `quick` for `capacity-plan --quick`, `full` for a plan
    before a rollout. Fewer replications and shorter runs give wider confidence intervals, which
    the report shows, not a different answer on average.
    """

    mode: str
    replications: int
    sweep_duration_s: float
    compare_replications: int
    alert_normal_duration_s: float
    alert_replications: int
    alert_overload_start_s: float
    alert_overload_duration_s: float
    burst_duration_s: float
    verification_duration_s: float


ANALYSIS_SETTINGS: Mapping[str, AnalysisSettings] = {
    "fast": AnalysisSettings(
        mode="fast",
        replications=2,
        sweep_duration_s=60.0,
        compare_replications=2,
        alert_normal_duration_s=1800.0,
        alert_replications=1,
        alert_overload_start_s=120.0,
        alert_overload_duration_s=300.0,
        burst_duration_s=10.0,
        verification_duration_s=30.0,
    ),
    "quick": AnalysisSettings(
        mode="quick",
        replications=3,
        sweep_duration_s=120.0,
        compare_replications=3,
        alert_normal_duration_s=3600.0,
        alert_replications=2,
        alert_overload_start_s=300.0,
        alert_overload_duration_s=600.0,
        burst_duration_s=20.0,
        verification_duration_s=45.0,
    ),
    "full": AnalysisSettings(
        mode="full",
        replications=5,
        sweep_duration_s=600.0,
        compare_replications=5,
        alert_normal_duration_s=6 * 3600.0,
        alert_replications=3,
        alert_overload_start_s=600.0,
        alert_overload_duration_s=900.0,
        burst_duration_s=30.0,
        verification_duration_s=180.0,
    ),
}


def fast_mode_requested() -> bool:
    """Return True when the environment variable `CAPACITY_FAST` is `1`."""
    return os.environ.get(FAST_ENVIRONMENT_VARIABLE, "") == "1"


def notebook_settings(fast: bool | None = None) -> AnalysisSettings:
    """Return the settings a notebook runs with: `fast` when asked or when `CAPACITY_FAST=1`."""
    use_fast = fast_mode_requested() if fast is None else fast
    return ANALYSIS_SETTINGS["fast" if use_fast else "quick"]


def resolve_bundle_dir(bundle_dir: str | Path | None) -> Path:
    """Return the bundle a notebook reads: `bundle_dir`, or the sample bundle when empty."""
    if bundle_dir is None or str(bundle_dir) == "":
        return SAMPLE_BUNDLE_DIR
    path = Path(bundle_dir)
    return path if path.is_absolute() else (REPO_ROOT / path)


def resolve_report_dir(report_dir: str | Path | None) -> Path | None:
    """Return the folder a notebook writes figures to, or None to write nothing."""
    if report_dir is None or str(report_dir) == "":
        return None
    return Path(report_dir)


def figure_path(report_dir: str | Path | None, name: str) -> Path:
    """Return where a notebook saves figure `name`: the report's `figures/`, else a temp folder.

    A notebook run without a report folder (as `pytest --nbmake` runs them) must not write
    into the checkout, so its figures go to a fresh temporary folder.
    """
    resolved = resolve_report_dir(report_dir)
    folder = resolved / "figures" if resolved is not None else Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def planned_pool_size(report_dir: str | Path | None, measured_pool_size: int) -> int:
    """Return the pool size an analysis should plan around.

    That is the report's recommended `SUPERVISOR_WORKER_POOL_SIZE` when the report folder
    already holds a `recommendation.json`, else the pool size of the measured run.
    """
    resolved = resolve_report_dir(report_dir)
    if resolved is not None and (resolved / "recommendation.json").is_file():
        document = json.loads((resolved / "recommendation.json").read_text(encoding="utf-8"))
        return int(document["SUPERVISOR_WORKER_POOL_SIZE"])
    return int(measured_pool_size)


def chosen_pool_size(pool_sizes: Sequence[int], recommended: int | None) -> int:
    """Return the recommended pool size, or the largest swept one when none met the targets."""
    return int(recommended) if recommended is not None else int(max(pool_sizes))


def notebook_path(name: str) -> Path:
    """Return the committed notebook `name` (without `.ipynb`)."""
    path = NOTEBOOKS_SOURCE_DIR / f"{name}.ipynb"
    if not path.is_file():
        raise NotebookError(
            f"notebook {path} not found: run from a checkout of the repository, where "
            "notebooks/ is present"
        )
    return path


def execute_notebooks(
    report_dir: Path,
    bundle_dir: Path,
    *,
    fast: bool = False,
    names: Sequence[str] = NOTEBOOK_NAMES,
    extra_parameters: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Execute each notebook on `bundle_dir` into `report_dir/notebooks` and export it as HTML.

    Returns the HTML paths. A failing cell raises `NotebookError` naming the notebook and the
    error; the partly executed notebook is kept beside the others for reading.
    """
    output_dir = report_dir / "notebooks"
    output_dir.mkdir(parents=True, exist_ok=True)
    parameters = {
        "bundle_dir": str(bundle_dir.resolve()),
        "report_dir": str(report_dir.resolve()),
        "fast": fast,
        **(extra_parameters or {}),
    }
    html_paths = []
    for name in names:
        executed = output_dir / f"{name}.ipynb"
        execute_notebook(notebook_path(name), executed, parameters)
        html_paths.append(export_html(executed, output_dir / f"{name}.html"))
    return html_paths


def execute_notebook(source: Path, executed: Path, parameters: Mapping[str, Any]) -> Path:
    """Run one notebook with papermill, injecting `parameters` after its `parameters` cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    logger.info("executing notebook %s into %s", source.name, executed)
    try:
        papermill.execute_notebook(
            str(source),
            str(executed),
            parameters=dict(parameters),
            kernel_name=KERNEL_NAME,
            cwd=str(REPO_ROOT),
            progress_bar=False,
            execution_timeout=CELL_TIMEOUT_S,
        )
    except PapermillExecutionError as error:
        raise NotebookError(
            f"notebook {source.name} failed in cell {error.exec_count}: {error.ename}: "
            f"{error.evalue} (the executed copy is {executed})"
        ) from error
    return executed


def export_html(executed: Path, html_path: Path) -> Path:
    """Export an executed notebook to HTML with nbconvert."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()  # type: ignore[no-untyped-call]
    body, _ = exporter.from_filename(str(executed))
    html_path.write_text(body, encoding="utf-8")
    logger.info("wrote %s", html_path)
    return html_path
