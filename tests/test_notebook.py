"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient); a failing cell fails CI.

Only the cell tagged `parameters` is replaced (STEPS=2, runs in a temp dir), as papermill would;
every other cell runs as a user would run it, on the built-in model and data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook extra (nbformat, nbclient) is in requirements.lock")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def with_parameters(notebook, **values):
    [cell] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    return notebook


@pytest.mark.slow
def test_quickstart_notebook_runs_every_cell(tmp_path):
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4), STEPS=2, OUTPUT_DIR=str(tmp_path / "runs"))
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails

    outputs = {i: "".join(o.get("text", "") for o in cell.get("outputs", []))
               for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    chats = [outputs[i] for i, c in enumerate(notebook.cells) if c.source.startswith("%%chat --")]
    assert len(chats) == 2 and all(text.strip() for text in chats)  # each %%chat cell streamed an answer
    [reset] = [outputs[i] for i, c in enumerate(notebook.cells) if c.source == "%%chat\n/reset"]
    assert "history cleared" in reset
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "adapter").is_dir() and (runs[0] / "loss.png").is_file()
    assert len(list((runs[0] / "eval").iterdir())) == 1  # the evaluate cell wrote its eval folder into the run
