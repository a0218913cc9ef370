"""d2lft._heap: freed memory stays in the heap during a run (glibc), defaults after.

The page-fault measurements run in a fresh interpreter each: what glibc does with a
large block depends on the heap's history (a free chunk left in the heap by earlier
work in the same process is reused before anything is mapped), so only a fresh
process starts from glibc's known state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from d2lft._sys import heap as _heap

BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB): mapped by default
PAGES = BLOCK // 4096

#: prints {phase: minor page faults per malloc + touch-every-page + free of a 64 MiB
#: block (after one untimed cycle: what a training step does with each activation)}
PROBE = r"""
import ctypes, json, resource, sys
from d2lft._sys import heap as _heap
lib = _heap._glibc()
lib.malloc.restype = ctypes.c_void_p
lib.malloc.argtypes = [ctypes.c_size_t]
lib.free.argtypes = [ctypes.c_void_p]
BLOCK = {block}

def faults(cycles=4):
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

out = {"why_not": _heap.why_not()}
if sys.argv[1] == "default":
    out["default"] = faults()
else:
    with _heap.retain() as on:
        out["on"], out["active"] = on, _heap.active()
        if sys.argv[1] == "nested":
            with _heap.retain():
                pass
            out["active_after_inner"] = _heap.active()
        out["inside"] = faults()
    out["active_after"] = _heap.active()
    out["after"] = faults()
print(json.dumps(out))
""".replace("{block}", str(BLOCK))


def probe(mode, **env):
    """Run PROBE in a fresh interpreter with glibc's malloc settings untouched plus `env`."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("D2LFT_RETAIN_HEAP", "LD_PRELOAD", "GLIBC_TUNABLES", *_heap._USER_MALLOC_ENV)
    }
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), base.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def glibc(monkeypatch):
    for var in ("D2LFT_RETAIN_HEAP", "LD_PRELOAD", "GLIBC_TUNABLES", *_heap._USER_MALLOC_ENV):
        monkeypatch.delenv(var, raising=False)
    if _heap._glibc() is None:
        pytest.skip("not glibc: d2lft leaves malloc alone")


def test_default_malloc_faults_every_cycle(glibc):
    # the problem: each cycle maps fresh pages, which the kernel faults in and zeroes
    out = probe("default")
    assert out["why_not"] is None
    assert out["default"] > PAGES / 4, out


def test_retain_reuses_the_block_then_restores(glibc):
    out = probe("retain")
    assert out["on"] is True and out["active"] is True and out["active_after"] is False
    assert out["inside"] < PAGES / 50, out  # the freed block is reused: (almost) no faults
    assert out["after"] > PAGES / 4, out  # glibc's defaults again: mapped per cycle


def test_nested_retain_restores_only_at_the_outermost(glibc):
    out = probe("nested")
    assert out["active_after_inner"] is True
    assert out["inside"] < PAGES / 50, out
    assert out["active_after"] is False


@pytest.mark.parametrize(
    "env, reason",
    [
        ({"D2LFT_RETAIN_HEAP": "0"}, "D2LFT_RETAIN_HEAP=0"),
        ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1000000"}, "GLIBC_TUNABLES"),
        # a file that does not exist: the loader only warns, d2lft reads the name
        ({"LD_PRELOAD": "/nonexistent/libjemalloc.so.2"}, "preloaded allocator"),
    ],
)
def test_users_choice_is_left_alone(glibc, env, reason):
    out = probe("retain", **env)
    assert reason in out["why_not"]
    assert out["on"] is False and out["active"] is False
    assert out["inside"] > PAGES / 4, out  # malloc as glibc (or the user) set it


def test_train_fine_tuning_retains_during_the_run(glibc, toy_data, monkeypatch):
    import d2lft

    pytest.importorskip("torch")
    from d2lft.backends import torch as torch_backend

    seen = []
    original = torch_backend.make_runner

    def spy(*args, **kwargs):  # the data is prepared and every step runs inside
        seen.append(_heap.active())
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_backend, "make_runner", spy)
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False)
        h = d2lft.train_fine_tuning(
            net,
            0.0001,
            48,
            1,
            data_dir=toy_data,
            image_size=16,
            seed=0,
            run=d2lft.RunSpec(verbose=False),
        )
    assert seen == [True] and h.config["retain_heap"] is True
    assert not _heap.active()
