"""MXNet's numpy mode (``npx.set_np()``, as the book's MXNet chapters run): every public
function works the same, hands back arrays of the caller's mode and leaves the mode as
it found it. Each test runs in classic mode and in numpy mode (the `np_mode` fixture)."""

from __future__ import annotations

import numpy as np
import pytest

import d2lft

mx = pytest.importorskip("mxnet")
from mxnet import gluon, npx  # noqa: E402
from mxnet.util import is_np_array, is_np_shape  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import make_image_folder

    return make_image_folder(
        tmp_path_factory.mktemp("npmode") / "hotdog", n_train=8, n_test=4, size=(36, 40)
    )


@pytest.fixture(params=[False, True], ids=["classic", "numpy"])
def np_mode(request):
    """The MXNet backend with numpy semantics off or on (``npx.set_np()``) for the
    test; afterwards the test checks that d2lft left the mode as it was."""
    with d2lft.using("mxnet"):
        if request.param:
            npx.set_np()
        try:
            yield request.param
            assert is_np_array() == request.param, "d2lft changed the array mode"
            assert is_np_shape() == request.param, "d2lft changed the shape mode"
        finally:
            npx.reset_np()


def array_type(np_mode):
    return mx.np.ndarray if np_mode else mx.nd.NDArray


def is_mode_array(x, np_mode) -> bool:
    return isinstance(x, mx.np.ndarray) == np_mode and isinstance(x, mx.nd.NDArray)


def zeros(np_mode, shape):
    return (mx.np if np_mode else mx.nd).zeros(shape)


def param_arrays(net):
    return [p.data() for p in net.collect_params().values()]


@pytest.fixture(scope="module")
def hotdog_zip(data, tmp_path_factory):
    """The tiny data as a hotdog.zip (a local file as the 'mirror': nothing downloaded)."""
    import hashlib
    import shutil

    zip_path = shutil.make_archive(
        tmp_path_factory.mktemp("zip") / "hotdog", "zip", data.parent, "hotdog"
    )
    with open(zip_path, "rb") as f:
        return zip_path, hashlib.sha1(f.read()).hexdigest()


def test_data_and_augmentations(np_mode, data, hotdog_zip, tmp_path):
    url, sha1 = hotdog_zip
    train_imgs, test_imgs = d2lft.load_hotdog(tmp_path, url=url, sha1=sha1)
    img, label = train_imgs[0]
    assert is_mode_array(img, np_mode) and img.shape == (36, 40, 3) and img.dtype == np.uint8
    assert label == 0 and len(test_imgs) == 8
    folder = d2lft.image_folder(data / "train", d2lft.train_augs(SIZE))
    x, _ = folder[3]
    assert is_mode_array(x, np_mode) and x.shape == (3, SIZE, SIZE)
    y = d2lft.test_augs(SIZE)(img)
    assert is_mode_array(y, np_mode) and y.shape == (3, SIZE, SIZE)
    # d2lft's RandomResizedCrop takes Gluon's fallback for tiny images, in both modes
    tiny = (mx.np if np_mode else mx.nd).array(np.full((3, 4, 3), 9, "uint8"), dtype="uint8")
    assert d2lft.train_augs(SIZE)(tiny).shape == (3, SIZE, SIZE)
    # the chapter's own loader over d2lft's datasets and augmentations
    loader = gluon.data.DataLoader(train_imgs.transform_first(d2lft.train_augs(SIZE)), 5)
    X, y = next(iter(loader))
    assert is_mode_array(X, np_mode) and X.shape == (5, 3, SIZE, SIZE)
    axes = d2lft.show_images([train_imgs[i][0] for i in range(4)], 1, 4)
    assert axes[0].images[0].get_array().shape == (36, 40, 3)
    d2lft.plot.close(axes[0].figure)


def test_build_and_forward(np_mode):
    for net in (
        d2lft.build_finetune_net(pretrained=False, seed=0),
        d2lft.build_scratch_net(seed=0),
    ):
        assert all(is_mode_array(a, np_mode) for a in param_arrays(net))
        out = net(zeros(np_mode, (2, 3, SIZE, SIZE)))
        assert is_mode_array(out, np_mode) and out.shape == (2, 2)
        net.hybridize()
        assert is_mode_array(net(zeros(np_mode, (1, 3, SIZE, SIZE))), np_mode)
        assert d2lft.net_info(net).backend == "mxnet"


def _seeded_run(pipeline, data, **kw):
    net = d2lft.build_finetune_net(pretrained=False, seed=3)
    h = d2lft.train_fine_tuning(
        net, 0.05, 8, 1, data_dir=data, image_size=SIZE, seed=0, pipeline=pipeline, **kw
    )
    return net, h


@pytest.mark.parametrize(
    "pipeline",
    ["book", "fast", "fixed", d2lft.BookLoop(freeze=True), d2lft.FastPipeline(freeze=True)],
    ids=["book", "fast", "fixed", "book-frozen", "fast-frozen"],
)
def test_training_is_the_same_in_both_modes(pipeline, data, tmp_path):
    """Every pipeline (all the MXNet runners) trains in numpy mode, to the very same
    numbers and weights as in classic mode, and gives the net back in numpy mode."""
    with d2lft.using("mxnet"):
        ref_net, ref = _seeded_run(pipeline, data, run=d2lft.RunSpec(verbose=False))
        npx.set_np()
        try:
            net, h = _seeded_run(
                pipeline, data, run=d2lft.RunSpec(verbose=False, checkpoint_dir=tmp_path)
            )
            assert is_np_array() and is_np_shape()
            assert all(isinstance(a, mx.np.ndarray) for a in param_arrays(net))
            out = net(mx.np.zeros((1, 3, SIZE, SIZE)))
            assert isinstance(out, mx.np.ndarray)
        finally:
            npx.reset_np()
    assert h.train_loss == ref.train_loss and h.test_acc == ref.test_acc
    assert h.train_acc == ref.train_acc and h.epochs == 1
    for a, b in zip(param_arrays(ref_net), param_arrays(net), strict=True):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    assert (tmp_path / "checkpoint.safetensors").is_file()  # the Checkpointer, numpy mode


def test_train_on_batches_with_arrays_of_the_mode(np_mode):
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(4, 3, SIZE, SIZE)).astype("float32")
    ys = np.array([0, 1, 0, 1], dtype="int32")
    make = mx.np.array if np_mode else mx.nd.array
    batches = [(make(xs), make(ys))]
    net = d2lft.build_scratch_net(seed=0)
    before = net.output.weight.data().asnumpy().copy()
    h = d2lft.train_on_batches(net, 0.1, batches, batches, batch_size=4)
    assert h.epochs == 1 and np.isfinite(h.train_loss[0])
    assert not np.array_equal(before, net.output.weight.data().asnumpy())
    assert is_mode_array(net.output.weight.data(), np_mode)


def test_predict_evaluate_weights_and_checkpoints(np_mode, data, tmp_path):
    net = d2lft.build_finetune_net(pretrained=False, seed=1)
    h = d2lft.train_fine_tuning(
        net, 0.05, 8, 1, data_dir=data, image_size=SIZE, seed=0, run=d2lft.RunSpec(verbose=False)
    )
    img = d2lft.image_folder(data / "test")[0][0]  # an array of the caller's mode
    preds = d2lft.predict(net, [data / "test" / "hotdog" / "0.jpg", img, img.asnumpy()])
    assert [p.label for p in preds][1] == preds[2].label
    np.testing.assert_allclose(preds[1].probs, preds[2].probs, rtol=1e-6)
    ev = d2lft.evaluate(net, data)
    assert len(ev.true) == 8 and 0 <= ev.accuracy <= 1
    # weights: save, change, load back
    path = d2lft.save_params(net, tmp_path / "w.safetensors")
    ref = net(zeros(np_mode, (1, 3, SIZE, SIZE))).asnumpy()
    other = d2lft.build_finetune_net(pretrained=False, seed=7)
    d2lft.load_params(other, path)
    assert is_mode_array(other.output.weight.data(), np_mode)
    # (MKL-DNN may reorder weights: equal to float32 rounding)
    np.testing.assert_allclose(other(zeros(np_mode, (1, 3, SIZE, SIZE))).asnumpy(), ref, 1e-5)
    arrays, _ = d2lft.read_params(path)
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    # checkpoints: save, load into a new net, resume
    ck = d2lft.save_checkpoint(net, tmp_path / "ck", epoch=1, history=h)
    loaded = d2lft.load_checkpoint(ck)
    assert is_mode_array(loaded.output.weight.data(), np_mode)
    np.testing.assert_allclose(loaded(zeros(np_mode, (1, 3, SIZE, SIZE))).asnumpy(), ref, 1e-5)
    assert d2lft.net_info(loaded).classes == ["hotdog", "not-hotdog"]
    h2 = d2lft.train_fine_tuning(
        loaded,
        0.05,
        8,
        2,
        data_dir=data,
        image_size=SIZE,
        seed=0,
        run=d2lft.RunSpec(verbose=False, checkpoint_dir=tmp_path / "ck", resume=True),
    )
    assert h2.epochs == 2
    assert is_mode_array(loaded(zeros(np_mode, (1, 3, SIZE, SIZE))), np_mode)


def test_head_init_and_sweep(np_mode, data, tmp_path):
    source = d2lft.build_scratch_net(num_classes=4, seed=0)
    path = d2lft.save_params(source, tmp_path / "source.safetensors")
    net = d2lft.build_finetune_net(2, pretrained=path, seed=0)
    done = d2lft.init_head_from_source(
        net, {"hotdog": "d"}, classes=["hotdog", "other"], source_classes=list("abcd")
    )
    assert done == {"hotdog": (3, "d")}
    np.testing.assert_array_equal(
        net.output.weight.data().asnumpy()[0], source.output.weight.data().asnumpy()[3]
    )
    assert is_mode_array(net.output.weight.data(), np_mode)
    result = d2lft.lr_sweep(
        [0.05],
        modes=["scratch"],
        data_dir=data,
        num_epochs=1,
        batch_size=8,
        image_size=SIZE,
        seed=0,
        run=d2lft.RunSpec(verbose=False),
    )
    assert len(result) == 1


def test_errors_leave_the_mode_as_it_was(np_mode, tmp_path):
    net = d2lft.build_scratch_net(seed=0)
    with pytest.raises(d2lft.DataLayoutError):
        d2lft.train_fine_tuning(net, data_dir=tmp_path)  # an empty folder
    four = d2lft.save_params(d2lft.build_scratch_net(4), tmp_path / "four.safetensors")
    with pytest.raises(ValueError, match="fc"):  # raised inside the backend, mid-call
        d2lft.load_params(net, four)
    # the fixture checks the mode; the net is still usable in it
    assert is_mode_array(net(zeros(np_mode, (1, 3, SIZE, SIZE))), np_mode)
