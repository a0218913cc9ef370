"""Exercise 3 as a feature: `freeze=True` trains only the head, in both pipelines and
both backends; the fast pipeline computes backbone features once per pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_pipeline


def _snapshot(net, backend):
    if backend == "torch":
        return {k: v.detach().clone().numpy() for k, v in net.state_dict().items()}
    import mxnet as mx

    from d2lft.backends.mxnet.models import named_params

    net(mx.nd.zeros((1, 3, 32, 32)))  # finish Gluon's deferred initialisation
    # That prediction-mode forward has MKLDNN reorder each conv weight in place, pushed
    # from inside the (asynchronous) conv op; `asnumpy` only waits for writes already
    # queued, so a read while the op still runs can copy a half-reordered weight
    # (`test_mxnet_weights_read_right_after_a_forward`). Wait for the forward first.
    mx.nd.waitall()
    return {k: p.data().asnumpy().copy() for k, p in named_params(net).items()}


def _is_head(name, backend):
    return name.startswith("fc." if backend == "torch" else "output.")


@pytest.mark.parametrize("pipeline", ["book", "fast"])
def test_freeze_trains_only_the_head(backend, toy_data, pipeline):
    import d2lft

    net = d2lft.build_finetune_net(pretrained=False)
    before = _snapshot(net, backend)
    reqs = (
        {n: p.requires_grad for n, p in net.named_parameters()}
        if backend == "torch"
        else {n: p.grad_req for n, p in net.collect_params().items()}
    )
    lr = 0.05 if backend == "mxnet" else 1e-3
    h = d2lft.train_fine_tuning(
        net,
        lr,
        16,
        2,
        data_dir=toy_data,
        image_size=32,
        seed=0,
        pipeline=make_pipeline(pipeline, freeze=True),
        run=d2lft.RunSpec(verbose=False),
    )
    after = _snapshot(net, backend)
    head_size = 512 * 2 + 2
    assert h.trained_params == head_size == h.config["trained_params"]
    assert h.config["total_params"] > 1_000_000 and h.config["freeze"] is True
    assert h.epochs == 2 and all(math.isfinite(v) for v in h.train_loss)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(_is_head(k, backend) for k in changed), sorted(changed)[:5]
    # BatchNorm running statistics are part of the frozen backbone too
    assert not any("running" in k for k in changed)
    # the settings are restored: the next (unfrozen) run trains every layer
    if backend == "torch":
        assert reqs == {n: p.requires_grad for n, p in net.named_parameters()}
        assert all(reqs.values())
    else:
        assert reqs == {n: p.grad_req for n, p in net.collect_params().items()}
        assert any(r == "write" for r in reqs.values())


def test_freeze_learns_separable_data(backend, toy_data):
    """The head alone learns the toy data's two colours (the features carry them)."""
    import d2lft

    net = d2lft.build_finetune_net(pretrained=False)
    lr = 0.5 if backend == "mxnet" else 0.01
    h = d2lft.train_fine_tuning(
        net,
        lr,
        16,
        4,
        data_dir=toy_data,
        image_size=32,
        seed=0,
        pipeline=d2lft.FastPipeline(freeze=True, feature_passes=2),
        run=d2lft.RunSpec(verbose=False),
    )
    assert h.train_loss[-1] < h.train_loss[0]
    assert h.test_acc[-1] >= 0.9


def test_torch_features_are_the_heads_input():
    torch = pytest.importorskip("torch")
    import d2lft
    from d2lft.backends.torch.runners import extract_features

    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False).eval()
    X = torch.randn(3, 3, 32, 32)
    f = extract_features(net, [X[:2], X[2:]], torch.device("cpu"), "fp32")
    assert f.shape == (3, 512) and isinstance(net.fc, torch.nn.Linear)  # head restored
    with torch.no_grad():
        torch.testing.assert_close(net.fc(f), net(X), rtol=1e-5, atol=1e-5)


def test_mxnet_features_are_the_heads_input():
    mx = pytest.importorskip("mxnet")
    import d2lft
    from d2lft.backends.mxnet.runtime import features

    with d2lft.using("mxnet"):
        net = d2lft.build_finetune_net(pretrained=False)
    X = mx.nd.random.normal(shape=(2, 3, 32, 32))
    f = features(net, X)
    assert f.shape == (2, 512)
    np.testing.assert_allclose(net.output(f).asnumpy(), net(X).asnumpy(), rtol=1e-5, atol=1e-5)


def test_mxnet_weights_read_right_after_a_forward():
    """The trigger of a once-seen 'frozen backbone weight changed' failure: MXNet's
    MKLDNN convolution, in prediction mode, reorders a default-layout weight in place
    with an engine op pushed while the conv op runs, so a synchronous read issued
    right after an un-awaited forward (`asnumpy`, `nd.save`) could copy a
    half-reordered weight (1 net in ~10 on a busy 2-core machine). The weights
    themselves stay intact; `state_arrays` (checkpoints, weight files) must wait."""
    mx = pytest.importorskip("mxnet")
    import d2lft
    from d2lft.backends.mxnet.weights import state_arrays

    with d2lft.using("mxnet"):
        for _ in range(10):  # a fresh net each time: its weights are in default layout
            net = d2lft.build_finetune_net(pretrained=False)
            net(mx.nd.zeros((1, 3, 32, 32)))  # not awaited
            first = state_arrays(net)
            again = state_arrays(net)  # the forward has long finished
            bad = [k for k in first if not np.array_equal(first[k], again[k])]
            assert not bad, bad


@pytest.mark.parametrize("passes,expected", [(1, 1), (2, 2)])
def test_feature_passes_count(toy_data, monkeypatch, passes, expected):
    """Features are computed once for the test set and once per augmentation pass for
    the training set, however many epochs run."""
    pytest.importorskip("torch")
    import d2lft
    from d2lft.backends.torch import runners as fast

    calls = []
    real = fast.extract_features

    def spy(net, batches, *a, **k):
        out = real(net, batches, *a, **k)
        calls.append(out.shape[0])
        return out

    monkeypatch.setattr(fast, "extract_features", spy)
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False)
        h = d2lft.train_fine_tuning(
            net,
            0.001,
            16,
            3,
            data_dir=toy_data,
            image_size=16,
            seed=0,
            pipeline=d2lft.FastPipeline(freeze=True, feature_passes=passes),
            run=d2lft.RunSpec(verbose=False),
        )
    assert calls.count(16) == 1  # the test set (2 x 8 images), once
    assert calls.count(48) == expected  # the training set, once per pass
    assert h.num_examples == 3 * 48 and h.config["feature_passes"] == passes


def test_fast_freeze_is_repeatable(toy_data):
    torch = pytest.importorskip("torch")
    import d2lft

    runs = []
    for _ in range(2):
        with d2lft.using("torch"):
            torch.manual_seed(0)  # the same initial network
            net = d2lft.build_finetune_net(pretrained=False)
            runs.append(
                d2lft.train_fine_tuning(
                    net,
                    0.001,
                    16,
                    2,
                    data_dir=toy_data,
                    image_size=16,
                    seed=3,
                    pipeline=d2lft.FastPipeline(freeze=True),
                    run=d2lft.RunSpec(verbose=False),
                )
            )
    assert runs[0].train_loss == runs[1].train_loss
    assert runs[0].test_acc == runs[1].test_acc
