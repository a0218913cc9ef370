"""The confusion matrix's orientation: confusion[i, j] counts the images of true class
i predicted as class j, cell by cell on a known case, in the matrix, its JSON, its
printed table and its picture, and through `evaluate` (true classes from the folders,
predicted from the network's outputs)."""

from __future__ import annotations

import numpy as np
import pytest

import d2lft
from d2lft import inference
from d2lft.inference import Evaluation

CLASSES = ["cat", "dog", "fox"]
TRUE = np.array([0, 0, 0, 0, 1, 2, 2])
PRED = np.array([0, 1, 1, 2, 1, 0, 2])
#: rows: true class; columns: predicted class
WANT = [[1, 2, 1], [0, 1, 0], [1, 0, 1]]


def known() -> Evaluation:
    probs = np.full((len(TRUE), 3), 0.1)
    probs[np.arange(len(TRUE)), PRED] = 0.8
    return Evaluation(CLASSES, [f"{i}.jpg" for i in range(len(TRUE))], TRUE, PRED, probs)


def test_rows_are_true_classes_and_columns_predictions():
    ev = known()
    assert ev.confusion.tolist() == WANT
    assert ev.to_dict()["confusion"] == WANT
    table = str(ev).splitlines()
    assert table[1].split()[-3:] == CLASSES  # the header: predicted classes
    for c, row, line in zip(CLASSES, WANT, table[2:], strict=True):
        assert line.split() == [c, *map(str, row)]


def test_the_picture_puts_count_i_j_in_row_i_column_j():
    ev = known()
    fig = ev.plot_confusion()
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    for i in range(3):
        for j in range(3):
            count, share = cells[i, j].get_text().split("\n")
            assert int(count) == WANT[i][j], (i, j)
            assert share == f"{WANT[i][j] / sum(WANT[i]):.0%}"  # of the true class
    d2lft.plot.close(fig)


def test_evaluate_counts_folders_as_true_and_outputs_as_predicted(
    tmp_path, monkeypatch, one_torch_thread
):
    """The folder holds dog/ and fox/ (a subset of the net's classes, in another
    order of indices); the network's outputs are known."""
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(3, pretrained=False)
    (tmp_path / "test").mkdir()
    labels = np.array([0, 0, 0, 1, 1])  # indices into the folder's classes dog, fox
    outputs = np.array([2, 1, 0, 2, 2])  # indices into the net's classes
    probs = np.eye(3)[outputs] * 0.7 + 0.1

    def fake(net_, folder, size, batch_size):
        return probs, labels, [f"{i}.jpg" for i in range(5)], ["dog", "fox"]

    monkeypatch.setattr(inference, "_predict_folder", fake)
    ev = d2lft.evaluate(net, tmp_path, classes=CLASSES, image_size=32)
    assert ev.true.tolist() == [1, 1, 1, 2, 2] and ev.pred.tolist() == outputs.tolist()
    assert ev.confusion.tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 2]]
    assert ev.accuracy == pytest.approx(3 / 5)
