"""Portable parameters: one file format for both backends, and the name maps between them.

A d2lft parameter file is a `safetensors <https://huggingface.co/docs/safetensors>`_
file (no pickle: loading it runs no code) holding float32 arrays under *canonical
names*, plus str->str metadata::

    format          'd2lft.params'
    format_version  '1'
    arch            'resnet18_v1' or 'resnet18_v2'
    backend         the backend that wrote it ('mxnet' or 'torch')
    num_classes     rows of 'fc.weight'
    d2lft_version   the library version that wrote it
    ...             anything the caller added (`save_params(..., metadata={...})`)

Canonical names
---------------
``resnet18_v1`` uses torchvision's ``resnet18`` state_dict names, without the
``num_batches_tracked`` counters (Gluon has none)::

    conv1.weight  bn1.{weight,bias,running_mean,running_var}
    layer{1-4}.{0,1}.conv1.weight  layer{1-4}.{0,1}.bn1.*  .conv2.weight  .bn2.*
    layer{2-4}.0.downsample.0.weight  layer{2-4}.0.downsample.1.*
    fc.weight  fc.bias

``resnet18_v2`` (Gluon's pre-activation ResNet-18 v2) uses the state_dict names of
d2lft's torch port (:mod:`d2lft.backends.torch.resnet_v2`), shaped the same way::

    bn_data.*      the input BatchNorm (Gluon: scale=False, center=False; its
                   `weight` is held at 1, its `bias` is applied but never trained)
    conv1.weight   bn1.*
    layer{1-4}.{0,1}.bn1.*  .conv1.weight  .bn2.*  .conv2.weight
    layer{2-4}.0.downsample.weight          (a 1x1 convolution, no BatchNorm)
    bn_final.*     the BatchNorm after the last stage
    fc.weight  fc.bias

A BatchNorm's ``weight``/``bias`` are Gluon's ``gamma``/``beta``; the head is torch's
``fc`` and Gluon's ``output``. Array layouts agree in both engines (convolutions
OIHW, dense layers [out, in]), so no array is transposed.

`read_params` also reads a torchvision ``state_dict`` file (``.pth``, needs PyTorch)
and a Gluon ``.params`` file (needs MXNet), whichever backend is active.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from .._sys.atomic import atomic_write_bytes
from .._sys.errors import not_a_file
from .._version import __version__
from ..backends import _registry
from ..netinfo import net_info

FORMAT = "d2lft.params"
FORMAT_VERSION = "1"
ARCHS = ("resnet18_v1", "resnet18_v2")
ALIASES = {"resnet18": "resnet18_v1"}
HEAD_PREFIX = "fc."
#: metadata keys d2lft writes itself
RESERVED_METADATA = ("format", "format_version", "arch", "backend", "num_classes", "d2lft_version")

_BN = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "running_mean"),
    ("running_var", "running_var"),
)
_STAGES, _BLOCKS = 4, 2
_MX_MAGIC = 0x112  # MXNet's NDArray-list file magic (kMXAPINDArrayListMagic)


def canonical_arch(arch) -> str:
    """'resnet18_v1' or 'resnet18_v2' ('resnet18' is v1); ValueError otherwise."""
    name = ALIASES.get(arch, arch)
    if name not in ARCHS:
        raise ValueError(
            f"unknown arch {arch!r}; d2lft's portable parameters know {ARCHS + tuple(ALIASES)}"
        )
    return name


def gluon_name_map(arch) -> dict:
    """{canonical name: Gluon structural name} for `arch`, in the canonical order.

    Gluon structural names are those of ``block._collect_params_with_prefix()`` and of
    files written by ``save_parameters`` (``features.1.gamma``, ``output.weight``).
    """
    arch = canonical_arch(arch)
    m = {}

    def bn(canon, gluon):
        for c, g in _BN:
            m[f"{canon}.{c}"] = f"{gluon}.{g}"

    if arch == "resnet18_v1":
        m["conv1.weight"] = "features.0.weight"
        bn("bn1", "features.1")
        for s in range(_STAGES):
            for b in range(_BLOCKS):
                c, g = f"layer{s + 1}.{b}", f"features.{4 + s}.{b}"
                m[f"{c}.conv1.weight"] = f"{g}.body.0.weight"
                bn(f"{c}.bn1", f"{g}.body.1")
                m[f"{c}.conv2.weight"] = f"{g}.body.3.weight"
                bn(f"{c}.bn2", f"{g}.body.4")
                if s > 0 and b == 0:
                    m[f"{c}.downsample.0.weight"] = f"{g}.downsample.0.weight"
                    bn(f"{c}.downsample.1", f"{g}.downsample.1")
    else:
        bn("bn_data", "features.0")
        m["conv1.weight"] = "features.1.weight"
        bn("bn1", "features.2")
        for s in range(_STAGES):
            for b in range(_BLOCKS):
                c, g = f"layer{s + 1}.{b}", f"features.{5 + s}.{b}"
                bn(f"{c}.bn1", f"{g}.bn1")
                m[f"{c}.conv1.weight"] = f"{g}.conv1.weight"
                bn(f"{c}.bn2", f"{g}.bn2")
                m[f"{c}.conv2.weight"] = f"{g}.conv2.weight"
                if s > 0 and b == 0:
                    m[f"{c}.downsample.weight"] = f"{g}.downsample.weight"
        bn("bn_final", "features.9")
    m["fc.weight"] = "output.weight"
    m["fc.bias"] = "output.bias"
    return m


def canonical_names(arch) -> list:
    """The canonical parameter names of `arch`, head last."""
    return list(gluon_name_map(arch))


def infer_arch(names):
    """'resnet18_v1' / 'resnet18_v2' from a set of canonical or Gluon structural
    names, or None when they are neither."""
    names = set(names)
    if "bn_data.running_mean" in names or "features.0.running_mean" in names:
        return "resnet18_v2"
    if "bn1.running_mean" in names or "features.0.weight" in names:
        return "resnet18_v1"
    return None


def from_gluon_names(arrays: dict, arch=None, source="weights") -> dict:
    """Gluon structural names -> canonical names (`arch` inferred when None)."""
    arch = canonical_arch(arch) if arch is not None else infer_arch(arrays)
    if arch is None:
        raise ValueError(
            f"{source}: cannot tell which ResNet-18 these Gluon parameters "
            f"belong to (no 'features.0.*'); names start {sorted(arrays)[:5]}"
        )
    back = {g: c for c, g in gluon_name_map(arch).items()}
    unknown = sorted(set(arrays) - set(back))
    if unknown:
        raise ValueError(f"{source}: parameter(s) {unknown[:5]} are not part of Gluon's {arch}")
    return {back[g]: v for g, v in arrays.items()}


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict of str -> str, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(
                f"metadata must map str -> str (safetensors stores only strings); "
                f"entry {k!r}: {v!r} is {type(k).__name__} -> {type(v).__name__}; "
                f"convert it, e.g. with str() or json.dumps()"
            )
    return dict(metadata)


def write_params(path, arrays: dict, metadata: dict) -> pathlib.Path:
    """Write `arrays` ({name: np.ndarray}) and str->str `metadata` to a safetensors
    file at `path`, atomically (a failed write leaves any old file untouched)."""
    metadata = _check_metadata(metadata)
    clean = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise TypeError(f"parameter {k!r} is not a numeric array ({a.dtype})")
        clean[k] = np.ascontiguousarray(a)
    path = pathlib.Path(path)
    atomic_write_bytes(path, save(clean, metadata=metadata))
    return path


def _sniff(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9:
        n = struct.unpack("<Q", head[:8])[0]
        if head[8:9] == b"{" and 0 < n < os.path.getsize(path):
            return "safetensors"
        if n == _MX_MAGIC:
            return "gluon.params"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch.state_dict"
    return "unknown"


def _native_reader(kind: str, path):
    """The backend package that reads weights files of `kind` ('torch.state_dict' or
    'gluon.params'), loaded (ImportError naming the framework when it is missing)."""
    entry = next(e for e in _registry.specs() if e.native_weights == kind)
    try:
        return _registry.load(entry.name)
    except ImportError as err:
        raise ImportError(
            f"reading the {kind} file {path} needs {entry.framework}: {err}"
        ) from err


def read_params(path: str | os.PathLike) -> tuple[dict, dict]:
    """`(arrays, metadata)` from a parameter file: `arrays` maps canonical names to
    numpy arrays, `metadata` is a str->str dict (with at least 'format' and, when it
    can be told, 'arch').

    Reads d2lft's safetensors files, torchvision ``state_dict`` files (``.pth``/``.pt``,
    read with ``weights_only=True``; needs PyTorch) and Gluon ``.params`` files (needs
    MXNet), whatever the file's suffix.
    """
    path = pathlib.Path(path)
    why = not_a_file(path)
    if why:
        why = "does not exist" if why == "no such file" else f"is {why}"
        raise FileNotFoundError(f"parameter file {path} {why}")
    kind = _sniff(path)
    if kind == "safetensors":
        try:
            with safe_open(os.fspath(path), framework="numpy") as f:
                metadata = dict(f.metadata() or {})
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - no __iter__
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
        if metadata.get("format") == FORMAT:
            version = metadata.get("format_version", FORMAT_VERSION)
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"{path} was written in d2lft parameter format {version}; "
                    f"this d2lft reads format {FORMAT_VERSION}: upgrade d2lft"
                )
        else:  # a safetensors file from elsewhere: torchvision or Gluon names
            metadata = {"format": "safetensors", "source_format": metadata.get("format", "")}
            arrays = {
                k.removeprefix("module."): v
                for k, v in arrays.items()
                if not k.endswith("num_batches_tracked")
            }
            if any(k.startswith("features.") or k.startswith("output.") for k in arrays):
                arrays = from_gluon_names(arrays, None, str(path))
    elif kind in ("torch.state_dict", "gluon.params"):  # read by that format's backend
        arrays = _native_reader(kind, path).read_native_weights(path)
        metadata = {"format": kind}
    else:
        raise ValueError(
            f"{path} is neither a d2lft/safetensors parameter file, a torch "
            f"state_dict file (.pth) nor a Gluon .params file"
        )
    arch = infer_arch(arrays)
    if "arch" in metadata:
        canonical_arch(metadata["arch"])  # a clear error for a foreign arch name
    elif arch is not None:
        metadata["arch"] = arch
    return arrays, metadata


def net_arch(net) -> str:
    """The canonical arch of a d2lft network (from :func:`d2lft.net_info`)."""
    return canonical_arch(net_info(net).arch)


def save_params(net: Any, path: str | os.PathLike, metadata: dict | None = None) -> pathlib.Path:
    """Write every parameter and BatchNorm statistic of `net` (either backend) to
    `path` in d2lft's portable format; see the module docstring."""
    owner = _registry.backend_of(net)
    package = _registry.package_of(net)
    arch = net_arch(net)
    extra = _check_metadata(metadata)
    arrays = package.state_arrays(net)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "backend": owner,
        "num_classes": str(arrays["fc.weight"].shape[0]),
        "d2lft_version": __version__,
    }
    for k, v in extra.items():
        if k in meta and k not in ("d2lft_version", "backend") and meta[k] != v:
            raise ValueError(
                f"metadata key {k!r} is written by d2lft ({meta[k]!r}); "
                f"got {v!r}: use another key name"
            )
        meta.setdefault(k, v)
    return write_params(path, arrays, meta)


def load_params(net: Any, path: str | os.PathLike) -> Any:
    """Set every parameter and BatchNorm statistic of `net` from `path` (a d2lft
    file written by either backend, a torch state_dict or a Gluon .params file).

    The file must hold exactly the network's parameters with the same shapes; a
    missing, extra or misshapen entry raises ValueError naming it and `net` is left
    unchanged. Returns `net`."""
    package = _registry.package_of(net)
    arrays, metadata = read_params(path)
    arch = net_arch(net)
    if metadata.get("arch") not in (None, arch):
        raise ValueError(
            f"{path} holds {metadata['arch']} parameters but the network is "
            f"{arch}: build it with arch={metadata['arch']!r}"
        )
    package.load_state_arrays(net, arrays, source=str(path))
    return net


def check_arrays(own_shapes: dict, arrays: dict, source="weights", head=True, gluon=None):
    """Raise ValueError naming the first problem when `arrays` does not fit a network
    whose canonical parameter shapes are `own_shapes` (0 = not yet known).

    `head=False` ignores the head (`fc.*`) on both sides. `gluon` ({canonical:
    Gluon name}) adds the Gluon name to the messages."""

    def keep(k):
        return head or not k.startswith(HEAD_PREFIX)

    def show(k):
        return f"{k!r} (Gluon {gluon[k]!r})" if gluon and k in gluon else repr(k)

    own = {k: s for k, s in own_shapes.items() if keep(k)}
    theirs = {k: v for k, v in arrays.items() if keep(k)}
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"missing {', '.join(show(k) for k in missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)"
            )
        if extra:
            parts.append(
                f"unexpected {', '.join(repr(k) for k in extra[:5])}"
                f"{' ...' if len(extra) > 5 else ''} ({len(extra)} in all)"
            )
        raise ValueError(
            f"{source} does not fit this network: {'; '.join(parts)}. Check "
            f"the arch (resnet18_v1 or resnet18_v2)"
        )
    for k, want in own.items():
        got = tuple(np.shape(theirs[k]))
        want = tuple(want)
        if len(got) != len(want) or any(w not in (0, g) for w, g in zip(want, got, strict=True)):
            hint = (
                " (a different number of classes: build the network with "
                f"num_classes={got[0]} or load only the features)"
                if k.startswith(HEAD_PREFIX) and got[1:] == want[1:]
                else ""
            )
            raise ValueError(
                f"{source}: parameter {show(k)} has shape {got}, the network expects {want}{hint}"
            )
        a = np.asarray(theirs[k])
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(
                f"{source}: parameter {show(k)} has dtype {a.dtype}, expected floating point"
            )
    return [k for k in own]
