"""The run bundle folder and its `metadata.json`: where, with what, and what was measured."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import psutil

LOADTESTS_DIR = Path(__file__).resolve().parent
PACKAGES = (
    "locust",
    "gevent",
    "geventhttpclient",
    "requests",
    "psutil",
    "copytrade-capacity-suite",
    "aiohttp",
    "redis",
    "sqlalchemy",
)


def default_bundle_dir(profile: str, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return Path("bundles") / f"{stamp}-{profile}"


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(directory: Path = LOADTESTS_DIR) -> str | None:
    """Return the commit checked out around the load tests, or None outside a repository."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def own_cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def jsonable(value: Any) -> Any:
    """Return `value` with anything JSON cannot hold turned into its string form."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_metadata(bundle_dir: Path, metadata: dict[str, Any]) -> Path:
    path = bundle_dir / "metadata.json"
    path.write_text(json.dumps(jsonable(metadata), indent=2, sort_keys=True) + "\n")
    return path
