"""What a backend is: its registry entry (:class:`BackendSpec`, plain data, no framework)
and the contract its package must meet (:class:`Backend`, checked by
:func:`check_backend`).

A backend is a package (``d2lft.backends.torch``, ``d2lft.backends.mxnet``) whose
``__init__`` exports the functions of :class:`Backend`, with these parameter names.
Everything backend-neutral in d2lft (the API, the engine, checkpoints, prediction)
reaches a framework only through them. The package is imported the first time the
backend is used; its :class:`BackendSpec` is known before that, so names, the book's
learning rates, loss reductions and the CLI's choices never import a framework.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Literal, Protocol, runtime_checkable

LossReduction = Literal["mean", "sum"]


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """The registry's data about one backend (see :func:`d2lft.backends.register`).

    `name`: what :func:`d2lft.use` takes; `module`: the package that implements
    :class:`Backend`; `framework`: the import name of its framework; `install`: how
    to install it; `net_packages`: the top-level packages whose objects belong to it
    (networks, arrays); `loss_reduction`: how its tab of the chapter reduces the
    per-example losses ('mean': MXNet's ``trainer.step(batch_size)``, 'sum': torch's
    ``l.sum().backward()``); `lr_finetune` / `lr_scratch`: the book's learning rates;
    `archs` / `default_arch`: the networks it builds; `precisions`: what its fast
    pipeline trains in; `compile`: whether it has a graph compiler
    (``FastPipeline(compile=True)``); `native_weights`: the weights file format its
    framework writes (read by :func:`d2lft.read_params` with this backend);
    `launcher`: how ``d2lft train --nproc N`` starts its data-parallel job
    ('torchrun' or 'ps-lite', see :mod:`d2lft.launch`); `fast_multi_gpu`: how the
    fast pipeline uses several GPUs of one machine: 'processes' (``d2lft train``
    starts one worker per GPU, e.g. torch's DistributedDataParallel) or 'in-process'
    (one process over all of them, e.g. MXNet's ``kvstore='device'``).
    """

    name: str
    module: str
    framework: str
    install: str
    net_packages: tuple[str, ...]
    loss_reduction: LossReduction
    lr_finetune: float
    lr_scratch: float
    archs: tuple[str, ...]
    default_arch: str
    precisions: tuple[str, ...] = ("fp32",)
    compile: bool = False
    native_weights: str = ""
    launcher: str = ""
    fast_multi_gpu: str = "in-process"

    def book_lr(self, mode: str) -> float:
        """The book's learning rate for `mode` ('finetune' or 'scratch')."""
        if mode not in ("finetune", "scratch"):
            raise ValueError(f"mode must be 'finetune' or 'scratch', got {mode!r}")
        return self.lr_finetune if mode == "finetune" else self.lr_scratch


@runtime_checkable
class Backend(Protocol):
    """The functions a backend package provides (module-level, these parameters).

    Data: `image_folder`, `train_augs`, `test_augs`. Networks: `build_finetune_net`,
    `build_scratch_net`, `head`, `num_outputs`. Runtime: `all_devices`,
    `seed_framework`, `seed_everything`, `resolve_precision`. Training:
    `make_runner` (a :class:`d2lft.engine.loop.Runner` for a plan), `join_job` (the
    data-parallel job this process is a worker of, or None). Weights:
    `state_arrays`, `load_state_arrays`, `read_native_weights`, `logits`. Prediction:
    `predict_proba`, `predict_folder`, `head_arrays`, `set_head_rows`,
    `imagenet_classes`. Export: `export_onnx`.
    """

    def image_folder(self, path, transform=None, *, skip_bad=False) -> Any: ...
    def train_augs(self, image_size) -> Any: ...
    def test_augs(self, image_size) -> Any: ...
    def build_finetune_net(self, num_classes, pretrained, arch) -> Any: ...
    def build_scratch_net(self, num_classes, arch) -> Any: ...
    def head(self, net) -> Any: ...
    def num_outputs(self, net) -> int: ...
    def all_devices(self) -> list: ...
    def seed_framework(self, seed) -> None: ...
    def seed_everything(self, seed) -> None: ...
    def resolve_precision(self, precision, device) -> str: ...
    def make_runner(self, net, plan) -> Any: ...
    def join_job(self, timeout) -> Any: ...
    def state_arrays(self, net) -> dict: ...
    def load_state_arrays(self, net, arrays, source="weights", head=True) -> Any: ...
    def read_native_weights(self, path) -> dict: ...
    def logits(self, net, X, train=False) -> Any: ...
    def predict_proba(self, net, items, image_size=224, batch_size=32) -> Any: ...
    def predict_folder(self, net, folder, image_size=224, batch_size=32) -> Any: ...
    def head_arrays(self, layer) -> tuple: ...
    def set_head_rows(self, net, rows) -> None: ...
    def imagenet_classes(self) -> list: ...
    def export_onnx(self, net, path, image_size=224) -> str: ...


def contract() -> dict[str, list[str]]:
    """{function name: its parameter names} that every backend must export."""
    out = {}
    for name, fn in vars(Backend).items():
        if name.startswith("_") or not callable(fn):
            continue
        params = list(inspect.signature(fn).parameters)[1:]  # drop self
        out[name] = params
    return out


def check_backend(package: Any, spec: BackendSpec | None = None) -> list[str]:
    """The ways `package` fails the contract (an empty list when it meets it): a
    missing function, or one whose parameters are not the contract's, in order."""
    problems = []
    for name, params in contract().items():
        fn = getattr(package, name, None)
        if fn is None or not callable(fn):
            problems.append(f"{name}: missing")
            continue
        try:
            got = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):  # pragma: no cover - a builtin
            continue
        if got[: len(params)] != params or any(
            p.default is inspect.Parameter.empty
            for p in list(inspect.signature(fn).parameters.values())[len(params) :]
        ):
            problems.append(f"{name}{tuple(got)}: expected parameters {tuple(params)}")
    if spec is not None:
        for arch in (spec.default_arch,):
            if arch not in spec.archs:
                problems.append(f"default_arch {arch!r} is not among archs {spec.archs}")
        if spec.loss_reduction not in ("mean", "sum"):
            problems.append(f"loss_reduction {spec.loss_reduction!r} is not 'mean' or 'sum'")
    return problems
