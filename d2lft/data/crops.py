"""The chapter's RandomResizedCrop as both backends' transforms draw it, vectorised, and
the epoch's batches of indices. Backend-neutral (numpy)."""

from __future__ import annotations

import math

import numpy as np

from .shards import shard

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def sample_resized_crops(
    rng,
    heights,
    widths,
    scale=RRC_SCALE,
    ratio=RRC_RATIO,
    fallback="torchvision",
    out_size=None,
    tries=10,
):
    """RandomResizedCrop's crop boxes for a batch, drawn as the book's transforms
    draw them, vectorised: returns int64 arrays ``(top, left, h, w)``.

    Each sample makes up to `tries` attempts: area ``U(scale) * H * W``, aspect ratio
    ``exp(U(log ratio))``, ``w = round(sqrt(area * r))``, ``h = round(sqrt(area / r))``;
    the first attempt that fits is placed uniformly (``top ~ U{0..H-h}``). When none
    fits, `fallback` decides: ``'torchvision'`` (``transforms.RandomResizedCrop``): the
    whole image, its aspect ratio clamped into `ratio`, centred; ``'gluon'``
    (``mx.image.random_size_crop``): ``center_crop`` to `out_size`, i.e. an
    ``out_size``-square centred crop scaled down to fit the image. Drawing all tries
    at once gives the same distribution as drawing them one by one.
    """
    H = np.asarray(heights, dtype=np.int64)
    W = np.asarray(widths, dtype=np.int64)
    n = H.shape[0]
    area = (H * W).astype(np.float64)[:, None]
    target = area * rng.uniform(scale[0], scale[1], size=(n, tries))
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    r = np.exp(rng.uniform(log_r[0], log_r[1], size=(n, tries)))
    w = np.round(np.sqrt(target * r)).astype(np.int64)
    h = np.round(np.sqrt(target / r)).astype(np.int64)
    ok = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    found = ok.any(axis=1)
    first = ok.argmax(axis=1)
    rows = np.arange(n)
    cw, ch = w[rows, first], h[rows, first]
    u = rng.random((n, 2))
    top = np.floor(u[:, 0] * (H - ch + 1)).astype(np.int64)
    left = np.floor(u[:, 1] * (W - cw + 1)).astype(np.int64)
    if not found.all():
        miss = ~found
        fh, fw = fallback_crops(H[miss], W[miss], ratio, fallback, out_size)
        ch[miss], cw[miss] = fh, fw
        top[miss] = (H[miss] - fh) // 2
        left[miss] = (W[miss] - fw) // 2
    return top, left, ch, cw


def fallback_crops(H, W, ratio, fallback, out_size):
    if fallback == "torchvision":
        in_ratio = W / H
        fw, fh = W.copy(), H.copy()
        lo, hi = in_ratio < min(ratio), in_ratio > max(ratio)
        fh[lo] = np.round(W[lo] / min(ratio)).astype(np.int64)
        fw[hi] = np.round(H[hi] * max(ratio)).astype(np.int64)
        return fh, fw
    if fallback == "gluon":  # mx.image.center_crop -> scale_down((w, h), (S, S))
        if out_size is None:
            raise ValueError("the 'gluon' fallback needs out_size")
        fh, fw = [], []
        for sh, sw in zip(H.tolist(), W.tolist(), strict=True):
            cw, chh = float(out_size), float(out_size)
            if sh < chh:
                cw, chh = cw * sh / chh, sh
            if sw < cw:
                cw, chh = sw, chh * sw / cw
            fh.append(int(chh))
            fw.append(int(cw))
        return np.array(fh, dtype=np.int64), np.array(fw, dtype=np.int64)
    raise ValueError(f"fallback must be 'torchvision' or 'gluon', got {fallback!r}")


def stored_boxes(store, idx, top, left, h, w):
    """Crop boxes drawn on original sizes, mapped into the stored images:
    float64 (x0, y0, x1, y1) in pixel-edge coordinates, and a flag telling which
    stored images are at their original size (so the box is exact integers)."""
    idx = np.asarray(idx)
    sh, sw = store.shapes[idx, 0], store.shapes[idx, 1]
    oh, ow = store.orig[idx, 0], store.orig[idx, 1]
    fy, fx = sh / oh, sw / ow
    boxes = np.stack([left * fx, top * fy, (left + w) * fx, (top + h) * fy], axis=1)
    return boxes.astype(np.float64), (sh == oh) & (sw == ow)


def run_seed(seed):
    """`seed`, or for an unseeded run one drawn from numpy's global generator (so that
    `d2lft.seed()` makes unseeded fast-pipeline runs repeat too)."""
    return seed if seed is not None else int(np.random.randint(0, 2**63 - 1, dtype=np.int64))


def epoch_batches(rng, n, batch_size, shuffle=True):
    """Index arrays of one epoch: a permutation split into batches (the last may be
    smaller, as the book's loaders keep it)."""
    order = rng.permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def epoch_draws(rng, n, batch_size, draw=None, shuffle=True, shard_of=(1, 0)):
    """[(indices, draws)] of one epoch's batches: `draw(indices)` (the crop boxes and
    flips) is called for each whole global batch, in order, from the epoch's generator
    `rng` (the same on every distributed worker), then a worker keeps its shard
    (`shard_of`: ``(world, rank)``) of both, so the batches do not depend on the
    number of workers."""
    world, rank = shard_of
    out = []
    for b in epoch_batches(rng, n, batch_size, shuffle):
        draws = draw(b) if draw is not None else ()
        if world > 1:
            b = shard(b, world, rank)
            draws = tuple(shard(a, world, rank) for a in draws)
        out.append((b, draws))
    return out
