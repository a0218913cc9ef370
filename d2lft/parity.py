"""Measuring how closely the two engines agree (used by tests, examples/compare_backends.py
and docs/parity.md). Backend-neutral: frameworks are reached through the backends' packages.

Relative difference of two arrays `a`, `b` (one tensor): ``max|a - b| / max|b|``.
"""

from __future__ import annotations

import numpy as np

from .backends import _registry
from .io.weights import canonical_arch, canonical_names

#: BatchNorm statistics: not trained, and updated differently by the two engines
#: (see docs/parity.md), so :func:`worst_difference` leaves them out by default.
STAT_SUFFIXES = ("running_mean", "running_var")


def backend_weights(name):
    """The backend package `name` (it reads and writes canonical arrays)."""
    return _registry.load(name)


def state_arrays(net) -> dict:
    """{canonical name: numpy array} of `net` (either backend)."""
    return _registry.package_of(net).state_arrays(net)


def logits(net, X, train=False) -> np.ndarray:
    """`net`'s output for numpy batch `X`, in training (batch statistics) or
    evaluation mode, whichever backend built it."""
    return _registry.package_of(net).logits(net, X, train=train)


def relative_difference(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max() if b.size else 0.0
    diff = np.abs(a - b).max() if b.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def differences(a: dict, b: dict) -> dict:
    """{name: relative difference} over the names both dicts share (a name in only
    one of them raises KeyError naming it)."""
    only = sorted(set(a) ^ set(b))
    if only:
        raise KeyError(f"the two parameter sets differ in names: {only[:5]}")
    return {k: relative_difference(a[k], b[k]) for k in b}


def worst_difference(a: dict, b: dict, *, stats=False, skip=()) -> tuple:
    """`(relative difference, name)` of the worst tensor. BatchNorm running
    statistics are left out unless `stats`; names starting with any of `skip` too."""
    diffs = {
        k: v
        for k, v in differences(a, b).items()
        if (stats or not k.endswith(STAT_SUFFIXES)) and not k.startswith(tuple(skip))
    }
    name = max(diffs, key=diffs.get)
    return diffs[name], name


def pretrained_like(arrays: dict, seed=0) -> dict:
    """A copy of `arrays` whose BatchNorm tensors look trained rather than freshly
    initialised: gamma in [0.5, 1.5], beta and running mean ~ N(0, 0.2), running
    variance in [0.5, 2]. (Fresh BatchNorm biases are all 0, so a relative difference
    of a bias after one step measures only its gradient's rounding.) Convolution
    and head weights and Gluon's fixed input BatchNorm (`bn_data`) are kept."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in arrays.items():
        layer, _, kind = k.rpartition(".")
        if v.ndim != 1 or k.startswith(("fc.", "bn_data.")):
            out[k] = v
            continue
        if kind == "running_var":
            new = rng.uniform(0.5, 2.0, v.shape)
        elif kind in ("running_mean", "bias"):
            new = rng.normal(0.0, 0.2, v.shape)
        else:  # gamma
            new = rng.uniform(0.5, 1.5, v.shape)
        out[k] = new.astype(v.dtype)
    return out


def bn_elements(arch, image_size, batch_size) -> dict:
    """{BatchNorm layer (canonical prefix): values per channel in one batch}, the `n`
    of the unbiased-variance factor n/(n-1), for square inputs of `image_size`."""
    arch = canonical_arch(arch)

    def conv(s, k, st, p):
        return (s + 2 * p - k) // st + 1

    s1 = conv(image_size, 7, 2, 3)  # conv1
    s = [conv(s1, 3, 2, 1)]  # maxpool -> layer1
    for _ in range(3):
        s.append(conv(s[-1], 3, 2, 1))  # layer2..4 (stride 2)
    out = {}
    for name in canonical_names(arch):
        if not name.endswith(".running_var"):
            continue
        layer = name[: -len(".running_var")]
        if layer == "bn_data":
            hw = image_size
        elif layer == "bn1":
            hw = s1
        elif layer == "bn_final":
            hw = s[3]
        else:
            stage = int(layer[5]) - 1
            block = int(layer.split(".")[1])
            # v2 pre-activation bn1 of a downsampling block sees the stage's input
            first_in = arch == "resnet18_v2" and block == 0 and layer.endswith(".bn1")
            hw = (s[stage - 1] if stage > 0 else s[0]) if first_in else s[stage]
        out[layer] = batch_size * hw * hw
    return out
