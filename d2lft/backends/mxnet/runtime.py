"""The MXNet backend's runtime: devices, seeding, precision (fp32: MXNet 1.9's bf16 AMP
patches every operator of the process, see :func:`resolve_precision`), splitting batches
over devices, and freezing the backbone (exercise 3)."""

from __future__ import annotations

import contextlib
import os
import random

import mxnet as mx
import numpy as np
from mxnet import gluon

from ...engine.dist import DEFAULT_TIMEOUT, Job, dmlc_role
from ...engine.options import Precision

PRECISIONS = Precision.__args__


def all_devices() -> list:
    """All GPUs, else the CPU."""
    n = mx.context.num_gpus()
    return [mx.gpu(i) for i in range(n)] or [mx.cpu()]


def seed_framework(seed) -> None:
    """Seed MXNet's own global generator (initialisation, its random ops)."""
    mx.random.seed(seed)


def seed_everything(seed) -> None:
    """Python's, numpy's and MXNet's generators (Gluon's loader shuffles with numpy's
    global generator, its transforms draw from Python's and MXNet's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seed_framework(seed)


def resolve_precision(precision, device) -> str:
    """Always 'fp32' ('auto' included); 'bf16' raises. MXNet 1.9 can train in bf16 on a
    CPU through AMP (``amp.init(target_dtype='bfloat16')`` + ``amp.init_trainer``:
    1.16x the fp32 training step on an AVX512-BF16 CPU, ``benchmarks/mxnet_bf16.py``),
    but ``amp.init`` rewrites MXNet's operator functions for the whole process, with no
    scope and no undo: every later MXNet computation in it, fp32 runs and parity checks
    included, would run in bf16. d2lft keeps MXNet in fp32 (docs/speed.md says what bf16
    would need)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        raise ValueError(
            "the mxnet backend trains in fp32: MXNet 1.9's bf16 AMP (amp.init) switches "
            "every MXNet operator of the process to bf16 for good, so d2lft does not "
            "turn it on; use precision='auto' or 'fp32' (docs/speed.md, 'MXNet and bf16')"
        )
    return "fp32"


def count_params(params) -> int:
    return int(sum(int(np.prod(p.shape)) for p in params.values()))


def split(X, y, devices):
    """(X parts, y parts) of a batch, one per device (`split_and_load`, uneven allowed)."""
    return (
        gluon.utils.split_and_load(X, devices, even_split=False),
        gluon.utils.split_and_load(y, devices, even_split=False),
    )


def to_nd(a):
    """A numpy batch (e.g. from `d2lft.data.fixed`) as an NDArray (labels as int32)."""
    return mx.nd.array(a, dtype="int32" if a.dtype.kind in "iu" else a.dtype)


@contextlib.contextmanager
def frozen_backbone(net):
    """Backbone parameters get no gradient (grad_req 'null'), restored afterwards."""
    params = list(net.features.collect_params().values())
    saved = [p.grad_req for p in params]
    for p in params:
        p.grad_req = "null"
    try:
        yield
    finally:
        for p, r in zip(params, saved, strict=True):
            p.grad_req = r


@contextlib.contextmanager
def head_multiplier(params, param_group):
    """`param_group=False`: every parameter at the base learning rate during the run
    (Gluon's optimizer reads `lr_mult` at each step); the multipliers come back after."""
    saved = {name: p.lr_mult for name, p in params.items()}
    if not param_group:
        params.setattr("lr_mult", 1.0)
    try:
        yield
    finally:
        for name, p in params.items():
            p.lr_mult = saved[name]


def features(net, X):
    """The backbone's output (the head's input) as (B, C), in prediction mode."""
    f = net.features(X)
    return f.reshape((f.shape[0], -1))


# ------------------------------------------------------------------ distributed (ps-lite)

_KV = {}
_METRICS_KEY = 1_000_003  # a kvstore key of its own, beyond the parameters' indices


_AUX_KEY = 2_000_003  # the running statistics' keys: _AUX_KEY + their index


class PSJob(Job):
    """A worker of an MXNet parameter-server job (``kvstore='dist_sync'``)."""

    def broadcast_arrays(self, arrays):
        """Rank 0's values of `arrays` (NDArrays, the same shapes on every worker)
        copied into them on every worker: each pushes its own (rank 0) or zeros, the
        servers sum, each pulls the sum."""
        kv = self.kv
        for i, arr in enumerate(arrays):
            key = _AUX_KEY + i
            if key not in self._keys:
                kv.init(key, mx.nd.zeros(arr.shape, dtype=arr.dtype))
                self._keys.add(key)
            kv.push(key, arr if self.rank == 0 else mx.nd.zeros_like(arr))
            kv.pull(key, out=arr)

    def all_reduce_sum(self, values):
        kv = self.kv
        arr = mx.nd.array([float(v) for v in values], dtype="float64")
        key = _METRICS_KEY + len(values)
        if key not in self._keys:
            kv.init(key, mx.nd.zeros(arr.shape, dtype="float64"))
            self._keys.add(key)
        kv.push(key, arr)
        out = mx.nd.zeros(arr.shape, dtype="float64")
        kv.pull(key, out=out)
        return [float(v) for v in out.asnumpy()]


def join_job(timeout: float = DEFAULT_TIMEOUT) -> Job | None:
    """The parameter-server job this process is a worker of (DMLC_ROLE=worker and the
    other DMLC_* variables set by the launcher), its ``dist_sync`` kvstore created once;
    None outside such a job or when it has one worker."""
    if dmlc_role() != "worker" or int(os.environ.get("DMLC_NUM_WORKER", "1")) < 2:
        return None
    if "kv" not in _KV:
        _KV["kv"] = mx.kv.create("dist_sync")
    kv = _KV["kv"]
    job = PSJob(rank=kv.rank, world_size=kv.num_workers, engine="mxnet kvstore dist_sync")
    job.kv, job._keys = kv, _KV.setdefault("keys", set())
    return job
