"""Shared fixtures: tiny generated image folders, backend parametrisation, ../shared."""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("D2LFT_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def make_image_folder(
    root, n_train=24, n_test=8, size=(40, 48), classes=("hotdog", "not-hotdog"), seed=0, fmt="jpg"
):
    """An easy, separable two-colour dataset in the hotdog layout (root/train/<c>/...)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colors = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]
    root = pathlib.Path(root)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, color in zip(classes, colors, strict=False):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = size
                arr = np.clip(np.array(color) + rng.normal(0, 25, (h, w, 3)), 0, 255)
                Image.fromarray(arr.astype("uint8")).save(d / f"{i}.{fmt}")
    return root


def ks_stat(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return float(
        np.max(
            np.abs(
                np.searchsorted(a, grid, "right") / len(a)
                - np.searchsorted(b, grid, "right") / len(b)
            )
        )
    )


def ks_limit(n, m, alpha=1e-3):
    """Critical KS value: a correct sampler exceeds it with probability ~alpha."""
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c * math.sqrt((n + m) / (n * m))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A tiny separable dataset: 2 classes x (24 train + 8 test) images of 40x48 px."""
    return make_image_folder(tmp_path_factory.mktemp("toy") / "hotdog")


@pytest.fixture(params=["torch", "mxnet"])
def backend(request):
    """Run the test under each backend (skipped when its framework is missing)."""
    import d2lft
    from d2lft.backends import _registry as _backend

    name = request.param
    try:
        _backend.load(name)
    except ImportError as err:  # pragma: no cover - environment without the framework
        pytest.skip(str(err))
    with d2lft.using(name):
        yield name


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (real stand-in data only exists beside the repo)")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """One torch compute thread for the test: tiny batches run many times faster on a
    busy 2-core machine (d2lft's own thread handling is tested in test_backend.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """A test that reads ../shared/data must say so with @pytest.mark.shared (so that
    `-m "not shared"` deselects every one of them)."""
    unmarked = [
        i.nodeid
        for i in items
        if "shared_data" in getattr(i, "fixturenames", ())
        and i.get_closest_marker("shared") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"tests using shared_data need @pytest.mark.shared: {unmarked}")


def make_pipeline(name, **options):
    """A pipeline option object from its name ('book', 'fast', 'fixed') and options,
    for tests parametrised over pipelines."""
    from d2lft.engine.options import PIPELINES

    return PIPELINES[name](**options)
