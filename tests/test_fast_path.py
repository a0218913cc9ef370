"""The fast input pipeline (issue 5): decode cache, crop statistics against the book's
transforms, pixel agreement of the resamplers, identical evaluation batches, options.

No timing is asserted here; speed is measured by benchmarks/bench_train.py.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from conftest import ks_limit, ks_stat, make_image_folder
from PIL import Image

from d2lft.data import crops
from d2lft.data import decode_cache as dc

# ------------------------------------------------------------------ helpers


def smooth_image(h, w, seed=0):
    """A low-frequency RGB image (resampling differences stay small on it)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def crop_features(top, left, h, w, H, W):
    """Per-crop statistics compared between samplers."""
    top, left, h, w = (np.asarray(v, float) for v in (top, left, h, w))
    return {
        "area": h * w / (H * W),
        "log_ratio": np.log(w / h),
        "cx": (left + w / 2) / W,
        "cy": (top + h / 2) / H,
    }


# ------------------------------------------------------------------ crop sampling


def torchvision_boxes(H, W, n, seed=0):
    """n crop boxes (top, left, h, w) drawn by torchvision's RandomResizedCrop."""
    torch = pytest.importorskip("torch")
    from torchvision import transforms

    torch.manual_seed(seed)
    img = torch.empty(1, 1, 1).expand(3, H, W)  # only the size is read
    return np.array(
        [
            transforms.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
            for _ in range(n)
        ]
    )


def tail_z(a, b, lo, hi):
    """Two-proportion z statistic of the share of `a` and of `b` in [lo, hi)."""
    pa, pb = np.mean((a >= lo) & (a < hi)), np.mean((b >= lo) & (b < hi))
    p = (pa * len(a) + pb * len(b)) / (len(a) + len(b))
    se = math.sqrt(max(p * (1 - p), 1e-12) * (1 / len(a) + 1 / len(b)))
    return abs(pa - pb) / se


@pytest.mark.parametrize("H,W", [(3000, 4000), (40, 48), (500, 180)])
def test_crop_distribution_matches_torchvision(H, W):
    """Our vectorised sampler against torchvision's, 20,000 crops each: KS on every
    feature (alpha 1e-3) and, for large images, the share of crops in the outer 5% of
    each bound (area near 0.08 and near 1, aspect ratio near 3/4 and 4/3), so that
    narrowing any bound by 5% fails (|z| > 4.5; measured on a correct sampler: < 2)."""
    n = 20000
    ref = torchvision_boxes(H, W, n)
    ours = np.stack(
        crops.sample_resized_crops(np.random.default_rng(1), np.full(n, H), np.full(n, W)), axis=1
    )
    assert ours.dtype == np.int64 and ours.shape == (n, 4)
    assert (ours[:, 2] >= 1).all() and (ours[:, 3] >= 1).all()
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= H).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= W).all()
    fr, fo = crop_features(*ref.T, H, W), crop_features(*ours.T, H, W)
    limit = ks_limit(n, n)
    for key in fr:
        assert ks_stat(fr[key], fo[key]) < limit, key
    if H * W < 10**6:
        return
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    for key, a, b in (
        ("area", 0.08, 0.08 * 1.05),
        ("area", 0.95, 1.0 + 1e-9),
        ("log_ratio", lo, lo * 0.95),
        ("log_ratio", hi * 0.95, hi + 1e-9),
    ):
        z = tail_z(fr[key], fo[key], a, b)
        share = np.mean((fr[key] >= a) & (fr[key] < b))
        assert share > 0.003, (key, a, share)  # the bin holds crops in the book's sampler
        assert z < 4.5, (key, a, b, z)


def test_fallback_matches_torchvision_exactly():
    """An image so elongated that no try fits: torchvision's central fallback."""
    torch = pytest.importorskip("torch")
    from torchvision import transforms

    H, W = 10, 400
    torch.manual_seed(0)
    ref = transforms.RandomResizedCrop.get_params(
        torch.empty(3, H, W), [0.08, 1.0], [3 / 4, 4 / 3]
    )
    top, left, h, w = crops.sample_resized_crops(
        np.random.default_rng(0), [H], [W], scale=(0.99, 1.0)
    )
    assert (int(top[0]), int(left[0]), int(h[0]), int(w[0])) == tuple(ref)
    assert w[0] == round(10 * 4 / 3)  # ratio clamped to 4/3 of the full height


def test_crop_distribution_matches_gluon():
    mx = pytest.importorskip("mxnet")
    import random

    from d2lft.backends.mxnet import fastdata as mfast

    H, W, n = 60, 80, 1500
    random.seed(0)
    src = mx.nd.zeros((H, W, 3), dtype="uint8")
    ref = np.array(
        [mx.image.random_size_crop(src, (8, 8), (0.08, 1.0), (3 / 4, 4 / 3))[1] for _ in range(n)]
    )  # (x0, y0, w, h)
    top, left, h, w = mfast.sample_crops(np.random.default_rng(0), np.full(n, H), np.full(n, W), 8)
    fr = crop_features(ref[:, 1], ref[:, 0], ref[:, 3], ref[:, 2], H, W)
    fo = crop_features(top, left, h, w, H, W)
    for key in fr:
        assert ks_stat(fr[key], fo[key]) < ks_limit(n, n), key
    # Gluon's fallback: center_crop to the output size, scaled down to fit
    t, l_, hh, ww = crops.sample_resized_crops(
        np.random.default_rng(0), [10], [400], scale=(0.99, 1.0), fallback="gluon", out_size=224
    )
    _, (x0, y0, cw, ch) = mx.image.center_crop(
        mx.nd.zeros((10, 400, 3), dtype="uint8"), (224, 224)
    )
    assert (int(t[0]), int(l_[0]), int(hh[0]), int(ww[0])) == (y0, x0, ch, cw)


# ------------------------------------------------------------------ decode cache


def test_decode_bound_and_original_size(tmp_path):
    Image.fromarray(smooth_image(300, 500)).save(tmp_path / "a.jpg")
    Image.fromarray(smooth_image(60, 40)).convert("L").save(tmp_path / "b.png")
    arr, orig = dc.decode_rgb(tmp_path / "a.jpg", max_short=100)
    assert orig == (300, 500) and arr.shape == (100, 167, 3) and arr.dtype == np.uint8
    arr, orig = dc.decode_rgb(tmp_path / "b.png", max_short=100)  # small, grayscale
    assert orig == (60, 40) and arr.shape == (60, 40, 3)
    assert (arr[..., 0] == arr[..., 1]).all()
    assert dc.default_max_short(224) == 448


def test_decode_cache_memory_disk_and_invalidation(tmp_path):
    folder = make_image_folder(tmp_path / "d", n_train=3, n_test=1)
    paths = sorted(str(p) for p in (folder / "train").rglob("*.jpg"))
    fn = lambda p: dc.decode_rgb(p, 32)  # noqa: E731
    cache = dc.DecodeCache(tmp_path / "cache")
    s1 = cache.load(paths, "t", fn)
    assert cache.decoded == len(paths) and len(s1) == len(paths)
    assert cache.load(paths, "t", fn) is s1 and cache.decoded == len(paths)  # memory hit
    for k, p in enumerate(paths):
        np.testing.assert_array_equal(s1.image(k), fn(p)[0])
    # a new process (new cache object) reads the pack from disk: nothing decoded
    fresh = dc.DecodeCache(tmp_path / "cache")
    s2 = fresh.load(paths, "t", fn)
    assert fresh.decoded == 0
    np.testing.assert_array_equal(s2.data, s1.data)
    # another transform kind never reuses entries
    other = dc.DecodeCache(tmp_path / "cache")
    other.load(paths, "t2", fn)
    assert other.decoded == len(paths)
    # a changed file is decoded again, the others are reused
    Image.fromarray(smooth_image(20, 30, seed=5)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    again = dc.DecodeCache(tmp_path / "cache")
    s3 = again.load(paths, "t", fn)
    assert again.decoded == 1 and s3.image(0).shape == (20, 30, 3)
    # a damaged pack warns and is rebuilt, never trusted
    pack = next((tmp_path / "cache").glob("t-*.npz"))
    pack.write_bytes(b"not a zip")
    broken = dc.DecodeCache(tmp_path / "cache")
    with pytest.warns(UserWarning, match="unreadable decode cache"):
        s4 = broken.load(paths, "t", fn)
    assert broken.decoded == len(paths)
    np.testing.assert_array_equal(s4.data, s3.data)
    assert not list((tmp_path / "cache").glob("*.tmp"))  # atomic writes leave no debris


def test_bad_image_names_the_file(tmp_path):
    from d2lft.data import BadImageError

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(BadImageError, match="bad.jpg"):
        dc.decode_rgb(bad, 64)


def test_get_cache_options(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path))
    assert dc.get_cache("memory") is dc.get_cache("memory")
    assert dc.get_cache("disk").cache_dir == tmp_path / "decoded"
    assert dc.get_cache(tmp_path / "x").cache_dir == tmp_path / "x"
    assert dc.get_cache(None).memory_bytes == 0
    with pytest.raises(ValueError, match="decode_cache must be"):
        dc.get_cache(3)


# ------------------------------------------------------------------ torch resamplers


def _store_of(arrays):
    return dc.ImageStore.from_arrays(
        arrays, [a.shape[:2] for a in arrays], [str(i) for i in range(len(arrays))]
    )


def test_pil_crops_equal_torchvision_resized_crop():
    pytest.importorskip("torch")
    from torchvision.transforms import functional as F

    from d2lft.backends.torch.fastdata import pil_crops

    imgs = [
        smooth_image(90, 120, 1),
        np.random.default_rng(2).integers(0, 256, (50, 40, 3), dtype=np.uint8),
    ]
    store = _store_of(imgs)
    idx = np.array([0, 1, 0])
    top, left, h, w = (np.array(v) for v in ([5, 0, 30], [7, 3, 0], [60, 50, 40], [80, 37, 120]))
    flips = np.array([False, True, False])
    out = pil_crops(store, idx, top, left, h, w, flips, 32)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    for k in range(3):
        ref = F.resized_crop(
            Image.fromarray(imgs[idx[k]]),
            int(top[k]),
            int(left[k]),
            int(h[k]),
            int(w[k]),
            [32, 32],
        )
        if flips[k]:
            ref = F.hflip(ref)
        np.testing.assert_array_equal(out[k], np.asarray(ref))  # bit-identical


def test_roi_align_crops_close_to_torchvision():
    """Tolerance: on smooth images the batched roi_align resampler stays within a mean
    absolute difference of 1 grey level (max 8 of 255) of torchvision's PIL resize
    (measured: 0.2-0.4 mean, <= 5 max); the differences come from its box-filter
    antialiasing versus PIL's triangle filter."""
    torch = pytest.importorskip("torch")
    from torchvision.transforms import functional as F

    from d2lft.backends.torch.data import MEAN, STD
    from d2lft.backends.torch.fastdata import DeviceImages, Normalizer

    imgs = [smooth_image(120, 160, 3), smooth_image(64, 48, 4)]
    store = _store_of(imgs)
    dev = DeviceImages(store, "cpu")
    idx = np.array([0, 1, 0, 1])
    top, left = np.array([0, 10, 40, 0]), np.array([0, 5, 60, 0])
    h, w = np.array([120, 30, 50, 64]), np.array([160, 40, 90, 48])
    flips = np.array([False, False, True, True])
    X = dev.crops(idx, top, left, h, w, flips, 40, Normalizer("cpu"))
    assert X.shape == (4, 3, 40, 40) and X.dtype == torch.float32
    assert X.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    pix = ((X * std + mean) * 255).permute(0, 2, 3, 1).numpy()
    for k in range(4):
        ref = F.resized_crop(
            Image.fromarray(imgs[idx[k]]),
            int(top[k]),
            int(left[k]),
            int(h[k]),
            int(w[k]),
            [40, 40],
        )
        ref = np.asarray(F.hflip(ref) if flips[k] else ref).astype(float)
        diff = np.abs(pix[k] - ref)
        assert diff.mean() < 1.0 and diff.max() < 8, (k, diff.mean(), diff.max())


def test_downscaled_store_close_to_full_resolution():
    """A crop of an image stored at half size (the decode bound) stays close to the
    same crop of the original."""
    pytest.importorskip("torch")
    from torchvision.transforms import functional as F

    from d2lft.backends.torch.fastdata import pil_crops

    big = smooth_image(200, 260, 7)
    small = np.asarray(Image.fromarray(big).resize((130, 100), Image.BILINEAR))
    store = dc.ImageStore.from_arrays([small], [(200, 260)], ["0"])
    top, left, h, w = np.array([20]), np.array([30]), np.array([150]), np.array([180])
    out = pil_crops(store, np.array([0]), top, left, h, w, np.array([False]), 48)
    ref = np.asarray(F.resized_crop(Image.fromarray(big), 20, 30, 150, 180, [48, 48]))
    assert np.abs(out[0].astype(float) - ref).mean() < 3.0


# ------------------------------------------------------------------ whole batches


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """Images of mixed sizes (some larger than the decode bound at 32 px)."""
    root = tmp_path_factory.mktemp("odd") / "hotdog"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 5)):
        for c in ("hotdog", "not-hotdog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(20, 140)), int(rng.integers(20, 140))
                Image.fromarray(smooth_image(h, w, seed=i)).save(d / f"{i}.jpg")
    return root


@pytest.mark.parametrize("augment", ["pil", "roi_align"])
def test_torch_train_batches(odd_data, augment):
    torch = pytest.importorskip("torch")
    from d2lft.backends.torch.data import MEAN, STD
    from d2lft.backends.torch.fastdata import FastData

    data = FastData(odd_data, 32, 5, "cpu", seed=0, decode_cache=None, augment=augment)
    assert (np.minimum(data.train.shapes[:, 0], data.train.shapes[:, 1]) <= 64).all()
    assert (data.train.orig >= data.train.shapes).all()
    seen = []
    for X, y, idx in data.train_batches():
        assert X.dtype == torch.float32 and X.shape == (len(idx), 3, 32, 32)
        assert X.is_contiguous(memory_format=torch.channels_last)
        pix = X * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        assert pix.min() >= -1e-5 and pix.max() <= 1 + 1e-5
        assert (y.numpy() == data.train_labels[idx]).all()
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(12))  # every image once per epoch
    # a seeded epoch repeats exactly
    data.set_epoch(3)
    a = [X.clone() for X, _, _ in data.train_batches()]
    data.set_epoch(3)
    b = [X for X, _, _ in data.train_batches()]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=False))


def test_torch_eval_batches_equal_book(odd_data):
    """The fast test batches equal the book's test_augs batches exactly (the same
    torchvision resize and crop on the same decoded image, the same float ops)."""
    torch = pytest.importorskip("torch")
    from d2lft.backends.torch.data import make_loaders
    from d2lft.backends.torch.fastdata import FastData

    data = FastData(odd_data, 32, 4, "cpu", decode_cache=None)
    _, book = make_loaders(odd_data, 4, 32, num_workers=0)
    pairs = list(zip(data.test_batches(), book, strict=False))
    assert len(pairs) == 3
    for (X, y), (Xb, yb) in pairs:
        assert torch.equal(y, yb)
        assert torch.equal(X.contiguous(), Xb)


def test_mxnet_batches(odd_data):
    pytest.importorskip("mxnet")
    from d2lft.backends.mxnet import fastdata as mfast
    from d2lft.backends.mxnet.data import make_loaders

    data = mfast.FastData(odd_data, 32, 4, seed=0, decode_cache=None)
    _, book = make_loaders(odd_data, 4, 32)
    for (X, y), (Xb, yb) in zip(data.test_batches(), book, strict=False):
        assert (y.asnumpy() == yb.asnumpy()).all()
        np.testing.assert_array_equal(X.asnumpy(), Xb.asnumpy())  # bit-identical
    n = 0
    for X, _ in data.train_batches():
        assert X.shape[1:] == (3, 32, 32) and X.dtype == np.float32
        pix = X.asnumpy() * np.array(mfast.STD).reshape(1, 3, 1, 1) + np.array(mfast.MEAN).reshape(
            1, 3, 1, 1
        )
        assert pix.min() >= -1e-5 and pix.max() <= 1 + 1e-5
        n += X.shape[0]
    assert n == 12


def test_mxnet_crop_resize_equals_gluon_fixed_crop():
    mx = pytest.importorskip("mxnet")
    from d2lft.backends.mxnet import fastdata as mfast

    img = smooth_image(50, 70, 9)
    store = _store_of([img])
    out = mfast.crop_resize(
        store,
        np.array([0, 0]),
        np.array([3, 0]),
        np.array([4, 10]),
        np.array([30, 50]),
        np.array([40, 45]),
        np.array([False, True]),
        24,
    ).asnumpy()
    src = mx.nd.array(img, dtype="uint8")
    ref0 = mx.image.fixed_crop(src, 4, 3, 40, 30, (24, 24), 1).asnumpy()
    ref1 = mx.image.fixed_crop(src, 10, 0, 45, 50, (24, 24), 1).asnumpy()[:, ::-1]
    np.testing.assert_array_equal(out[0], ref0)
    np.testing.assert_array_equal(out[1], ref1)


# ------------------------------------------------------------------ training and options


BLOCK_MB = 384


def hold_a_block_once(backend, net):
    """A forward pre-hook that, on the first training forward, fills a BLOCK_MB numpy
    block, holds it 0.3 s (the peak sampler reads every 0.05 s) and frees it."""
    import time

    done = []

    def hook(*args):
        if not done:
            block = np.ones(BLOCK_MB * 2**20, dtype=np.uint8)
            time.sleep(0.3)
            done.append(int(block.sum()))

    net.register_forward_pre_hook(hook)  # torch and Gluon blocks both have it
    return done


@pytest.mark.parametrize("pipeline", ["book", "fast"])
def test_training_records_memory_and_params(backend, toy_data, pipeline):
    import d2lft
    from d2lft._sys.memory import rss_bytes

    net = d2lft.build_finetune_net(pretrained=False)
    lr = 0.01 if backend == "mxnet" else 1e-4
    kw = dict(
        data_dir=toy_data,
        image_size=32,
        seed=0,
        run=d2lft.RunSpec(verbose=False),
        pipeline=d2lft.FastPipeline(precision="fp32") if pipeline == "fast" else "book",
    )
    d2lft.train_fine_tuning(net, lr, 16, 1, **kw)  # warm: caches, allocator pools
    done = hold_a_block_once(backend, net)
    before = rss_bytes() / 2**20
    h = d2lft.train_fine_tuning(net, lr, 16, 1, **kw)
    assert done, "the block was never allocated"
    assert h.epochs == 1 and h.num_examples == 48 and math.isfinite(h.train_loss[0])
    assert 0.0 <= h.test_acc[0] <= 1.0
    assert h.config["pipeline"] == pipeline
    assert h.trained_params == h.config.get("total_params", h.trained_params) > 1_000_000
    # the peak saw the block that lived 0.3 s in the middle of the run
    assert h.peak_host_mb > before + 0.9 * BLOCK_MB, (h.peak_host_mb, before)
    assert h.peak_host_mb < before + BLOCK_MB + 2048  # and is this process's, in MiB
    assert math.isnan(h.peak_device_mb)  # CPU run
    back = d2lft.History.from_json(h.to_json())
    assert back.peak_host_mb == pytest.approx(h.peak_host_mb)
    assert back.trained_params == h.trained_params


def test_host_peak_sees_a_block_freed_before_it_stops():
    import time

    from d2lft._sys.memory import HostPeak, rss_bytes

    base = rss_bytes() / 2**20
    with HostPeak() as peak:
        block = np.ones(BLOCK_MB * 2**20, dtype=np.uint8)
        time.sleep(0.3)
        del block
        time.sleep(0.1)
    assert peak.peak_mb > base + 0.9 * BLOCK_MB
    assert rss_bytes() / 2**20 < peak.peak_mb - 0.5 * BLOCK_MB  # freed: the peak is past


def test_option_errors(backend, toy_data):
    """Options are checked when they are built; combinations that make no sense
    cannot be written down (an option of another pipeline is a TypeError)."""
    import d2lft

    net = d2lft.build_finetune_net(pretrained=False)
    kw = dict(data_dir=toy_data, image_size=16, run=d2lft.RunSpec(verbose=False))
    with pytest.raises(ValueError, match="pipeline must be one of"):
        d2lft.train_fine_tuning(net, 0.01, **kw, pipeline="turbo")
    with pytest.raises(TypeError, match="pipeline must be"):
        d2lft.train_fine_tuning(net, 0.01, **kw, pipeline=3)
    with pytest.raises(ValueError, match="precision must be one of"):
        d2lft.FastPipeline(precision="fp8")
    with pytest.raises(TypeError, match="precision"):
        d2lft.BookLoop(precision="bf16")  # the book's loop is fp32: no such option
    with pytest.raises(ValueError, match="feature_passes must be an integer >= 1"):
        d2lft.FastPipeline(freeze=True, feature_passes=0)
    with pytest.raises(ValueError, match="needs freeze=True"):
        d2lft.FastPipeline(feature_passes=2)
    with pytest.raises(TypeError, match="freeze"):
        d2lft.FixedBatches(freeze=True)  # fixed batches train every layer
    with pytest.raises(ValueError, match="workers must be"):
        d2lft.BookLoop(workers=-1)
    with pytest.raises(ValueError, match="resume=True continues from checkpoint_dir"):
        d2lft.RunSpec(resume=True)
    with pytest.raises(ValueError, match="given twice"):
        d2lft.train_fine_tuning(net, 0.01, data_dir=toy_data, seed=1, run=d2lft.RunSpec(seed=2))
    if backend == "mxnet":
        with pytest.raises(ValueError, match="fp32"):
            d2lft.train_fine_tuning(net, 0.01, **kw, pipeline=d2lft.FastPipeline(precision="bf16"))
        with pytest.raises(ValueError, match="torch.compile"):
            d2lft.train_fine_tuning(net, 0.01, **kw, pipeline=d2lft.FastPipeline(compile=True))


@pytest.mark.parametrize("units", [True, False])
def test_precision_auto_follows_hardware(monkeypatch, tmp_path, units):
    """The hardware probe patched both ways (torch's CPU queries and /proc/cpuinfo):
    'auto' picks bf16 exactly where the CPU has bf16 units; explicit choices stand."""
    torch = pytest.importorskip("torch")
    from d2lft.backends.torch import runtime as fast

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: units, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx512f" + (" amx_bf16" if units else "") + "\n")
    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k),
    )
    assert fast.cpu_has_bf16() is units
    assert fast.resolve_precision("auto", "cpu") == ("bf16" if units else "fp32")
    assert fast.resolve_precision("fp32", "cpu") == "fp32"
    assert fast.resolve_precision("bf16", "cpu") == "bf16"  # forced: emulated where no units
    with pytest.raises(ValueError):
        fast.resolve_precision("half", "cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: units)
    assert fast.resolve_precision("auto", "cuda") == ("bf16" if units else "fp32")


def bf16_runs_on_this_cpu() -> bool:
    """Whether torch executes bf16 autocast convolutions (forward and backward) on this
    CPU at all, with or without bf16 units (then it emulates them)."""
    torch = pytest.importorskip("torch")
    try:
        conv = torch.nn.Conv2d(3, 4, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(torch.randn(1, 3, 8, 8))
        y.float().sum().backward()
        return y.dtype == torch.bfloat16
    except Exception:  # pragma: no cover - a build without CPU bf16
        return False


def precisions(backend):
    if backend == "mxnet":
        return ["fp32"]
    return ["fp32", "bf16"] if bf16_runs_on_this_cpu() else ["fp32"]


@pytest.mark.parametrize(
    "backend,precision", [("torch", "fp32"), ("torch", "bf16"), ("mxnet", "fp32")]
)
def test_fast_resume_continues_exactly(backend, toy_data, tmp_path, precision):
    """Per-epoch random streams: a run resumed from its epoch-1 checkpoint ends with
    exactly the parameters of the uninterrupted run (bf16 too, wherever torch runs it
    on this CPU, whether or not `precision='auto'` would pick it)."""
    import d2lft
    from d2lft import parity

    if precision not in precisions(backend):
        pytest.skip(f"torch cannot run {precision} on this CPU")
    d2lft.use(backend)
    lr = 0.01 if backend == "mxnet" else 1e-4
    kw = dict(
        data_dir=toy_data, image_size=16, seed=5, pipeline=d2lft.FastPipeline(precision=precision)
    )
    full_net = d2lft.build_finetune_net(pretrained=False, seed=0)
    full = d2lft.train_fine_tuning(full_net, lr, 16, 2, **kw)
    d2lft.train_fine_tuning(
        d2lft.build_finetune_net(pretrained=False, seed=0),
        lr,
        16,
        1,
        **kw,
        run=d2lft.RunSpec(checkpoint_dir=tmp_path / "ck"),
    )
    net = d2lft.build_finetune_net(pretrained=False, seed=1)  # overwritten by the resume
    resumed = d2lft.train_fine_tuning(
        net, lr, 16, 2, **kw, run=d2lft.RunSpec(resume=tmp_path / "ck")
    )
    assert resumed.epochs == 2 and full.config["precision_used"] == precision
    assert resumed.train_loss == full.train_loss and resumed.test_acc == full.test_acc
    a, b = parity.state_arrays(net), parity.state_arrays(full_net)
    assert all(np.isfinite(v).all() for v in a.values())
    bad = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not bad, bad[:5]


def test_bf16_run_is_finite_and_repeatable(toy_data):
    """At 16 px ResNet-18's stride-2 convolutions of layer3/layer4 see 1-2 pixels, where
    oneDNN's bf16 weight gradient leaves entries unwritten (garbage: 1e30, inf, NaN);
    d2lft runs those layers in fp32 (`bf16_guard`). Two bf16 runs give the same,
    finite parameters, and the taps that only ever meet padding get no gradient: they
    change by weight decay alone, exactly as in fp32."""
    torch = pytest.importorskip("torch")
    import d2lft
    from d2lft.backends.torch.runtime import bf16_unsafe_convs

    if not bf16_runs_on_this_cpu():
        pytest.skip("torch cannot run bf16 on this CPU")
    with d2lft.using("torch"):
        nets, hs = [], []
        for _ in range(2):
            net = d2lft.build_finetune_net(pretrained=False, seed=0)
            w0 = net.layer4[0].conv1.weight.detach().clone()
            hs.append(
                d2lft.train_fine_tuning(
                    net,
                    0.0001,
                    16,
                    2,
                    data_dir=toy_data,
                    image_size=16,
                    seed=5,
                    pipeline=d2lft.FastPipeline(precision="bf16"),
                    run=d2lft.RunSpec(verbose=False),
                )
            )
            nets.append(net)
    assert hs[0].config["precision_used"] == "bf16"
    assert "layer4.0.conv1" in hs[0].config["bf16_fp32_layers"]
    assert [n for n, _ in bf16_unsafe_convs(nets[0], 224)] == []  # the chapter's size
    a, b = (dict(n.state_dict()) for n in nets)
    for k in a:
        assert torch.isfinite(a[k].float()).all(), k
        assert torch.equal(a[k], b[k]), k
    # layer4.0.conv1 (3x3, stride 2, 1x1 input): only the centre tap sees the pixel
    w = nets[0].layer4[0].conv1.weight.detach()
    outer = torch.ones(3, 3, dtype=torch.bool)
    outer[1, 1] = False
    steps = hs[0].epochs * 3  # 48 images, batches of 16
    decay = (1 - 1e-4 * 0.001) ** steps
    torch.testing.assert_close(w[:, :, outer], w0[:, :, outer] * decay, rtol=1e-5, atol=0)


def test_bf16_guard_makes_padding_only_taps_exact():
    """The guard on one layer: a 3x3 stride-2 convolution over a 1x1 input, with the
    allocator's free memory dirtied first, has an exact zero gradient on its 8 outer
    taps under bf16 autocast (without the guard, oneDNN leaves garbage there on CPUs
    where `python scripts/bf16_conv_check.py` reports failures)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from d2lft.backends.torch.runtime import bf16_guard

    if not bf16_runs_on_this_cpu():
        pytest.skip("torch cannot run bf16 on this CPU")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 128, 3, 2, 1, bias=False))
    x = torch.randn(8, 64, 1, 1)
    with bf16_guard(net, 1, "cpu", "bf16") as names:
        assert names == ["0"]
        for _ in range(3):
            torch.full((1 << 20,), float("nan")).sum()  # dirty free memory
            net.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = net(x)
            y.float().sum().backward()
            g = net[0].weight.grad
            outer = torch.ones(3, 3, dtype=torch.bool)
            outer[1, 1] = False
            assert torch.equal(g[:, :, outer], torch.zeros_like(g[:, :, outer]))
    assert "forward" not in vars(net[0])  # the layer is as it was
