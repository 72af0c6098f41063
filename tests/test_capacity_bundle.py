"""Reading a run bundle, and the errors that name what is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from capacity.bundle import BundleError, load_bundle

SAMPLE_BUNDLE = Path(__file__).resolve().parent.parent / "examples" / "sample-bundle"


def test_sample_bundle_loads_steps_and_tables() -> None:
    bundle = load_bundle(SAMPLE_BUNDLE)

    steps = bundle.load_steps
    assert len(steps) >= 2
    assert [step.step for step in steps] == list(range(len(steps)))
    assert all(step.duration_s > 0 for step in steps)
    assert steps[1].rate_per_s > steps[0].rate_per_s
    assert not bundle.series.empty
    assert not bundle.event_timings.empty
    assert not bundle.configs.empty
    assert bundle.supervisor_settings["pool_size"] >= 1


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(BundleError, match="nowhere is not a folder") as raised:
        load_bundle(missing)

    assert "--bundle-dir" in str(raised.value)


def test_missing_files_are_listed(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text("{}")

    with pytest.raises(BundleError) as raised:
        load_bundle(tmp_path)

    assert "supervisor_series.csv" in str(raised.value)
    assert "event_timings.csv" in str(raised.value)
    assert "metadata.json" not in str(raised.value).split("lacks", 1)[1]


def test_missing_column_is_named(tmp_path: Path) -> None:
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(SAMPLE_BUNDLE, bundle_dir)
    (bundle_dir / "execution_timings.csv").write_text("event_id,config_id\ne1,c1\n")

    with pytest.raises(BundleError, match="duration_s"):
        load_bundle(bundle_dir)
