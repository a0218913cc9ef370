"""The chapter as notebooks (examples/chapter_mxnet.ipynb, examples/chapter_torch.ipynb):
kept without outputs in the repository, and executed here (nbclient, CPU) on a tiny
folder through their parameter cell's environment variables."""

from __future__ import annotations

import pathlib

import pytest

pytestmark = pytest.mark.notebooks

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = {"mxnet": REPO / "examples" / "chapter_mxnet.ipynb"}
NOTEBOOKS["torch"] = REPO / "examples" / "chapter_torch.ipynb"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebooks_are_kept_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    assert f'd2lft.use("{name}")' in source and "train_fine_tuning" in source


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebooks_run_on_tiny_data(name, tmp_path, monkeypatch):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "hotdog", n_train=8, n_test=4, size=(40, 48))
    for key, value in {
        "D2LFT_NB_DATA": str(data),
        "D2LFT_NB_PRETRAINED": "none",
        "D2LFT_NB_IMAGE_SIZE": "32",
        "D2LFT_NB_EPOCHS": "1",
        "D2LFT_NB_BATCH_SIZE": "8",
        "D2LFT_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "D2LFT_HOME": str(tmp_path / "home"),
    }.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the cell's traceback on an error
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "examples/sec on" in text and "accuracy" in text
    images = [
        o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 2  # the hotdogs and the learning curves
    if name == "mxnet":  # numpy mode all the way through
        assert "<class 'mxnet.numpy.ndarray'>" in text
        assert "<class 'mxnet.ndarray.ndarray.NDArray'>" not in text
