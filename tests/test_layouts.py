"""The folder layouts people already have: train/ + test/ (d2l, the hotdog data),
train/ + val/ (PyTorch's transfer-learning tutorial, ImageNet), train/ + valid/ (+ test/)
(fastai, Kaggle). The held-out split is the first of test/, val/, valid/ that holds
class folders; it is named in History.config['eval_split'] and the CLI's header."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

import d2lft
from d2lft import cli
from d2lft.data.folders import check_splits, find_split_root, held_out, held_out_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(root, held=("val",), loose_test=False, n_val=3):
    """train/<class>/ with 6 images a class and each split of `held` with `n_val`
    (different colours per split, so the counts tell which split was read);
    `loose_test`: a Kaggle-style test/ of unlabelled images."""
    from conftest import make_image_folder

    make_image_folder(root, n_train=6, n_test=n_val, size=(36, 36))
    first = root / "test"
    for name in held:
        if name != "test":
            shutil.copytree(first, root / name)
    if "test" not in held:
        shutil.rmtree(first)
    if loose_test:
        (root / "test").mkdir()
        for i in range(2):
            Image.new("RGB", (36, 36), (9 * i, 0, 0)).save(root / "test" / f"{i}.jpg")
    return root


@pytest.mark.parametrize(
    "held, loose_test, expect",
    [
        (("test",), False, "test"),
        (("val",), False, "val"),
        (("valid",), False, "valid"),
        (("valid",), True, "valid"),  # Kaggle: test/ holds no class folders
        (("test", "val", "valid"), False, "test"),
        (("val", "valid"), False, "val"),
    ],
)
def test_the_held_out_split_rule(tmp_path, held, loose_test, expect):
    root = make(tmp_path / "d", held, loose_test)
    assert held_out_split(root) == expect
    assert held_out(root) == root / expect
    assert find_split_root(root) == root == check_splits(root, 2)
    # a zip of the folder extracts to <dest>/d/: its only subfolder is the root
    assert find_split_root(tmp_path) == root


def test_errors_name_every_accepted_split(tmp_path):
    root = make(tmp_path / "d", ("val",))
    shutil.rmtree(root / "val")
    with pytest.raises(d2lft.DataLayoutError) as err:
        find_split_root(root)
    text = str(err.value)
    assert "no train/ folder beside a test/, val/ or valid/ folder" in text
    assert "val/ or valid/" in text and "expected layout" in text
    # a Kaggle test/ of loose images alone: the message says what is wrong with it
    (root / "test").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "x.jpg")
    with pytest.raises(d2lft.DataLayoutError, match="holds 1 image.s. directly"):
        check_splits(root)


def test_training_evaluates_on_val(backend, tmp_path, pipeline="book"):
    """Both backends train on a folder with train/ and val/ (and no test/) and evaluate
    on val/ (the other pipelines' data: the next test)."""
    root = make(tmp_path / "d", ("val",), n_val=3)
    net = d2lft.build_finetune_net(pretrained=False, seed=0)
    h = d2lft.train_fine_tuning(
        net,
        batch_size=4,
        num_epochs=1,
        data_dir=root,
        image_size=32,
        seed=0,
        pipeline=pipeline,
        run=d2lft.RunSpec(verbose=False),
    )
    assert h.config["eval_split"] == "val" and h.epochs == 1
    ev = d2lft.evaluate(net, root)  # split='test' means the held-out split
    assert ev.folder == str(root / "val") and len(ev.true) == 6
    assert d2lft.plan_run(net, data_dir=make(tmp_path / "t", ("test",))).eval_split == "test"


def test_cli_train_and_evaluate_on_train_and_val(tmp_path, capsys):
    root = make(tmp_path / "pets", ("val",))
    out = tmp_path / "run"
    argv = ["train", "--backend", "torch", "--data-dir", str(root), "--pretrained", "none"]
    argv += ["--epochs", "1", "--batch-size", "4", "--image-size", "32", "--out", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert f"data {root} (train/, evaluated on val/)" in text
    assert d2lft.read_checkpoint(out).config["eval_split"] == "val"
    argv = ["evaluate", "--checkpoint", str(out), "--data-dir", str(root)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert f"scored the val/ folder of {root}" in text and "on 6 images" in text


def test_every_pipelines_data_reads_the_held_out_split(backend, tmp_path):
    """The book's loaders, the fast pipeline's decoded test set and the fixed batches all
    read val/ (3 images a class: 6), not train/ (12)."""
    import importlib

    from d2lft.data.fixed import fixed_loaders

    root = make(tmp_path / "d", ("val",), n_val=3)
    package = importlib.import_module(f"d2lft.backends.{backend}")
    _, test_iter = package.make_loaders(root, 4, 32, num_workers=0)
    assert sum(y.shape[0] for _, y in test_iter) == 6
    fast = importlib.import_module(f"d2lft.backends.{backend}.fastdata")
    args = (root, 32, 4) + (("cpu",) if backend == "torch" else ())
    assert len(fast.FastData(*args).test_labels) == 6
    _, fixed_test = fixed_loaders(root, 4, 32)
    assert fixed_test.folder == str(root / "val") and len(fixed_test.samples) == 6
