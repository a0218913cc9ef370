"""Bad arguments end in a ValueError/TypeError that says what is allowed, before any
training or download starts (no data folder is even read for most of them)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import d2lft
from d2lft.backends import _registry as _backend
from d2lft.engine.options import check_args

BAD_LR = [0, 0.0, -0.01, -1, math.nan, math.inf, -math.inf, "0.01", True, [0.01]]
BAD_COUNT = [0, -1, 2.5, "8", None, True, 1e9 + 0.5]


TINY = dict(n_train=2, n_test=1, size=(8, 8))  # conftest's `tiny`


@pytest.fixture(scope="module")
def _nets():
    return {}


@pytest.fixture
def net(backend, _nets):
    """One scratch net per backend, shared: these tests never train it."""
    if backend not in _nets:
        _nets[backend] = d2lft.build_scratch_net()
    return _nets[backend]


def _no_training(monkeypatch, backend):
    """Make any training that starts fail loudly: each bad argument must stop earlier."""
    pkg = _backend.load(backend)

    def boom(*a, **k):
        raise AssertionError("training started despite a bad argument")

    monkeypatch.setattr(pkg, "make_runner", boom)


@pytest.mark.parametrize("lr", BAD_LR, ids=repr)
def test_bad_learning_rate(net, backend, tiny, monkeypatch, lr):
    _no_training(monkeypatch, backend)
    with pytest.raises(ValueError) as err:
        d2lft.train_fine_tuning(
            net,
            lr,
            batch_size=2,
            num_epochs=1,
            data_dir=tiny,
            image_size=16,
            run=d2lft.RunSpec(verbose=False),
        )
    assert "learning_rate must be a finite number > 0" in str(err.value)
    assert repr(lr) in str(err.value)


@pytest.mark.parametrize("name", ["batch_size", "num_epochs", "image_size"])
@pytest.mark.parametrize("value", BAD_COUNT, ids=repr)
def test_bad_counts(net, backend, tiny, monkeypatch, name, value):
    _no_training(monkeypatch, backend)
    kw = dict(batch_size=2, num_epochs=1, image_size=16)
    kw[name] = value
    with pytest.raises(ValueError) as err:
        d2lft.train_fine_tuning(net, 0.01, data_dir=tiny, **kw, run=d2lft.RunSpec(verbose=False))
    want = (
        "image_size must be an integer between 8 and 4096"
        if name == "image_size"
        else f"{name} must be an integer >= 1"
    )
    assert want in str(err.value)


def test_image_size_too_small_for_the_transforms(backend):
    for fn in (d2lft.train_augs, d2lft.test_augs):
        with pytest.raises(ValueError, match="image_size must be an integer between 8 and 4096"):
            fn(4)


def test_numpy_scalars_are_accepted_and_normalised():
    out = check_args(np.float32(0.01), np.int64(4), np.int32(2), np.int64(32))
    assert out == (pytest.approx(0.01), 4, 2, 32)
    assert [type(v) for v in out] == [float, int, int, int]
    assert d2lft.equivalent_lr(
        np.float64(0.01), batch_size=np.int64(4), from_backend="mxnet", to_backend="torch"
    ) == pytest.approx(0.0025)


@pytest.mark.parametrize("num_classes", [1, 0, -2, 2.0, "2", None, True])
def test_bad_num_classes(backend, num_classes):
    for build in (
        lambda: d2lft.build_scratch_net(num_classes=num_classes),
        lambda: d2lft.build_finetune_net(num_classes=num_classes, pretrained=False),
    ):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
            build()


@pytest.mark.parametrize("arch", ["resnet50", "resnet18_v3", "", 18])
def test_unknown_arch_lists_the_choices(backend, arch):
    archs = _backend.load(backend).ARCHS
    for build in (
        lambda: d2lft.build_scratch_net(arch=arch),
        lambda: d2lft.build_finetune_net(arch=arch, pretrained=False),
    ):
        with pytest.raises(ValueError) as err:
            build()
        msg = str(err.value)
        assert "unknown arch" in msg and all(a in msg for a in archs)


@pytest.mark.parametrize("name", ["tensorflow", "jax", "pytorch", "", None])
def test_unknown_backend_everywhere(name, monkeypatch):
    with pytest.raises(ValueError, match="valid backends are 'mxnet', 'torch'"):
        d2lft.use(name)
    with pytest.raises(ValueError, match="valid backends are 'mxnet', 'torch'"), d2lft.using(name):
        pass
    with pytest.raises(ValueError, match="valid backends are"):
        d2lft.equivalent_lr(0.01, batch_size=4, from_backend=name, to_backend="torch")
    if name:  # an empty D2LFT_BACKEND means "not set"
        monkeypatch.setitem(_backend._global, "name", None)
        monkeypatch.setenv("D2LFT_BACKEND", name)
        with pytest.raises(ValueError) as err:
            d2lft.get_backend()
        assert "D2LFT_BACKEND" in str(err.value) and "'mxnet', 'torch'" in str(err.value)


@pytest.mark.parametrize("built, active", [("mxnet", "torch"), ("torch", "mxnet")])
def test_net_from_the_other_backend(built, active, tiny, monkeypatch):
    for name in (built, active):
        try:
            _backend.load(name)
        except ImportError as err:  # pragma: no cover
            pytest.skip(str(err))
    with d2lft.using(built):
        net = d2lft.build_scratch_net()
    _no_training(monkeypatch, active)
    with d2lft.using(active), pytest.raises(TypeError) as err:
        d2lft.train_fine_tuning(
            net,
            0.01,
            batch_size=2,
            num_epochs=1,
            data_dir=tiny,
            image_size=16,
            run=d2lft.RunSpec(verbose=False),
        )
    msg = str(err.value)
    assert f"built with the {built!r} backend" in msg and f"d2lft.use({built!r})" in msg


@pytest.mark.parametrize(
    "thing", ["resnet18", None, 42, object()], ids=["str", "None", "int", "object"]
)
def test_not_a_network(backend, tiny, thing):
    with pytest.raises(TypeError, match="expected a network built by d2lft"):
        d2lft.train_fine_tuning(
            thing,
            0.01,
            batch_size=2,
            num_epochs=1,
            data_dir=tiny,
            image_size=16,
            run=d2lft.RunSpec(verbose=False),
        )


@pytest.mark.parametrize("data_dir", ["", "/nonexistent/d2lft-data"])
def test_bad_data_dir(net, backend, monkeypatch, data_dir):
    _no_training(monkeypatch, backend)
    with pytest.raises(ValueError) as err:  # DataLayoutError is a ValueError
        d2lft.train_fine_tuning(
            net,
            0.01,
            batch_size=2,
            num_epochs=1,
            data_dir=data_dir,
            image_size=16,
            run=d2lft.RunSpec(verbose=False),
        )
    assert "expected layout" in str(err.value)
