"""examples/tutorial.ipynb runs end to end in a real Jupyter kernel (nbclient, offline) and shows what it promises:
the store, its info, the Analysis as the report's summary card, plots, the comparison and the export."""

from __future__ import annotations

import nbformat
from clitools import REPO
from nbclient import NotebookClient

import saezarr

TUTORIAL = REPO / "examples" / "tutorial.ipynb"


def _outputs(notebook) -> dict[str, list]:
    """Each tagged code cell's outputs, by its tag."""
    return {cell.metadata["tags"][0]: cell.outputs for cell in notebook.cells if cell.metadata.get("tags")}


def _shown(outputs: list, kind: str) -> str:
    """What a cell's results and displays show as `kind` (text/plain, text/html, image/png), joined."""
    return "\n".join(out.get("data", {}).get(kind, "") for out in outputs if out.output_type != "stream")


def test_the_tutorial_runs_end_to_end(demo_config, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEZARR_CACHE", str(demo_config.parent.parent))  # the session's generated demo model
    notebook = nbformat.read(TUTORIAL, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells), "commit the tutorial without outputs"
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = _outputs(notebook)
    assert "Dimensions:" in _shown(outputs["build"], "text/plain")
    assert "(config: 6, fragment: 540, feature: 512)" in _shown(outputs["build"], "text/plain")
    assert "configs      6, 6 complete" in _shown(outputs["info"], "text/plain")
    card = _shown(outputs["analysis"], "text/html")
    assert '<div class="szc-fact"><span>beat chance</span><b>0 of 3,072</b></div>' in card  # random weights
    assert "tutorial-analysis/report.html" in card
    assert "<xarray.Dataset>" in _shown(outputs["emergence"], "text/plain")
    for tag in ("plot_emergence", "plot_null", "traces"):
        assert _shown(outputs[tag], "image/png"), f"the {tag} cell shows no figure"
    assert "Which features are specific to one concept?" in _shown(outputs["compare"], "text/html")
    assert _shown(outputs["export"], "text/plain").startswith("exported 6 configs to tutorial-npz")
    # what the cells wrote, read back
    ds = saezarr.open_store(tmp_path / "tutorial.zarr")
    assert dict(ds.sizes) == {"config": 6, "fragment": 540, "feature": 512} and ds.attrs["input_file"] == "DataFrame"
    assert (tmp_path / "tutorial-analysis" / "report.html").is_file()
    assert len(list((tmp_path / "tutorial-npz").glob("*.npz"))) == 6
