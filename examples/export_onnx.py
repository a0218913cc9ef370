"""Export each backend's network to ONNX and measure it against the framework; one table.

    python examples/export_onnx.py                      # offline, CPU, ~1 min
    python examples/export_onnx.py --image-size 112 --photos 32

For each backend and architecture: a fine-tuning network (resnet18_v1 from
../shared/data's food100 ResNet-18 when it is there, or --pretrained PATH; otherwise,
and for resnet18_v2, random features with trained-looking BatchNorm statistics),
exported with d2lft.export, then

* logits: max |onnxruntime - framework| on the photos' test-transformed batch (the
  same float32 input to both), absolute and relative to the largest logit;
* predict: d2lft.predict from the .onnx file (numpy/PIL test transform, onnxruntime)
  against d2lft.predict with the framework (its own test transform): the largest
  probability difference and how many labels agree. The torch tab's transform is
  the same pixels; the MXNet tab resizes with OpenCV, not PIL, so its probabilities
  differ a little more (docs/serve-and-export.md).

Photos: --photos real photos from ../shared/data/hotdog-real.zip when it is there,
else generated two-colour images.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import zipfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

import d2lft  # noqa: E402
from d2lft import parity  # noqa: E402
from d2lft.backends import _registry  # noqa: E402
from d2lft.data import preprocess  # noqa: E402


def photos(folder: pathlib.Path, n: int) -> tuple[list, str]:
    source = SHARED / "hotdog-real.zip"
    if source.is_file():
        with zipfile.ZipFile(source) as z:
            names = sorted(m for m in z.namelist() if "/test/" in m and m.endswith(".jpg"))
            picked = names[:: max(1, len(names) // n)][:n]
            for m in picked:
                z.extract(m, folder)
        return sorted(folder.rglob("*.jpg")), f"{n} real photos ({source.name})"
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        color = (220, 40, 40) if i % 2 else (40, 40, 220)
        arr = np.clip(np.array(color) + rng.normal(0, 25, (180, 240, 3)), 0, 255)
        out.append(folder / f"{i}.png")
        Image.fromarray(arr.astype("uint8")).save(out[-1])
    return out, f"{n} generated images"


def network(backend: str, arch: str, pretrained, image_size: int):
    with d2lft.using(backend):
        weights = pretrained if arch == "resnet18_v1" and pretrained else False
        net = d2lft.build_finetune_net(2, weights, arch, seed=0)
        pkg = _registry.load(backend)
        if not weights:
            pkg.load_state_arrays(net, parity.pretrained_like(pkg.state_arrays(net)))
        info = d2lft.net_info(net)
        info.classes, info.image_size = ["hotdog", "not-hotdog"], image_size
    return net, "food100" if weights else "random, trained-looking BN"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--photos", type=int, default=16)
    default = SHARED / "food100-resnet18.pth"
    p.add_argument("--pretrained", default=str(default) if default.is_file() else None)
    args = p.parse_args(argv)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="d2lft-export-"))
    files, what = photos(tmp / "photos", args.photos)
    X = preprocess.test_batch(files, args.image_size)
    print(f"{what}, {args.image_size} px; tolerance of the tests: 1e-4 of the largest logit")
    print(
        f"{'backend':8s}{'arch':13s}{'weights':28s}{'max|dlogit|':>12s}{'relative':>10s}"
        f"{'max|dprob|':>12s}{'labels':>8s}"
    )
    for backend in _registry.names():
        if not _registry.framework_installed(backend):
            continue
        for arch in ("resnet18_v1", "resnet18_v2"):
            net, weights = network(backend, arch, args.pretrained, args.image_size)
            with d2lft.using(backend):
                path = d2lft.export(net, tmp / f"{backend}-{arch}.onnx")
                ref = parity.logits(net, X)
                framework = d2lft.predict(net, files)
            model = d2lft.load_onnx(path)
            diff = float(np.abs(model.logits(X) - ref).max())
            onnx = d2lft.predict(model, files)
            dprob = max(
                float(np.abs(a.probs - b.probs).max())
                for a, b in zip(onnx, framework, strict=True)
            )
            agree = sum(a.label == b.label for a, b in zip(onnx, framework, strict=True))
            print(
                f"{backend:8s}{arch:13s}{weights:28s}{diff:12.2e}"
                f"{diff / np.abs(ref).max():10.1e}{dprob:12.2e}{agree:>5d}/{len(files)}"
            )


if __name__ == "__main__":
    main()
