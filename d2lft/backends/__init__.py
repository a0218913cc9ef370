"""The backends: one package per framework with the same modules (data, models,
runtime, runners, fastdata, weights, inference), each exporting the functions of
:class:`Backend` from its ``__init__``; and the registry that knows them
(:class:`BackendSpec`, :func:`register`), which imports no framework.

A backend package never imports another backend.
"""

from ._protocol import Backend, BackendSpec, check_backend, contract
from ._registry import (
    backend_of,
    current,
    for_net,
    framework_installed,
    get_backend,
    load,
    names,
    package_of,
    register,
    seed,
    spec,
    specs,
    use,
    using,
)

__all__ = [
    "Backend",
    "BackendSpec",
    "backend_of",
    "check_backend",
    "contract",
    "current",
    "for_net",
    "framework_installed",
    "get_backend",
    "load",
    "names",
    "package_of",
    "register",
    "seed",
    "spec",
    "specs",
    "use",
    "using",
]
