"""The example notebook runs top to bottom (nbclient, a real ipykernel)."""

from __future__ import annotations

import os

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOK = os.path.join(HERE, os.pardir, "examples", "observability.ipynb")


def test_observability_notebook_runs(tmp_path, monkeypatch):
    # jupyter_core warns about its platformdirs migration unless this is set
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", ())]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "live page: http://127.0.0.1:" in text
    # dox.progress in a kernel is distributed's multi-bar widget, one bar per tenant
    assert "finished ['imagery', 'vector']" in text
    widgets = [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widgets
    html = [
        o["data"]["text/html"]
        for o in outputs
        if o.get("output_type") == "execute_result" and "text/html" in o.get("data", {})
    ]
    assert html and "dask-oxigdal status" in html[0] and "imagery" in html[0]
