"""The chapter's networks in both backends: head, Xavier init, 10x multiplier, weights."""

import math

import numpy as np
import pytest

import d2lft


def head_weight(net):
    if d2lft.get_backend() == "torch":
        return net.fc.weight.detach().numpy()
    return net.output.weight.data().asnumpy()


def head_params(net):
    if d2lft.get_backend() == "torch":
        return list(net.fc.parameters())
    return list(net.output.collect_params().values())


def forward(net, x):
    if d2lft.get_backend() == "torch":
        import torch

        net.eval()
        with torch.no_grad():
            return net(torch.tensor(x)).numpy()
    import mxnet as mx

    return net(mx.nd.array(x)).asnumpy()


def test_default_arch_is_the_chapters(backend):
    net = d2lft.build_finetune_net(pretrained=False)
    assert d2lft.net_info(net).arch == {"torch": "resnet18_v1", "mxnet": "resnet18_v2"}[backend]
    out = forward(net, np.random.rand(2, 3, 32, 32).astype("float32"))
    assert out.shape == (2, 2)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_head_shape_and_10x_multiplier(backend, num_classes):
    net = d2lft.build_finetune_net(num_classes=num_classes, pretrained=False)
    assert head_weight(net).shape == (num_classes, 512)
    assert [p.lr_mult for p in head_params(net)] == [10, 10]
    scratch = d2lft.build_scratch_net(num_classes=num_classes)
    assert head_weight(scratch).shape == (num_classes, 512)
    assert all(getattr(p, "lr_mult", 1) == 1 for p in head_params(scratch))


def test_head_is_xavier_uniform(backend):
    net = d2lft.build_finetune_net(num_classes=200, pretrained=False)
    w = head_weight(net)
    bound = math.sqrt(6 / (512 + 200))
    assert np.abs(w).max() <= bound + 1e-6
    assert np.abs(w).max() > 0.95 * bound  # fills the whole interval: uniform
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert abs(w.mean()) < 0.05 * bound


def test_bad_num_classes_and_arch(backend):
    for bad in (1, 0, 2.5, "2", True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
            d2lft.build_finetune_net(num_classes=bad, pretrained=False)
    with pytest.raises(ValueError, match="unknown arch 'resnet50'.*choose one of"):
        d2lft.build_finetune_net(arch="resnet50", pretrained=False)


def _torch_imagenet_file(tmp_path, monkeypatch):
    """A stand-in ImageNet checkpoint placed in torch's own hub cache."""
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(123)
    src = torchvision.models.resnet18()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(src.state_dict(), folder / "resnet18-f37072fd.pth")
    return src.state_dict()


def test_torch_pretrained_true_uses_torchvision_cache(tmp_path, monkeypatch):
    with d2lft.using("torch"):
        sd = _torch_imagenet_file(tmp_path, monkeypatch)
        net = d2lft.build_finetune_net()
        got = net.state_dict()
        for k in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
            assert np.array_equal(got[k].numpy(), sd[k].numpy()), k
        assert net.fc.weight.shape == (2, 512)
        assert d2lft.net_info(net).source_classes[934] == "hotdog"
        assert np.array_equal(
            d2lft.net_info(net).source_head.weight.detach().numpy(), sd["fc.weight"].numpy()
        )


def test_mxnet_pretrained_true_uses_model_zoo_cache(tmp_path, monkeypatch):
    with d2lft.using("mxnet"):
        import mxnet as mx
        from mxnet.gluon.model_zoo import model_store, vision

        monkeypatch.setenv("MXNET_HOME", str(tmp_path))
        src = vision.resnet18_v2()
        src.initialize(mx.init.Xavier())
        src(mx.nd.zeros((1, 3, 32, 32)))
        path = tmp_path / "models" / "resnet18_v2-probe.params"
        path.parent.mkdir()
        mx.nd.waitall()  # MKLDNN reorders weights asynchronously after a forward pass
        src.save_parameters(str(path))
        # the zoo names files <arch>-<first 8 of sha1> and checks the full SHA-1
        sha1 = model_store.check_sha1.__globals__["hashlib"].sha1(path.read_bytes()).hexdigest()
        monkeypatch.setitem(model_store._model_sha1, "resnet18_v2", sha1)
        path.rename(path.with_name(f"resnet18_v2-{sha1[:8]}.params"))
        net = d2lft.build_finetune_net()
        a = net.features[1].weight.data().asnumpy()
        assert np.array_equal(a, src.features[1].weight.data().asnumpy())
        assert net.output.weight.shape == (2, 512)
        assert d2lft.net_info(net).source_head.weight.shape == (1000, 512)


def test_pretrained_true_offline_says_where_to_put_weights(tmp_path, monkeypatch, backend):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    monkeypatch.setenv("MXNET_GLUON_REPO", "http://127.0.0.1:9/")  # nothing listens on port 9
    monkeypatch.setenv("no_proxy", "*")
    if backend == "torch":
        import torch.hub

        monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
        import torchvision.models as tvm

        monkeypatch.setattr(
            tvm.ResNet18_Weights.IMAGENET1K_V1.value,
            "url",
            "http://127.0.0.1:9/resnet18-f37072fd.pth",
        )
    with pytest.raises(d2lft.DownloadError, match=r"To work offline, download .*pretrained=PATH"):
        d2lft.build_finetune_net()
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


def test_pretrained_path_native_round_trip(tmp_path, backend):
    src = d2lft.build_finetune_net(num_classes=7, pretrained=False)
    x = np.random.RandomState(0).rand(2, 3, 32, 32).astype("float32")
    if backend == "torch":
        import torch

        path = tmp_path / "w.pth"
        torch.save(src.state_dict(), path)
    else:
        import mxnet as mx

        forward(src, x)
        path = tmp_path / "w.params"
        mx.nd.waitall()  # MKLDNN reorders weights asynchronously after a forward pass
        src.save_parameters(str(path))
    net = d2lft.build_finetune_net(num_classes=2, pretrained=str(path))
    # features identical: compare the penultimate activations through the new head's input
    feats = _features(src, x), _features(net, x)
    np.testing.assert_allclose(feats[0], feats[1], rtol=1e-5, atol=1e-6)
    assert head_weight(net).shape == (2, 512)
    assert d2lft.net_info(net).source_head.weight.shape[0] == 7


def _features(net, x):
    if d2lft.get_backend() == "torch":
        import torch

        body = torch.nn.Sequential(*list(net.children())[:-1])
        body.eval()
        with torch.no_grad():
            return body(torch.tensor(x)).numpy()
    import mxnet as mx

    return net.features(mx.nd.array(x)).asnumpy()


def test_pretrained_path_errors(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        d2lft.build_finetune_net(pretrained=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.params"
    junk.write_bytes(b"not weights at all")
    with pytest.raises(ValueError, match="junk.params"):
        d2lft.build_finetune_net(pretrained=str(junk))
