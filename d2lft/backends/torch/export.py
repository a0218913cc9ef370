"""ONNX export, PyTorch side: ``torch.onnx.export`` with the TorchScript exporter.

The newer ``torch.export``-based exporter (``dynamo=True``, the default since torch
2.9) needs the `onnxscript` package; the TorchScript one needs nothing beyond torch,
exports the same graph for these ResNets, and is what ``dynamo=False`` selects.
The backend-neutral :func:`d2lft.export` names the input and output and adds the
metadata.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch

from .inference import device_of
from .weights import _unwrap

#: the ONNX opset written (onnxruntime runs opsets 7 to 23)
OPSET = 17


def export_onnx(net, path, image_size=224) -> str:
    """Write `net` in evaluation mode (running BatchNorm statistics) to `path` as ONNX:
    one float32 input (N x 3 x image_size x image_size, N free), one output (the
    logits, N x classes). The network itself is left as it was. Returns the
    exporter's name and version."""
    model = _unwrap(net)
    if device_of(model).type != "cpu" or next(model.parameters()).dtype != torch.float32:
        model = copy.deepcopy(model).to("cpu", torch.float32)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # "You are using the legacy TorchScript-based ONNX export": chosen, see above
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (torch.zeros(1, 3, image_size, image_size),),
                os.fspath(path),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    return f"torch.onnx.export (TorchScript exporter), torch {torch.__version__}"
