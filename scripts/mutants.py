"""Break d2lft on purpose and check that the tests notice (a small mutation audit).

    python scripts/mutants.py            # every mutant: apply, run its tests, restore
    python scripts/mutants.py --list     # what each mutant breaks and the tests that kill it
    python scripts/mutants.py ID [ID..]  # only these

Each mutant is one or more exact text replacements in d2lft's sources, the kind of
regression that once survived the suite. It is applied to a copy of the repository in
a temporary folder (the working tree is never touched), then the tests that should
kill it run there (`pytest -x`); a mutant is *killed* when they fail. Exit status 1
if any mutant survives or no longer applies. tests/test_mutants.py checks, without
running them, that every mutant still applies to the current sources.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

#: id -> (what it breaks, [(file, old, new)], pytest arguments that must fail)
MUTANTS = {
    "torch-fast-no-flip": (
        "torch fast pipeline: crops are never flipped",
        [
            (
                "d2lft/backends/torch/fastdata.py",
                "out[k] = a[:, ::-1] if flips[k] else a",
                "out[k] = a",
            )
        ],
        ["tests/test_batches.py::test_training_batches_are_the_books_augmentation[torch-fast]"],
    ),
    "torch-fast-whole-image": (
        "torch fast pipeline: the crop sampler returns the whole image",
        [
            (
                "d2lft/backends/torch/fastdata.py",
                "top, left, h, w = sample_resized_crops(self.rng, o[:, 0], o[:, 1])",
                "top, left, h, w = 0 * o[:, 0], 0 * o[:, 1], o[:, 0], o[:, 1]",
            )
        ],
        ["tests/test_batches.py::test_training_batches_are_the_books_augmentation[torch-fast]"],
    ),
    "torch-fast-epoch0-stream": (
        "torch fast pipeline: every epoch reuses epoch 0's random stream",
        [
            (
                "d2lft/backends/torch/fastdata.py",
                "self.rng = np.random.default_rng(epoch_seed(self.seed, epoch))",
                "self.rng = np.random.default_rng(epoch_seed(self.seed, 0))",
            )
        ],
        ["tests/test_batches.py::test_training_batches_are_the_books_augmentation[torch-fast]"],
    ),
    "mxnet-fast-labels-misaligned": (
        "MXNet fast pipeline: training labels shifted by one within each batch",
        [
            (
                "d2lft/backends/mxnet/fastdata.py",
                'mx.nd.array(self.train_labels[b], dtype="int32"),',
                'mx.nd.array(np.roll(self.train_labels[b], 1), dtype="int32"),',
            )
        ],
        ["tests/test_batches.py::test_training_batches_are_the_books_augmentation[mxnet-fast]"],
    ),
    "test-resize-is-image-size": (
        "both backends: the test transform resizes to image_size (no center crop margin)",
        [
            (
                "d2lft/data/images.py",
                "return int(round(image_size * 256 / 224))",
                "return int(image_size)",
            )
        ],
        ["tests/test_batches.py::test_evaluation_batches_equal_the_frameworks_own"],
    ),
    "train-augs-no-flip": (
        "both backends: train_augs without the horizontal flip",
        [
            ("d2lft/backends/torch/data.py", "        transforms.RandomHorizontalFlip(),\n", ""),
            ("d2lft/backends/mxnet/data.py", "        transforms.RandomFlipLeftRight(),\n", ""),
        ],
        ["tests/test_batches.py", "-k", "chapters_composition or flip_half"],
    ),
    "mxnet-step-by-batch-size": (
        "MXNet book loop: trainer.step(batch_size) instead of the batch's own size",
        [
            (
                "d2lft/backends/mxnet/runners.py",
                "self.trainer.step(y.shape[0] if n is None else n)",
                "self.trainer.step(self.plan.batch_size if n is None else n)",
            )
        ],
        [
            "tests/test_book_oracle.py::test_mxnet_tab_matches_the_book",
            "tests/test_parity.py::test_a_smaller_last_batch_agrees_under_its_own_size",
        ],
    ),
    "mxnet-fast-set-epoch-noop": (
        "MXNet fast pipeline: set_epoch does nothing (resume no longer exact)",
        [
            (
                "d2lft/backends/mxnet/fastdata.py",
                "            self.rng = np.random.default_rng(epoch_seed(self.seed, epoch))",
                "            pass",
            )
        ],
        ["tests/test_fast_path.py::test_fast_resume_continues_exactly[mxnet-fp32]"],
    ),
    "precision-auto-ignores-units": (
        "precision='auto' never picks bf16, even on CPUs with bf16 units",
        [("d2lft/backends/torch/runtime.py", 'return "bf16" if ok else "fp32"', 'return "fp32"')],
        ["tests/test_fast_path.py::test_precision_auto_follows_hardware"],
    ),
    "host-peak-not-sampled": (
        "peak host memory: the sampler thread records nothing",
        [
            (
                "d2lft/_sys/memory.py",
                "        while not self._stop.wait(self.interval):\n            self._sample()",
                "        while not self._stop.wait(self.interval):\n            pass",
            )
        ],
        ["tests/test_fast_path.py", "-k", "memory or host_peak"],
    ),
    "crop-scale-narrowed": (
        "crop sampler: upper scale bound 1.0 -> 0.954 (5% narrower)",
        [("d2lft/data/crops.py", "RRC_SCALE = (0.08, 1.0)", "RRC_SCALE = (0.08, 0.954)")],
        ["tests/test_fast_path.py", "-k", "crop_distribution_matches_torchvision"],
    ),
    "crop-ratio-narrowed": (
        "crop sampler: upper aspect ratio bound 4/3 -> 4/3 * 0.95",
        [
            (
                "d2lft/data/crops.py",
                "RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)",
                "RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0 * 0.95)",
            )
        ],
        ["tests/test_fast_path.py", "-k", "crop_distribution_matches_torchvision"],
    ),
    "bf16-guard-off": (
        "bf16 on the CPU: convolutions with padding-only taps run in bf16 (oneDNN bug)",
        [
            (
                "d2lft/backends/torch/runtime.py",
                '    if precision != "bf16" or device.type != "cpu":',
                "    if True:",
            )
        ],
        ["tests/test_fast_path.py", "-k", "bf16"],
    ),
    "builder-seed-ignored": (
        "build_finetune_net(seed=...) does not seed the initialisation",
        [("d2lft/api.py", "        backend.seed_framework(seed)", "        pass")],
        ["tests/test_train.py", "-k", "seed_repeats"],
    ),
    # issue 16: the default pipeline's choice and the fast pipeline's memory bound
    "memory-budget-ignored": (
        "the fast pipeline keeps its decoded images in memory whatever the budget",
        [
            (
                "d2lft/data/decode_cache.py",
                "        return self.total > self.budget",
                "        return False",
            )
        ],
        ["tests/test_memory_bound.py", "-k", "auto_keeps"],
    ),
    "disk-store-shifted": (
        "decoded images kept on disk are read one pixel off",
        [
            (
                "d2lft/data/decode_cache.py",
                "        return self._read(int(self.offsets[k]), h * w * 3).reshape(h, w, 3)",
                "        return self._read(int(self.offsets[k]) + 3, h * w * 3).reshape(h, w, 3)",
            )
        ],
        ["tests/test_memory_bound.py", "-k", "disk_store_holds or training_from_disk"],
    ),
    "torch-ddp-unscaled-loss": (
        "torch DDP: the summed loss not multiplied by the world size (DDP averages)",
        [
            (
                "d2lft/backends/torch/runners.py",
                "(l.sum() * self.world if self.world > 1 else l.sum()).backward()",
                "l.sum().backward()",
            )
        ],
        ["tests/test_distributed.py", "-k", "equal and torch"],
    ),
    "mxnet-dist-local-step": (
        "MXNet dist_sync: every worker steps by its shard's size, not the global batch's",
        [
            (
                "d2lft/backends/mxnet/runners.py",
                "self.trainer.step(y.shape[0] if n is None else n)",
                "self.trainer.step(y.shape[0])",
            )
        ],
        ["tests/test_distributed.py", "-k", "equal and mxnet"],
    ),
    "mxnet-dist-own-running-stats": (
        "MXNet dist_sync: each worker evaluates with its own BatchNorm running statistics",
        [
            (
                "d2lft/backends/mxnet/runners.py",
                "        self.plan.job.broadcast_arrays(aux)",
                "        pass",
            )
        ],
        ["tests/test_distributed.py", "-k", "saves and mxnet"],
    ),
    "torch-ddp-own-buffers": (
        "torch DDP: rank 0's buffers (BatchNorm running statistics) not broadcast",
        [
            (
                "d2lft/backends/torch/runners.py",
                "DistributedDataParallel(module, device_ids=ids)",
                "DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)",
            )
        ],
        ["tests/test_distributed.py", "-k", "saves and torch or equal and torch"],
    ),
    "fast-multi-gpu-one-process": (
        "d2lft train: the fast pipeline on several GPUs stays one process (no DDP)",
        [("d2lft/cli.py", "    return len(gpus)\n", "    return None\n")],
        ["tests/test_distributed.py", "-k", "one_worker_per_gpu"],
    ),
    "shards-all-the-same": (
        "distributed: every worker reads rank 0's shard of each batch",
        [("d2lft/data/shards.py", "    start = rank * step", "    start = 0 * step")],
        ["tests/test_distributed.py", "-k", "shards_split or equal"],
    ),
    "book-dist-same-crops": (
        "distributed book pipeline: every rank crops and flips its shard as the others do",
        [
            (
                "d2lft/backends/mxnet/data.py",
                "        seed_everything(rank_seed(np.random.randint(2**31 - 1), self.rank))",
                "        seed_everything(rank_seed(np.random.randint(2**31 - 1), 0))",
            )
        ],
        ["tests/test_distributed.py", "-k", "own_crops"],
    ),
    # issue 18: export and serve
    "onnx-mxnet-fixed-gamma-kept": (
        "MXNet's ONNX export keeps a fix_gamma BatchNorm's stored gamma (MXNet uses 1)",
        [
            (
                "d2lft/backends/mxnet/export.py",
                "        params[name] = mx.nd.ones_like(params[name])",
                "        params[name] = params[name]",
            )
        ],
        ["tests/test_export.py", "-k", "logits and mxnet and v2"],
    ),
    "onnx-transform-crop-floor": (
        "the numpy test transform floors the center-crop offset (torchvision rounds)",
        [
            (
                "d2lft/data/preprocess.py",
                "return int(round((size - crop) / 2.0))",
                "return (size - crop) // 2",
            )
        ],
        ["tests/test_export.py", "-k", "numpy_transform"],
    ),
    "onnx-transform-bicubic": (
        "the numpy test transform resizes with a bicubic filter (torchvision: bilinear)",
        [("d2lft/data/preprocess.py", "Image.BILINEAR)", "Image.BICUBIC)")],
        ["tests/test_export.py", "-k", "numpy_transform"],
    ),
    "serve-no-lock": (
        "d2lft serve: concurrent requests run their forward passes at the same time",
        [("d2lft/deploy/serve.py", "        with self.lock:", "        if True:")],
        ["tests/test_serve.py", "-k", "concurrent and torch"],
    ),
    "serve-no-drain": (
        "d2lft serve: a too-large upload is answered while the client is still sending",
        [
            (
                "d2lft/deploy/serve.py",
                "        while not self.ended and budget > 0:",
                "        while False:",
            )
        ],
        ["tests/test_serve.py", "-k", "bad_uploads"],
    ),
    "serve-no-stream-limit": (
        "d2lft serve: an upload without Content-Length is read whatever its size",
        [
            (
                "d2lft/deploy/serve.py",
                "            if self.seen > self.limit:",
                "            if False:",
            )
        ],
        ["tests/test_serve.py", "-k", "bad_uploads"],
    ),
    # issue 22: green on every CPU (bf16 probe) and the suite's tiers
    "torch-auto-bf16-everywhere": (
        "torch precision='auto': bf16 on a CPU without bf16 units (slow emulation)",
        [
            (
                "d2lft/backends/torch/runtime.py",
                'ok = cpu_has_bf16() if precision == "auto" else True',
                "ok = True",
            )
        ],
        ["tests/test_portability.py", "-k", "auto_precision and torch and no-bf16"],
    ),
    "mxnet-bf16-no-probe": (
        "benchmarks/mxnet_bf16.py: no bf16 probe, a traceback on an AVX2-only CPU",
        [("benchmarks/mxnet_bf16.py", "    why = bf16_probe()", "    why = None")],
        ["tests/test_benchmarks.py", "-k", "avx2"],
    ),
}


def apply(root: pathlib.Path, edits):
    for rel, old, new in edits:
        path = root / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise LookupError(
                f"{rel}: the text to replace occurs {text.count(old)} times: {old!r}"
            )
        path.write_text(text.replace(old, new))


def check_applies(ids=None):
    """[(id, error)] of the mutants whose text is no longer found exactly once."""
    bad = []
    for mid in ids or MUTANTS:
        for rel, old, _ in MUTANTS[mid][1]:
            n = (REPO / rel).read_text().count(old)
            if n != 1:
                bad.append((mid, f"{rel}: found {n} times: {old!r}"))
    return bad


def run(mid, keep=False) -> tuple[bool, float]:
    what, edits, tests = MUTANTS[mid]
    with tempfile.TemporaryDirectory(prefix=f"d2lft-mutant-{mid}-") as tmp:
        root = pathlib.Path(tmp)
        for name in ("d2lft", "tests", "scripts", "benchmarks", "examples"):
            if (REPO / name).exists():
                shutil.copytree(
                    REPO / name,
                    root / name,
                    ignore=shutil.ignore_patterns("__pycache__", "results"),
                )
        for name in ("pyproject.toml", "setup.cfg", "README.md"):
            shutil.copy2(REPO / name, root / name)
        apply(root, edits)
        env = dict(os.environ, PYTHONPATH=str(root), D2LFT_PROGRESS="0")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - t0
        if proc.returncode not in (0, 1):  # 2-5: interrupted, usage error, nothing collected
            raise RuntimeError(f"{mid}: pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}")
        if keep or proc.returncode == 0:
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("E ", "FAILED"))]
            print("\n".join(lines[:12]) if keep and lines else proc.stdout[-2000:])
        return proc.returncode == 1, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="mutant ids (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--show",
        action="store_true",
        help="print the end of each pytest run (why a mutant was killed)",
    )
    args = parser.parse_args(argv)
    unknown = [i for i in args.ids if i not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; see --list")
    ids = args.ids or list(MUTANTS)
    if args.list:
        for mid in ids:
            what, _, tests = MUTANTS[mid]
            print(f"{mid}: {what}\n    killed by: {' '.join(tests)}")
        return 0
    stale = check_applies(ids)
    for mid, why in stale:
        print(f"{mid}: does not apply: {why}")
    survived = []
    for mid in ids:
        if any(mid == s for s, _ in stale):
            continue
        killed, seconds = run(mid, keep=args.show)
        print(
            f"{'killed  ' if killed else 'SURVIVED'} {mid} ({seconds:.0f} s): {MUTANTS[mid][0]}",
            flush=True,
        )
        if not killed:
            survived.append(mid)
    print(f"{len(ids) - len(survived) - len(stale)} of {len(ids)} killed")
    return 1 if survived or stale else 0


if __name__ == "__main__":
    sys.exit(main())
