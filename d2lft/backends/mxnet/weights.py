"""Portable parameters, MXNet side: Gluon structural names <-> canonical numpy arrays.

Gluon names a parameter by its place in the block tree (``features.4.0.body.1.gamma``);
:func:`d2lft.weights.gluon_name_map` maps those to the canonical (torchvision-style)
names, ``gamma``/``beta`` to ``weight``/``bias`` and ``output`` to ``fc``.
"""

from __future__ import annotations

import os
import pathlib

import mxnet as mx
import numpy as np

from ...io import weights as _w
from ...netinfo import has_info, net_info


def _structural(net) -> dict:
    return net._collect_params_with_prefix()


def _arch(net, structural):
    arch = net_info(net).arch if has_info(net) else None
    arch = _w.canonical_arch(arch) if arch is not None else _w.infer_arch(structural)
    if arch is None:
        raise ValueError(
            f"this {type(net).__name__} is not one of Gluon's ResNet-18s (no features.0.*)"
        )
    return arch


def _mapped(net):
    """({canonical: Parameter}, {canonical: Gluon name}) for `net`."""
    structural = _structural(net)
    gmap = _w.gluon_name_map(_arch(net, structural))
    unknown = sorted(set(structural) - set(gmap.values()))
    absent = [c for c, g in gmap.items() if g not in structural]
    if unknown or absent:
        raise ValueError(
            f"this network's parameters do not match Gluon's resnet18: "
            f"unexpected {unknown[:5]}, missing {absent[:5]}"
        )
    return {c: structural[g] for c, g in gmap.items()}, gmap


def state_arrays(net) -> dict:
    """{canonical name: float32 numpy array} of every parameter and BatchNorm
    statistic of `net` (copies from its first context)."""
    params, gmap = _mapped(net)
    # MKLDNN reorders weights in place during an (asynchronous) forward pass without
    # telling the engine; reading them meanwhile fails now and then, so wait first
    mx.nd.waitall()
    out = {}
    for c, p in params.items():
        if p._data is None:
            raise ValueError(
                f"parameter {c!r} (Gluon {gmap[c]!r}) is not initialised yet: "
                f"initialise the network (or run one forward pass) first"
            )
        out[c] = p.data(p.list_ctx()[0]).asnumpy().copy()
    return out


def load_state_arrays(net, arrays: dict, source="weights", head=True):
    """Set `net`'s parameters from `arrays` ({canonical name: array}), on every
    context they live on. Every name must be present with the network's shape, else
    ValueError naming the parameter, and nothing is changed. Parameters whose shape
    Gluon has not inferred yet take the array's shape. `head=False` leaves `output`
    alone."""
    params, gmap = _mapped(net)
    names = _w.check_arrays(
        {c: tuple(p.shape) for c, p in params.items()}, arrays, source, head=head, gluon=gmap
    )
    mx.nd.waitall()  # see state_arrays
    for c in names:
        p = params[c]
        value = np.asarray(arrays[c])
        if 0 in tuple(p.shape):
            p.shape = tuple(value.shape)
        if p._data is None:
            if p._deferred_init:
                p._finish_deferred_init()
            else:
                p.initialize(ctx=mx.cpu())
        p.set_data(mx.nd.array(value, dtype=p.dtype))
    return net


def read_native_weights(path) -> dict:
    """A Gluon ``.params`` file (``save_parameters`` or the model zoo's) as
    {canonical name: numpy array}."""
    path = pathlib.Path(path)
    try:
        loaded = mx.nd.load(os.fspath(path))
    except mx.base.MXNetError as err:
        raise ValueError(f"{path} is not a readable MXNet .params file ({err})") from err
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path} holds unnamed arrays; expected a file written by save_parameters"
        )
    arrays = {k.split(":", 1)[-1]: v.asnumpy() for k, v in loaded.items()}
    if arrays and not any("." in k for k in arrays):
        arrays = _from_prefixed(arrays, path)
    return _w.from_gluon_names(arrays, None, str(path))


def _from_prefixed(arrays, path):
    """Old-style names (``resnetv20_batchnorm0_gamma``, from ``save_params``) ->
    structural names, by matching a freshly built network's names."""
    from mxnet.gluon.model_zoo import vision

    def strip(name):
        return name.split("_", 1)[-1]

    theirs = {strip(k): v for k, v in arrays.items()}
    for arch in _w.ARCHS:
        net = vision.get_model(arch)
        by_prefixed = {strip(p.name): s for s, p in _structural(net).items()}
        if set(by_prefixed) == set(theirs):
            return {by_prefixed[k]: v for k, v in theirs.items()}
    raise ValueError(
        f"{path}: parameter names {sorted(arrays)[:3]}... match neither Gluon "
        f"resnet18_v1 nor resnet18_v2"
    )


def logits(net, X, train=False) -> np.ndarray:
    """`net`'s output for the numpy batch `X` as numpy, with batch statistics
    (`train=True`, ``autograd.train_mode``) or running statistics. Gluon updates
    BatchNorm running statistics only in a backward pass, so neither mode changes
    them here. Used by the parity checks."""
    from mxnet import autograd

    p = next(iter(net.collect_params().values()))
    x = mx.nd.array(np.asarray(X), dtype=p.dtype, ctx=p.list_ctx()[0])
    if train:
        with autograd.train_mode():
            return net(x).asnumpy()
    with autograd.predict_mode():
        return net(x).asnumpy()
