"""A new user's first hour (issue 23, 6): what the commands say and do when a user
tries the README's steps on their own data."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import make_image_folder

REPO = pathlib.Path(__file__).resolve().parents[1]


def d2lft_cli(*args, cwd=None, timeout=300):
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        D2LFT_PROGRESS="0",
        OMP_NUM_THREADS="1",
        MPLBACKEND="Agg",
        D2LFT_DATA_URL="http://127.0.0.1:9/nothing-here.zip",  # never the internet
    )
    return subprocess.run(
        [sys.executable, "-m", "d2lft", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


# ---------------------------------------------------------------- wrong layout


def test_one_folder_of_classes_is_told_about_val_fraction(toy_data, tmp_path):
    """`--data-dir hymenoptera_data/train`: one folder of class subfolders. The error
    suggests --val-fraction 0.2, and that suggestion works."""
    from d2lft.data.split import class_names

    r = d2lft_cli("train", "finetune", "--data-dir", toy_data / "train", "--out", tmp_path / "run")
    assert r.returncode == 2
    assert r.stderr.startswith("d2lft train: error:")
    assert "holds class subfolders of images" in r.stderr
    assert "--val-fraction 0.2" in r.stderr and "val_fraction=" not in r.stderr
    assert class_names(toy_data / "train", 0.2) == ["hotdog", "not-hotdog"]


def test_no_val_fraction_hint_for_folders_without_images(tmp_path):
    """Subfolders without images (or a folder with train/ but no held-out split) get
    the layout, not the val_fraction suggestion."""
    from d2lft.data.folders import DataLayoutError, find_split_root

    for name in ("a", "b"):
        (tmp_path / "empty" / name).mkdir(parents=True)
    with pytest.raises(DataLayoutError) as err:
        find_split_root(tmp_path / "empty")
    assert "holds class subfolders" not in str(err.value)
    assert "expected layout" in str(err.value)
    make_image_folder(tmp_path / "splits", n_train=1, n_test=1, size=(8, 8))
    (tmp_path / "splits" / "test").rename(tmp_path / "splits" / "other")
    with pytest.raises(DataLayoutError) as err:
        find_split_root(tmp_path / "splits")
    assert "holds class subfolders" not in str(err.value)


# ---------------------------------------------------------------- one run on a val/ layout


@pytest.fixture(scope="module")
def val_run(tmp_path_factory):
    """`d2lft train` run from its own folder on `data/` (train/ + val/), given as a
    relative path; 2 epochs so that the per-epoch lines print."""
    work = tmp_path_factory.mktemp("work")
    make_image_folder(work / "data", n_train=6, n_test=4, size=(32, 32))
    (work / "data" / "test").rename(work / "data" / "val")
    r = d2lft_cli(
        "train", "scratch", "--backend", "torch", "--data-dir", "data", "--out", "runs/ants",
        "--epochs", "2", "--batch-size", "4", "--image-size", "32", cwd=work,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return work, r.stdout


def test_val_split_is_called_val_everywhere(val_run):
    """The per-epoch and closing lines, metrics.json, `d2lft info` and the curve's
    legend name the split that was evaluated (val/), not "test"."""
    import json

    import d2lft
    from d2lft import plot

    work, out = val_run
    epoch_lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all(", val acc " in ln for ln in epoch_lines), out
    assert any(ln.startswith("loss ") and ", val acc " in ln for ln in out.splitlines())
    assert "test acc" not in out
    metrics = json.loads((work / "runs/ants/metrics.json").read_text())
    assert "test_acc" not in metrics and len(metrics["held_out_acc"]) == 2
    assert metrics["config"]["eval_split"] == "val"
    h = d2lft.History.from_json(work / "runs/ants/metrics.json")
    assert h.test_acc == metrics["held_out_acc"]  # the Python name stays the book's
    info = d2lft_cli("info", work / "runs/ants")
    assert info.returncode == 0 and ", val acc " in info.stdout and "test acc" not in info.stdout
    fig = plot.plot_history(h)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    plot.close(fig)
    assert "val" in legend and "test" not in legend


def test_old_metrics_json_still_reads(tmp_path):
    """A metrics.json written before the key was renamed (`test_acc`) still loads."""
    import json

    import d2lft

    old = {"backend": "torch", "devices": ["cpu"], "train_loss": [0.5], "train_acc": [0.7]}
    (tmp_path / "m.json").write_text(json.dumps({**old, "test_acc": [0.9]}))
    h = d2lft.History.from_json(tmp_path / "m.json")
    assert h.test_acc == [0.9] and str(h).startswith("loss 0.500, train acc 0.700, test acc 0.900")


def test_evaluate_scores_the_data_it_was_trained_on(val_run, tmp_path):
    """`d2lft evaluate --checkpoint runs/ants` without --data-dir, from another folder:
    the data training used (recorded absolute), not a download of hotdog.zip."""
    work, _ = val_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = d2lft_cli("evaluate", "--checkpoint", work / "runs/ants", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert f"scored the val/ folder of {work / 'data'} (the data " in r.stdout
    assert "accuracy" in r.stdout and "hotdog.zip" not in r.stdout + r.stderr


def test_evaluate_an_old_checkpoint_with_a_relative_data_dir(val_run, tmp_path):
    """A checkpoint from before `data_source` records only a relative `data_dir`: it is
    found from the folder it was trained in, and elsewhere the command says so."""
    import d2lft

    work, _ = val_run
    ck = d2lft.read_checkpoint(work / "runs/ants")
    config = {k: v for k, v in ck.config.items() if k != "data_source"}
    config["data_dir"] = "data"
    with d2lft.using("torch"):
        net = d2lft.load_checkpoint(work / "runs/ants")
        d2lft.save_checkpoint(net, tmp_path / "old", epoch=ck.epoch, config=config)
    r = d2lft_cli("evaluate", "--checkpoint", tmp_path / "old", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "scored the val/ folder of data (the data " in r.stdout
    r = d2lft_cli("evaluate", "--checkpoint", tmp_path / "old", cwd=tmp_path)
    assert r.returncode == 2
    assert "was trained on data, which is not there (relative to this folder" in r.stderr
    assert "--data-dir" in r.stderr and "Traceback" not in r.stderr


def test_show_mistakes_0_prints_only_their_number(val_run, tmp_path):
    """`--show-mistakes 0`: the count of mistakes, no empty list."""
    import shutil

    work, _ = val_run
    both = tmp_path / "both"
    shutil.copytree(work / "data", both)
    shutil.rmtree(both / "val" / "not-hotdog")  # the same images under both labels:
    shutil.copytree(both / "val" / "hotdog", both / "val" / "not-hotdog")  # 4 mistakes
    ck = ("--checkpoint", work / "runs/ants", "--data-dir", both)
    r = d2lft_cli("evaluate", *ck, "--show-mistakes", "0")
    assert r.returncode == 0, r.stderr
    assert "worst mistakes" not in r.stdout
    assert "4 mistake(s)" in r.stdout.splitlines(), r.stdout
    r = d2lft_cli("evaluate", *ck, "--show-mistakes", "2")
    lines = r.stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("worst mistakes ("))
    assert all(ln.startswith("  ") and ", true " in ln for ln in lines[i + 1 : i + 3])


def test_predict_goes_on_past_a_bad_image(val_run, tmp_path):
    """One unreadable file (named on the command line, or truncated in a folder) is
    reported with its path and why; the others are predicted; exit status 1. None
    readable: exit status 2."""
    work, _ = val_run
    good = sorted((work / "data" / "val" / "hotdog").glob("*.jpg"))[:2]
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    folder = tmp_path / "folder"
    folder.mkdir()
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    ck = ("--checkpoint", work / "runs/ants")
    r = d2lft_cli("predict", *ck, good[0], garbage, good[1], folder)
    assert r.returncode == 1, r.stderr
    predicted = [ln.split(":")[0] for ln in r.stdout.splitlines()]
    assert predicted == [str(good[0]), str(good[1])], r.stdout
    assert f"cannot read image {garbage}: " in r.stderr
    assert f"cannot read image {folder / 'truncated.jpg'}: " in r.stderr
    assert "2 of 4 image(s) unreadable" in r.stderr and "exit status 1" in r.stderr
    assert "data folder" not in r.stderr and "Traceback" not in r.stderr
    r = d2lft_cli("predict", *ck, garbage)
    assert r.returncode == 2 and r.stdout == ""
    assert f"cannot read image {garbage}: " in r.stderr and "none of the images" in r.stderr


# ---------------------------------------------------------------- docs


def test_train_fine_tuning_docstring_names_the_real_default():
    import d2lft
    from d2lft.engine.options import pipeline_from

    default = type(pipeline_from(None)).__name__
    doc = " ".join(d2lft.train_fine_tuning.__doc__.split())
    assert f":class:`{default}` (the default" in doc
    assert "BookLoop` (the chapter's loop, default)" not in doc


def test_home_page_and_readme_show_the_same_prediction():
    readme = (REPO / "README.md").read_text()
    home = (REPO / "docs" / "index.md").read_text()
    assert "my-photo.jpg: cat (0.973)" in readme and "my-photo.jpg: cat (0.973)" in home
    assert "hotdog (0.973)" not in home


def test_home_page_code_is_not_cut_off_at_1280_px(tmp_path):
    """In a real browser 1280 px wide, no code block of the home page scrolls (a cut-off
    comment), as the issue saw."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((tmp_path / "site" / "index.html").as_uri())
            widths = page.eval_on_selector_all(
                "article pre > code",
                "els => els.map(e => [e.scrollWidth, e.clientWidth, e.innerText.length])",
            )
        finally:
            browser.close()
    assert len(widths) >= 2 and all(n > 0 for _, _, n in widths)
    assert all(scroll <= client for scroll, client, _ in widths), widths
