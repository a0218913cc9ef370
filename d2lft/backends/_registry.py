"""The backend registry, and which backend is active: use(), using(), get_backend(),
$D2LFT_BACKEND, and d2lft.seed().

Nothing here imports a framework at module level: a backend package is imported the
first time it is asked for, and a missing framework raises an ImportError that names
the pip extra to install. Backend names, the book's learning rates, loss reductions
and the CLI's choices all come from the registered :class:`BackendSpec` entries.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._protocol import BackendSpec, check_backend

ENV_VAR = "D2LFT_BACKEND"

_SPECS: dict[str, BackendSpec] = {}


def register(spec: BackendSpec, *, check: bool = False) -> BackendSpec:
    """Add a backend to the registry (its package is imported on first use; with
    `check=True` now, and refused unless it meets :class:`Backend`)."""
    if not isinstance(spec, BackendSpec):
        raise TypeError(f"register() takes a BackendSpec, got {type(spec).__name__}")
    if check:
        problems = check_backend(importlib.import_module(spec.module), spec)
        if problems:
            raise TypeError(
                f"backend {spec.name!r} ({spec.module}) does not meet the contract: "
                + "; ".join(problems)
            )
    _SPECS[spec.name] = spec
    return spec


register(
    BackendSpec(
        name="mxnet",
        module="d2lft.backends.mxnet",
        framework="mxnet",
        install="pip install -e '.[mxnet]'  (MXNet 1.9.1 needs numpy<1.24)",
        net_packages=("mxnet", "gluoncv"),
        loss_reduction="mean",
        lr_finetune=0.01,
        lr_scratch=0.1,
        archs=("resnet18_v2", "resnet18_v1", "resnet18"),
        default_arch="resnet18_v2",
        precisions=("fp32",),
        compile=False,
        native_weights="gluon.params",
        launcher="ps-lite",
        fast_multi_gpu="in-process",
    )
)
register(
    BackendSpec(
        name="torch",
        module="d2lft.backends.torch",
        framework="torch",
        install="pip install -e '.[torch]'",
        net_packages=("torch", "torchvision"),
        loss_reduction="sum",
        lr_finetune=5e-5,
        lr_scratch=5e-4,
        archs=("resnet18", "resnet18_v1", "resnet18_v2"),
        default_arch="resnet18",
        precisions=("fp32", "bf16"),
        compile=True,
        native_weights="torch.state_dict",
        launcher="torchrun",
        fast_multi_gpu="processes",
    )
)


def names() -> tuple[str, ...]:
    """The registered backends' names, sorted."""
    return tuple(sorted(_SPECS))


def spec(name: str) -> BackendSpec:
    """The registry entry of backend `name` (ValueError listing the valid names)."""
    return _SPECS[check_name(name)]


def specs() -> tuple[BackendSpec, ...]:
    return tuple(_SPECS[n] for n in names())


def check_name(name) -> str:
    if not isinstance(name, str) or name.lower() not in _SPECS:
        raise ValueError(
            f"unknown backend {name!r}; valid backends are {', '.join(repr(b) for b in names())}"
        )
    return name.lower()


def framework_installed(name: str) -> bool:
    """True when the framework behind backend `name` can be imported (not importing it)."""
    return importlib.util.find_spec(spec(name).framework) is not None


def _default() -> str:
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            return check_name(env)
        except ValueError as err:
            raise ValueError(f"{ENV_VAR}={env!r}: {err}") from None
    for name in ("torch", "mxnet", *names()):
        if name in _SPECS and framework_installed(name):
            return name
    raise ImportError(
        "d2lft needs MXNet or PyTorch; install one with " + " or ".join(s.install for s in specs())
    )


# d2lft.seed(): for each backend not loaded yet, the seed to give its framework on load
_pending_seeds: dict[str, int] = {}


def load(name: str):
    """Import and return the package of backend `name`."""
    entry = spec(name)
    if not framework_installed(entry.name):
        raise ImportError(
            f"the {entry.name!r} backend needs the {entry.framework} package, "
            f"which is not installed: {entry.install}"
        )
    package = importlib.import_module(entry.module)
    pending = _pending_seeds.pop(entry.name, None)
    if pending is not None:  # d2lft.seed() was called before this framework was loaded
        package.seed_framework(pending)
    return package


def seed(value: int) -> int:
    """Seed every random generator that building and training draw from: Python's
    `random`, numpy's global generator, and the frameworks' (each now if loaded, else
    when d2lft loads it). ``d2lft.seed(n)`` at the top of a script makes the whole
    script repeat exactly: the new head's initialisation, random weights, and every
    run whose `seed=` is not given (its batches are drawn from these generators).
    Returns `value`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be an integer >= 0, got {value!r}")
    value = int(value)
    random.seed(value)
    np.random.seed(value % 2**32)
    for entry in specs():
        if entry.module in sys.modules:
            _pending_seeds.pop(entry.name, None)
            sys.modules[entry.module].seed_framework(value)
        else:
            _pending_seeds[entry.name] = value
    return value


_state = threading.local()
_global: dict[str, str | None] = {"name": None}


def use(name: str) -> str:
    """Make `name` ('mxnet' or 'torch') the active backend for this process.

    The framework is imported now, so a missing install fails here and not later.
    Returns the name.
    """
    name = check_name(name)
    load(name)
    _global["name"] = name
    return name


def get_backend() -> str:
    """The active backend's name: the innermost `using`, else `use`, else
    $D2LFT_BACKEND, else torch when installed, else mxnet."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    if _global["name"] is None:
        _global["name"] = _default()
    return _global["name"]


@contextlib.contextmanager
def using(name: str) -> Iterator[Any]:
    """Context manager: ``with d2lft.using('mxnet'): ...`` (per thread, nestable)."""
    name = check_name(name)
    package = load(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield package
    finally:
        stack.pop()


def current():
    """The active backend package."""
    return load(get_backend())


def backend_of(obj: Any) -> str | None:
    """The name of the backend whose framework `obj` (a network, an array) belongs to,
    else None. Looks only at class modules, so it never imports a framework."""
    for cls in type(obj).__mro__:
        mod = cls.__module__ or ""
        root = mod.split(".", 1)[0]
        for entry in _SPECS.values():
            if (
                root in entry.net_packages
                or mod == entry.module
                or mod.startswith(entry.module + ".")
            ):
                return entry.name
    return None


def for_net(net):
    """The backend package that owns `net`, checked against the active backend."""
    active = get_backend()
    owner = backend_of(net)
    if owner is None:
        raise TypeError(
            f"expected a network built by d2lft (an MXNet Gluon block or a torch "
            f"nn.Module), got {type(net).__name__}"
        )
    if owner != active:
        raise TypeError(
            f"this network was built with the {owner!r} backend but the active backend is "
            f"{active!r}: call d2lft.use({owner!r}) first, or rebuild the network under "
            f"{active!r} (d2lft.save_params / d2lft.load_params move weights between backends)"
        )
    return load(active)


def package_of(net):
    """The backend package that owns `net`, whichever backend is active."""
    owner = backend_of(net)
    if owner is None:
        raise TypeError(
            f"expected a network built by d2lft (an MXNet Gluon block or a torch "
            f"nn.Module), got {type(net).__name__}"
        )
    return load(owner)
