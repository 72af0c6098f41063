"""The committed notebooks: no outputs, a papermill `parameters` cell first, the usual sections."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from capacity.notebooks import NOTEBOOK_NAMES, NOTEBOOKS_SOURCE_DIR

NOTEBOOK_PATHS = [NOTEBOOKS_SOURCE_DIR / f"{name}.ipynb" for name in NOTEBOOK_NAMES]
SECTIONS = ("## Question", "## Assumptions", "## Method", "## Results", "## Recommendation",
            "## Caveats")


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_every_notebook_is_committed() -> None:
    committed = sorted(path.stem for path in NOTEBOOKS_SOURCE_DIR.glob("*.ipynb"))

    assert committed == sorted(NOTEBOOK_NAMES)


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda path: path.stem)
def test_notebook_has_no_outputs(path: Path) -> None:
    notebook = _read(path)

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for index, cell in enumerate(code_cells):
        assert cell.get("outputs") == [], f"code cell {index} of {path.name} has outputs"
        assert cell.get("execution_count") is None, (
            f"code cell {index} of {path.name} has an execution count"
        )


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda path: path.stem)
def test_notebook_starts_with_parameters_cell(path: Path) -> None:
    notebook = _read(path)

    first = notebook.cells[0]
    assert first.cell_type == "code"
    assert "parameters" in first.metadata.get("tags", [])
    for name in ("bundle_dir", "report_dir", "fast"):
        assert f"{name} = " in first.source, f"{path.name} lacks the parameter {name}"
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda path: path.stem)
def test_notebook_sections_in_order(path: Path) -> None:
    notebook = _read(path)
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")

    positions = [markdown.find(section) for section in SECTIONS]

    assert all(position >= 0 for position in positions), dict(zip(SECTIONS, positions, strict=True))
    assert positions == sorted(positions)


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda path: path.stem)
def test_notebook_is_valid_and_uses_python3(path: Path) -> None:
    notebook = _read(path)

    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
