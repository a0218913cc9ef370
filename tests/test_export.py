"""ONNX export (`d2lft.export`, `d2lft export`) from both backends and both archs,
checked against the framework's own logits in onnxruntime; prediction from the .onnx
file with the numpy/PIL test transform, without torch or MXNet.

Tolerance: the exported graphs compute the same float32 arithmetic in another
order (torch's exporter folds each BatchNorm into the convolution before it;
onnxruntime picks its own convolution kernels), so the logits differ by float32
rounding accumulated over ~20 layers: a few 1e-7 relative to the logits' scale
(measured: see the printed table, `pytest -s`). The bound, 1e-4 of the largest
logit, is 100x that and 1000x below any real error (a wrong BatchNorm statistic,
a missing layer or an unfixed gamma moves the logits by 1e-2 or more).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import d2lft
from d2lft import cli
from d2lft.backends import _registry
from d2lft.data import preprocess

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'd2lft[onnx]'")
pytest.importorskip("onnx", reason="the onnx extra: pip install 'd2lft[onnx]'")

REPO = pathlib.Path(__file__).resolve().parents[1]
RTOL = 1e-4  # of the largest |logit|; see the module docstring
ARCHS = ("resnet18_v1", "resnet18_v2")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomized(pkg, net, seed):
    """`net` with random BatchNorm statistics, gammas, betas and head, so that
    evaluation mode (running statistics) and every BatchNorm input matter; gammas
    of a fixed-gamma BatchNorm (resnet18_v2's input BatchNorm) too, which both
    frameworks must ignore."""
    rng = np.random.default_rng(seed)
    arrays = pkg.state_arrays(net)
    for k, a in arrays.items():
        if k.endswith("running_var"):
            arrays[k] = rng.uniform(0.5, 2.0, a.shape)
        elif k.endswith("running_mean"):
            arrays[k] = rng.normal(0, 0.3, a.shape)
        elif a.ndim == 1 and k.endswith(".weight"):  # BatchNorm gamma
            arrays[k] = rng.uniform(0.5, 1.5, a.shape)
        elif a.ndim == 1 or k == "fc.weight":  # BatchNorm beta, the head
            arrays[k] = rng.normal(0, 0.3, a.shape)
        arrays[k] = np.asarray(arrays[k], "float32")
    pkg.load_state_arrays(net, arrays)
    return net


def _net(backend, arch, classes=("hotdog", "not-hotdog"), image_size=32):
    """A d2lft network with random statistics, as a checkpoint's loader gives it
    (class names, image size, the checkpoint)."""
    pkg = _registry.load(backend)
    with d2lft.using(backend):
        net = randomized(pkg, d2lft.build_scratch_net(len(classes), arch, seed=1), seed=2)
    return pkg, net, list(classes), image_size


def _checkpointed(backend, arch, tmp_path, **kw):
    pkg, net, classes, size = _net(backend, arch, **kw)
    with d2lft.using(backend):
        path = d2lft.save_checkpoint(
            net, tmp_path / f"{backend}-{arch}", classes=classes, image_size=size
        )
        return pkg, d2lft.load_checkpoint(path), path


@pytest.mark.parametrize("arch", ARCHS)
def test_export_matches_the_framework_logits(backend, arch, tmp_path):
    pkg, net, path = _checkpointed(backend, arch, tmp_path)
    X = np.random.default_rng(0).normal(0, 1, (5, 3, 32, 32)).astype("float32")
    # exported before any forward pass: MXNet's forward resets a fixed gamma to 1,
    # which would hide an exporter that keeps the stored one
    before = pkg.state_arrays(net)
    mode = net.training if backend == "torch" else None  # torch: training, as loaded
    out = d2lft.export(net, tmp_path / "model.onnx")
    assert out == tmp_path / "model.onnx" and out.is_file()
    after = pkg.state_arrays(net)
    for k in before:  # exporting left the network as it was
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    if backend == "torch":
        assert net.training == mode  # exported in eval mode, its mode given back
    else:
        assert not net._active  # not hybridized by the export
    model = d2lft.load_onnx(out)
    got = model.logits(X)
    ref = pkg.logits(net, X)  # eval mode: running statistics
    diff = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    print(f"\nonnxruntime vs {backend} {arch}: max |diff| {diff:.3g}, relative {diff / scale:.3g}")
    assert diff <= RTOL * scale, (diff, scale)
    assert (got.argmax(1) == ref.argmax(1)).all()
    # training-mode logits (batch statistics) are far from these: the bound can tell
    assert np.abs(pkg.logits(net, X, train=True) - ref).max() > 100 * RTOL * scale

    # the metadata documents the preprocessing and the model
    info = model.info
    assert model.classes == ["hotdog", "not-hotdog"] and model.image_size == 32
    assert info["arch"] == arch and info["kind"] == "scratch"
    assert info["trained_with"] == backend and info["exported_from"] == backend
    assert info["checkpoint"]["path"] == str(path)
    pre = info["preprocessing"]
    assert pre["resize"] == [37, 37] and pre["center_crop"] == [32, 32]
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    meta = model.session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["hotdog", "not-hotdog"]
    assert (meta["image_size"], meta["test_resize"]) == ("32", "37")
    assert json.loads(meta["mean"]) == pre["mean"] and json.loads(meta["std"]) == pre["std"]
    assert [i.name for i in model.session.get_inputs()] == ["input"]
    assert model.session.get_inputs()[0].shape[1:] == [3, 32, 32]
    assert [o.name for o in model.session.get_outputs()] == ["logits"]


def test_a_checkpoint_exported_by_the_other_backend(tmp_path):
    """A torch checkpoint loaded under MXNet and exported with mx.onnx: the same
    logits as the torch network (the metadata names both backends)."""
    for name in ("torch", "mxnet"):
        if not _registry.framework_installed(name):
            pytest.skip(f"{name} is not installed")
    tpkg, tnet, path = _checkpointed("torch", "resnet18_v1", tmp_path)
    with d2lft.using("mxnet"):
        mnet = d2lft.load_checkpoint(path)
        out = d2lft.export(mnet, tmp_path / "from-mxnet.onnx")
    model = d2lft.load_onnx(out)
    assert model.info["trained_with"] == "torch" and model.info["exported_from"] == "mxnet"
    X = np.random.default_rng(1).normal(0, 1, (3, 3, 32, 32)).astype("float32")
    ref = tpkg.logits(tnet, X)
    assert np.abs(model.logits(X) - ref).max() <= 1e-4 * np.abs(ref).max()


# --------------------------------------------------------------------------- the transform


def _odd_images(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w, mode) in enumerate(
        [(37, 53, "RGB"), (64, 41, "RGBA"), (50, 50, "L"), (33, 90, "P"), (120, 77, "RGB")]
    ):
        arr = rng.integers(0, 256, (h, w, 3), dtype="uint8")
        im = Image.fromarray(arr)
        im = im.convert(mode) if mode != "P" else im.quantize(16)
        p = tmp_path / f"odd{i}.png"
        im.save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("size", [32, 49, 224])  # 49: a crop offset of 3.5
def test_numpy_transform_is_the_torch_test_transform(size, tmp_path):
    """The numpy/PIL test transform gives exactly torchvision's test_augs tensors."""
    pytest.importorskip("torch")
    from d2lft.backends.torch.data import test_augs
    from d2lft.data.images import load_rgb

    augs = test_augs(size)
    for p in _odd_images(tmp_path)[: 2 if size == 224 else 5]:
        ours = preprocess.test_transform(p, size)
        theirs = augs(load_rgb(p)).numpy()
        assert ours.shape == theirs.shape == (3, size, size) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs)


def _trained_torch(data, tmp_path_factory):
    import torch

    torch.manual_seed(0)
    with d2lft.using("torch"):
        net = d2lft.build_scratch_net()
        d2lft.train_fine_tuning(
            net,
            1e-3,
            batch_size=8,
            num_epochs=3,
            param_group=False,
            data_dir=data,
            image_size=32,
            seed=0,
            run=d2lft.RunSpec(verbose=False),
        )
        path = d2lft.save_checkpoint(net, tmp_path_factory.mktemp("onnxrun") / "run")
        return d2lft.load_checkpoint(path), path


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    pytest.importorskip("torch")
    from conftest import make_image_folder

    data = make_image_folder(
        tmp_path_factory.mktemp("onnxdata") / "colors",
        n_train=16,
        n_test=6,
        size=(36, 44),
        classes=("red", "blue"),
    )
    net, ckpt = _trained_torch(data, tmp_path_factory)
    with d2lft.using("torch"):
        onnx_path = d2lft.export(net, tmp_path_factory.mktemp("onnxfile") / "colors.onnx")
    return data, net, ckpt, onnx_path


def test_onnx_predictions_match_the_torch_backend(colours, tmp_path):
    data, net, _, onnx_path = colours
    images = sorted((data / "test").rglob("*.jpg")) + _odd_images(tmp_path)
    with d2lft.using("torch"):
        ref = d2lft.predict(net, images)
        ev_ref = d2lft.evaluate(net, data)
    got = d2lft.predict(onnx_path, images)  # a path: onnxruntime, no framework
    assert [p.label for p in got] == [p.label for p in ref]
    assert [p.source for p in got] == [p.source for p in ref]
    np.testing.assert_allclose(
        np.stack([p.probs for p in got]), np.stack([p.probs for p in ref]), atol=1e-5
    )
    assert {p.label for p in ref[:12]} == {"red", "blue"}  # a model that tells them apart
    model = d2lft.load_onnx(onnx_path)
    # PIL images and arrays too, and the same batch through logits()
    pil = Image.open(images[0]).convert("RGB")
    assert d2lft.predict(model, [pil, np.asarray(pil)])[1].label == ref[0].label
    np.testing.assert_allclose(
        model.predict_proba(images[:4]),
        np.stack([p.probs for p in ref[:4]]),
        atol=1e-5,
    )
    assert preprocess.test_batch(images[:3], 32).shape == (3, 3, 32, 32)
    ev = d2lft.evaluate(onnx_path, data)
    assert ev.accuracy == ev_ref.accuracy and (ev.confusion == ev_ref.confusion).all()
    with pytest.raises(ValueError, match="exported for 32 px"):
        d2lft.predict(model, images[:1], image_size=64)


def test_predict_from_onnx_without_torch_or_mxnet(colours, tmp_path):
    """A fresh interpreter where importing torch, torchvision, mxnet or gluoncv fails:
    d2lft.predict and `d2lft predict` read the .onnx file with onnxruntime only."""
    data, net, _, onnx_path = colours
    images = [str(p) for p in sorted((data / "test").rglob("*.jpg"))[::3]]
    with d2lft.using("torch"):
        ref = d2lft.predict(net, images)
    code = (
        "import json, sys\n"
        "for m in ('torch', 'torchvision', 'mxnet', 'gluoncv'):\n"
        "    sys.modules[m] = None  # import m raises ImportError\n"
        "import d2lft\n"
        "from d2lft import cli\n"
        f"preds = d2lft.predict({str(onnx_path)!r}, {images!r})\n"
        "print(json.dumps([p.to_dict() for p in preds]))\n"
        f"argv = ['predict', '--checkpoint', {str(onnx_path)!r}, {images[0]!r}, '--json']\n"
        "rc = cli.main(argv)\n"
        "assert all(sys.modules[m] is None for m in ('torch', 'mxnet'))\n"
        "sys.exit(rc)\n"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    first, _, rest = p.stdout.partition("\n")
    got = json.loads(first)
    assert [g["label"] for g in got] == [r.label for r in ref]
    for g, r in zip(got, ref, strict=True):
        assert g["probabilities"] == pytest.approx(r.to_dict()["probabilities"], abs=1e-5)
    assert json.loads(rest)[0]["label"] == ref[0].label


def test_export_cli_and_bad_input(colours, tmp_path, capsys):
    data, net, ckpt, _ = colours
    out = tmp_path / "cli.onnx"
    assert cli.main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "input 'input': N x 3 x 32 x 32" in text
    assert d2lft.load_onnx(out).classes == ["blue", "red"]
    # the default file: model.onnx beside the checkpoint
    assert cli.main(["export", "--checkpoint", str(ckpt)]) == 0
    assert (ckpt.parent / "model.onnx").is_file()
    capsys.readouterr()

    assert cli.main(["export", "--checkpoint", str(out)]) == 2
    assert "already an ONNX file" in capsys.readouterr().err
    assert cli.main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.bin")]) == 2
    assert "must end with .onnx" in capsys.readouterr().err
    assert not (tmp_path / "x.bin").exists()
    with pytest.raises(SystemExit):
        cli.main(["export", "--checkpoint", str(ckpt), "--format", "tflite"])
    with pytest.raises(TypeError, match="not built by d2lft"):
        d2lft.export(object(), tmp_path / "y.onnx")

    # files that are not d2lft ONNX models: one clear error each, nothing half-read
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(out.read_bytes()[:5000])
    with pytest.raises(d2lft.OnnxError, match="cannot be read as an ONNX model"):
        d2lft.load_onnx(broken)
    import onnx

    bare = onnx.load(str(out))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(d2lft.OnnxError, match="no 'd2lft' metadata"):
        d2lft.load_onnx(tmp_path / "bare.onnx")
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        d2lft.load_onnx(tmp_path / "missing.onnx")
    image = next((data / "test").rglob("*.jpg"))
    assert cli.main(["predict", "--checkpoint", str(broken), str(image)]) == 2
    assert "cannot be read as an ONNX model" in capsys.readouterr().err
