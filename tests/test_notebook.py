"""notebooks/results.ipynb: committed without outputs, equal to its generator, and runs top to bottom headless."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "results.ipynb"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_results_notebook", NOTEBOOKS / "make_results_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    dirty = [index for index, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not dirty, (f"code cells {dirty} of {NOTEBOOK} have outputs or execution counts: strip them "
                       "(python notebooks/make_results_notebook.py rewrites the notebook clean)")


def test_committed_notebook_matches_its_generator() -> None:
    built = load_generator().build()
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], (
        "notebooks/results.ipynb differs from notebooks/make_results_notebook.py: edit the cells there and run "
        "python notebooks/make_results_notebook.py")


@pytest.fixture
def python3_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernelspec that runs this interpreter, found before any user or system one."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(tmp_path / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return "python3"


def text_of(outputs: list) -> str:
    parts = []
    for output in outputs:
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_runs_on_a_finished_grid(finished_grid: dict, python3_kernel: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    results = finished_grid["grid"].output
    monkeypatch.setenv("USVL_RESULTS", str(results))
    monkeypatch.setenv("USVL_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name=python3_kernel,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # raises CellExecutionError
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    mime = [key for output in outputs for key in output.get("data", {})]
    assert mime.count("text/html") >= 5, "expected the tables (runs.csv, pivots, paired seeds, curves) as HTML"
    assert mime.count("image/png") >= 5, "expected the plots folder's PNGs and the notebook's own figures"
    text = text_of(outputs)
    assert f"Results folder: {results.resolve()}" in text
    assert "mona_hybrid better" in text  # the paired comparison found the adapter and the linear probe on seed 1
    assert "val/auroc" in text  # the TensorBoard curves of the chosen (classification) run
    assert "Trained by: python -m usvl fit" in text


def test_notebook_says_what_to_run_without_results(tmp_path: Path, python3_kernel: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With USVL_RESULTS unset and no results next to it, the parameter cell tells the user to run the grid."""
    monkeypatch.delenv("USVL_RESULTS", raising=False)
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name=python3_kernel,
                            resources={"metadata": {"path": str(folder)}})
    with pytest.raises(CellExecutionError, match="make reproduce-quick") as raised:
        client.execute()
    assert raised.value.ename == "FileNotFoundError"
