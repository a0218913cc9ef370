"""Identical computation in both engines: same weights and inputs give the same
logits, the same SGD step (under d2lft.equivalent_sgd) and the same loss curve;
BatchNorm's running statistics differ only by the documented conventions."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_image_folder

import d2lft
from d2lft import parity

ARCHS = ("resnet18_v1", "resnet18_v2")
DIRECTIONS = (("torch", "mxnet"), ("mxnet", "torch"))
LR, WD = 0.01, 0.001  # the MXNet tab's fine-tuning settings (head: 10x)
M32 = float(np.float32(0.9))  # Gluon's BatchNorm momentum, as MXNet stores it


def _build(backend, arch):
    with d2lft.using(backend):
        net = d2lft.build_finetune_net(pretrained=False, arch=arch)
    if backend == "mxnet":
        import mxnet as mx

        net(mx.nd.zeros((1, 3, 32, 32)))
    return net


def _pair(arch, src, dst, tmp_path, seed=0):
    """(source net, copy in the other backend): trained-looking BatchNorm tensors,
    moved through d2lft's portable file."""
    import mxnet as mx
    import torch

    torch.manual_seed(seed)  # a fixed start: runs repeat exactly
    mx.random.seed(seed)
    a = _build(src, arch)
    w = parity.backend_weights(src)
    w.load_state_arrays(a, parity.pretrained_like(w.state_arrays(a), seed))
    path = d2lft.save_params(a, tmp_path / f"{arch}-{src}.safetensors")
    b = _build(dst, arch)
    d2lft.load_params(b, path)
    return (a, b) if src == "torch" else (b, a)  # always (torch net, mxnet net)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """4 training images (one batch of 4) and 2 test images."""
    return make_image_folder(
        tmp_path_factory.mktemp("parity") / "d", n_train=2, n_test=1, size=(40, 48)
    )


# ---------------------------------------------------------------- logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src,dst", DIRECTIONS)
def test_logits_agree_eval_and_train_mode(arch, src, dst, tmp_path):
    tnet, mnet = _pair(arch, src, dst, tmp_path)
    x = np.random.default_rng(1).normal(size=(4, 3, 64, 64)).astype(np.float32) * 1.5 + 0.3
    for train in (False, True):
        lt, lm = parity.logits(tnet, x, train), parity.logits(mnet, x, train)
        assert np.abs(lt - lm).max() < 1e-4, (train, np.abs(lt - lm).max())
        assert np.abs(lt).max() > 0.05  # not trivially small
    # eval and train mode really differ (running vs batch statistics)
    assert np.abs(parity.logits(mnet, x, False) - parity.logits(mnet, x, True)).max() > 1e-2


# ---------------------------------------------------------------- one SGD step


def _one_step(tnet, mnet, X, y, lr_t, wd_t, dtype, batch_size=None):
    """One step of each backend's train_fine_tuning on batch (X, y) in `dtype`; the
    runs are told `batch_size` (default len(y)): a larger one makes (X, y) a smaller
    last batch, as the book's loaders give at the end of an epoch."""
    import torch

    B = batch_size or len(y)
    tnet.to(getattr(torch, dtype))
    mnet.cast(dtype)
    return _train_both(tnet, mnet, X, y, dtype, 1, B, (lr_t, wd_t), (LR, WD))


def _train_both(tnet, mnet, X, y, dtype, epochs, B, torch_sgd, mxnet_sgd):
    """Both backends' book loop (`d2lft.train_on_batches`) for `epochs` on one batch."""
    import mxnet as mx
    import torch

    with d2lft.using("torch"):
        ht = d2lft.train_on_batches(
            tnet,
            torch_sgd[0],
            [(torch.from_numpy(X.astype(dtype)), torch.from_numpy(y))],
            batch_size=B,
            num_epochs=epochs,
            run=d2lft.RunSpec(verbose=False, weight_decay=torch_sgd[1]),
        )
    with d2lft.using("mxnet"):
        hm = d2lft.train_on_batches(
            mnet,
            mxnet_sgd[0],
            [(mx.nd.array(X, dtype=dtype), mx.nd.array(y, dtype=dtype))],
            batch_size=B,
            num_epochs=epochs,
            run=d2lft.RunSpec(verbose=False, weight_decay=mxnet_sgd[1]),
        )
    return ht, hm


def _batch(B=4, size=32, seed=2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, 3, size, size)) * 1.5 + 0.3, rng.integers(0, 2, B)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src,dst", DIRECTIONS)
def test_one_sgd_step_agrees_under_equivalent_sgd(arch, src, dst, tmp_path):
    """In float64 the two engines' steps agree to ~1e-8: the computation and the
    documented equivalence are exact (float32 rounding: see the next test)."""
    X, y = _batch()
    tnet, mnet = _pair(arch, src, dst, tmp_path)
    before = parity.state_arrays(mnet)
    lr_t, wd_t = d2lft.equivalent_sgd(
        LR, WD, batch_size=len(y), from_backend="mxnet", to_backend="torch"
    )
    ht, hm = _one_step(tnet, mnet, X, y, lr_t, wd_t, "float64")
    after_t, after_m = parity.state_arrays(tnet), parity.state_arrays(mnet)
    worst, name = parity.worst_difference(after_t, after_m)
    assert worst < 1e-5, (worst, name)
    moved, _ = parity.worst_difference(after_m, before)
    assert moved > 1e-3  # the step did change the parameters
    assert ht.train_loss[0] == pytest.approx(hm.train_loss[0], rel=1e-10)


def test_a_smaller_last_batch_agrees_under_its_own_size(tmp_path):
    """A last batch of 3 in a run of batch size 4: the MXNet tab normalises that step
    by 3 (`trainer.step(labels.shape[0])`), so it equals torch's summed step under
    equivalent_sgd(batch_size=3), not 4."""
    X, y = _batch(B=3)
    tnet, mnet = _pair("resnet18_v1", "torch", "mxnet", tmp_path)
    lr_t, wd_t = d2lft.equivalent_sgd(
        LR, WD, batch_size=3, from_backend="mxnet", to_backend="torch"
    )
    _one_step(tnet, mnet, X, y, lr_t, wd_t, "float64", batch_size=4)
    worst, name = parity.worst_difference(parity.state_arrays(tnet), parity.state_arrays(mnet))
    assert worst < 1e-5, (worst, name)


def test_learning_rate_alone_is_not_equivalent(tmp_path):
    """Without scaling the weight decay by the batch size (equivalent_lr only), the
    step differs by more than the tolerance: weight decay is multiplied by lr too."""
    X, y = _batch()
    tnet, mnet = _pair("resnet18_v1", "torch", "mxnet", tmp_path)
    lr_t = d2lft.equivalent_lr(LR, batch_size=len(y), from_backend="mxnet", to_backend="torch")
    _one_step(tnet, mnet, X, y, lr_t, WD, "float64")
    worst, name = parity.worst_difference(parity.state_arrays(tnet), parity.state_arrays(mnet))
    assert worst > 1e-5, (worst, name)


def test_equivalent_sgd_values():
    lr, wd = d2lft.equivalent_sgd(
        0.01, 0.001, batch_size=128, from_backend="mxnet", to_backend="torch"
    )
    assert lr == pytest.approx(0.01 / 128) and wd == pytest.approx(0.128)
    back = d2lft.equivalent_sgd(lr, wd, batch_size=128, from_backend="torch", to_backend="mxnet")
    assert back == pytest.approx((0.01, 0.001))
    assert d2lft.equivalent_sgd(
        0.5, 0.1, batch_size=8, from_backend="torch", to_backend="torch"
    ) == (0.5, 0.1)
    assert d2lft.equivalent_lr(
        0.01, batch_size=128, from_backend="mxnet", to_backend="torch"
    ) == pytest.approx(0.01 / 128)
    with pytest.raises(ValueError, match="jax"):
        d2lft.equivalent_sgd(0.1, batch_size=2, from_backend="jax", to_backend="torch")
    with pytest.raises(ValueError, match="weight_decay"):
        d2lft.equivalent_sgd(0.1, -1.0, batch_size=2, from_backend="mxnet", to_backend="torch")
    with pytest.raises(ValueError, match="batch_size"):
        d2lft.equivalent_sgd(0.1, batch_size=0, from_backend="mxnet", to_backend="torch")


# ---------------------------------------------------------------- several steps


def _steps(tnet, mnet, batch, steps, lr, dtype):
    """`steps` steps of each backend's train_fine_tuning on one fixed batch (one
    epoch each, so History.train_loss is the per-step loss)."""
    import torch

    X, y = batch
    B = len(y)
    lr_t, wd_t = d2lft.equivalent_sgd(
        lr, WD, batch_size=B, from_backend="mxnet", to_backend="torch"
    )
    tnet.to(getattr(torch, dtype))
    mnet.cast(dtype)
    return _train_both(tnet, mnet, X, y, dtype, steps, B, (lr_t, wd_t), (lr, WD))


@pytest.mark.parametrize(
    "arch,src,dst", [("resnet18_v1", "mxnet", "torch"), ("resnet18_v2", "torch", "mxnet")]
)
def test_loss_trajectories_agree_step_by_step(arch, src, dst, tmp_path):
    """Four steps in float64 (lr 0.001: on 4 random images the chapter's 0.01 makes
    the loss jump about, which amplifies any rounding step after step): the
    per-step losses agree."""
    tnet, mnet = _pair(arch, src, dst, tmp_path)
    ht, hm = _steps(tnet, mnet, _batch(), 4, 0.001, "float64")
    np.testing.assert_allclose(ht.train_loss, hm.train_loss, rtol=1e-6, atol=1e-6)
    assert len(set(np.round(hm.train_loss, 3))) == 4  # the loss really moved
    worst, name = parity.worst_difference(parity.state_arrays(tnet), parity.state_arrays(mnet))
    assert worst < 1e-5, (worst, name)


def _noise_folder(root, n_per_class, size=(40, 48), seed=0):
    """Images of uniform noise: unlike the two-colour toy set, a batch's images
    differ, so BatchNorm's batch statistics stay well conditioned."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", 1)):
        for c in ("hotdog", "not-hotdog"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                    d / f"{i}.png"
                )
    return root


@pytest.mark.parametrize(
    "arch,src,dst", [("resnet18_v1", "torch", "mxnet"), ("resnet18_v2", "mxnet", "torch")]
)
def test_deterministic_runs_agree(arch, src, dst, tmp_path):
    """float32 and the public API: train_fine_tuning(deterministic=True) in both
    backends from the same weights, one batch of 4 per epoch. float32 rounding
    (larger in MXNet's kernels) grows with every step, so this checks three small
    steps (lr 0.001, 8 images of 64 px) to 1e-3; docs/parity.md has the figures."""
    data = _noise_folder(tmp_path / "noise", 4, size=(72, 80))
    tnet, mnet = _pair(arch, src, dst, tmp_path)
    steps, B, lr = 3, 8, 0.001
    lr_t, wd_t = d2lft.equivalent_sgd(
        lr, WD, batch_size=B, from_backend="mxnet", to_backend="torch"
    )
    with d2lft.using("torch"):
        ht = d2lft.train_fine_tuning(
            tnet,
            lr_t,
            B,
            steps,
            data_dir=data,
            image_size=64,
            pipeline=d2lft.FixedBatches(),
            run=d2lft.RunSpec(weight_decay=wd_t, verbose=False),
        )
    with d2lft.using("mxnet"):
        hm = d2lft.train_fine_tuning(
            mnet,
            lr,
            B,
            steps,
            data_dir=data,
            image_size=64,
            pipeline=d2lft.FixedBatches(),
            run=d2lft.RunSpec(verbose=False),
        )
    assert ht.config["deterministic"] and hm.config["deterministic"]
    assert ht.config["weight_decay"] == pytest.approx(WD * B)
    np.testing.assert_allclose(ht.train_loss, hm.train_loss, rtol=1e-3, atol=1e-4)
    assert len(set(np.round(hm.train_loss, 3))) == steps  # the loss really moved
    # accuracies count argmaxes: a near-tie may flip under float32 rounding (train), and
    # test accuracy also sees the BatchNorm running-variance convention, so only the
    # training accuracy is compared, to within one example
    np.testing.assert_allclose(ht.train_acc, hm.train_acc, atol=1 / B + 1e-9)
    worst, name = parity.worst_difference(parity.state_arrays(tnet), parity.state_arrays(mnet))
    assert worst < 1e-2, (worst, name)


def test_deterministic_batches_are_the_same_in_both_backends(tiny_data):
    import torch

    from d2lft.backends.mxnet.runtime import to_nd as _to_nd
    from d2lft.data.fixed import fixed_loaders

    t_train, _ = fixed_loaders(tiny_data, 3, 32, seed=5, convert=torch.from_numpy)
    m_train, _ = fixed_loaders(tiny_data, 3, 32, seed=5, convert=_to_nd)
    for _ in range(2):  # an epoch each
        tb, mb = list(t_train), list(m_train)
        assert [len(y) for _, y in tb] == [3, 1]
        for (Xt, yt), (Xm, ym) in zip(tb, mb, strict=False):
            np.testing.assert_array_equal(Xt.numpy(), Xm.asnumpy())
            np.testing.assert_array_equal(yt.numpy(), ym.asnumpy())
    orders = [tuple(t_train.order(e)) for e in range(4)]
    assert len(set(orders)) > 1  # reshuffled per epoch, from the seed alone


# ---------------------------------------------------------------- BatchNorm statistics


@pytest.mark.parametrize("arch", ARCHS)
def test_batchnorm_running_statistics_conventions(arch, tmp_path):
    """Momentum: Gluon 0.9 == torch 0.1, so running means agree. Variance: torch
    stores the unbiased batch variance, Gluon the biased one, so each update differs
    by n/(n-1) (n = values per channel). Gluon updates the statistics in the
    backward pass, which never reaches v2's input BatchNorm: its statistics stay."""
    X, y = _batch(B=4, size=32)
    tnet, mnet = _pair(arch, "torch", "mxnet", tmp_path)
    before = {k: v.astype(np.float64) for k, v in parity.state_arrays(tnet).items()}
    lr_t, wd_t = d2lft.equivalent_sgd(
        LR, WD, batch_size=4, from_backend="mxnet", to_backend="torch"
    )
    _one_step(tnet, mnet, X, y, lr_t, wd_t, "float64")
    at, am = parity.state_arrays(tnet), parity.state_arrays(mnet)
    n = parity.bn_elements(arch, 32, 4)
    checked = 0
    for layer, count in n.items():
        rm, rv = f"{layer}.running_mean", f"{layer}.running_var"
        if layer == "bn_data":
            np.testing.assert_array_equal(am[rm], before[rm])  # Gluon: never updated
            np.testing.assert_array_equal(am[rv], before[rv])
            assert np.abs(at[rm] - before[rm]).max() > 1e-3  # torch: updated
            continue
        # the batch statistics each engine folded in (MXNet keeps momentum in float32)
        mean_t, var_t = [(at[k] - 0.9 * before[k]) / 0.1 for k in (rm, rv)]
        mean_m, var_m = [(am[k] - M32 * before[k]) / (1 - M32) for k in (rm, rv)]
        np.testing.assert_allclose(mean_t, mean_m, rtol=1e-6, atol=1e-9, err_msg=layer)
        np.testing.assert_allclose(var_t / var_m, count / (count - 1), rtol=1e-6, err_msg=layer)
        checked += 1
    assert checked == len(n) - (arch == "resnet18_v2")
    assert max(n.values()) > 100 and min(n.values()) <= 8  # from 4/3 up to ~1.001
