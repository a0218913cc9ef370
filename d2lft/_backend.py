"""Which backend is active: use(), using(), get_backend(), D2LFT_BACKEND.

Nothing here imports a framework at module level: a backend package is imported
the first time it is asked for, and a missing framework raises an ImportError that
names the pip extra to install.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading

BACKENDS = ("mxnet", "torch")
_FRAMEWORK = {"mxnet": "mxnet", "torch": "torch"}
_EXTRA_HINT = {
    "mxnet": "pip install 'd2lft[mxnet]'  (MXNet 1.9.1 needs numpy<1.24)",
    "torch": "pip install 'd2lft[torch]'",
}
ENV_VAR = "D2LFT_BACKEND"

_state = threading.local()
_global = {"name": None}


def _check_name(name) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}; valid backends are {', '.join(repr(b) for b in BACKENDS)}")
    return name.lower()


def framework_installed(name: str) -> bool:
    """True when the framework behind backend `name` can be imported (not importing it)."""
    return importlib.util.find_spec(_FRAMEWORK[_check_name(name)]) is not None


def _default() -> str:
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            return _check_name(env)
        except ValueError as err:
            raise ValueError(f"{ENV_VAR}={env!r}: {err}") from None
    for name in ("torch", "mxnet"):
        if framework_installed(name):
            return name
    raise ImportError("d2lft needs MXNet or PyTorch; install one with "
                      + " or ".join(_EXTRA_HINT.values()))


def load(name: str):
    """Import and return the backend package `d2lft.backends.<name>`."""
    name = _check_name(name)
    if not framework_installed(name):
        raise ImportError(f"the {name!r} backend needs the {_FRAMEWORK[name]} package, "
                          f"which is not installed: {_EXTRA_HINT[name]}")
    package = importlib.import_module(f"d2lft.backends.{name}")
    pending = _seeds.pop(name, None)
    if pending is not None:  # d2lft.seed() was called before this framework was loaded
        _seed_framework(package, pending)
    return package


# d2lft.seed(): for each backend not loaded yet, the seed to give its framework on load
_seeds: dict = {}


def _seed_framework(package, value: int):
    importlib.import_module(package.__name__ + ".train").seed_framework(value)


def seed(value: int) -> int:
    """Seed every random generator that building and training draw from: Python's
    `random`, numpy's global generator, and the frameworks' (torch's and MXNet's: each
    now if loaded, else when d2lft loads it). `d2lft.seed(n)` at the top of a script
    makes the whole script repeat exactly: the new head's initialisation, random
    weights, and every run whose `seed=` is not given (it draws its seed from Python's
    `random`, and records it in `History.config['seed']`). Returns `value`."""
    import random
    import sys

    import numpy as np
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be an integer >= 0, got {value!r}")
    value = int(value)
    random.seed(value)
    np.random.seed(value % 2**32)
    for name in BACKENDS:
        if f"d2lft.backends.{name}" in sys.modules:
            _seeds.pop(name, None)
            _seed_framework(sys.modules[f"d2lft.backends.{name}"], value)
        else:
            _seeds[name] = value
    return value


def use(name: str) -> str:
    """Make `name` ('mxnet' or 'torch') the active backend for this process.

    The framework is imported now, so a missing install fails here and not later.
    Returns the name.
    """
    name = _check_name(name)
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
def using(name: str):
    """Context manager: `with d2lft.using('mxnet'): ...` (per thread, nestable)."""
    name = _check_name(name)
    load(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield load(name)
    finally:
        stack.pop()


def current():
    """The active backend package."""
    return load(get_backend())


def backend_of(obj):
    """'mxnet' or 'torch' when `obj` is one of their networks/arrays, else None.

    Looks only at class names, so it never imports a framework.
    """
    for cls in type(obj).__mro__:
        mod = cls.__module__ or ""
        root = mod.split(".", 1)[0]
        if root in ("torch", "torchvision"):
            return "torch"
        if root in ("mxnet", "gluoncv"):
            return "mxnet"
        if mod.startswith("d2lft.backends."):
            return mod.split(".")[2]
    return None


def for_net(net):
    """The backend package that owns `net`, checked against the active backend."""
    active = get_backend()
    owner = backend_of(net)
    if owner is None:
        raise TypeError(f"expected a network built by d2lft (an MXNet Gluon block or a torch "
                        f"nn.Module), got {type(net).__name__}")
    if owner != active:
        raise TypeError(
            f"this network was built with the {owner!r} backend but the active backend is "
            f"{active!r}: call d2lft.use({owner!r}) first, or rebuild the network under "
            f"{active!r} (d2lft.save_params / d2lft.load_params move weights between backends)")
    return load(active)
