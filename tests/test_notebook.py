"""notebooks/quickstart.ipynb runs end to end in a fresh working directory (run with -m slow)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def cell_text(cell) -> str:
    """Everything a code cell printed or displayed, as plain text."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    kernelspec = pytest.importorskip("ipykernel.kernelspec")

    # A `python3` kernel spec for this interpreter, found first through JUPYTER_PATH, so the
    # notebook runs against the installed lmforge even where another python3 kernel is set up.
    kernelspec.write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The kernel inherits these: offline, CPU only, tokenization cache inside tmp_path.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    workdir = tmp_path / "work"
    workdir.mkdir()

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(
        not cell.get("outputs") and cell.get("execution_count") is None
        for cell in notebook.cells
        if cell.cell_type == "code"
    ), "commit the notebook with its outputs cleared"
    client = nbclient.NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()

    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    errors = [o for c in code_cells for o in c.outputs if o["output_type"] == "error"]
    assert not errors
    runs = sorted((workdir / "outputs" / "notebook").glob("*/metrics.json"))
    assert len(runs) == 1, runs
    run_dir = runs[0].parent
    metrics = json.loads(runs[0].read_text())
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0
    for name in ("report.md", "report.csv", "learning_curves.png"):
        assert (run_dir / "report" / name).is_file(), name

    labels = json.loads((run_dir / "labels.json").read_text())["id2label"].values()
    (predict_cell,) = [c for c in code_cells if "predict" in c.metadata.get("tags", [])]
    shown = cell_text(predict_cell)
    assert any(label in shown for label in labels), shown
