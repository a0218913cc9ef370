"""d2lft._heap: freed memory stays in the heap during a run (glibc), defaults after."""
from __future__ import annotations

import ctypes
import resource

import pytest

from d2lft import _heap

BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB): mapped by default
PAGES = BLOCK // 4096


@pytest.fixture
def glibc(monkeypatch):
    for var in ("D2LFT_RETAIN_HEAP", "LD_PRELOAD", "GLIBC_TUNABLES", *_heap._USER_MALLOC_ENV):
        monkeypatch.delenv(var, raising=False)
    lib = _heap._glibc()
    if lib is None:
        pytest.skip("not glibc: d2lft leaves malloc alone")
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.free.argtypes = [ctypes.c_void_p]
    return lib


def faults_per_cycle(lib, cycles=4):
    """Minor page faults per malloc + touch-every-page + free of a 64 MiB block, after
    one untimed cycle (what a training step does with each big activation)."""
    def cycle():
        p = lib.malloc(BLOCK)
        assert p
        ctypes.memset(p, 1, BLOCK)
        lib.free(p)
    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        cycle()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / cycles


def test_default_malloc_faults_every_cycle(glibc):
    # the problem: each cycle maps fresh pages, which the kernel faults in and zeroes
    assert faults_per_cycle(glibc) > PAGES / 4


def test_retain_reuses_the_block_then_restores(glibc):
    with _heap.retain() as on:
        assert on and _heap.active()
        inside = faults_per_cycle(glibc)
    assert not _heap.active()
    after = faults_per_cycle(glibc)
    assert inside < PAGES / 50, inside  # the freed block is reused: (almost) no faults
    assert after > PAGES / 4, after     # glibc's defaults again: mapped per cycle


def test_nested_retain_restores_only_at_the_outermost(glibc):
    with _heap.retain():
        with _heap.retain():
            pass
        assert _heap.active()
        assert faults_per_cycle(glibc) < PAGES / 50
    assert not _heap.active()


@pytest.mark.parametrize("env, reason", [
    ({"D2LFT_RETAIN_HEAP": "0"}, "D2LFT_RETAIN_HEAP=0"),
    ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1000000"}, "GLIBC_TUNABLES"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "preloaded allocator"),
])
def test_users_choice_is_left_alone(glibc, monkeypatch, env, reason):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert reason in _heap.why_not()
    with _heap.retain() as on:
        assert not on and not _heap.active()
        assert faults_per_cycle(glibc) > PAGES / 4


def test_train_fine_tuning_retains_during_the_run(glibc, toy_data, monkeypatch):
    import d2lft
    pytest.importorskip("torch")
    from d2lft.backends import torch as torch_backend
    seen = []
    original = torch_backend.train_fine_tuning

    def spy(*args, **kwargs):
        seen.append(_heap.active())
        return original(*args, **kwargs)
    monkeypatch.setattr(torch_backend, "train_fine_tuning", spy)
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False)
        h = d2lft.train_fine_tuning(net, 1e-4, 48, 1, data_dir=toy_data, image_size=16,
                                    seed=0, verbose=False)
    assert seen == [True] and h.config["retain_heap"] is True
    assert not _heap.active()
