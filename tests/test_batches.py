"""The batches a training run really feeds the network, in both pipelines and both
backends, checked against what the book's transforms produce.

Each image of `ramp_data` carries its own coordinates: green rises left to right
(``G = 255 * x / W``), blue top to bottom (``B = 255 * y / H``), and red is a
constant that names the image's class and size. A training crop resized to the
output keeps these ramps linear, so a line fitted through a crop's columns and rows
gives back the crop box (as fractions of the image) and whether it was flipped; red
gives back the class, to check the label that came with it. The inputs are captured
where the network receives them (a forward pre-hook) and the labels where the loss
receives them, during a real `train_fine_tuning` run.

Compared with the book (torchvision's `RandomResizedCrop` sampler) and among
themselves: crop area and aspect ratio distributions (Kolmogorov-Smirnov), flip rate
(binomial), labels aligned with their images, every image once per epoch, fresh
randomness each epoch, and evaluation batches equal, bit for bit, to a reference
built here from the frameworks' own datasets and transforms.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from conftest import ks_limit, ks_stat
from PIL import Image

import d2lft

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # Gluon warns that a hook on a hybridized block's children would not run;
    # the hooks here sit on the top block, which always runs them
    pytest.mark.filterwarnings("ignore:.*is being hybridized while still having"),
]

SIZE = 32  # output crop size
MEAN = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)  # the chapter's, written here
STD = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
SHAPES = [(48, 64), (64, 48), (96, 128)]  # (H, W); 96x128 exceeds the fast decode bound
RED = {(0, 0): 30, (0, 1): 60, (0, 2): 90, (1, 0): 160, (1, 1): 190, (1, 2): 220}
PER = 8  # training images per (class, shape)
EPOCHS = 3


def ramp(h, w, red):
    x = (np.arange(w) + 0.5) / w
    y = (np.arange(h) + 0.5) / h
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[..., 0] = red
    img[..., 1] = np.round(255 * x)[None, :]
    img[..., 2] = np.round(255 * y)[:, None]
    return img


@pytest.fixture(scope="module")
def ramp_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ramps") / "hotdog"
    for split, n in (("train", PER), ("test", 2)):
        for c, name in enumerate(("hotdog", "not-hotdog")):
            d = root / split / name
            d.mkdir(parents=True)
            for s, (h, w) in enumerate(SHAPES):
                for i in range(n):
                    Image.fromarray(ramp(h, w, RED[c, s])).save(d / f"{s}-{i}.png")
    return root


# ------------------------------------------------------------------ capture


@contextlib.contextmanager
def capture(backend, net, monkeypatch):
    """Record (train inputs, train labels, eval inputs) as numpy, in call order."""
    rec = {"X": [], "y": [], "eval": []}
    if backend == "torch":
        import torch

        def pre(module, args):
            x = args[0].detach().float().contiguous().numpy().copy()
            rec["X" if module.training else "eval"].append(x)

        handle = net.register_forward_pre_hook(pre)
        original = torch.nn.functional.cross_entropy

        def ce(input, target, *a, **kw):
            rec["y"].append(target.detach().numpy().copy())
            return original(input, target, *a, **kw)

        monkeypatch.setattr(torch.nn.functional, "cross_entropy", ce)
        try:
            yield rec
        finally:
            handle.remove()
    else:
        from mxnet import autograd, gluon

        def pre(block, args):
            x = args[0].asnumpy().copy()
            rec["X" if autograd.is_training() else "eval"].append(x)

        handle = net.register_forward_pre_hook(pre)
        original = gluon.loss.SoftmaxCrossEntropyLoss.hybrid_forward

        def loss(self, F, pred, label, *a, **kw):
            rec["y"].append(label.asnumpy().copy())
            return original(self, F, pred, label, *a, **kw)

        monkeypatch.setattr(gluon.loss.SoftmaxCrossEntropyLoss, "hybrid_forward", loss)
        try:
            yield rec
        finally:
            handle.detach()


def pixels(X):
    """Normalised NCHW float batch -> [0, 255] values."""
    return (np.asarray(X, dtype=np.float64) * STD + MEAN) * 255


def read_crop(img):
    """(class, shape index, x0, w, y0, h as fractions of the image, flipped) of one
    3xSxS crop of a ramp image."""
    red = float(np.median(img[0]))
    (c, s), _ = min(RED.items(), key=lambda kv: abs(kv[1] - red))
    lo, hi = SIZE // 5, SIZE - SIZE // 5  # inner columns: resampling edges left out
    j = np.arange(lo, hi) + 0.5
    g = img[1, lo:hi, lo:hi].mean(axis=0) / 255
    b = img[2, lo:hi, lo:hi].mean(axis=1) / 255
    gs, gi = np.polyfit(j, g, 1)
    bs, bi = np.polyfit(j, b, 1)
    flipped = gs < 0
    if flipped:  # column j shows the unflipped column SIZE - 1 - j
        gi, gs = gi + gs * SIZE, -gs
    return c, s, gi, gs * SIZE, bi, bs * SIZE, flipped


def run_and_capture(backend, data, pipeline, monkeypatch, epochs=EPOCHS, seed=0):
    net = d2lft.build_finetune_net(pretrained=False, seed=0)
    lr = {"torch": 1e-5, "mxnet": 1e-3}[backend]
    with capture(backend, net, monkeypatch) as rec:
        d2lft.train_fine_tuning(
            net,
            lr,
            16,
            epochs,
            data_dir=data,
            image_size=SIZE,
            seed=seed,
            pipeline=d2lft.FastPipeline(precision="fp32")
            if pipeline == "fast"
            else d2lft.BookLoop(workers=0),
            run=d2lft.RunSpec(verbose=False),
        )
    return rec


def book_sampler(n, seed=0):
    """Crop fractions drawn by torchvision's own RandomResizedCrop for SHAPES."""
    torch = pytest.importorskip("torch")
    from torchvision import transforms

    torch.manual_seed(seed)
    out = []
    for k in range(n):
        h, w = SHAPES[k % len(SHAPES)]
        img = torch.empty(1, 1, 1).expand(3, h, w)
        top, left, ch, cw = transforms.RandomResizedCrop.get_params(
            img, [0.08, 1.0], [3 / 4, 4 / 3]
        )
        out.append((cw / w, ch / h, cw / ch))
    return np.array(out)


# ------------------------------------------------------------------ training batches


@pytest.mark.parametrize("pipeline", ["book", "fast"])
def test_training_batches_are_the_books_augmentation(backend, ramp_data, pipeline, monkeypatch):
    rec = run_and_capture(backend, ramp_data, pipeline, monkeypatch)
    n_train = 2 * len(SHAPES) * PER
    assert len(rec["X"]) == len(rec["y"]) == EPOCHS * math.ceil(n_train / 16)
    crops, per_epoch, seen = [], [], []
    batches_per_epoch = math.ceil(n_train / 16)
    for b, (X, y) in enumerate(zip(rec["X"], rec["y"], strict=False)):
        assert X.shape[1:] == (3, SIZE, SIZE) and len(X) == len(y)
        epoch = b // batches_per_epoch
        for img, label in zip(pixels(X), y, strict=False):
            c, s, x0, w, y0, h, flipped = read_crop(img)
            # the label that came with the image is the image's class
            assert int(label) == c, (pipeline, b, int(label), c)
            crops.append((s, x0, w, y0, h, flipped))
            seen.append((epoch, c, s))
        per_epoch.append(X)
    # every image once per epoch: each (class, shape) PER times
    for e in range(EPOCHS):
        counts = {}
        for ep, c, s in seen:
            if ep == e:
                counts[c, s] = counts.get((c, s), 0) + 1
        assert counts == {k: PER for k in RED}, (e, counts)
    crops = np.array(crops, dtype=float)
    s, x0, w, y0, h, flipped = crops.T
    n = len(crops)
    # the box lies inside the image
    assert (x0 > -0.03).all() and (x0 + w < 1.03).all() and (y0 > -0.03).all()
    assert (y0 + h < 1.03).all()
    # horizontal flip with probability 1/2 (4.5 standard deviations allowed)
    rate = flipped.mean()
    assert abs(rate - 0.5) < 4.5 * math.sqrt(0.25 / n), rate
    # crop area and aspect ratio as torchvision's RandomResizedCrop draws them
    hw = np.array([SHAPES[int(k)] for k in s], dtype=float)
    area = w * h
    aspect = np.log(w * hw[:, 1] / (h * hw[:, 0]))
    ref = book_sampler(4000)
    limit = ks_limit(n, len(ref))
    assert ks_stat(area, ref[:, 0] * ref[:, 1]) < limit, ks_stat(area, ref[:, 0] * ref[:, 1])
    assert ks_stat(aspect, np.log(ref[:, 2])) < limit
    # fresh randomness each epoch: no epoch repeats another's batches
    for e in range(1, EPOCHS):
        a = np.concatenate(per_epoch[:batches_per_epoch])
        b = np.concatenate(per_epoch[e * batches_per_epoch : (e + 1) * batches_per_epoch])
        assert not np.array_equal(a, b), e


def test_a_seeded_run_repeats_its_batches(backend, ramp_data, monkeypatch):
    """Same seed: the same batches (the fast pipeline's resume relies on it); another
    seed: other batches."""
    a = run_and_capture(backend, ramp_data, "fast", monkeypatch, epochs=1, seed=3)
    b = run_and_capture(backend, ramp_data, "fast", monkeypatch, epochs=1, seed=3)
    c = run_and_capture(backend, ramp_data, "fast", monkeypatch, epochs=1, seed=4)
    for u, v in zip(a["X"], b["X"], strict=False):
        np.testing.assert_array_equal(u, v)
    assert not all(np.array_equal(u, v) for u, v in zip(a["X"], c["X"], strict=False))


# ------------------------------------------------------------------ evaluation batches


def reference_test_batches(backend, folder):
    """The chapter's test transform at SIZE built here from the framework itself:
    resize to round(SIZE * 256 / 224) square, center crop SIZE, to tensor, normalise."""
    resize = round(SIZE * 256 / 224)
    assert resize == 37
    mean, std = MEAN.ravel().tolist(), STD.ravel().tolist()
    if backend == "torch":
        import torchvision
        from torchvision import transforms

        tf = transforms.Compose(
            [
                transforms.Resize([resize, resize]),
                transforms.CenterCrop(SIZE),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )
        ds = torchvision.datasets.ImageFolder(folder, transform=tf)
        return np.stack([ds[i][0].numpy() for i in range(len(ds))]), np.array(
            [t for _, t in ds.samples]
        )
    from mxnet import gluon
    from mxnet.gluon.data.vision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(SIZE),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    ds = gluon.data.vision.ImageFolderDataset(str(folder)).transform_first(tf)
    xs, ys = zip(*[ds[i] for i in range(len(ds))], strict=False)
    return np.stack([x.asnumpy() for x in xs]), np.array(ys)


@pytest.mark.parametrize("pipeline", ["book", "fast"])
def test_evaluation_batches_equal_the_frameworks_own(backend, ramp_data, pipeline, monkeypatch):
    rec = run_and_capture(backend, ramp_data, pipeline, monkeypatch, epochs=1)
    ours = np.concatenate(rec["eval"])
    ref, labels = reference_test_batches(backend, ramp_data / "test")
    assert ours.shape == ref.shape == (2 * len(SHAPES) * 2, 3, SIZE, SIZE)
    np.testing.assert_array_equal(ours, ref)  # bit for bit


# ------------------------------------------------------------------ the augmentations


def test_augmentations_are_the_chapters_composition(backend):
    """train_augs / test_augs are the chapter's transforms, with the chapter's
    parameters, in the chapter's order."""
    train, test = d2lft.train_augs(SIZE), d2lft.test_augs(SIZE)
    if backend == "torch":
        from torchvision import transforms as T

        rrc, flip, tensor, norm = train.transforms
        assert type(rrc) is T.RandomResizedCrop and list(rrc.size) == [SIZE, SIZE]
        assert tuple(rrc.scale) == (0.08, 1.0)
        assert rrc.ratio == pytest.approx((3 / 4, 4 / 3))
        assert type(flip) is T.RandomHorizontalFlip and flip.p == 0.5
        assert type(tensor) is T.ToTensor and type(norm) is T.Normalize
        resize, crop, tensor, norm2 = test.transforms
        assert type(resize) is T.Resize and list(resize.size) == [37, 37]
        assert type(crop) is T.CenterCrop and list(crop.size) == [SIZE, SIZE]
        for nm in (norm, norm2):
            assert list(nm.mean) == MEAN.ravel().tolist()
            assert list(nm.std) == STD.ravel().tolist()
    else:
        from mxnet.gluon.data.vision import transforms as T

        def flat(block):  # Gluon's Compose groups hybrid steps into HybridSequentials
            kids = list(block._children.values())
            return [t for k in kids for t in (flat(k) if k._children else [k])]

        steps = flat(train)
        assert [type(t).__name__ for t in steps] == [
            "RandomResizedCrop",
            "RandomFlipLeftRight",
            "ToTensor",
            "Normalize",
        ]
        assert isinstance(steps[0], T.RandomResizedCrop)
        size, scale, ratio, _ = steps[0]._args
        assert size == (SIZE, SIZE) and scale == (0.08, 1.0)
        assert ratio == pytest.approx((3 / 4, 4 / 3))
        steps = flat(test)
        assert [type(t).__name__ for t in steps] == [
            "Resize",
            "CenterCrop",
            "ToTensor",
            "Normalize",
        ]
        assert steps[0]._size == 37 and steps[1]._args[0] == (SIZE, SIZE)
        for nm in (flat(train)[3], steps[3]):
            assert list(nm._mean) == MEAN.ravel().tolist()
            assert list(nm._std) == STD.ravel().tolist()


def test_train_augs_flip_half_the_images(backend):
    """Applied to one ramp image, train_augs flips about half of the outputs."""
    img = ramp(48, 64, 90)
    tf = d2lft.train_augs(SIZE)
    if backend == "torch":
        import torch

        torch.manual_seed(0)
        outs = [tf(Image.fromarray(img)).numpy() for _ in range(200)]
    else:
        import mxnet as mx

        mx.random.seed(0)
        src = mx.nd.array(img, dtype="uint8")
        outs = [tf(src).asnumpy() for _ in range(200)]
    flips = np.mean([read_crop(p)[-1] for p in pixels(np.stack(outs))])
    assert abs(flips - 0.5) < 4.5 * math.sqrt(0.25 / 200), flips
