"""Portable parameters: canonical names, save/load in and across backends, foreign
weight files (torch state_dict, Gluon .params), clear errors, Gluon's v2 in torch."""

from __future__ import annotations

import numpy as np
import pytest

import d2lft
from d2lft import parity
from d2lft.backends import _registry as _backend
from d2lft.io import weights

ARCHS = ("resnet18_v1", "resnet18_v2")


def _state(net):
    return parity.state_arrays(net)


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _scratch(backend, arch, seed=0):
    """A network whose every tensor (BatchNorm statistics included) is distinct."""
    with d2lft.using(backend):
        net = d2lft.build_finetune_net(pretrained=False, arch=arch)
    if backend == "mxnet":
        import mxnet as mx

        net(mx.nd.zeros((1, 3, 32, 32)))  # Gluon infers the remaining shapes
    w = parity.backend_weights(backend)
    w.load_state_arrays(net, parity.pretrained_like(w.state_arrays(net), seed))
    return net


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("arch", ARCHS)
def test_canonical_names_cover_both_backends(arch):
    tnet = _scratch("torch", arch)
    names = [k for k in tnet.state_dict() if not k.endswith("num_batches_tracked")]
    assert names == weights.canonical_names(arch)  # same set, same order
    mnet = _scratch("mxnet", arch)
    structural = set(mnet._collect_params_with_prefix())
    assert structural == set(weights.gluon_name_map(arch).values())
    assert len(weights.canonical_names(arch)) == len(structural)


def test_v1_names_are_torchvisions():
    import torchvision

    tv = torchvision.models.resnet18(num_classes=2).state_dict()
    names = [k for k in tv if not k.endswith("num_batches_tracked")]
    assert names == weights.canonical_names("resnet18")
    assert (
        weights.gluon_name_map("resnet18_v1")["layer2.0.downsample.1.weight"]
        == "features.5.0.downsample.1.gamma"
    )


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="resnet50"):
        weights.canonical_arch("resnet50")
    with d2lft.using("torch"), pytest.raises(ValueError, match="resnet50"):
        d2lft.build_finetune_net(pretrained=False, arch="resnet50")


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_same_backend(backend, arch, tmp_path):
    src, dst = _scratch(backend, arch, 1), _scratch(backend, arch, 2)
    path = d2lft.save_params(src, tmp_path / "w.safetensors", metadata={"note": "hi"})
    assert d2lft.load_params(dst, path) is dst
    _assert_same(_state(dst), _state(src))
    arrays, meta = d2lft.read_params(path)
    _assert_same(arrays, _state(src))
    assert meta["arch"] == arch and meta["backend"] == backend
    assert meta["format"] == "d2lft.params" and meta["format_version"] == "1"
    assert meta["num_classes"] == "2" and meta["note"] == "hi"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src,dst", [("torch", "mxnet"), ("mxnet", "torch")])
def test_params_move_between_backends_exactly(arch, src, dst, tmp_path):
    a = _scratch(src, arch, 3)
    d2lft.save_params(a, tmp_path / "a.safetensors")
    b = _scratch(dst, arch, 4)
    d2lft.load_params(b, tmp_path / "a.safetensors")
    _assert_same(_state(b), _state(a))
    d2lft.save_params(b, tmp_path / "b.safetensors")  # and back again
    back = _scratch(src, arch, 5)
    d2lft.load_params(back, tmp_path / "b.safetensors")
    _assert_same(_state(back), _state(a))
    assert d2lft.read_params(tmp_path / "b.safetensors")[1]["backend"] == dst


def test_file_is_plain_safetensors(tmp_path):
    from safetensors.numpy import load_file

    net = _scratch("torch", "resnet18_v1")
    d2lft.save_params(net, tmp_path / "w.safetensors")
    raw = load_file(tmp_path / "w.safetensors")
    assert raw["fc.weight"].shape == (2, 512) and raw["fc.weight"].dtype == np.float32
    assert "layer1.0.bn1.num_batches_tracked" not in raw


# ---------------------------------------------------------------- errors


def test_metadata_must_be_strings_and_nothing_is_written(tmp_path):
    net = _scratch("torch", "resnet18_v1")
    target = tmp_path / "w.safetensors"
    with pytest.raises(TypeError, match="'epoch'"):
        d2lft.save_params(net, target, metadata={"epoch": 3})
    assert not target.exists()
    with pytest.raises(ValueError, match="'arch'"):
        d2lft.save_params(net, target, metadata={"arch": "resnet18_v2"})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    net = _scratch("torch", "resnet18_v1")
    target = d2lft.save_params(net, tmp_path / "w.safetensors")
    before = target.read_bytes()
    from d2lft.io import weights as io_weights

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io_weights, "save", broken)  # safetensors' writer
    with pytest.raises(OSError, match="disk full"):
        d2lft.save_params(_scratch("torch", "resnet18_v1", 9), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_mismatches_name_the_parameter_and_change_nothing(backend, tmp_path):
    v1 = _scratch(backend, "resnet18_v1", 1)
    path = d2lft.save_params(v1, tmp_path / "v1.safetensors")
    v2 = _scratch(backend, "resnet18_v2", 2)
    with pytest.raises(ValueError, match="arch='resnet18_v1'"):
        d2lft.load_params(v2, path)
    # a head of another size: the error names fc.weight and its shapes
    with d2lft.using(backend):
        five = d2lft.build_finetune_net(num_classes=5, pretrained=False, arch="resnet18_v1")
    if backend == "mxnet":
        import mxnet as mx

        five(mx.nd.zeros((1, 3, 32, 32)))
    before = _state(five)
    with pytest.raises(ValueError, match=r"'fc.weight'.*\(2, 512\).*\(5, 512\)"):
        d2lft.load_params(five, path)
    _assert_same(_state(five), before)
    # a missing tensor is named (and for Gluon, its Gluon name too)
    arrays, meta = d2lft.read_params(path)
    del arrays["layer3.1.bn2.running_var"]
    weights.write_params(tmp_path / "cut.safetensors", arrays, meta)
    other = _scratch(backend, "resnet18_v1", 3)
    with pytest.raises(ValueError, match="layer3.1.bn2.running_var"):
        d2lft.load_params(other, tmp_path / "cut.safetensors")
    # a misshapen one too
    arrays["layer3.1.bn2.running_var"] = np.ones(7, np.float32)
    weights.write_params(tmp_path / "bad.safetensors", arrays, meta)
    with pytest.raises(ValueError, match=r"layer3.1.bn2.running_var.*\(7,\)"):
        d2lft.load_params(other, tmp_path / "bad.safetensors")


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        d2lft.read_params(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello, not weights")
    with pytest.raises(ValueError, match="neither"):
        d2lft.read_params(junk)


def test_reading_pth_without_torch_says_so(tmp_path, monkeypatch):
    import torch

    path = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    real = _backend.framework_installed
    monkeypatch.setattr(
        _backend, "framework_installed", lambda name: False if name == "torch" else real(name)
    )
    with pytest.raises(ImportError, match="needs torch.*torch"):
        d2lft.read_params(path)


# ---------------------------------------------------------------- foreign files


def test_torch_state_dict_file_in_either_backend(backend, tmp_path):
    import torch

    src = _scratch("torch", "resnet18_v1", 7)
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    with d2lft.using(backend):
        net = d2lft.build_finetune_net(num_classes=3, pretrained=str(path), arch="resnet18_v1")
    got, want = _state(net), _state(src)
    for k in want:
        if not k.startswith("fc."):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert got["fc.weight"].shape == (3, 512)
    head = d2lft.net_info(net).source_head  # the file's own head is kept for later use
    w = head.weight.detach().numpy() if backend == "torch" else head.weight.data().asnumpy()
    np.testing.assert_array_equal(w, want["fc.weight"])


@pytest.mark.parametrize("arch", ARCHS)
def test_gluon_params_file_in_either_backend(backend, arch, tmp_path):
    src = _scratch("mxnet", arch, 8)
    path = tmp_path / f"{arch}.params"
    src.save_parameters(str(path))
    arrays, meta = d2lft.read_params(path)
    assert meta["format"] == "gluon.params" and meta["arch"] == arch
    _assert_same(arrays, _state(src))
    with d2lft.using(backend):
        net = d2lft.build_finetune_net(pretrained=str(path), arch=arch)
    got, want = _state(net), _state(src)
    for k in want:
        if not k.startswith("fc."):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # old-style files (save_params / the model zoo's, prefixed names) read the same
    old = tmp_path / f"{arch}-old.params"
    src.collect_params().save(str(old))
    assert "resnetv" in next(iter(__import__("mxnet").nd.load(str(old))))
    _assert_same(d2lft.read_params(old)[0], want)
    with d2lft.using(backend), pytest.raises(ValueError, match="holds resnet18_v"):
        other = "resnet18_v2" if arch == "resnet18_v1" else "resnet18_v1"
        d2lft.build_finetune_net(pretrained=str(path), arch=other)


@pytest.mark.shared
def test_food100_weights_in_both_backends(shared_data, tmp_path):
    path = shared_data / "food100-resnet18.pth"
    nets = {}
    for b in ("torch", "mxnet"):
        with d2lft.using(b):
            nets[b] = d2lft.build_finetune_net(pretrained=str(path), arch="resnet18_v1")
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    for net in nets.values():
        got = _state(net)
        np.testing.assert_array_equal(
            got["layer4.1.bn2.running_var"], sd["layer4.1.bn2.running_var"].numpy()
        )
        assert got["fc.weight"].shape == (2, 512)
    # the old 100-class head stays available (exercise 4), the same in both backends
    want = sd["fc.weight"].numpy()
    np.testing.assert_array_equal(
        d2lft.net_info(nets["torch"]).source_head.weight.detach().numpy(), want
    )
    np.testing.assert_array_equal(
        d2lft.net_info(nets["mxnet"]).source_head.weight.data().asnumpy(), want
    )
    # with the same head, both engines give the same logits
    d2lft.save_params(nets["torch"], tmp_path / "t.safetensors")
    d2lft.load_params(nets["mxnet"], tmp_path / "t.safetensors")
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(
        parity.logits(nets["mxnet"], x), parity.logits(nets["torch"], x), atol=1e-4
    )


# ---------------------------------------------------------------- v2 in torch


def test_torch_v2_input_batchnorm_is_glouns():
    import torch

    from d2lft.backends.torch.resnet_v2 import InputBatchNorm, resnet18_v2

    net = resnet18_v2(num_classes=2)
    trainable = {k for k, _ in net.named_parameters()}
    assert not any(k.startswith("bn_data.") for k in trainable)  # nothing trained there
    bn = InputBatchNorm(3)
    bn.weight.fill_(2.0)
    bn.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    bn.eval()
    y = bn(x)  # gamma is ignored (fixed at 1), beta is applied
    np.testing.assert_allclose(
        y.mean(dim=(0, 2, 3)).numpy(), (x.mean(dim=(0, 2, 3)) / 1.0 + bn.bias).numpy(), atol=1e-5
    )
    bn.train()
    y = bn(x)
    np.testing.assert_allclose(y.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-3)
    assert torch.equal(bn.weight, torch.ones(3))  # as Gluon's fix_gamma writes it


def test_torch_v2_has_no_imagenet_weights():
    with d2lft.using("torch"), pytest.raises(ValueError, match=r"\.params"):
        d2lft.build_finetune_net(pretrained=True, arch="resnet18_v2")
