"""The default pipeline ('auto') and the fast pipeline's memory bound: its choice with
the hardware probes patched (no timing), decoded images kept on disk and read per batch
when they exceed the budget, with the very same training as in memory."""

from __future__ import annotations

import numpy as np
import pytest

import d2lft
from d2lft.data import decode_cache as dc

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_auto_is_the_default_and_runs_fast_when_the_images_fit(backend, toy_data, capsys):
    net = d2lft.build_finetune_net(pretrained=False)
    plan = d2lft.plan_run(net, data_dir=toy_data, image_size=32)
    assert plan.pipeline.name == "fast" and not plan.store_on_disk
    assert plan.pipeline_choice.startswith("fast: ") and "within" in plan.pipeline_choice
    assert plan.config()["pipeline"] == "fast"
    # a verbose run says what it chose, first
    h = d2lft.train_fine_tuning(net, 1e-4, 16, 1, data_dir=toy_data, image_size=32)
    assert h.config["pipeline"] == "fast" and h.config["pipeline_choice"] == plan.pipeline_choice
    assert capsys.readouterr().out.startswith(f"pipeline: {plan.pipeline_choice}\n")
    # freeze travels through the choice
    plan = d2lft.plan_run(
        net, data_dir=toy_data, image_size=32, pipeline=d2lft.AutoPipeline(freeze=True)
    )
    assert plan.pipeline == d2lft.FastPipeline(freeze=True)
    # the book's loop stays one word away, untouched by the choice
    plan = d2lft.plan_run(net, data_dir=toy_data, image_size=32, pipeline="book")
    assert plan.pipeline == d2lft.BookLoop() and plan.pipeline_choice == ""


def test_auto_keeps_decoded_images_on_disk_or_falls_back_to_the_book(toy_data, monkeypatch):
    import shutil
    from collections import namedtuple

    from d2lft import api

    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False)
    # 48 training images of 40x48 px + 16 test images of 32x32: 0.32 MB decoded
    monkeypatch.setattr(dc, "memory_budget_bytes", lambda mb=None: 100_000)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 0, 10**12))
    with d2lft.using("torch"):
        plan = api.plan_run(net, data_dir=toy_data, image_size=32)
    assert plan.pipeline.name == "fast" and plan.store_on_disk
    assert "on disk" in plan.pipeline_choice and "over the 0.00 GB" in plan.pipeline_choice
    # an explicit fast pipeline never goes over its budget either: to disk it goes
    with d2lft.using("torch"):
        plan = api.plan_run(net, data_dir=toy_data, image_size=32, pipeline="fast")
    assert plan.pipeline.name == "fast" and plan.store_on_disk
    assert plan.pipeline_choice.startswith("fast (asked for) with its decoded images on disk")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 0, 1000))
    with d2lft.using("torch"):
        plan = api.plan_run(net, data_dir=toy_data, image_size=32)
    assert plan.pipeline == d2lft.BookLoop() and not plan.store_on_disk
    assert plan.pipeline_choice.startswith("book: ")
    # ... and where neither memory nor disk has room, it is refused before any training
    with d2lft.using("torch"), pytest.raises(ValueError) as err:
        api.plan_run(net, data_dir=toy_data, image_size=32, pipeline="fast")
    for words in ("more than its memory budget", "memory_budget_mb", "pipeline='book'"):
        assert words in str(err.value)


def test_the_budget_is_a_quarter_of_available_memory(monkeypatch, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable:    4000000 kB\n")
    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda f, *a, **k: real_open(meminfo if f == "/proc/meminfo" else f, *a, **k),
    )
    assert dc.memory_budget_bytes() == 4000000 * 1024 // 4
    assert dc.memory_budget_bytes(100) == 100 * 2**20
    with pytest.raises(ValueError, match="memory_budget_mb must be an integer >= 1"):
        d2lft.FastPipeline(memory_budget_mb=0)


def test_a_disk_store_holds_what_a_memory_store_holds(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(20, 30), (64, 40), (33, 33)]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)

    def fn(p):
        return dc.decode_rgb(p, 32)

    mem = dc.DecodeCache(memory_mb=0).load(paths, "t", fn)
    cache = dc.DecodeCache(tmp_path / "c")
    disk = cache.load_on_disk(paths, "t", fn)
    assert disk.on_disk and disk.nbytes == 0 and cache.decoded == 3
    for k in range(3):
        np.testing.assert_array_equal(disk.image(k), mem.image(k))
    assert (disk.orig == mem.orig).all() and (disk.shapes == mem.shapes).all()
    # a new process reuses it; a changed file decodes it again
    again = dc.DecodeCache(tmp_path / "c")
    assert again.load_on_disk(paths, "t", fn).disk_bytes == disk.disk_bytes
    assert again.decoded == 0
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(paths[1])
    third = dc.DecodeCache(tmp_path / "c")
    assert third.load_on_disk(paths, "t", fn).image(1).shape == (10, 10, 3)
    assert third.decoded == 3
    # rows of same-shape images in one read
    same = [tmp_path / f"s{i}.png" for i in range(4)]
    for p in same:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
    rows = dc.DecodeCache(tmp_path / "c").load_on_disk(same, "s", fn).rows(1, 3)
    ref = dc.DecodeCache(memory_mb=0).load(same, "s", fn).rows(1, 3)
    np.testing.assert_array_equal(rows, ref)
    # a truncated store is found and decoded again, never read as garbage
    raw = next((tmp_path / "c").glob("s-*.u8"))
    raw.write_bytes(raw.read_bytes()[:-10])
    fresh = dc.DecodeCache(tmp_path / "c")
    np.testing.assert_array_equal(fresh.load_on_disk(same, "s", fn).rows(1, 3), ref)
    assert fresh.decoded == 4


def test_training_from_disk_is_training_from_memory(backend, toy_data, tmp_path, monkeypatch):
    """The same seeded fast run with its decoded images on disk (a 1 MiB budget) and
    in memory: the same batches, so the same parameters, bit for bit."""
    from d2lft import parity

    monkeypatch.setenv("D2LFT_HOME", str(tmp_path))
    dc._MEMORY.clear()
    results = []
    for budget in (None, 1):
        net = d2lft.build_finetune_net(pretrained=False, seed=0)
        pipe = d2lft.FastPipeline(precision="fp32", memory_budget_mb=budget, decode_cache=None)
        if budget == 1:
            monkeypatch.setattr(dc, "estimate_bytes", lambda paths, m=None: 2**21)
        h = d2lft.train_fine_tuning(
            net,
            1e-4 if backend == "torch" else 0.01,
            16,
            2,
            data_dir=toy_data,
            image_size=32,
            seed=1,
            pipeline=pipe,
            run=d2lft.RunSpec(verbose=False),
        )
        results.append((h, parity.state_arrays(net)))
    (h_mem, a), (h_disk, b) = results
    assert not h_mem.config["store_on_disk"] and h_disk.config["store_on_disk"]
    assert list((tmp_path / "decoded").glob("*.u8"))  # it really read from there
    assert h_mem.train_loss == h_disk.train_loss and h_mem.test_acc == h_disk.test_acc
    assert all(np.array_equal(a[k], b[k]) for k in a)
