"""Backend selection: use(), using(), get_backend(), $D2LFT_BACKEND, errors, lazy imports."""

import subprocess
import sys
import textwrap

import pytest

import d2lft
from d2lft.backends import _registry as _backend


def run_py(code, env=None, drop=()):
    import os

    full_env = dict(os.environ)
    for var in ("D2LFT_BACKEND", *drop):
        full_env.pop(var, None)
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_import_d2lft_imports_no_framework():
    """Nor the optional extras' packages (onnx, serve), nor does the command."""
    line = run_py("""
        import sys, d2lft, d2lft.cli
        print(sorted(m for m in ('torch', 'mxnet', 'torchvision', 'gluoncv', 'onnx',
                                 'onnxruntime', 'starlette', 'uvicorn') if m in sys.modules))
    """)
    assert line == "[]"


def test_env_var_selects_backend():
    assert (
        run_py("import d2lft; print(d2lft.get_backend())", {"D2LFT_BACKEND": "mxnet"}) == "mxnet"
    )
    assert (
        run_py("import d2lft; print(d2lft.get_backend())", {"D2LFT_BACKEND": "torch"}) == "torch"
    )


def test_default_is_torch_when_installed_else_mxnet(monkeypatch):
    monkeypatch.delenv("D2LFT_BACKEND", raising=False)
    assert _backend._default() == "torch"
    monkeypatch.setattr(_backend, "framework_installed", lambda name: name == "mxnet")
    assert _backend._default() == "mxnet"


def test_bad_env_var_names_valid_backends(monkeypatch):
    monkeypatch.setenv("D2LFT_BACKEND", "jax")
    with pytest.raises(ValueError, match="D2LFT_BACKEND.*'mxnet', 'torch'"):
        _backend._default()


def test_use_and_using_nest_and_restore():
    previous = d2lft.get_backend()
    try:
        assert d2lft.use("torch") == "torch"
        with d2lft.using("mxnet"):
            assert d2lft.get_backend() == "mxnet"
            with d2lft.using("torch"):
                assert d2lft.get_backend() == "torch"
            assert d2lft.get_backend() == "mxnet"
        assert d2lft.get_backend() == "torch"
        d2lft.use("MXNet")  # case-insensitive
        assert d2lft.get_backend() == "mxnet"
    finally:
        d2lft.use(previous)


def test_using_restores_after_error():
    before = d2lft.get_backend()
    with pytest.raises(RuntimeError), d2lft.using("mxnet"):
        raise RuntimeError("boom")
    assert d2lft.get_backend() == before


@pytest.mark.parametrize("name", ["jax", "tensorflow", "", None, 3])
def test_unknown_backend_lists_valid_ones(name):
    with pytest.raises(ValueError, match=r"valid backends are 'mxnet', 'torch'"):
        d2lft.use(name)


@pytest.mark.parametrize("name,extra", [("mxnet", ".[mxnet]"), ("torch", ".[torch]")])
def test_missing_framework_names_the_pip_extra(monkeypatch, name, extra):
    real = _backend.importlib.util.find_spec
    monkeypatch.setattr(
        _backend.importlib.util,
        "find_spec",
        lambda mod, *a: None if mod == name else real(mod, *a),
    )
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        d2lft.use(name)


def test_gluoncv_imports_beside_torch2():
    line = run_py("""
        import torch
        from d2lft.backends.mxnet._compat import import_gluoncv
        gcv = import_gluoncv()
        import sys
        print(gcv.__name__, hasattr(gcv, 'model_zoo'), sys.modules['torch'] is torch,
              torch.ones(2).sum().item())
    """)
    assert line == "gluoncv True True 2.0"


@pytest.mark.torch_threads
def test_mxnet_import_keeps_torch_threads():
    line = run_py("""
        import torch
        before = torch.get_num_threads()
        import d2lft
        d2lft.use('mxnet')
        print(before, torch.get_num_threads())
    """)
    before, after = line.split()
    assert before == after


# CPU time per OS thread of this process over 20 MXNet convolutions: how many threads
# MXNet really computes on (each busy thread gets about the same share)
BUSY_THREADS = """
    import os
    def ticks():
        out = {}
        for t in os.listdir('/proc/self/task'):
            try:
                f = open(f'/proc/self/task/{t}/stat').read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            out[t] = int(f[11]) + int(f[12])
        return out
    x = mx.nd.random.normal(shape=(32, 64, 56, 56))
    w = mx.nd.random.normal(shape=(64, 64, 3, 3))
    conv = lambda: mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=64, no_bias=True,
                                     pad=(1, 1)).wait_to_read()
    conv()
    a = ticks()
    for _ in range(20):
        conv()
    b = ticks()
    d = sorted((b[t] - a.get(t, 0) for t in b), reverse=True)
    print(sum(v > 0.3 * d[0] for v in d), os.environ.get('MXNET_OMP_MAX_THREADS'))
"""


@pytest.mark.torch_threads
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_mxnet_computes_on_every_core():
    """MXNet's own default is half the logical processors (1 on a 2-core VM without
    hyper-threads); through d2lft it computes on one thread per physical core."""
    from d2lft._sys.threads import physical_cores

    if physical_cores() < 2:
        pytest.skip("needs at least 2 physical cores")
    code = """
        import d2lft
        from d2lft.backends.mxnet._compat import import_mxnet
        d2lft.use('mxnet')
        mx = import_mxnet()
    """
    busy, env = run_py(
        textwrap.dedent(code) + textwrap.dedent(BUSY_THREADS),
        drop=("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS"),
    ).split()
    assert env == str(physical_cores())
    assert int(busy) == physical_cores()


@pytest.mark.torch_threads
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_mxnet_threads_chosen_by_the_user_are_kept():
    code = """
        import d2lft
        from d2lft.backends.mxnet._compat import import_mxnet
        d2lft.use('mxnet')
        mx = import_mxnet()
    """
    busy, env = run_py(
        textwrap.dedent(code) + textwrap.dedent(BUSY_THREADS),
        env={"OMP_NUM_THREADS": "1"},
        drop=("MXNET_OMP_MAX_THREADS",),
    ).split()
    assert (busy, env) == ("1", "None")


@pytest.mark.torch_threads
def test_torch_after_mxnet_gets_default_threads():
    line = run_py("""
        import d2lft
        from d2lft._sys.threads import torch_default_threads
        d2lft.use('mxnet')
        d2lft.use('torch')
        import torch
        print(torch_default_threads(), torch.get_num_threads())
    """)
    want, got = line.split()
    assert want == got


def test_net_from_other_backend_is_refused(toy_data):
    with d2lft.using("mxnet"):
        mx_net = d2lft.build_scratch_net()
    with (
        d2lft.using("torch"),
        pytest.raises(TypeError, match=r"built with the 'mxnet' backend.*d2lft.use\('mxnet'\)"),
    ):
        d2lft.train_fine_tuning(mx_net, 0.1, data_dir=toy_data, image_size=32, num_epochs=1)
    with d2lft.using("mxnet"), pytest.raises(TypeError, match="expected a network built by"):
        d2lft.train_fine_tuning(object(), 0.1, data_dir=toy_data)


def test_gluoncv_import_leaves_pil_truncated_flag_alone():
    line = run_py("""
        from PIL import ImageFile
        from d2lft.backends.mxnet._compat import import_gluoncv
        import_gluoncv()
        print(ImageFile.LOAD_TRUNCATED_IMAGES)
    """)
    assert line == "False"
