"""The pictures a reader looks at: learning curves (whole epochs, one colour per run,
train dashed and test solid, a title naming backend and data, one legend) and
prediction grids (file names, a check mark or a cross besides the colour, small PNGs)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from d2lft import History, plot


def history(backend="torch", epochs=1, data="/data/pets", split="val", lr=0.01, seed=0):
    rng = np.random.default_rng(seed)
    h = History(
        backend=backend,
        devices=["cpu"],
        config={"learning_rate": lr, "data_dir": data, "eval_split": split},
    )
    for _ in range(epochs):
        h.add_epoch(float(rng.random()), float(rng.random()), float(rng.random()))
    return h


@pytest.mark.parametrize("epochs, ticks", [(1, [1]), (3, [1, 2, 3]), (12, list(range(1, 13)))])
def test_learning_curves_have_whole_epoch_ticks(epochs, ticks):
    fig = plot.plot_history(history(epochs=epochs))
    for ax in fig.axes:
        shown = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert shown == ticks  # a 1-epoch run had 0.950, 0.975, ..., 1.050
    plot.close(fig)
    fig = plot.plot_history(history(epochs=40))
    ticks = [t for t in fig.axes[0].get_xticks() if 0.5 <= t <= 40.5]
    assert all(float(t).is_integer() for t in ticks) and len(ticks) >= 4
    plot.close(fig)


def test_one_colour_per_run_train_dashed_test_solid_title_and_legend(tmp_path):
    runs = [history(epochs=3, seed=0), history("mxnet", epochs=3, lr=0.1, seed=1)]
    fig = plot.plot_history(runs, tmp_path / "c.png", labels=["finetune", "scratch"])
    loss, acc = fig.axes
    assert len(loss.lines) == 2 and len(acc.lines) == 4
    for i in range(2):
        colour = loss.lines[i].get_color()
        train, test = acc.lines[2 * i], acc.lines[2 * i + 1]
        assert train.get_color() == test.get_color() == colour
        assert loss.lines[i].get_linestyle() == train.get_linestyle() == "--"
        assert test.get_linestyle() == "-"
    assert loss.lines[0].get_color() != loss.lines[1].get_color()
    title = fig._suptitle.get_text()
    assert "torch, mxnet backend" in title and "pets (evaluated on val/)" in title
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["finetune", "scratch", "train", "val"]
    assert not loss.get_legend() and not acc.get_legend()  # one legend, not per panel
    plot.close(fig)
    with Image.open(tmp_path / "c.png") as im:
        assert im.size == (900, 390)  # 9 x 3.9 inches at DPI 100


def photo(path, seed, size=(320, 240)):
    """A JPEG with photo-like content (smooth shapes and noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 0.7, y * 0.9, (x + y) * 0.4], -1) + rng.normal(0, 18, (*x.shape, 3))
    Image.fromarray(np.clip(base + 40 * seed, 0, 255).astype("uint8")).save(path, quality=92)
    return path


def test_prediction_grid_names_files_marks_right_and_wrong_and_stays_small(tmp_path):
    files = [photo(tmp_path / f"photo-{i:02d}.jpg", i) for i in range(12)]
    labels = ["hotdog"] * 6 + ["not-hotdog"] * 6
    true = ["hotdog", "not-hotdog"] * 6
    probs = np.linspace(0.5, 0.99, 12)
    fig = plot.plot_predictions(files, labels, probs, true=true, path=tmp_path / "g.png", ncols=6)
    for i, ax in enumerate(fig.axes):
        right = labels[i] == true[i]
        title = ax.get_title()
        assert title.startswith("\u2713 " if right else "\u2717 "), title
        assert ax.title.get_color() == ("tab:green" if right else "tab:red")
        assert f"photo-{i:02d}.jpg" in [t.get_text() for t in ax.texts]
        assert max(ax.images[0].get_array().shape[:2]) <= plot.THUMBNAIL
    plain = io.BytesIO()  # the same figure as it was saved before (110 dpi, 24-bit)
    fig.savefig(plain, format="png", dpi=110)
    plot.close(fig)
    size = (tmp_path / "g.png").stat().st_size
    assert size < 0.4 * len(plain.getvalue()), (size, len(plain.getvalue()))
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "P" and im.size[0] == 6 * 2.2 * plot.DPI
    # without the true class: no mark, black titles
    fig = plot.plot_predictions(files[:2], labels[:2], probs[:2])
    assert fig.axes[0].get_title() == "hotdog (0.50)"
    plot.close(fig)
