"""What `resume=` checks before it continues a run: data with other classes is refused,
a different seed warns (the run would not end as the uninterrupted one), a checkpoint
written by a newer d2lft is refused with "upgrade d2lft", and History.num_examples
counts the epochs from before the resume."""

from __future__ import annotations

import warnings

import pytest
from conftest import make_image_folder

import d2lft
from d2lft.io import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N_TRAIN = 8  # 4 per class


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("resume") / "d", 4, 2, size=(16, 16))


def train(data, epochs, run, seed=0, **kw):
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False, seed=0)
        return d2lft.train_fine_tuning(
            net, 1e-4, 4, epochs, data_dir=data, image_size=16, seed=seed, pipeline="book",
            run=d2lft.RunSpec(verbose=False, **run), **kw,
        )  # fmt: skip


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory):
    """A checkpoint folder after epoch 1 of a seed-0 run."""
    folder = tmp_path_factory.mktemp("ck") / "run"
    train(data, 1, {"checkpoint_dir": folder})
    return folder


def test_resuming_on_other_classes_is_refused(one_epoch, tmp_path):
    other = make_image_folder(tmp_path / "o", 4, 2, size=(16, 16), classes=("cat", "dog"))
    with pytest.raises(d2lft.CheckpointError, match=r"trained on classes \['hotdog'"):
        train(other, 2, {"resume": one_epoch})


def test_resuming_with_another_seed_warns(data, one_epoch):
    with pytest.warns(UserWarning, match=r"different settings seed: 0 -> 1;"):
        train(data, 2, {"resume": one_epoch}, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(data, 2, {"resume": one_epoch}, seed=0)
    assert not [w for w in caught if "different settings" in str(w.message)]


def test_num_examples_counts_the_epochs_before_the_resume(data, one_epoch, tmp_path):
    resumed = train(data, 3, {"resume": one_epoch})
    whole = train(data, 3, {})
    assert resumed.epochs == whole.epochs == 3
    assert resumed.num_examples == whole.num_examples == 3 * N_TRAIN
    assert resumed.train_loss == whole.train_loss  # and it is the same run


def test_a_checkpoint_from_a_newer_d2lft_is_refused(data, tmp_path, monkeypatch):
    folder = tmp_path / "future"
    monkeypatch.setattr(ckpt, "CHECKPOINT_VERSION", ckpt.CHECKPOINT_VERSION + 1)
    train(data, 1, {"checkpoint_dir": folder})  # written in the next format
    monkeypatch.undo()
    for read in (d2lft.read_checkpoint, d2lft.load_checkpoint):
        with pytest.raises(d2lft.CheckpointError, match="newer d2lft .*: upgrade d2lft$"):
            read(folder)
    with pytest.raises(d2lft.CheckpointError, match="upgrade d2lft"):
        train(data, 2, {"resume": folder})
