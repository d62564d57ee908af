"""The notebooks run top to bottom on the offline defaults."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient


EXPECTED = {"pruned_model_family.ipynb": "with identical logits", "quickstart.ipynb": "QUICKSTART OK"}
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert EXPECTED[path.name] in outputs


def test_there_is_a_notebook():
    assert NOTEBOOKS
