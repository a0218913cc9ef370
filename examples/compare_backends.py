"""Compare the two engines on the same weights and the same batches; print one table.

    python examples/compare_backends.py                      # offline, CPU, ~2-4 min
    python examples/compare_backends.py --data path/to/hotdog --image-size 112

For each architecture (resnet18_v1, resnet18_v2) and direction (weights made in one
backend, moved to the other with d2lft.save_params / load_params):

* logits: max |torch - mxnet| on one batch, evaluation and training mode;
* one SGD step with the MXNet tab's settings (lr 0.01, head 10x, wd 0.001; torch gets
  d2lft.equivalent_sgd's lr/B and wd*B): worst relative parameter difference
  (max|a-b| / max|b| per tensor), in float32 and in float64, and how far each
  engine's own float32 step is from its float64 step (its rounding);
* a deterministic run (train_fine_tuning(pipeline=FixedBatches())) of N steps: the worst
  trainable-parameter difference, the worst BatchNorm running-variance difference,
  the eval-mode logit difference afterwards, and each backend's loss / train acc /
  test acc.

Data: `--data` (a hotdog-layout folder or .zip), else a generated set of noisy
two-colour images. Weights: resnet18_v1 starts from ../shared/data's food100 ResNet-18
when it is there (or `--pretrained PATH`), otherwise from random features with
trained-looking BatchNorm tensors (d2lft.parity.pretrained_like); resnet18_v2 always
from the latter (there are no offline v2 weights).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

import d2lft
from d2lft import parity
from d2lft.data.fixed import fixed_loaders

REPO = pathlib.Path(__file__).resolve().parents[1]
FOOD100 = REPO.parent / "shared" / "data" / "food100-resnet18.pth"
LR, WD = 0.01, 0.001  # the MXNet tab's fine-tuning settings (--lr changes LR)


def make_data(root, n_train, n_test, size, seed=0):
    """Two classes of noisy images (class colour + uniform noise): learnable, and
    distinct enough that BatchNorm's batch statistics are well conditioned."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colors = {"hotdog": (200, 60, 60), "not-hotdog": (60, 60, 200)}
    for split, n in (("train", n_train), ("test", n_test)):
        for c, color in colors.items():
            d = pathlib.Path(root) / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.array(color) * 0.6 + rng.integers(0, 100, (*size, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return pathlib.Path(root)


def build(backend, arch, pretrained=False):
    with d2lft.using(backend):
        net = d2lft.build_finetune_net(pretrained=pretrained, arch=arch)
    if backend == "mxnet":
        import mxnet as mx

        net(mx.nd.zeros((1, 3, 32, 32)))  # Gluon infers its remaining shapes
    return net


def source_weights(arch, src, path, pretrained, seed):
    """Build the source network in `src` and save it to `path`."""
    if src == "torch":
        import torch

        torch.manual_seed(seed)
    if arch == "resnet18_v1" and pretrained:
        net = build(src, arch, pretrained=str(pretrained))
    else:
        net = build(src, arch)
        w = parity.backend_weights(src)
        w.load_state_arrays(net, parity.pretrained_like(w.state_arrays(net), seed))
    d2lft.save_params(net, path)


def pair(arch, path, dtype="float32"):
    """(torch net, mxnet net) both loaded from `path`, in `dtype`."""
    import torch

    tnet, mnet = build("torch", arch), build("mxnet", arch)
    d2lft.load_params(tnet, path)
    d2lft.load_params(mnet, path)
    tnet.to(getattr(torch, dtype))
    mnet.cast(dtype)
    return tnet, mnet


def one_step(arch, path, batch, dtype):
    import mxnet as mx
    import torch

    X, y = batch
    B = len(y)
    lr_t, wd_t = d2lft.equivalent_sgd(
        LR, WD, batch_size=B, from_backend="mxnet", to_backend="torch"
    )
    tnet, mnet = pair(arch, path, dtype)
    with d2lft.using("torch"):
        d2lft.train_on_batches(
            tnet,
            lr_t,
            [(torch.from_numpy(X.astype(dtype)), torch.from_numpy(y))],
            batch_size=B,
            run=d2lft.RunSpec(verbose=False, weight_decay=wd_t),
        )
    with d2lft.using("mxnet"):
        d2lft.train_on_batches(
            mnet,
            LR,
            [(mx.nd.array(X, dtype=dtype), mx.nd.array(y, dtype=dtype))],
            batch_size=B,
            run=d2lft.RunSpec(verbose=False, weight_decay=WD),
        )
    return parity.state_arrays(tnet), parity.state_arrays(mnet)


def deterministic_run(arch, path, data, args, batch):
    B = args.batch_size
    lr_t, wd_t = d2lft.equivalent_sgd(
        LR, WD, batch_size=B, from_backend="mxnet", to_backend="torch"
    )
    tnet, mnet = pair(arch, path)
    kw = dict(data_dir=data, image_size=args.image_size, pipeline=d2lft.FixedBatches())
    with d2lft.using("torch"):
        ht = d2lft.train_fine_tuning(
            tnet, lr_t, B, args.epochs, **kw, run=d2lft.RunSpec(verbose=False, weight_decay=wd_t)
        )
    with d2lft.using("mxnet"):
        hm = d2lft.train_fine_tuning(
            mnet, LR, B, args.epochs, **kw, run=d2lft.RunSpec(verbose=False)
        )
    at, am = parity.state_arrays(tnet), parity.state_arrays(mnet)
    params = parity.worst_difference(at, am)[0]
    # bn_data (v2's input BatchNorm) is left out: Gluon never updates its statistics
    # on the CPU (docs/parity.md), torch does, so it would hide the variance convention
    rv = max(
        parity.relative_difference(at[k], am[k])
        for k in at
        if k.endswith("running_var") and not k.startswith("bn_data.")
    )
    X = batch[0]
    eval_logits = np.abs(parity.logits(tnet, X) - parity.logits(mnet, X)).max()
    return params, rv, eval_logits, hm, ht


def main(argv=None):
    global LR
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="hotdog-layout folder or .zip (default: generated)")
    ap.add_argument(
        "--pretrained",
        help="torchvision resnet18 state_dict for resnet18_v1 "
        "(default: ../shared/data/food100-resnet18.pth when present)",
    )
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-per-class", type=int, default=16)
    ap.add_argument("--archs", default="resnet18_v1,resnet18_v2")
    ap.add_argument(
        "--lr",
        type=float,
        default=LR,
        help="MXNet learning rate (torch gets the equivalent); default the chapter's 0.01",
    )
    args = ap.parse_args(argv)
    LR = args.lr
    pretrained = args.pretrained or (FOOD100 if FOOD100.is_file() else None)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            from d2lft.data.hub import resolve_data_dir

            data = resolve_data_dir(args.data)
            source = str(args.data)
        else:
            data = make_data(
                os.path.join(tmp, "data"),
                args.train_per_class,
                max(args.train_per_class // 2, 1),
                (args.image_size + 8, args.image_size + 16),
            )
            source = (
                f"generated: 2 classes x {args.train_per_class} train / "
                f"{max(args.train_per_class // 2, 1)} test noisy images"
            )
        train_iter, _ = fixed_loaders(data, args.batch_size, args.image_size, seed=0)
        steps = len(train_iter) * args.epochs
        batch = next(iter(train_iter.batches(0)))
        rows = []
        for arch in args.archs.split(","):
            for src, dst in (("torch", "mxnet"), ("mxnet", "torch")):
                path = os.path.join(tmp, f"{arch}-{src}.safetensors")
                source_weights(arch, src, path, pretrained, seed=len(rows))
                tnet, mnet = pair(arch, path)
                X = batch[0]
                lg = [
                    np.abs(parity.logits(tnet, X, t) - parity.logits(mnet, X, t)).max()
                    for t in (False, True)
                ]
                t32, m32 = one_step(arch, path, batch, "float32")
                t64, m64 = one_step(arch, path, batch, "float64")
                s32, s64 = (parity.worst_difference(t, m)[0] for t, m in ((t32, m32), (t64, m64)))
                e_t, e_m = (parity.worst_difference(a, b)[0] for a, b in ((t32, t64), (m32, m64)))
                pN, rvN, evN, hm, ht = deterministic_run(arch, path, data, args, batch)
                rows.append(
                    (
                        arch,
                        f"{src}->{dst}",
                        *lg,
                        s32,
                        s64,
                        e_t,
                        e_m,
                        pN,
                        rvN,
                        evN,
                        (hm.train_loss[-1], hm.train_acc[-1], hm.test_acc[-1]),
                        (ht.train_loss[-1], ht.train_acc[-1], ht.test_acc[-1]),
                    )
                )
                print(
                    f"  done {arch} {src}->{dst} ({time.perf_counter() - start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    v1_src = f"{pathlib.Path(pretrained).name}" if pretrained else "random (pretrained_like)"
    print(
        f"data: {source}; {args.image_size} px, batch {args.batch_size}, {args.epochs} "
        f"epochs = {steps} steps; MXNet lr {LR} wd {WD} (head 10x), torch "
        f"lr {LR}/B wd {WD}*B (d2lft.equivalent_sgd)"
    )
    print(f"weights: resnet18_v1 from {v1_src}; resnet18_v2 random (pretrained_like)")
    print()
    head = (
        "| arch | direction | logits eval | logits train | params 1 step f32 | "
        "params 1 step f64 | torch f32 vs f64 | mxnet f32 vs f64 | params N steps | "
        "running_var N steps | eval logits N steps "
        "| mxnet loss / train acc / test acc | torch loss / train acc / test acc |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        m, t = r[-2], r[-1]
        nums = " | ".join(f"{v:.1e}" for v in r[2:11])
        print(
            f"| {r[0]} | {r[1]} | {nums} | {m[0]:.6f} / {m[1]:.3f} / {m[2]:.3f} | "
            f"{t[0]:.6f} / {t[1]:.3f} / {t[2]:.3f} |"
        )
    print(
        f"\n(logits: max abs difference; params, running_var: worst max|a-b|/max|b| over "
        f"the tensors, running_var without v2's bn_data; {time.perf_counter() - start:.0f} s "
        f"on {os.cpu_count()} CPU cores)"
    )


if __name__ == "__main__":
    main()
