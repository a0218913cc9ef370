"""The chapter's networks, MXNet side: Gluon model-zoo ResNet-18 with a new head."""
from __future__ import annotations

import os
import pathlib

import mxnet as mx
from mxnet import gluon, init
from mxnet.gluon.model_zoo import vision

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


def named_params(block):
    """Structural parameter names ('features.0.gamma', 'output.weight') -> Parameter."""
    return block._collect_params_with_prefix()


def read_params_file(path):
    """A Gluon `.params` file as {structural name: NDArray}."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        loaded = mx.nd.load(os.fspath(path))
    except mx.base.MXNetError as err:
        raise ValueError(f"{path} is not a readable MXNet .params file ({err})") from err
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds unnamed arrays; expected a file written by "
                         f"save_parameters")
    return {k.split(":", 1)[-1]: v for k, v in loaded.items()}


def load_features(net, arrays, source="weights"):
    """Set every `features.*` parameter of `net` from `arrays` ({name: array}).

    A missing, extra or misshapen entry raises ValueError naming it.
    """
    own = {k: p for k, p in named_params(net).items() if not k.startswith(HEAD + ".")}
    theirs = {k: v for k, v in arrays.items() if not k.startswith(HEAD + ".")}
    missing = sorted(set(own) - set(theirs))
    extra = sorted(set(theirs) - set(own))
    if missing or extra:
        raise ValueError(f"{source} does not fit this network: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                         f"{'...' if len(extra) > 5 else ''}")
    for k, p in own.items():
        want, got = tuple(p.shape), tuple(theirs[k].shape)
        # Gluon leaves not-yet-inferred dimensions as 0 until the first forward pass
        if len(want) != len(got) or any(w not in (0, g) for w, g in zip(want, got)):
            raise ValueError(f"{source}: parameter {k!r} has shape {got}, "
                             f"the network expects {want}")
    for k, p in own.items():
        value = theirs[k]
        value = value if isinstance(value, mx.nd.NDArray) else mx.nd.array(value, dtype="float32")
        if 0 in tuple(p.shape):
            p.shape = tuple(value.shape)
        if p._data is None:
            if p._deferred_init:
                p._finish_deferred_init()
            else:
                p.initialize(ctx=mx.cpu())
        p.set_data(value)
    return net


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
        try:
            # root read now, not at import ($MXNET_HOME may be set after mxnet's import)
            src = vision.get_model(arch, pretrained=True, root=model_root())
        except Exception as err:
            from mxnet.gluon.model_zoo import model_store
            raise RuntimeError(
                f"could not get the ImageNet {arch} weights ({err}). Offline? Place "
                f"{arch}-{model_store.short_hash(arch)}.params in {model_root()}, or pass "
                f"pretrained=PATH") from err
        net.features = src.features
        source_head = src.output
    elif pretrained is False or pretrained is None:
        net.features.initialize(init.Xavier())
    else:
        from ... import weights as portable
        from .weights import load_state_arrays
        arrays, meta = portable.read_params(pretrained)
        if meta.get("arch") not in (None, arch):
            raise ValueError(f"{pretrained} holds {meta['arch']} weights but arch={arch!r}: "
                             f"pass arch={meta['arch']!r}")
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
    object.__setattr__(net, "source_head", source_head)  # not a child block
    net.source_classes = None
    if pretrained is True:  # the model zoo's ImageNet class names, in its output order
        try:
            from .predict import imagenet_classes
            net.source_classes = imagenet_classes()
        except ImportError:  # GluonCV missing: d2lft.init_head_from_source asks for names
            pass
    net.arch = arch
    return net


def build_scratch_net(num_classes=2, arch=None):
    """The chapter's `scratch_net`: the same architecture, every layer
    Xavier-initialised (as the book's MXNet tab), one learning rate for all layers."""
    arch = _check_arch(arch)
    _check_classes(num_classes)
    net = _new_net(arch, num_classes)
    net.initialize(init.Xavier())
    object.__setattr__(net, "source_head", None)
    net.source_classes = None
    net.arch = arch
    return net
