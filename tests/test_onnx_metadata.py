"""Issue 23: .onnx files from elsewhere. An edited file, or a foreign graph, gets one
clear line naming the file and the field, and no prediction: from `load_onnx`, from
`d2lft.predict`, from `d2lft predict` and at the start of `d2lft serve` (not a 500 for
every upload). The files are tiny graphs built here with onnx.helper (global average
pool and one matrix product) and given d2lft's metadata, then edited; no training.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'd2lft[onnx]'")
onnx = pytest.importorskip("onnx", reason="the onnx extra: pip install 'd2lft[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import d2lft  # noqa: E402
from d2lft import cli  # noqa: E402
from d2lft.deploy.onnx import OnnxError, _finish  # noqa: E402

CLASSES = ["hotdog", "not-hotdog"]
SIZE = 16


def graph(n_out=2, in_shape=("N", 3, SIZE, SIZE), out_shape=None):
    """A tiny ONNX model: N x C x H x W -> global average pool -> N x C -> N x n_out."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape or ("N", n_out)))
    c = in_shape[1]
    w = np.arange(c * n_out, dtype=np.float32).reshape(c, n_out) / 10
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    g = helper.make_graph(nodes, "tiny", [x], [y], initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def metadata(classes=CLASSES, image_size=SIZE) -> dict:
    """d2lft's metadata for the tiny model, as d2lft.export writes it."""
    return {
        "format_version": 1,
        "arch": "resnet18",
        "kind": "finetune",
        "trained_with": "torch",
        "exported_from": "torch",
        "exporter": "hand-built test graph",
        "classes": list(classes),
        "image_size": image_size,
        "checkpoint": None,
    }


def write(path, model, **plain):
    """`model` with d2lft's names and metadata, then the metadata entries in `plain`
    replaced by the raw strings given (a hand edit), saved at `path`."""
    _finish(model, metadata())
    entries = {p.key: p for p in model.metadata_props}
    for key, value in plain.items():
        entry = entries.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, os.fspath(path))
    return pathlib.Path(path)


def edited(path, **changes):
    """A d2lft-like file whose `d2lft` metadata has `changes` (its plain `classes` and
    `image_size` entries edited the same way, as a careful editor would)."""
    plain = {k: json.dumps(changes[k]) for k in ("classes", "image_size") if k in changes}
    return write(path, graph(), d2lft=json.dumps({**metadata(), **changes}), **plain)


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (20, 24), (200, 30, 30)).save(path)
    return path


#: case -> (how the file is made, what the one line must say)
CASES = {
    "classes-shorter-than-outputs": (
        lambda p: edited(p, classes=["hotdog"]),
        'gives 2 outputs per image but d2lft.classes names 1 (["hotdog"])',
    ),
    "classes-empty": (lambda p: edited(p, classes=[]), "d2lft.classes is [], not a list"),
    "classes-null": (lambda p: edited(p, classes=None), "d2lft.classes is null, not a list"),
    "classes-not-names": (lambda p: edited(p, classes=[1, 2]), "d2lft.classes is [1, 2]"),
    "metadata-not-an-object": (
        lambda p: write(p, graph(), d2lft="[1, 2]"),
        "metadata field d2lft is [1, 2], not a JSON object",
    ),
    "metadata-not-json": (lambda p: write(p, graph(), d2lft="{oops"), "is not JSON"),
    "format-version-a-string": (
        lambda p: edited(p, format_version="2"),
        'd2lft.format_version is "2", not a whole number',
    ),
    "format-version-newer": (
        lambda p: edited(p, format_version=2),
        "exported by a newer d2lft (d2lft.format_version 2; this d2lft reads 1): upgrade",
    ),
    "image-size-a-string": (
        lambda p: edited(p, image_size="abc"),
        'd2lft.image_size is "abc", not a whole number of pixels',
    ),
    "image-size-disagrees-with-the-graph": (
        lambda p: edited(p, image_size=32),
        "the graph's input takes 16 x 16 pixel images ([",
    ),
    "plain-classes-disagree": (
        lambda p: write(p, graph(), classes='["cat", "dog"]'),
        'metadata field classes is "[\\"cat\\", \\"dog\\"]" but d2lft.classes is',
    ),
    "arch-null": (lambda p: edited(p, arch=None), "d2lft.arch is null, not a name"),
    "checkpoint-a-list": (lambda p: edited(p, checkpoint=[1]), "d2lft.checkpoint is [1]"),
    "graph-takes-grey-images": (
        lambda p: write(p, graph(in_shape=("N", 1, SIZE, SIZE))),
        "the graph's input takes 1 channels ([",
    ),
    "graph-takes-other-sizes": (
        lambda p: write(p, graph(in_shape=("N", 3, SIZE, 2 * SIZE))),
        "the graph's input takes 16 x 32 pixel images ([",
    ),
    "foreign-graph-3-outputs-2-classes": (
        lambda p: write(p, graph(n_out=3)),
        'gives 3 outputs per image but d2lft.classes names 2 (["hotdog", "not-hotdog"])',
    ),
    "open-sizes-3-outputs-2-classes": (  # sizes the graph leaves open: found by a dry run
        lambda p: write(p, graph(n_out=3, in_shape=("N", 3, "H", "W"), out_shape=("N", "K"))),
        "gives 3 outputs per image but d2lft.classes names 2",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_edited_file_gets_one_line_naming_file_and_field(case, tmp_path, image, capsys):
    make, says = CASES[case]
    path = make(tmp_path / "model.onnx")
    with pytest.raises(OnnxError) as err:
        d2lft.load_onnx(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and says in msg and "\n" not in msg, msg
    with pytest.raises(OnnxError, match="d2lft"):
        d2lft.predict(path, [image])
    assert cli.main(["predict", "--checkpoint", str(path), str(image)]) == 2
    out, err_text = capsys.readouterr()
    lines = err_text.strip().splitlines()
    assert out == "" and len(lines) == 1 and says in lines[0], (out, err_text)
    assert str(path) in lines[0]


def test_untouched_files_still_predict(tmp_path, image):
    """The checks pass the files d2lft writes, and graphs that leave their sizes open."""
    fixed = write(tmp_path / "fixed.onnx", graph())
    open_ = write(tmp_path / "open.onnx", graph(in_shape=("N", 3, "H", "W"), out_shape=("N", "K")))
    for path in (fixed, open_):
        model = d2lft.load_onnx(path)
        assert model.classes == CLASSES and model.image_size == SIZE
        (pred,) = d2lft.predict(path, [image])
        assert pred.label in CLASSES and abs(float(pred.probs.sum()) - 1) < 1e-5


def test_a_real_export_passes_the_checks(tmp_path, image):
    with d2lft.using("torch"):
        net = d2lft.build_scratch_net(2, seed=0)
        info = d2lft.net_info(net)
        info.classes, info.image_size = ["a", "b"], SIZE
        path = d2lft.export(net, tmp_path / "real.onnx")
    assert d2lft.load_onnx(path).classes == ["a", "b"]
    assert d2lft.predict(path, [image])[0].label in ("a", "b")


def test_serve_refuses_a_bad_file_at_start(tmp_path):
    """Not a 500 for every upload: `d2lft serve` ends at once with the one line."""
    path = write(tmp_path / "foreign.onnx", graph(n_out=3))
    p = subprocess.run(
        [sys.executable, "-m", "d2lft", "serve", "--checkpoint", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,  # it started serving: the check is missing
        env={**os.environ, "D2LFT_PROGRESS": "0", "D2LFT_HOME": str(tmp_path / "home")},
    )
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert str(path) in lines[0] and "gives 3 outputs per image" in lines[0]
    assert "serving" not in p.stdout + p.stderr
