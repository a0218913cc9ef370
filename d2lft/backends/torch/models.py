"""The chapter's networks, PyTorch side: torchvision ResNet-18 with a new head."""

from __future__ import annotations

import pathlib

import torch
import torchvision
from torch import nn

from ...data.hub import DownloadError
from ...io import weights as portable
from ...netinfo import NetInfo, attach
from .resnet_v2 import resnet18_v2
from .weights import load_state_arrays

DEFAULT_ARCH = "resnet18"
ARCHS = ("resnet18", "resnet18_v1", "resnet18_v2")
HEAD_LR_MULT = 10
HEAD = "fc"


def _check_arch(arch):
    arch = DEFAULT_ARCH if arch is None else arch
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} for the torch backend; choose one of {ARCHS}")
    return arch


def _check_classes(num_classes):
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def _new_net(arch, num_classes=1000, weights=None):
    if arch == "resnet18_v2":  # Gluon's pre-activation ResNet-18, written in torch
        return resnet18_v2(num_classes=num_classes)
    return torchvision.models.resnet18(weights=weights, num_classes=num_classes)


def head(net) -> nn.Module:
    """The classifier layer that fine-tuning replaces (`fc`)."""
    return getattr(net, HEAD)


def num_outputs(net) -> int:
    return int(head(net).weight.shape[0])


def _set_head(net, num_classes, lr_mult):
    old = head(net)
    fc = nn.Linear(old.in_features, num_classes)
    nn.init.xavier_uniform_(fc.weight)
    if lr_mult != 1:
        for p in fc.parameters():
            p.lr_mult = lr_mult
    setattr(net, HEAD, fc)
    return old


def build_finetune_net(num_classes=2, pretrained=True, arch=None):
    """The chapter's `finetune_net`: ResNet-18 features from `pretrained`, a new
    Xavier-initialised `fc` with `num_classes` outputs whose parameters carry
    `lr_mult = 10` (honoured by `train_fine_tuning`).

    `pretrained`: True (torchvision's ImageNet weights, through its weights enum and
    cache; v1 only), a path to a weights file (d2lft's portable file, a torch
    state_dict, or a Gluon .params file, see `d2lft.weights`), or False (random
    features). `arch='resnet18_v2'` is Gluon's pre-activation network in torch.
    """
    arch = _check_arch(arch)
    _check_classes(num_classes)
    if pretrained is True and arch == "resnet18_v2":
        raise ValueError(
            "torchvision has no ImageNet weights for Gluon's resnet18_v2: pass "
            "pretrained=PATH with Gluon's resnet18_v2 .params file (reading it needs mxnet) "
            "or a d2lft file written by d2lft.save_params under the mxnet backend, or use "
            "arch='resnet18_v1'"
        )
    if pretrained is True:
        weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        try:
            net = _new_net(arch, weights=weights)
        except Exception as err:
            cache = pathlib.Path(torch.hub.get_dir()) / "checkpoints"
            raise DownloadError(
                f"could not download the ImageNet ResNet-18 weights ({err}). To work "
                f"offline, download {weights.url} elsewhere and place it in {cache} "
                f"(torchvision then uses it without network access); or pass "
                f"pretrained=PATH (a weights file) or pretrained=False (random features)"
            ) from err
        source_classes = list(weights.meta["categories"])
    elif pretrained is False or pretrained is None:
        net = _new_net(arch)
        source_classes = None
    else:
        arrays, meta = portable.read_params(pretrained)
        if meta.get("arch") not in (None, portable.canonical_arch(arch)):
            raise ValueError(
                f"{pretrained} holds {meta['arch']} weights but arch={arch!r}: "
                f"pass arch={meta['arch']!r}"
            )
        n_src = arrays["fc.weight"].shape[0] if "fc.weight" in arrays else 1000
        net = _new_net(arch, num_classes=n_src)
        load_state_arrays(net, arrays, source=str(pretrained), head="fc.weight" in arrays)
        source_classes = None
    source_head = _set_head(net, num_classes, HEAD_LR_MULT)  # kept out of the net's modules
    attach(
        net,
        NetInfo(
            arch=portable.canonical_arch(arch),
            kind="finetune",
            backend="torch",
            source_classes=source_classes,
            source_head=source_head,
        ),
    )
    return net


def build_scratch_net(num_classes=2, arch=None):
    """The chapter's `scratch_net`: the same architecture with torchvision's random
    initialisation and a new `nn.Linear` head (as the book's PyTorch tab), one
    learning rate for all layers."""
    arch = _check_arch(arch)
    _check_classes(num_classes)
    net = _new_net(arch, num_classes=num_classes)
    attach(net, NetInfo(arch=portable.canonical_arch(arch), kind="scratch", backend="torch"))
    return net


def imagenet_classes():
    """The 1000 ImageNet class names in the weights' own order (torchvision's metadata;
    no download)."""
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
