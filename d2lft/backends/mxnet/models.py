"""The chapter's networks, MXNet side: Gluon model-zoo ResNet-18 with a new head."""

from __future__ import annotations

import contextlib
import io
import os
import sys

import mxnet as mx
from mxnet import gluon, init
from mxnet.gluon.model_zoo import model_store, vision

from ...data.hub import DownloadError
from ...io import weights as portable
from ...netinfo import NetInfo, attach
from ._compat import import_gluoncv
from .weights import load_state_arrays

DEFAULT_ARCH = "resnet18_v2"
ARCHS = ("resnet18_v1", "resnet18_v2", "resnet18")
_ALIASES = {"resnet18": "resnet18_v1"}
HEAD_LR_MULT = 10
HEAD = "output"


def _check_arch(arch):
    arch = DEFAULT_ARCH if arch is None else arch
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} for the mxnet backend; choose one of {ARCHS}")
    return _ALIASES.get(arch, arch)


def _check_classes(num_classes):
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def head(net):
    """The classifier layer that fine-tuning replaces (`output`)."""
    return getattr(net, HEAD)


def num_outputs(net) -> int:
    layer = head(net)
    return int(getattr(layer, "_units", None) or layer.weight.shape[0])


def head_lr_mult(net) -> float:
    """The head's learning-rate multiplier (10 for a fine-tuning net, 1 from scratch)."""
    return float(head(net).weight.lr_mult)


def imagenet_classes():
    """The 1000 ImageNet class names in the Gluon model zoo weights' order (GluonCV's
    ILSVRC-2012 list; no download)."""
    import_gluoncv()
    from gluoncv.data.imagenet.classification import ImageNet1kAttr

    return list(ImageNet1kAttr().classes)


def named_params(block):
    """Structural parameter names ('features.0.gamma', 'output.weight') -> Parameter."""
    return block._collect_params_with_prefix()


def model_root():
    """Gluon's model-zoo cache folder, $MXNET_HOME/models (default ~/.mxnet/models)."""
    return os.path.join(mx.base.data_dir(), "models")


def _new_net(arch, classes):
    return vision.get_model(arch, classes=classes)


def build_finetune_net(num_classes=2, pretrained=True, arch=None):
    """The chapter's `finetune_net`: ResNet-18 features from `pretrained`, a new
    Xavier-initialised `output` with `num_classes` outputs and `lr_mult = 10`.

    `pretrained`: True (Gluon model zoo ImageNet weights, through its cache in
    $MXNET_HOME/models), a path to a weights file (d2lft's portable file, a Gluon
    `.params` file, or a torch state_dict, see `d2lft.weights`), or False (Xavier
    features).
    """
    arch = _check_arch(arch)
    _check_classes(num_classes)
    net = _new_net(arch, num_classes)
    source_head = None
    if pretrained is True:
        name = f"{arch}-{model_store.short_hash(arch)}"
        repo = os.environ.get("MXNET_GLUON_REPO", model_store.apache_repo_url)
        url = model_store._url_format.format(repo_url=repo.rstrip("/") + "/", file_name=name)
        if not os.path.isfile(os.path.join(model_root(), name + ".params")):
            print(f"Downloading {url} to {model_root()} (once)", file=sys.stderr, flush=True)
        try:
            # root read now, not at import ($MXNET_HOME may be set after mxnet's import);
            # Gluon's own lines (a temporary file name, five retries) are not shown
            with contextlib.redirect_stdout(io.StringIO()):
                src = vision.get_model(arch, pretrained=True, root=model_root())
        except Exception as err:
            raise DownloadError(
                f"could not download the ImageNet {arch} weights ({err}). To work offline, "
                f"download {url} elsewhere, unzip it and place {name}.params in "
                f"{model_root()} (Gluon then uses it without network access); or pass "
                f"pretrained=PATH (a weights file) or pretrained=False (random features)"
            ) from err
        net.features = src.features
        source_head = src.output
    elif pretrained is False or pretrained is None:
        net.features.initialize(init.Xavier())
    else:
        arrays, meta = portable.read_params(pretrained)
        if meta.get("arch") not in (None, arch):
            raise ValueError(
                f"{pretrained} holds {meta['arch']} weights but arch={arch!r}: "
                f"pass arch={meta['arch']!r}"
            )
        net.features.initialize(init.Xavier())
        load_state_arrays(net, arrays, source=str(pretrained), head=False)
        if "fc.weight" in arrays:
            w = arrays["fc.weight"]
            source_head = gluon.nn.Dense(w.shape[0], in_units=w.shape[1])
            source_head.initialize()
            source_head.weight.set_data(mx.nd.array(w))
            source_head.bias.set_data(mx.nd.array(arrays["fc.bias"]))
    net.output.initialize(init.Xavier())
    net.output.collect_params().setattr("lr_mult", HEAD_LR_MULT)
    source_classes = None
    if pretrained is True:  # the model zoo's ImageNet class names, in its output order
        with contextlib.suppress(ImportError):  # no GluonCV: init_head_from_source asks
            source_classes = imagenet_classes()
    attach(
        net,
        NetInfo(
            arch=arch,
            kind="finetune",
            backend="mxnet",
            source_classes=source_classes,
            source_head=source_head,
        ),
    )
    _finish_init(net)
    return net


def _finish_init(net):
    """Complete Gluon's deferred initialisation now (one forward pass of a blank
    image, prediction mode), so the initial weights are drawn at build time, from the
    generator's state then, and every parameter can be read or saved right away."""
    net(mx.nd.zeros((1, 3, 32, 32)))
    mx.nd.waitall()


def build_scratch_net(num_classes=2, arch=None):
    """The chapter's `scratch_net`: the same architecture, every layer
    Xavier-initialised (as the book's MXNet tab), one learning rate for all layers."""
    arch = _check_arch(arch)
    _check_classes(num_classes)
    net = _new_net(arch, num_classes)
    net.initialize(init.Xavier())
    attach(net, NetInfo(arch=arch, kind="scratch", backend="mxnet"))
    _finish_init(net)
    return net
