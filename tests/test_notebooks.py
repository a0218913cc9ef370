"""The chapter as notebooks (examples/chapter_mxnet.ipynb, examples/chapter_torch.ipynb):
kept without outputs in the repository, and executed here (nbclient, CPU) on a tiny
folder through their parameters cell (tagged "parameters"), as papermill runs them."""

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
def test_the_parameters_cell_is_tagged_for_papermill(name):
    """papermill (`-p data_dir ...`) finds the cell tagged "parameters"; it holds
    plain assignments of every parameter (the architecture included) and no hidden
    environment variables."""
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    names = {ln.split("=")[0].strip() for ln in tagged[0].source.splitlines() if " = " in ln}
    assert names == {"data_dir", "pretrained", "arch", "image_size", "num_epochs", "batch_size"}
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "environ" not in code and "D2LFT_NB_" not in code
    assert "papermill" in (REPO / "docs" / "tutorial.md").read_text()


def with_parameters(nb, **params):
    """What `papermill -p NAME VALUE` does: a cell of the given values right after the
    cell tagged "parameters"."""
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(i + 1, cell)
    return nb


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebooks_run_on_tiny_data(name, tmp_path, monkeypatch):
    """Each notebook on a tiny folder with a val/ split (mxnet), or a .zip of one
    (torch), offline, as `papermill -p data_dir ... -p arch ...` runs it."""
    import shutil

    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "mine", n_train=8, n_test=4, size=(40, 48))
    (data / "test").rename(data / "val")  # the CLI's other layout
    if name == "torch":
        data = pathlib.Path(shutil.make_archive(str(tmp_path / "mine"), "zip", data))
    arch = {"torch": "resnet18_v2", "mxnet": "resnet18_v1"}[name]  # not the tab's own
    for key, value in {
        "D2LFT_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "D2LFT_HOME": str(tmp_path / "home"),
    }.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    with_parameters(
        nb,
        data_dir=str(data),
        pretrained="none",
        arch=arch,
        image_size=32,
        num_epochs=1,
        batch_size=8,
    )
    nb.cells.append(
        nbformat.v4.new_code_cell(
            'print("arch:", d2lft.net_info(finetune_net).arch, d2lft.net_info(scratch_net).arch)'
        )
    )
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
    assert "val acc" in text and "test acc" not in text  # evaluated on val/
    assert f"arch: {arch} {arch}" in text
    images = [
        o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 2  # the hotdogs and the learning curves
    if name == "mxnet":  # numpy mode all the way through
        assert "<class 'mxnet.numpy.ndarray'>" in text
        assert "<class 'mxnet.ndarray.ndarray.NDArray'>" not in text
