"""The suite and d2lft on any CPU: precision='auto' follows the CPU's bf16 units (the
probe patched both ways, through a whole run), and what the suite must not assume."""

from __future__ import annotations

import pytest


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
