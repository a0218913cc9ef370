"""Images/s and peak host memory against dataset size, both pipelines, both backends.

    python benchmarks/bench_memory.py --sizes 1000 10000 100000 --backends torch mxnet

For each size a synthetic folder of small JPEGs (48-96 px, two classes, 80% train,
20% test) is made once under --work. Each (backend, pipeline, size) runs in a fresh
process: ``train_fine_tuning`` with the data setup (the fast pipeline decodes every
image once) and --steps training steps, then stops. Recorded: seconds of the data
setup and of the steps, training images/s over the steps, the run's peak resident
host memory (History.peak_host_mb), and where the fast pipeline kept its decoded
images (memory, or disk beyond --memory-budget-mb; ``fast-unbounded`` keeps them all
in memory, as the fast pipeline did before its budget). A Markdown table, a JSON record
and a plot (images/s and peak MB against size) go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_train import git_commit, machine_info, versions, write_result  # noqa: E402


def make_folder(root: pathlib.Path, n: int, seed: int = 0) -> pathlib.Path:
    """`n` small random JPEGs in the hotdog layout (made once; a stamp file marks a
    finished folder)."""
    import numpy as np
    from PIL import Image

    folder = root / f"jpegs-{n}"
    if (folder / ".done").is_file():
        return folder
    rng = np.random.default_rng(seed)
    n_test = max(2, n // 5)
    for i in range(n):
        split = "test" if i < n_test else "train"
        cls = ("hotdog", "not-hotdog")[i % 2]
        d = folder / split / cls
        d.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(48, 97, 2))
        base = np.array([200, 60, 40] if cls == "hotdog" else [40, 90, 200])
        small = np.clip(base + rng.normal(0, 40, (h // 8 + 1, w // 8 + 1, 3)), 0, 255)
        img = Image.fromarray(small.astype("uint8")).resize((w, h), Image.BILINEAR)
        img.save(d / f"{i}.jpg", quality=85)
    (folder / ".done").write_text(str(n))
    return folder


ONE = r"""
import json, sys, time
import d2lft
spec = json.loads(sys.argv[1])
d2lft.use(spec["backend"])

class StopAfter(d2lft.Callback):
    def __init__(self, steps):
        self.steps, self.t0 = steps, None
    def on_epoch_begin(self, state):
        self.t0 = time.perf_counter()
    def on_batch_end(self, state):
        if state.batch + 1 == 1:
            self.t1 = time.perf_counter()  # the first step (warm-up) is not timed
        if state.batch + 1 >= self.steps:
            self.t2 = time.perf_counter()
            raise KeyboardInterrupt

net = d2lft.build_finetune_net(pretrained=False, seed=0)
if spec["pipeline"].startswith("fast"):
    budget = spec["budget"] if spec["pipeline"] == "fast" else 10**9  # fast-unbounded
    pipe = d2lft.FastPipeline(memory_budget_mb=budget, decode_cache=None, precision="fp32")
else:
    pipe = d2lft.BookLoop(workers=0)
stop = StopAfter(spec["steps"])
t0 = time.perf_counter()
h = d2lft.train_fine_tuning(net, 1e-4 if spec["backend"] == "torch" else 0.01,
                            spec["batch"], 1, data_dir=spec["data"], image_size=spec["size"],
                            seed=0, pipeline=pipe, run=d2lft.RunSpec(verbose=False),
                            callbacks=[stop])
steps_s = stop.t2 - stop.t1
print(json.dumps({"setup_seconds": stop.t0 - t0, "steps_seconds": steps_s,
                  "images_per_sec": (spec["steps"] - 1) * spec["batch"] / steps_s,
                  "peak_host_mb": h.peak_host_mb,
                  "store_on_disk": h.config.get("store_on_disk"),
                  "pipeline_choice": h.config.get("pipeline_choice")}))
"""


def run_one(spec, env):
    proc = subprocess.run(
        [sys.executable, "-c", ONE, json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if proc.returncode:
        raise SystemExit(f"{spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(rows, path, title=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for (backend, pipeline), group in sorted(_groups(rows).items()):
        xs = [r["images"] for r in group]
        kw = dict(
            linestyle={"fast": "-", "book": "--"}.get(pipeline, ":"),
            color={"torch": "tab:red", "mxnet": "tab:blue"}.get(backend),
            marker={"fast": "o", "book": "s"}.get(pipeline, "^"),
            label=f"{backend} {pipeline}",
        )
        axes[0].plot(xs, [r["images_per_sec"] for r in group], **kw)
        axes[1].plot(xs, [r["peak_host_mb"] for r in group], **kw)
    for ax, what in zip(axes, ("training images/s", "peak host memory (MiB)"), strict=True):
        ax.set_xscale("log")
        ax.set(xlabel="images in the dataset", ylabel=what)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _groups(rows):
    out = {}
    for r in rows:
        out.setdefault((r["backend"], r["pipeline"]), []).append(r)
    for g in out.values():
        g.sort(key=lambda r: r["images"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--backends", nargs="+", default=["torch", "mxnet"])
    p.add_argument(
        "--pipelines",
        nargs="+",
        choices=("book", "fast", "fast-unbounded"),
        default=["book", "fast", "fast-unbounded"],
    )
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--memory-budget-mb", type=int, default=256)
    p.add_argument("--work", default="/tmp/d2lft-bench-memory")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--figure", default=None, help="also save the plot here")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    work = pathlib.Path(args.work)
    env = dict(os.environ, D2LFT_PROGRESS="0", D2LFT_HOME=str(work / "home"))
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        folder = make_folder(work, n)
        print(f"{n} images at {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for backend in args.backends:
            for pipeline in args.pipelines:
                spec = {
                    "backend": backend,
                    "pipeline": pipeline,
                    "data": str(folder),
                    "size": args.image_size,
                    "batch": args.batch_size,
                    "steps": args.steps,
                    "budget": args.memory_budget_mb,
                }
                shutil.rmtree(work / "home" / "decoded", ignore_errors=True)  # cold each run
                res = run_one(spec, env)
                row = {"backend": backend, "pipeline": pipeline, "images": n, **res}
                rows.append(row)
                print(
                    f"  {backend} {pipeline}: setup {res['setup_seconds']:.1f} s, "
                    f"{res['images_per_sec']:.1f} img/s, peak {res['peak_host_mb']:.0f} "
                    f"MiB, on disk {res['store_on_disk']}",
                    flush=True,
                )
    result = {
        "command": " ".join(sys.argv),
        "machine": machine_info("cpu"),
        "versions": versions(args.backends),
        "commit": git_commit(),
        "args": vars(args),
        "rows": rows,
    }
    lines = [
        f"# Images/s and peak host memory against dataset size ({args.image_size} px, "
        f"batch {args.batch_size}, {args.steps} steps, fast budget "
        f"{args.memory_budget_mb} MiB)",
        "",
        f"`{result['command']}`",
        "",
        f"machine: {result['machine']}; commit {result['commit']}",
        "",
        "| backend | pipeline | images | setup s | images/s | peak MiB | decoded on disk |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['pipeline']} | {r['images']:,} | "
            f"{r['setup_seconds']:.1f} | {r['images_per_sec']:.1f} | "
            f"{r['peak_host_mb']:.0f} | "
            f"{'-' if r['pipeline'] == 'book' else r['store_on_disk']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    write_result(args.out, "memory-scaling", args.tag, result, text)
    stamp = sorted(pathlib.Path(args.out).glob("*-memory-scaling*.json"))[-1]
    title = (
        f"{args.image_size} px, batch {args.batch_size}; fast: decoded images beyond "
        f"{args.memory_budget_mb} MiB kept on disk; fast-unbounded: all in memory"
    )
    plot(rows, stamp.with_suffix(".png"), title)
    if args.figure:
        plot(rows, args.figure, title)


if __name__ == "__main__":
    main()
