"""Checkpoints: contents, hash check, atomic writes, either backend, Ctrl-C and resume."""

import struct

import numpy as np
import pytest

import d2lft
from d2lft.io import checkpoint as ck_mod

LR = {"torch": 1e-3, "mxnet": 0.02}


def seed_framework(backend, seed):
    if backend == "torch":
        import torch

        torch.manual_seed(seed)
    else:
        import mxnet as mx

        mx.random.seed(seed)


def build(backend, kind="finetune", seed=1, arch=None):
    seed_framework(backend, seed)
    if kind == "finetune":
        net = d2lft.build_finetune_net(pretrained=False, arch=arch)
    else:
        net = d2lft.build_scratch_net(arch=arch)
    if backend == "mxnet":  # Gluon infers some shapes at the first forward pass
        import mxnet as mx

        net(mx.nd.zeros((1, 3, 32, 32)))
    return net


def arrays_of(net):
    from d2lft import parity

    return parity.state_arrays(net)


def logits(net, x):
    if d2lft.backend_of(net) == "torch":
        import torch

        net.eval()
        with torch.no_grad():
            return net(torch.tensor(x)).numpy()
    import mxnet as mx

    return net(mx.nd.array(x)).asnumpy()


TINY = dict(name="data", classes=("cat", "dog"))  # conftest's `tiny`


KW = dict(batch_size=8, image_size=32, seed=5)


def test_checkpoint_holds_what_is_needed(backend, tiny, tmp_path):
    net = build(backend)
    h = d2lft.train_fine_tuning(
        net,
        LR[backend],
        num_epochs=1,
        data_dir=tiny,
        **KW,
        run=d2lft.RunSpec(checkpoint_dir=tmp_path / "run"),
    )
    path = tmp_path / "run" / "checkpoint.safetensors"
    assert path.is_file() and not [p for p in (tmp_path / "run").iterdir() if p != path]
    assert d2lft.net_info(net).classes == ["cat", "dog"] and d2lft.net_info(net).image_size == 32
    ck = d2lft.read_checkpoint(tmp_path / "run")
    assert ck.kind == "finetune" and ck.backend == backend and ck.epoch == 1
    assert ck.classes == ["cat", "dog"] and ck.image_size == 32
    assert ck.info["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert ck.info["preprocessing"]["test_resize"] == 37
    assert ck.config["learning_rate"] == LR[backend] and ck.config["seed"] == 5
    assert ck.history.test_acc == h.test_acc and ck.history.train_loss == h.train_loss
    assert ck.arch == {"torch": "resnet18_v1", "mxnet": "resnet18_v2"}[backend]
    # the parameters are exactly the net's, and the file is a plain portable params file
    saved = arrays_of(net)
    assert set(ck.arrays) == set(saved)
    for k in saved:
        np.testing.assert_array_equal(ck.arrays[k], saved[k])
    arrays, meta = d2lft.read_params(path)
    assert meta["format"] == "d2lft.params" and ck_mod.HASH_KEY in meta
    other = build(backend, seed=99)
    d2lft.load_params(other, path)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(logits(other, x), logits(net, x), atol=1e-5)


def _save(backend, path, kind="finetune", arch=None):
    net = build(backend, kind, arch=arch)
    d2lft.net_info(net).classes = ["cat", "dog"]
    d2lft.save_checkpoint(net, path, epoch=3, image_size=32)
    return net


def _tensor_region(path):
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    return 8 + n


def test_tampered_or_damaged_checkpoint_is_refused(tmp_path):
    with d2lft.using("torch"):
        good = tmp_path / "good.safetensors"
        _save("torch", good)
        d2lft.read_checkpoint(good)  # intact: accepted
        data = bytearray(good.read_bytes())
        start = _tensor_region(good)
        # one parameter value changed
        bad = tmp_path / "bad.safetensors"
        data2 = bytearray(data)
        data2[start + 1000] ^= 0xFF
        bad.write_bytes(bytes(data2))
        with pytest.raises(d2lft.CheckpointError, match="do not match the hash"):
            d2lft.read_checkpoint(bad)
        with pytest.raises(d2lft.CheckpointError, match="do not match the hash"):
            d2lft.load_checkpoint(bad)
        # the recorded class names edited (same length, so the header still parses)
        edited = tmp_path / "edited.safetensors"
        text = bytes(data).replace(b'\\"cat\\"', b'\\"rat\\"')
        assert text != bytes(data)
        edited.write_bytes(text)
        with pytest.raises(d2lft.CheckpointError, match="do not match the hash"):
            d2lft.read_checkpoint(edited)
        # truncated
        cut = tmp_path / "cut.safetensors"
        cut.write_bytes(bytes(data[: len(data) // 2]))
        with pytest.raises(d2lft.CheckpointError, match="cannot be read"):
            d2lft.read_checkpoint(cut)
        # a plain parameter file is not a checkpoint
        plain = tmp_path / "plain.safetensors"
        d2lft.save_params(build("torch"), plain)
        with pytest.raises(d2lft.CheckpointError, match="not a d2lft checkpoint.*load_params"):
            d2lft.read_checkpoint(plain)
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            d2lft.read_checkpoint(tmp_path / "nowhere")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    with d2lft.using("torch"):
        path = tmp_path / "checkpoint.safetensors"
        _save("torch", path)
        before = path.read_bytes()
        from d2lft.io import weights as io_weights

        def broken(*a, **k):
            raise OSError("disk full")

        monkeypatch.setattr(io_weights, "save", broken)  # safetensors' writer
        with pytest.raises(OSError, match="disk full"):
            _save("torch", path)
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]
        d2lft.read_checkpoint(path)


@pytest.mark.parametrize("src,dst", [("torch", "mxnet"), ("mxnet", "torch")])
def test_checkpoint_loads_in_the_other_backend(tmp_path, src, dst):
    x = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    with d2lft.using(src):
        net = _save(src, tmp_path / "c", kind="scratch", arch="resnet18_v1")
        want = logits(net, x)
    with d2lft.using(dst):
        other = d2lft.load_checkpoint(tmp_path / "c")
        assert d2lft.backend_of(other) == dst
        assert (
            d2lft.net_info(other).classes == ["cat", "dog"]
            and d2lft.net_info(other).image_size == 32
        )
        ck = d2lft.net_info(other).checkpoint
        assert ck.epoch == 3 and ck.kind == "scratch"
        np.testing.assert_allclose(logits(other, x), want, atol=1e-4)


class InterruptAt(d2lft.Callback):
    """Ctrl-C, as a user's, after batch `batch` of epoch `epoch`."""

    def __init__(self, epoch, batch):
        self.at = (epoch, batch)

    def on_batch_end(self, state):
        if (state.epoch, state.batch) == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_history_and_last_complete_checkpoint_and_resume_is_exact(
    backend, tiny, tmp_path, monkeypatch
):
    kw = dict(KW, num_epochs=3, data_dir=tiny)
    full = build(backend)
    h_full = d2lft.train_fine_tuning(full, LR[backend], **kw)
    run = tmp_path / "run"
    net = build(backend)
    h = d2lft.train_fine_tuning(
        net,
        LR[backend],
        **kw,
        run=d2lft.RunSpec(checkpoint_dir=run),
        callbacks=[InterruptAt(epoch=1, batch=0)],
    )  # in epoch 2
    assert not h.completed and "interrupted" in h.stopped_reason
    assert h.epochs == 1 and h.train_loss == h_full.train_loss[:1]
    ck = d2lft.read_checkpoint(run)
    assert ck.epoch == 1 and ck.history.train_loss == h_full.train_loss[:1]
    assert [p.name for p in run.iterdir()] == ["checkpoint.safetensors"]  # no temp files
    # resume into a differently initialised net: the checkpoint's parameters win
    again = build(backend, seed=42)
    h2 = d2lft.train_fine_tuning(
        again, LR[backend], **kw, run=d2lft.RunSpec(checkpoint_dir=run, resume=True)
    )
    assert h2.completed and h2.epochs == 3
    assert h2.train_loss == h_full.train_loss and h2.test_acc == h_full.test_acc
    assert h2.config["resumed_from"]["epoch"] == 1
    a, b = arrays_of(full), arrays_of(again)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert d2lft.read_checkpoint(run).epoch == 3


def test_resume_checks(backend, tiny, tmp_path):
    run = tmp_path / "run"
    net = build(backend)
    d2lft.train_fine_tuning(
        net, LR[backend], num_epochs=1, data_dir=tiny, **KW, run=d2lft.RunSpec(checkpoint_dir=run)
    )
    with pytest.raises(ValueError, match="resume=True continues from checkpoint_dir"):
        d2lft.train_fine_tuning(
            build(backend),
            LR[backend],
            num_epochs=1,
            data_dir=tiny,
            **KW,
            run=d2lft.RunSpec(resume=True),
        )
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        d2lft.train_fine_tuning(
            build(backend),
            LR[backend],
            num_epochs=1,
            data_dir=tiny,
            **KW,
            run=d2lft.RunSpec(resume=tmp_path / "none"),
        )
    other_arch = "resnet18_v2" if backend == "torch" else "resnet18_v1"
    with pytest.raises(d2lft.CheckpointError, match="build it with arch="):
        d2lft.train_fine_tuning(
            build(backend, arch=other_arch),
            LR[backend],
            num_epochs=2,
            data_dir=tiny,
            **KW,
            run=d2lft.RunSpec(resume=run),
        )
    with pytest.warns(UserWarning, match="learning_rate.*differ from an uninterrupted run"):
        h = d2lft.train_fine_tuning(
            build(backend),
            LR[backend] / 2,
            num_epochs=2,
            data_dir=tiny,
            **KW,
            run=d2lft.RunSpec(resume=run),
        )
    assert h.epochs == 2


def test_epoch_seed():
    from d2lft.engine.loop import epoch_seed

    assert epoch_seed(7, 0) == 7
    seeds = {epoch_seed(7, e) for e in range(1, 50)}
    assert len(seeds) == 49 and all(0 <= s < 2**31 for s in seeds)
    assert epoch_seed(7, 3) == epoch_seed(7, 3) != epoch_seed(8, 3)
