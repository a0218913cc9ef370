"""The benchmark scripts run end to end on tiny inputs and write their records.

No figure is asserted (speed is what the scripts measure, on purpose not here); these
tests keep the scripts that docs/speed.md cites working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


def _one(out, pattern):
    files = sorted(out.glob(pattern))
    assert len(files) == 1, files
    assert files[0].with_suffix(".md").is_file()
    return json.loads(files[0].read_text())


@pytest.mark.slow
def test_bench_train_tiny(tmp_path):
    pytest.importorskip("torch")
    import bench_train

    bench_train.main(
        [
            "--backend",
            "torch",
            "--train",
            "16",
            "--test",
            "8",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--variants",
            "book-shipped,book,fast,ceiling",
            "--work-dir",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    r = _one(tmp_path / "out", "*-torch-cpu.json")
    runs = {x["variant"]: x for x in r["runs"]["torch"]}
    assert set(runs) == {"book-shipped", "book", "fast", "ceiling"}
    assert runs["book"]["speedup_vs_book"] == 1.0
    assert runs["book-shipped"]["speedup_vs_book_shipped"] == 1.0
    # the process settings reach the runs: the book-shipped run kept glibc's defaults
    assert runs["book-shipped"]["config"]["retain_heap"] is False
    from d2lft._sys import heap as _heap

    assert runs["book"]["config"]["retain_heap"] is (_heap.why_not() is None)
    assert runs["fast"]["config"]["pipeline"] == "fast"
    assert r["versions"]["torch"] and r["machine"]["cpu_count"]


@pytest.mark.slow
def test_heap_faults_tiny(tmp_path):
    pytest.importorskip("torch")
    import heap_faults

    heap_faults.main(
        [
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--steps",
            "1",
            "--reps",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    r = _one(tmp_path, "*-heap-torch-cpu-32px.json")
    from d2lft._sys import heap as _heap

    assert [x["mode"] for x in r["runs"]] == ["default", "retain"]
    assert [x["retained"] for x in r["runs"]] == [False, _heap.why_not() is None]
    assert set(r["retain_over_default"]) == {"train_images_per_sec", "eval_images_per_sec"}


@pytest.mark.slow
def test_cpu_bound_tiny(tmp_path):
    pytest.importorskip("torch")
    import cpu_bound

    r = cpu_bound.main(
        [
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--book-images-per-sec",
            "10",
            "--out",
            str(tmp_path),
        ]
    )
    _one(tmp_path, "*-cpu-bound-32px.json")
    # ResNet-18: 1.82 G multiply-adds forward at 224 px (torchvision's figure), 2 FLOPs
    # each; about (32/224)^2 of that at 32 px; a training step about 3x the forward
    assert r["eval_gflop_per_image"] == pytest.approx(2 * 1.82 * (32 / 224) ** 2, rel=0.25)
    assert 2.5 < r["train_gflop_per_image"] / r["eval_gflop_per_image"] < 3.1
    assert 0 < r["step_profile"]["conv_share"] <= 1
    assert r["bound_over_book"] == pytest.approx(r["bound_images_per_sec"] / 10, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "mxnet"])
def test_bench_dist_tiny(backend, tmp_path, toy_data):
    """One process, the job; for MXNet also one process over the job's devices."""
    import bench_dist

    argv = ["--backend", backend, "--data-dir", str(toy_data), "--image-size", "32"]
    bench_dist.main([*argv, "--batch-size", "16", "--epochs", "1", "--out", str(tmp_path)])
    rec = _one(tmp_path, f"*-dist-{backend}-cpu*.json")
    names = [t["variant"] for t in rec["table"]]
    assert [n.split()[0] for n in names] == ["1", "2"] + (["1"] if backend == "mxnet" else [])
    assert rec["table"][1]["x_one_process"] > 0
    assert all(r["world_size"] == 1 for r in rec["runs"][names[0]])
    assert all(r["world_size"] == 2 for r in rec["runs"][names[1]])
    if backend == "mxnet":
        assert names[2] == "1 process x 2 devices", names
        (devices,) = rec["runs"][names[2]]
        assert devices["world_size"] == 1 and devices["devices"] == ["cpu(0)", "cpu(1)"]
        assert 0 <= devices["test_acc"][-1] <= 1


@pytest.mark.slow
def test_bench_memory_tiny(tmp_path):
    import bench_memory

    bench_memory.main(
        [
            "--sizes",
            "200",
            "--backends",
            "torch",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--memory-budget-mb",
            "1",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path),
        ]
    )
    rec = _one(tmp_path, "*-memory-scaling*.json")
    rows = {r["pipeline"]: r for r in rec["rows"]}
    assert set(rows) == {"book", "fast", "fast-unbounded"}
    assert rows["fast"]["store_on_disk"] is True
    assert rows["fast-unbounded"]["store_on_disk"] is False
    assert all(r["images_per_sec"] > 0 and r["peak_host_mb"] > 0 for r in rows.values())
    assert list(tmp_path.glob("*-memory-scaling*.png"))


@pytest.mark.slow
def test_mxnet_bf16_tiny(tmp_path):
    pytest.importorskip("mxnet")
    import mxnet_bf16

    why = mxnet_bf16.bf16_probe()  # one real bf16 convolution, in a fresh interpreter
    if why is not None:  # e.g. an AVX2-only CPU: oneDNN has no bf16 kernels without AVX-512
        pytest.skip(f"MXNet cannot run bf16 on this CPU: {why}")
    args = "--image-size 32 --batch-size 4 --steps 2 --warmup 1 --rounds 1 --out"
    mxnet_bf16.main([*args.split(), str(tmp_path)])
    rec = _one(tmp_path, "*-mxnet-bf16*.json")
    assert [r["precision"] for r in rec["rows"]] == ["fp32", "bf16"]
    assert rec["rows"][1]["output_dtype"] != rec["rows"][0]["output_dtype"]  # AMP took hold
    assert all(r["finite_grads"] and r["images_per_sec"] > 0 for r in rec["rows"])


def test_mxnet_bf16_without_bf16_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Where the probe fails, the script prints one line, exits 0 and writes nothing."""
    import mxnet_bf16

    msg = "MXNetError: could not create a primitive descriptor iterator"
    monkeypatch.setattr(mxnet_bf16, "bf16_probe", lambda: msg)
    monkeypatch.setattr(mxnet_bf16.subprocess, "run", None)  # nothing is measured
    assert mxnet_bf16.main(["--rounds", "1", "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 1, (out, err)
    assert "cannot run bf16" in out and msg in out
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_mxnet_bf16_probe_on_a_cpu_limited_to_avx2(tmp_path):
    """The real probe, with oneDNN limited to AVX2 (as on a CPU without AVX-512): the
    script's whole output is one line, its status 0."""
    pytest.importorskip("mxnet")
    env = dict(os.environ, DNNL_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")
    script = REPO / "benchmarks" / "mxnet_bf16.py"
    cmd = [sys.executable, str(script), "--rounds", "1", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "cannot run bf16" in lines[0], lines
    assert "primitive descriptor" in lines[0]
    assert not (tmp_path / "out").exists()
