"""Portable parameters, PyTorch side: state_dict <-> canonical numpy arrays.

d2lft's torch networks already use the canonical names (:mod:`d2lft.weights`), so
this side maps nothing: it drops the ``num_batches_tracked`` counters (Gluon has
none) and a ``module.`` prefix left by ``nn.DataParallel``.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch
from torch import nn

from ...io import weights as _w

_SKIP = "num_batches_tracked"


def _unwrap(net):
    return (
        net.module
        if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel))
        else net
    )


def _own(net):
    return {k: v for k, v in _unwrap(net).state_dict().items() if not k.endswith(_SKIP)}


def state_arrays(net) -> dict:
    """{canonical name: float32 numpy array} of every parameter and BatchNorm
    statistic of `net` (copies, on the CPU)."""
    return {k: v.detach().to("cpu", copy=True).numpy() for k, v in _own(net).items()}


def load_state_arrays(net, arrays: dict, source="weights", head=True):
    """Copy `arrays` ({canonical name: array}) into `net` in place (device and dtype
    kept). Every name must be present with the network's shape, else ValueError
    naming the parameter, and nothing is changed. `head=False` leaves `fc` alone."""
    own = _own(net)
    names = _w.check_arrays({k: tuple(v.shape) for k, v in own.items()}, arrays, source, head=head)
    with torch.no_grad():
        for k in names:
            own[k].copy_(torch.as_tensor(np.asarray(arrays[k])))
    return net


def read_native_weights(path) -> dict:
    """A torch ``state_dict`` file as {canonical name: numpy array}, read with
    ``weights_only=True`` (no pickled code runs); a ``{'state_dict': ...}``
    checkpoint and ``module.`` prefixes are accepted."""
    path = pathlib.Path(path)
    try:
        sd = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for bad files
        raise ValueError(f"{path} is not a readable torch weights file ({err})") from err
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state_dict of tensors")
    return {
        k.removeprefix("module."): v.detach().cpu().numpy()
        for k, v in sd.items()
        if not k.endswith(_SKIP)
    }


def logits(net, X, train=False) -> np.ndarray:
    """`net`'s output for the numpy batch `X` as numpy, in training mode (batch
    statistics; BatchNorm running statistics are updated) or evaluation mode; the
    network's mode is restored afterwards. Used by the parity checks."""
    was = net.training
    net.train(train)
    try:
        p = next(net.parameters())
        with torch.no_grad():
            out = net(torch.as_tensor(np.asarray(X), dtype=p.dtype, device=p.device))
        return out.cpu().numpy()
    finally:
        net.train(was)
