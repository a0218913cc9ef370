"""Backend selection: use(), using(), get_backend(), $D2LFT_BACKEND, errors, lazy imports."""
import subprocess
import sys
import textwrap

import pytest

import d2lft
from d2lft import _backend


def run_py(code, env=None):
    import os
    full_env = dict(os.environ)
    full_env.pop("D2LFT_BACKEND", None)
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=full_env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_import_d2lft_imports_no_framework():
    line = run_py("""
        import sys, d2lft
        print(sorted(m for m in ('torch', 'mxnet', 'torchvision', 'gluoncv') if m in sys.modules))
    """)
    assert line == "[]"


def test_env_var_selects_backend():
    assert run_py("import d2lft; print(d2lft.get_backend())", {"D2LFT_BACKEND": "mxnet"}) == "mxnet"
    assert run_py("import d2lft; print(d2lft.get_backend())", {"D2LFT_BACKEND": "torch"}) == "torch"


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
    with pytest.raises(RuntimeError):
        with d2lft.using("mxnet"):
            raise RuntimeError("boom")
    assert d2lft.get_backend() == before


@pytest.mark.parametrize("name", ["jax", "tensorflow", "", None, 3])
def test_unknown_backend_lists_valid_ones(name):
    with pytest.raises(ValueError, match=r"valid backends are 'mxnet', 'torch'"):
        d2lft.use(name)


@pytest.mark.parametrize("name,extra", [("mxnet", "d2lft[mxnet]"), ("torch", "d2lft[torch]")])
def test_missing_framework_names_the_pip_extra(monkeypatch, name, extra):
    real = _backend.importlib.util.find_spec
    monkeypatch.setattr(_backend.importlib.util, "find_spec",
                        lambda mod, *a: None if mod == name else real(mod, *a))
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


def test_torch_after_mxnet_gets_default_threads():
    line = run_py("""
        import d2lft
        from d2lft._threads import torch_default_threads
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
    with d2lft.using("torch"):
        with pytest.raises(TypeError, match=r"built with the 'mxnet' backend.*d2lft.use\('mxnet'\)"):
            d2lft.train_fine_tuning(mx_net, 0.1, data_dir=toy_data, image_size=32, num_epochs=1)
    with d2lft.using("mxnet"):
        with pytest.raises(TypeError, match="expected a network built by d2lft"):
            d2lft.train_fine_tuning(object(), 0.1, data_dir=toy_data)


def test_gluoncv_import_leaves_pil_truncated_flag_alone():
    line = run_py("""
        from PIL import ImageFile
        from d2lft.backends.mxnet._compat import import_gluoncv
        import_gluoncv()
        print(ImageFile.LOAD_TRUNCATED_IMAGES)
    """)
    assert line == "False"
