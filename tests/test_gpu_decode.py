"""The torch fast path's batch decoder (nvJPEG on CUDA), run here through the same code
on the CPU: same images as the PIL decoder up to rounding, every other file left to the
PIL path, bad files named, and the decode cache keeps its stores apart."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from d2lft.backends.torch import gpu_decode  # noqa: E402
from d2lft.data import BadImageError, decode_cache  # noqa: E402


def photo(rng, h, w):
    """A smooth image with some texture (JPEG-friendly, like a photo)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            128 + 100 * np.sin(x / 7.0),
            128 + 100 * np.cos(y / 9.0),
            128 + 60 * np.sin((x + y) / 11.0),
        ],
        axis=-1,
    )
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for name, (h, w) in {"small": (40, 60), "large": (150, 100), "wide": (90, 240)}.items():
        Image.fromarray(photo(rng, h, w)).save(tmp_path / f"{name}.jpg", quality=95)
        out[name] = tmp_path / f"{name}.jpg"
    Image.fromarray(photo(rng, 70, 50)[:, :, 0]).save(tmp_path / "gray.jpg", quality=95)
    out["gray"] = tmp_path / "gray.jpg"
    Image.fromarray(photo(rng, 64, 80)).save(tmp_path / "png.png")
    out["png"] = tmp_path / "png.png"
    Image.fromarray(photo(rng, 60, 60)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    out["cmyk"] = tmp_path / "cmyk.jpg"
    return out


def test_decodes_like_pil(files):
    names = list(files)
    got = gpu_decode.decode_batch([files[n] for n in names], max_short=64, device="cpu")
    for name, (arr, orig) in zip(names, got, strict=False):
        want, want_orig = decode_cache.decode_rgb(files[name], 64)
        assert orig == want_orig, name
        assert arr.dtype == np.uint8 and arr.shape == want.shape, name
        diff = np.abs(arr.astype(int) - want.astype(int))
        # same decoder family; the resize is torch's antialiased bilinear vs PIL's
        assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8, (name, diff.mean())


def test_short_side_bound_and_unresized_images(files):
    (large, orig), (small, sorig) = gpu_decode.decode_batch(
        [files["large"], files["small"]], max_short=64, device="cpu"
    )
    assert orig == (150, 100) and large.shape == (96, 64, 3)
    assert sorig == (40, 60) and small.shape == (40, 60, 3)
    want, _ = decode_cache.decode_rgb(files["small"])
    assert np.array_equal(small, want)  # no resize: the same libjpeg-turbo decode


def test_grayscale_jpeg_becomes_rgb(files):
    ((arr, orig),) = gpu_decode.decode_batch([files["gray"]], device="cpu")
    assert arr.shape == (70, 50, 3) and orig == (70, 50)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_only_plain_jpegs_go_to_the_device(files, monkeypatch):
    seen = []
    real = gpu_decode._read

    def spy(path):
        data, hw = real(path)
        if data is not None:
            seen.append(str(path))
        return data, hw

    monkeypatch.setattr(gpu_decode, "_read", spy)
    gpu_decode.decode_batch(list(files.values()), device="cpu")
    assert sorted(seen) == sorted(str(files[n]) for n in ("small", "large", "wide", "gray"))


def test_truncated_and_fake_files_are_named(files, tmp_path):
    data = files["large"].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a picture")
    for bad in (cut, fake):
        with pytest.raises(BadImageError, match=bad.name):
            gpu_decode.decode_batch([files["small"], bad], device="cpu")


def test_a_batch_that_fails_is_decoded_one_by_one(files, monkeypatch):
    from torchvision import io

    real = io.decode_jpeg
    calls = []

    def flaky(data, **kw):
        calls.append(type(data).__name__)
        if isinstance(data, list):
            raise RuntimeError("simulated nvJPEG batch failure")
        return real(data, **kw)

    monkeypatch.setattr(io, "decode_jpeg", flaky)
    got = gpu_decode.decode_batch([files["small"], files["wide"]], device="cpu")
    assert calls == ["list", "Tensor", "Tensor"]
    assert [g[1] for g in got] == [(40, 60), (90, 240)]


def test_only_cuda_devices_decode(monkeypatch):
    assert gpu_decode.decoder("cpu") is None
    assert gpu_decode.enabled("cuda:0")
    monkeypatch.setenv("D2LFT_GPU_DECODE", "0")
    assert not gpu_decode.enabled("cuda:0")


def test_train_store_with_a_decoder_is_cached_apart(files):
    calls = []

    def dec(paths, max_short):
        calls.append(len(paths))
        return gpu_decode.decode_batch(paths, max_short, device="cpu")

    dec.kind = "test-decoder"
    cache = decode_cache.DecodeCache(memory_mb=64)
    paths = [files["small"], files["large"], files["png"]]
    a = cache.load(paths, "train-rgb-short64-test-decoder", None, batch_fn=lambda ps: dec(ps, 64))
    b = cache.load(paths, "train-rgb-short64-test-decoder", None, batch_fn=lambda ps: dec(ps, 64))
    assert a is b and calls == [3]  # decoded once, then from memory
    import d2lft.data.decode_cache as dc

    saved = dc._MEMORY
    dc._MEMORY = decode_cache.DecodeCache(memory_mb=64)
    try:
        s1 = dc.train_store(paths, 32, decoder=dec)
        s2 = dc.train_store(paths, 32)
    finally:
        dc._MEMORY = saved
    assert calls == [3, 3] and s1 is not s2
    assert [tuple(x) for x in s1.orig] == [tuple(x) for x in s2.orig]
    assert [tuple(x) for x in s1.shapes] == [tuple(x) for x in s2.shapes]
