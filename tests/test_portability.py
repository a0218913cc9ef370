"""The suite and d2lft on any CPU: precision='auto' follows the CPU's bf16 units (the
probe patched both ways, through a whole run), and what the suite must not assume."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.parametrize("units", [True, False], ids=["bf16-units", "no-bf16-units"])
def test_auto_precision_of_a_run_follows_the_probe(backend, units, toy_data, monkeypatch):
    """A fast run with precision='auto': torch trains in bf16 exactly where the CPU has
    bf16 units (fp32 on an AVX2-only CPU); MXNet trains in fp32 either way."""
    import d2lft
    from d2lft.backends.torch import runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: units)
    net = d2lft.build_finetune_net(pretrained=False, seed=0)
    h = d2lft.train_fine_tuning(
        net, 0.001, 16, 1, data_dir=toy_data, image_size=32, seed=0,
        pipeline=d2lft.FastPipeline(), run=d2lft.RunSpec(verbose=False),
    )  # fmt: skip
    want = "bf16" if units and backend == "torch" else "fp32"
    assert h.config["precision_used"] == want
    assert d2lft.FastPipeline().precision == "auto"  # the default is what was resolved


# ------------------------------------------------------------ the suite's own fixtures


def test_tests_run_with_one_torch_thread_by_default():
    torch = pytest.importorskip("torch")
    assert torch.get_num_threads() == 1


@pytest.mark.torch_threads
def test_torch_threads_marker_keeps_the_process_count():
    torch = pytest.importorskip("torch")
    from d2lft._sys.threads import torch_default_threads

    assert torch.get_num_threads() == torch_default_threads()


def test_framework_markers_follow_the_backend_parameter(backend, request):
    other = {"torch": "mxnet", "mxnet": "torch"}[backend]
    assert request.node.get_closest_marker(backend) is not None
    assert request.node.get_closest_marker(other) is None


def test_the_shared_trained_checkpoint_loads(backend, trained_checkpoint):
    import d2lft

    ck = d2lft.read_checkpoint(trained_checkpoint(backend))
    assert ck.epoch == 1 and ck.classes == ["hotdog", "not-hotdog"]
    net = d2lft.load_checkpoint(trained_checkpoint(backend))
    assert d2lft.net_info(net).image_size == 32


def quick_tier_expression() -> str:
    text = (REPO / "scripts" / "test.sh").read_text()
    return re.search(r'^QUICK="([^"]+)"$', text, re.M).group(1)


def test_the_quick_tier_deselects_by_registered_markers(request):
    registered = {line.split(":")[0] for line in request.config.getini("markers")}
    named = set(re.findall(r"\w+", quick_tier_expression())) - {"not", "or", "and"}
    assert named == {"quick", "slow", "distributed", "browser", "notebooks", "docs_site"}
    assert named <= registered


def test_every_test_file_says_what_it_brings_to_the_quick_tier():
    from conftest import QUICK

    files = {p.name for p in (REPO / "tests").glob("test_*.py")}
    missing, stale = sorted(files - set(QUICK)), sorted(set(QUICK) - files)
    assert not missing, f"add {missing} to QUICK in tests/conftest.py (its quick tests, or [])"
    assert not stale, f"remove {stale} from QUICK in tests/conftest.py"


@pytest.mark.slow  # collects the whole suite in a fresh interpreter
def test_the_quick_tier_keeps_the_oracle_and_a_parity_test():
    """`bash scripts/test.sh --quick` selects the book oracle of both backends, a parity
    test, every pattern of the QUICK table, and no test of the slow surfaces."""
    import fnmatch

    from conftest import QUICK

    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m"]
    done = subprocess.run(
        [*cmd, quick_tier_expression(), "tests"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stdout[-2000:]
    ids = [ln.removeprefix("tests/") for ln in done.stdout.splitlines() if "::" in ln]
    assert {i for i in ids if i.startswith("test_book_oracle.py")} == {
        "test_book_oracle.py::test_torch_tab_matches_the_book",
        "test_book_oracle.py::test_mxnet_tab_matches_the_book",
    }
    assert [i for i in ids if i.startswith("test_parity.py::test_loss_trajectories")]
    slow = ("test_distributed.py", "test_notebooks.py", "test_docs_site.py", "test_bench_")
    assert not [i for i in ids if any(s in i for s in slow) or "headless_browser" in i]
    for name, patterns in QUICK.items():
        names = [i.split("::", 1)[1] for i in ids if i.startswith(name + "::")]
        for pat in patterns:
            assert [n for n in names if fnmatch.fnmatchcase(n, pat)], (name, pat)
        assert names or not patterns, name
