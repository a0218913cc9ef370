"""The shape of the package, enforced: imports flow one way (no cycle, layers in
order), lazy imports only for frameworks, PIL and matplotlib, every registered backend
meets the contract and has the same modules, and shared code names no backend."""

from __future__ import annotations

import ast
import pathlib
import sys

import grimp
import pytest

import d2lft
from d2lft.backends import _protocol, _registry

PKG = pathlib.Path(d2lft.__file__).parent

#: bottom to top: a module may import modules of its own layer or of layers below
LAYERS = [
    ["d2lft._version", "d2lft._sys"],
    ["d2lft.netinfo", "d2lft.data", "d2lft.plot"],
    ["d2lft.backends._protocol"],
    ["d2lft.backends._registry", "d2lft.backends"],
    ["d2lft.engine"],
    ["d2lft.io"],
    ["d2lft.deploy"],
    ["d2lft.backends.torch", "d2lft.backends.mxnet"],
    ["d2lft.parity", "d2lft.inference", "d2lft.api"],
    ["d2lft.exercises", "d2lft.deploy.serve"],
    ["d2lft", "d2lft.cli", "d2lft.cli_guard", "d2lft.launch", "d2lft.__main__"],
]
#: what may be imported inside a function: frameworks, PIL, matplotlib (and IPython,
#: present only in notebooks), and the optional extras' packages (`onnx`: onnx,
#: onnxruntime; `serve`: starlette, uvicorn), which `import d2lft` must not need
LAZY_OK = {"torch", "torchvision", "mxnet", "gluoncv", "PIL", "matplotlib", "IPython"} | {
    "onnx",
    "onnxruntime",
    "starlette",
    "uvicorn",
}


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("d2lft", cache_dir=None)


def _layer(module: str) -> int:
    best, depth = None, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def test_no_import_cycle(graph):
    modules = sorted(graph.modules)
    index = {m: i for i, m in enumerate(modules)}
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    # Tarjan's strongly connected components: a component of two or more is a cycle
    counter, stack, on, low, num, cycles = [0], [], set(), {}, {}, []

    def visit(v):
        num[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in num:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], num[w])
        if low[v] == num[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for m in modules:
        if m not in num:
            visit(m)
    assert len(index) > 40
    assert not cycles, f"import cycles: {cycles}"


def test_imports_flow_down_the_layers(graph):
    upward = []
    for m in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(m):
            if _layer(imported) > _layer(m):
                upward.append(f"{m} -> {imported}")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def _function_imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    yield inner.lineno, [a.name for a in inner.names], 0
                elif isinstance(inner, ast.ImportFrom):
                    yield inner.lineno, [inner.module or ""], inner.level


def test_lazy_imports_only_for_frameworks():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        for lineno, names, level in _function_imports(path):
            for name in names:
                root = name.split(".")[0]
                if level or root == "d2lft" or root not in LAZY_OK:
                    bad.append(f"{path.relative_to(PKG.parent)}:{lineno}: {'.' * level}{name}")
    assert not bad, "imports inside functions (only frameworks may be lazy):\n" + "\n".join(bad)


def test_every_registered_backend_meets_the_contract():
    for entry in _registry.specs():
        package = _registry.load(entry.name)
        assert _protocol.check_backend(package, entry) == [], entry.name
        assert isinstance(package, _protocol.Backend)
        assert entry.lr_finetune > 0 and entry.lr_scratch > 0
    # the checker catches what is missing or misnamed
    import types

    broken = types.ModuleType("broken")
    for name in _protocol.contract():
        setattr(broken, name, lambda *a, **k: None)
    broken.make_runner = lambda net, spec: None
    del broken.logits
    problems = _protocol.check_backend(broken)
    assert any(p.startswith("logits: missing") for p in problems)
    assert any(p.startswith("make_runner") for p in problems)


def test_registry_drives_names_rates_and_reductions():
    assert d2lft.BACKENDS == _registry.names() == ("mxnet", "torch")
    assert d2lft.BOOK_LEARNING_RATES == {
        "mxnet": {"finetune": 0.01, "scratch": 0.1},
        "torch": {"finetune": 5e-5, "scratch": 5e-4},
    }
    assert d2lft.LOSS_REDUCTION == {"mxnet": "mean", "torch": "sum"}
    from d2lft import cli

    train = next(
        a
        for a in cli.build_parser()._subparsers._group_actions[0].choices.items()
        if a[0] == "train"
    )[1]
    backend = next(a for a in train._actions if a.dest == "backend")
    assert tuple(backend.choices) == _registry.names()


def test_a_registered_backend_is_usable_by_name(monkeypatch):
    """A third backend registered with a spec becomes a valid name everywhere; one that
    fails the contract is refused when checked."""
    spec = _protocol.BackendSpec(
        name="fake",
        module="d2lft.backends.torch",
        framework="torch",
        install="-",
        net_packages=("fake_pkg",),
        loss_reduction="sum",
        lr_finetune=1.0,
        lr_scratch=2.0,
        archs=("resnet18",),
        default_arch="resnet18",
    )
    monkeypatch.setitem(_registry._SPECS, "fake", spec)
    assert "fake" in _registry.names()
    assert d2lft.book_learning_rate("scratch", "fake") == 2.0
    with pytest.raises(TypeError, match="does not meet the contract"):
        _registry.register(
            _protocol.BackendSpec(
                name="bad",
                module="d2lft.engine.options",
                framework="numpy",
                install="-",
                net_packages=(),
                loss_reduction="sum",
                lr_finetune=1.0,
                lr_scratch=1.0,
                archs=("x",),
                default_arch="x",
            ),
            check=True,
        )


def test_backends_have_the_same_modules():
    names = {}
    for entry in _registry.specs():
        folder = PKG / "backends" / entry.name
        names[entry.name] = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
    common = {
        "__init__",
        "data",
        "models",
        "runtime",
        "runners",
        "fastdata",
        "weights",
        "inference",
    } - {"__init__"}
    for name, mods in names.items():
        assert common <= mods, (name, common - mods)


def test_shared_code_names_no_backend():
    """Outside the backend packages and the registry, no string literal names a backend:
    names, learning rates and reductions come from the registry."""
    backend_names = set(_registry.names())
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "backends" and (len(rel.parts) > 2 or rel.name == "_registry.py"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and node.value in backend_names
                and id(node) not in docstrings
            ):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_no_framework_object_gets_monkey_patched_attributes():
    """What travels with a net is one NetInfo (d2lft.net_info), nothing else: no
    module sets attributes on a network except through `netinfo.attach`."""
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "netinfo.py":
            continue
        text = path.read_text()
        for pattern in (
            "object.__setattr__(net",
            "net.classes =",
            "net.image_size =",
            "net.arch =",
            "net.source_classes =",
            "net.source_head =",
        ):
            assert pattern not in text, (path, pattern)


def test_the_public_api_is_typed():
    """Every public function has annotated parameters and a return type, the package
    ships py.typed, and string choices are Literal types."""
    import inspect
    import typing

    untyped = []
    for name in d2lft.__all__:
        obj = getattr(d2lft, name)
        if not inspect.isfunction(obj):
            continue
        sig = inspect.signature(obj)
        missing = [
            p
            for p, v in sig.parameters.items()
            if v.annotation is inspect.Parameter.empty
            and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
        ]
        if missing or sig.return_annotation is inspect.Signature.empty:
            untyped.append((name, missing))
    assert not untyped, untyped
    assert (PKG / "py.typed").is_file()
    hints = typing.get_type_hints(d2lft.FastPipeline)
    assert typing.get_args(hints["precision"]) == ("auto", "fp32", "bf16")
