"""ONNX export, MXNet side: ``mx.onnx.export_model`` on the network's symbol.

The Gluon network is traced into a symbol (calling it on ``mx.sym.var``, which
leaves the network as it was, not hybridized) and exported with its parameters and
BatchNorm statistics. MXNet's exporter (mxnet 1.9.1) imports ``onnx.mapping``,
which onnx removed in 1.19: the `onnx` extra pins ``onnx<1.19``. It also ignores
BatchNorm's ``fix_gamma`` (Gluon's ``BatchNorm(scale=False)``, the first layer of
resnet18_v2), which MXNet computes with gamma = 1: such gammas are exported as ones.
The backend-neutral :func:`d2lft.export` names the input and output and adds the
metadata.
"""

from __future__ import annotations

import json
import os

import mxnet as mx
import numpy as np


def _fixed_gammas(sym) -> set:
    """The gamma inputs of the BatchNorm nodes of `sym` that have fix_gamma=True."""
    graph = json.loads(sym.tojson())
    nodes = graph["nodes"]
    out = set()
    for node in nodes:
        if node["op"] == "BatchNorm" and node.get("attrs", {}).get("fix_gamma") == "True":
            out.add(nodes[node["inputs"][1][0]]["name"])
    return out


def export_onnx(net, path, image_size=224) -> str:
    """Write `net` in prediction mode (running BatchNorm statistics) to `path` as
    ONNX: one float32 input (N x 3 x image_size x image_size, N free), one output
    (the logits, N x classes). The network itself is left as it was. Returns the
    exporter's name and version (its operators are opset 12/13's, the file declares
    the installed onnx's opset)."""
    mx.nd.waitall()
    sym = net(mx.sym.var("data"))
    params = {}
    for p in net.collect_params().values():
        params[p.name] = p.data(p.list_ctx()[0]).copyto(mx.cpu())
    for name in _fixed_gammas(sym):
        params[name] = mx.nd.ones_like(params[name])
    known = set(sym.list_arguments()) | set(sym.list_auxiliary_states())
    params = {k: v for k, v in params.items() if k in known}
    mx.onnx.export_model(
        sym,
        params,
        in_shapes=[(1, 3, image_size, image_size)],
        in_types=[np.float32],
        onnx_file_path=os.fspath(path),
        dynamic=True,
        dynamic_input_shapes=[(None, 3, image_size, image_size)],
        verbose=False,
    )
    return f"mxnet.onnx.export_model, mxnet {mx.__version__}"
