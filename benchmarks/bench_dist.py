"""CPU scaling of data-parallel training: N worker processes of C/N threads each against
one process of C threads, the same global batch, each backend on its own engine.

    python benchmarks/bench_dist.py --backend torch --data-dir ../shared/data/hotdog-real.zip \\
        --weights ../shared/data/food100-resnet18.pth --arch resnet18_v1 --image-size 112

Every variant is one ``d2lft train`` command in a fresh process (``--nproc N`` for the
job), timed from start to exit; images/s = (training + test images) x epochs over
that wall clock, and the book's own examples/sec (training steps only) from
metrics.json. The variants alternate (``--reps``) so that machine noise falls on all.
For MXNet a third variant trains one process over N CPU devices (the book's
``split_and_load``, BatchNorm per device): the job's computation without the
parameter server, for comparing its accuracy. Results go to benchmarks/results/ (JSON
and a Markdown table) with the command, machine, versions and git commit.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_train import git_commit, machine_info, versions, write_result  # noqa: E402

# one MXNet process over N CPU devices (the book's split_and_load, BatchNorm per device):
# what a job of N workers computes, without the parameter server
_DEVICES = """
import json, pathlib, sys
import d2lft
import mxnet as mx
a = json.loads(sys.argv[1])
d2lft.use("mxnet")
net = d2lft.build_finetune_net(pretrained=a["weights"] or False, arch=a["arch"], seed=a["seed"])
h = d2lft.train_fine_tuning(
    net, 0.01, batch_size=a["batch_size"], num_epochs=a["epochs"], data_dir=a["folder"],
    image_size=a["image_size"], devices=[mx.cpu(i) for i in range(a["devices"])],
    seed=a["seed"], pipeline=a["pipeline"],
)
pathlib.Path(a["out"]).mkdir(parents=True, exist_ok=True)
h.to_json(pathlib.Path(a["out"]) / "metrics.json")
"""


def run(variant, args, folder, out):
    if variant.get("devices"):
        spec = dict(
            weights=args.weights,
            arch=args.arch,
            seed=args.seed,
            batch_size=args.batch_size,
            epochs=args.epochs,
            folder=str(folder),
            image_size=args.image_size,
            devices=variant["devices"],
            pipeline=args.pipeline,
            out=str(out),
        )
        cmd = [sys.executable, "-c", _DEVICES, json.dumps(spec)]
        return _timed(
            variant,
            cmd,
            dict(__import__("os").environ, D2LFT_PROGRESS="0", OMP_NUM_THREADS=str(args.cores)),
            out,
        )
    cmd = [
        sys.executable,
        "-m",
        "d2lft",
        "train",
        "--backend",
        args.backend,
        "--data-dir",
        str(folder),
        "--pretrained",
        args.weights or "none",
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--pipeline",
        args.pipeline,
        "--out",
        str(out),
    ]
    if args.arch:
        cmd += ["--arch", args.arch]
    env = dict(__import__("os").environ, D2LFT_PROGRESS="0")
    if variant["nproc"] > 1:
        cmd += ["--nproc", str(variant["nproc"])]
        env.pop("OMP_NUM_THREADS", None)  # the launcher gives each worker cores // N
    else:
        env["OMP_NUM_THREADS"] = str(args.cores)
    return _timed(variant, cmd, env, out)


def _timed(variant, cmd, env, out):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{variant['name']} failed:\n{proc.stderr[-3000:]}")
    h = json.loads((out / "metrics.json").read_text())
    return {
        "variant": variant["name"],
        "nproc": variant["nproc"],
        "wall_seconds": wall,
        "book_examples_per_sec": h["examples_per_sec"],
        "test_acc": h.get("held_out_acc", h.get("test_acc")),  # older metrics.json: test_acc
        "train_loss": h["train_loss"],
        "world_size": h["config"]["world_size"],
        "devices": h.get("devices"),
        "stdout": proc.stdout.splitlines()[-4:],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("torch", "mxnet"), required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--weights", default=None, help="a source weights file (else random)")
    p.add_argument("--arch", default=None)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--pipeline", choices=("book", "fast"), default="book")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--cores", type=int, default=None, help="default: the physical cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    from d2lft._sys.threads import physical_cores
    from d2lft.data import hub
    from d2lft.data.folders import list_images

    args.cores = args.cores or physical_cores()
    folder = hub.resolve_data_dir(args.data_dir)
    n_train = len(list_images(folder / "train")[1])
    n_test = len(list_images(folder / "test")[1])
    variants = [
        {"name": f"1 process x {args.cores} threads", "nproc": 1},
        {
            "name": f"{args.nproc} processes x {max(1, args.cores // args.nproc)} thread(s)",
            "nproc": args.nproc,
        },
    ]
    if args.backend == "mxnet":  # the job's computation in one process, for its accuracy
        variants.append(
            {"name": f"1 process x {args.nproc} devices", "nproc": 1, "devices": args.nproc}
        )
    rows = {v["name"]: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.reps):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                out = pathlib.Path(tmp) / f"{v['nproc']}-{r}"
                res = run(v, args, folder, out)
                print(
                    f"{v['name']}: {res['wall_seconds']:.1f} s, test acc {res['test_acc']}",
                    flush=True,
                )
                rows[v["name"]].append(res)
    images = args.epochs * (n_train + n_test)
    table, base = [], None
    for v in variants:
        runs = rows[v["name"]]
        wall = statistics.median(x["wall_seconds"] for x in runs)
        ips = images / wall
        base = base or ips
        table.append(
            {
                "variant": v["name"],
                "wall_seconds": round(wall, 2),
                "images_per_sec": round(ips, 2),
                "x_one_process": round(ips / base, 3),
                "book_examples_per_sec": round(
                    statistics.median(x["book_examples_per_sec"] for x in runs), 2
                ),
                "test_acc": [x["test_acc"][-1] for x in runs],
            }
        )
    result = {
        "command": " ".join(sys.argv),
        "machine": machine_info("cpu"),
        "versions": versions([args.backend]),
        "commit": git_commit(),
        "images": {"train": n_train, "test": n_test},
        "args": vars(args),
        "table": table,
        "runs": rows,
    }
    lines = [
        f"# Data-parallel CPU scaling, {args.backend}, {args.pipeline} pipeline",
        "",
        f"`{result['command']}`",
        "",
        f"{n_train} training + {n_test} test images, {args.image_size} px, batch "
        f"{args.batch_size}, {args.epochs} epoch(s), commit {result['commit']}; machine: "
        f"{result['machine']}",
        "",
        "| variant | wall s | images/s | x one process | book examples/s | test acc |",
        "|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['variant']} | {t['wall_seconds']} | {t['images_per_sec']} | "
            f"{t['x_one_process']} | {t['book_examples_per_sec']} | "
            f"{', '.join(f'{a:.3f}' for a in t['test_acc'])} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    write_result(args.out, f"dist-{args.backend}-cpu", args.tag, result, text)


if __name__ == "__main__":
    main()
