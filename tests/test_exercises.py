"""The chapter's exercises 1, 2 and 4, your own images (one folder + val_fraction, a zip),
and the training progress bar."""

import io
import json
import zipfile

import numpy as np
import pytest

import d2lft
from d2lft.data import split as split_mod

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- exercises 1-2


def test_lr_sweep_table_plot_and_divergence(backend, tiny, tmp_path):
    ok_lr = {"torch": 1e-4, "mxnet": 0.01}[backend]
    res = d2lft.lr_sweep(
        [ok_lr, 1e30],
        modes=("finetune", "scratch"),
        data_dir=tiny,
        num_epochs=1,
        batch_size=4,
        image_size=32,
        pretrained=False,
        path=tmp_path / "sweep.png",
    )
    assert [(r["mode"], r["learning_rate"]) for r in res] == [
        ("finetune", ok_lr),
        ("finetune", 1e30),
        ("scratch", ok_lr),
        ("scratch", 1e30),
    ]
    for r in res:
        assert r["backend"] == backend
        if r["learning_rate"] == 1e30:  # the chapter's exercise 1, pushed to the end
            assert r["diverged"] and r["test_acc"] is None and "diverged" in r["error"]
        else:
            assert not r["diverged"] and r["epochs"] == 1 and 0 <= r["test_acc"] <= 1
    assert res.histories[0].config["param_group"] is True  # finetune: 10x head
    assert res.histories[2].config["param_group"] is False  # scratch: one rate
    assert res.best("finetune")["learning_rate"] == ok_lr
    text = str(res)
    assert text.count("diverged") == 2 and "finetune" in text and "scratch" in text
    data = (tmp_path / "sweep.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    rows = json.loads(res.to_json(tmp_path / "sweep.json"))
    assert rows[1]["test_acc"] is None and rows[0]["test_acc"] == res[0]["test_acc"]
    # the same seed repeats the sweep exactly: each net is built from it too
    again = d2lft.lr_sweep(
        [ok_lr],
        modes=("finetune",),
        data_dir=tiny,
        num_epochs=1,
        batch_size=4,
        image_size=32,
        pretrained=False,
    )
    assert again[0]["train_loss"] == res[0]["train_loss"]
    assert again.histories[0].train_loss == res.histories[0].train_loss


def test_lr_sweep_arguments(tiny):
    with pytest.raises(ValueError, match="unknown mode 'frozen'"):
        d2lft.lr_sweep([0.1], modes=("frozen",), data_dir=tiny)
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        d2lft.lr_sweep([0.1, -1], data_dir=tiny)
    with pytest.raises(ValueError, match="unknown mode"):
        d2lft.lr_sweep({"finetun": [0.1]}, data_dir=tiny)
    with pytest.raises(ValueError, match="no run to do"):
        d2lft.lr_sweep({"scratch": [0.1]}, modes=("finetune",), data_dir=tiny)


# --------------------------------------------------------------------------- exercise 4

SOURCE_CLASSES = ["apple pie", "hot dog", "ramen", "sushi", "taco"]


@pytest.fixture(scope="module")
def source_model(tmp_path_factory):
    """A 5-class torchvision ResNet-18 standing in for a real source model."""
    import torch
    import torchvision

    torch.manual_seed(3)
    src = torchvision.models.resnet18(num_classes=5).eval()
    folder = tmp_path_factory.mktemp("src")
    torch.save(src.state_dict(), folder / "food5.pth")
    (folder / "food5-classes.txt").write_text("# index order\n" + "\n".join(SOURCE_CLASSES))
    return src, folder


def _logits(net, x):
    if d2lft.get_backend() == "torch":
        import torch

        net.eval()
        with torch.no_grad():
            return net(torch.tensor(x)).numpy()
    import mxnet as mx

    return net(mx.nd.array(x)).asnumpy()


def test_init_head_from_source_by_name(backend, source_model):
    import torch

    src, folder = source_model
    net = d2lft.build_finetune_net(pretrained=folder / "food5.pth", arch="resnet18_v1")
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    before = _logits(net, x)
    done = d2lft.init_head_from_source(
        net,
        {"hotdog": "hot_dog"},
        classes=["hotdog", "not-hotdog"],
        source_classes=folder / "food5-classes.txt",
    )
    assert done == {"hotdog": (1, "hot dog")}
    after = _logits(net, x)
    with torch.no_grad():
        want = src(torch.tensor(x)).numpy()[:, 1]
    # the hotdog output now IS the source model's "hot dog" output; the other row is kept
    np.testing.assert_allclose(after[:, 0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(after[:, 1], before[:, 1])
    assert not np.allclose(before[:, 0], want, atol=1e-3)
    # by index, and with a list of names; class names that travel with the net
    d2lft.net_info(net).classes = ["taco-ish", "sushi-ish"]
    done = d2lft.init_head_from_source(
        net, {1: "sushi", "taco-ish": 4}, source_classes=SOURCE_CLASSES
    )
    assert done == {"sushi-ish": (3, "sushi"), "taco-ish": (4, "taco")}
    with torch.no_grad():
        want = src(torch.tensor(x)).numpy()
    np.testing.assert_allclose(_logits(net, x), want[:, [4, 3]], rtol=1e-4, atol=1e-4)


def test_init_head_errors(backend, source_model):
    _, folder = source_model
    net = d2lft.build_finetune_net(pretrained=folder / "food5.pth", arch="resnet18_v1")
    with pytest.raises(ValueError, match="'hotdgo' is not among the 5 source classes.*hot dog"):
        d2lft.init_head_from_source(net, {0: "hotdgo"}, source_classes=SOURCE_CLASSES)
    with pytest.raises(ValueError, match="source model's class names are unknown"):
        d2lft.init_head_from_source(net, {0: "hot dog"})
    with pytest.raises(ValueError, match="given by name.*pass classes="):
        d2lft.init_head_from_source(net, {"hotdog": "hot dog"}, source_classes=SOURCE_CLASSES)
    with pytest.raises(ValueError, match="4 source class names given.*5 outputs"):
        d2lft.init_head_from_source(net, {0: 1}, source_classes=SOURCE_CLASSES[:4])
    with pytest.raises(ValueError, match="out of range"):
        d2lft.init_head_from_source(net, {2: 1}, source_classes=SOURCE_CLASSES)
    with pytest.raises(ValueError, match="no source classifier"):
        d2lft.init_head_from_source(
            d2lft.build_scratch_net(), {0: 1}, source_classes=SOURCE_CLASSES
        )


def test_imagenet_hotdog_is_934_in_both_backends_weights_order(backend):
    import importlib

    names = importlib.import_module(f"d2lft.backends.{backend}").imagenet_classes()
    assert len(names) == 1000
    assert names[934] == "hotdog" and names[713] == "photocopier"  # the book's MXNet 713


def test_torch_imagenet_source_uses_the_hotdog_row(tmp_path, monkeypatch):
    """With torchvision's ImageNet weights (a stand-in file in TORCH_HOME), the names come
    from the weights' own metadata and 'hotdog' is row 934."""
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(5)
    sd = torchvision.models.resnet18().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(sd, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net()
        assert d2lft.net_info(net).source_classes[934] == "hotdog"
        done = d2lft.init_head_from_source(
            net, {"hotdog": "hotdog"}, classes=["hotdog", "not-hotdog"]
        )
    assert done == {"hotdog": (934, "hotdog")}
    np.testing.assert_array_equal(net.fc.weight.detach()[0].numpy(), sd["fc.weight"][934])
    assert float(net.fc.bias.detach()[0]) == float(sd["fc.bias"][934])
    assert not np.array_equal(net.fc.weight.detach()[0].numpy(), sd["fc.weight"][713])


def test_mxnet_imagenet_source_uses_the_hotdog_row_not_713(monkeypatch):
    """With Gluon's ImageNet model (a random stand-in: the real file cannot be downloaded
    here) the names come from GluonCV's ILSVRC-2012 list and 'hotdog' is row 934."""
    with d2lft.using("mxnet"):
        import mxnet as mx
        from mxnet.gluon.model_zoo import vision

        from d2lft.backends.mxnet import models

        real_get_model = vision.get_model

        def stand_in(name, pretrained=False, root=None, **kw):
            net = real_get_model(name, **kw)
            if pretrained:
                mx.random.seed(7)
                net.initialize(mx.init.Xavier())
                net(mx.nd.zeros((1, 3, 32, 32)))
            return net

        monkeypatch.setattr(models.vision, "get_model", stand_in)
        net = d2lft.build_finetune_net()
        assert (
            d2lft.net_info(net).source_classes[934] == "hotdog"
            and len(d2lft.net_info(net).source_classes) == 1000
        )
        w = d2lft.net_info(net).source_head.weight.data().asnumpy()
        done = d2lft.init_head_from_source(
            net, {"hotdog": "hotdog"}, classes=["hotdog", "not-hotdog"]
        )
        assert done == {"hotdog": (934, "hotdog")}
        head = net.output.weight.data().asnumpy()
        np.testing.assert_array_equal(head[0], w[934])
        assert not np.array_equal(head[0], w[713])


# --------------------------------------------------------------------------- your own images


@pytest.fixture
def one_folder(tmp_path):
    """chairs/<3 classes>/ with 10, 7 and 3 images: no train/test split."""
    from PIL import Image

    root = tmp_path / "chairs"
    for c, n, color in (
        ("armchair", 10, (200, 30, 30)),
        ("stool", 7, (30, 30, 200)),
        ("bench", 3, (30, 200, 30)),
    ):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 40), color).save(root / c / f"{c}{i}.png")
    return root


def _files(folder):
    return sorted(p.name for p in folder.rglob("*.png"))


def test_split_is_deterministic_disjoint_and_complete(one_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "cache"))
    a = d2lft.split_image_folder(one_folder, 0.3)
    again = d2lft.split_image_folder(one_folder, 0.3)
    assert again == a  # reused, not rebuilt
    plan = json.loads((a / "split.json").read_text())
    counts = {c: (len(plan["train"][c]), len(plan["test"][c])) for c in plan["train"]}
    assert counts == {"armchair": (7, 3), "stool": (5, 2), "bench": (2, 1)}
    for c in counts:
        assert not set(plan["train"][c]) & set(plan["test"][c])
        assert sorted(plan["train"][c] + plan["test"][c]) == sorted(
            str(p) for p in (one_folder / c).iterdir()
        )
        assert len(list((a / "train" / c).iterdir())) == counts[c][0]
    other_seed = d2lft.split_image_folder(one_folder, 0.3, seed=1)
    assert other_seed != a
    assert json.loads((other_seed / "split.json").read_text())["test"] != plan["test"]
    assert not list((tmp_path / "cache" / "splits").glob(".*"))  # no temp folder left
    assert d2lft.class_names(one_folder, 0.3) == ["armchair", "bench", "stool"]


def test_split_errors(one_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "cache"))
    for bad in (0, 1, 1.5, -0.2, "0.2", True):
        with pytest.raises(ValueError, match="val_fraction must be a number between 0 and 1"):
            d2lft.split_image_folder(one_folder, bad)
    for p in list((one_folder / "bench").iterdir())[1:]:
        p.unlink()
    with pytest.raises(d2lft.DataLayoutError, match=r"\['bench'\].*fewer than 2 images"):
        d2lft.split_image_folder(one_folder, 0.2)
    from conftest import make_image_folder

    both = make_image_folder(tmp_path / "both", n_train=2, n_test=2, size=(16, 16))
    with pytest.raises(ValueError, match="already has train/ and test/.*drop val_fraction"):
        split_mod.resolve_images(both, 0.2)


def test_train_on_a_zip_of_one_folder_with_val_fraction(
    backend, one_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "cache"))
    archive = tmp_path / "chairs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in one_folder.rglob("*.png"):
            zf.write(p, p.relative_to(one_folder.parent))
    net = d2lft.build_finetune_net(num_classes=3, pretrained=False)
    h = d2lft.train_fine_tuning(
        net,
        {"torch": 0.0001, "mxnet": 0.01}[backend],
        batch_size=8,
        num_epochs=1,
        data_dir=archive,
        image_size=32,
        run=d2lft.RunSpec(val_fraction=0.3, verbose=False, checkpoint_dir=tmp_path / "ck"),
    )
    assert h.epochs == 1
    assert (
        d2lft.net_info(net).classes == ["armchair", "bench", "stool"]
        and d2lft.net_info(net).image_size == 32
    )
    ck = d2lft.read_checkpoint(tmp_path / "ck")
    assert ck.classes == ["armchair", "bench", "stool"]
    preds = d2lft.predict(net, [one_folder / "stool" / "stool0.png"])
    assert (
        preds[0].label in d2lft.net_info(net).classes
        and preds[0].classes == d2lft.net_info(net).classes
    )


# --------------------------------------------------------------------------- progress bar


def _plan(rank=0, **run):
    import types

    return types.SimpleNamespace(run=d2lft.RunSpec(**run), rank=rank)


def test_progress_bar_and_switch(monkeypatch, capsys):
    from d2lft.engine import callbacks as cb
    from d2lft.engine.history import History

    h = History(backend="torch", devices=["cpu"])
    state = cb.RunState(history=h, num_epochs=2, num_batches=3)
    bar = cb.ProgressBar()
    for i in range(3):
        state.batch = i
        bar.on_batch_end(state)
    assert bar._bar is not None and bar._bar.n == 3 and bar._bar.total == 3
    h.add_epoch(0.5, 0.8, 0.75)
    bar.on_epoch_end(state)
    assert bar._bar is None
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "/3" in err  # tqdm's bar, on stderr
    monkeypatch.setenv("D2LFT_PROGRESS", "0")
    assert cb.want_progress(io.StringIO()) is False
    monkeypatch.setenv("D2LFT_PROGRESS", "1")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert cb.want_progress(Tty()) is True
    assert cb.want_progress(io.StringIO()) is False  # not a terminal: off
    # d2lft's own callbacks: a bar when verbose on a terminal, never when quiet
    monkeypatch.setattr(cb, "want_progress", lambda stream=None: True)
    names = [type(c).__name__ for c in d2lft.api.default_callbacks(_plan())]
    assert names == ["HeapRetention", "ProgressBar", "BookPrinter"]
    names = [type(c).__name__ for c in d2lft.api.default_callbacks(_plan(verbose=False))]
    assert names == ["HeapRetention"]
    # a distributed worker other than rank 0 neither prints nor draws
    names = [type(c).__name__ for c in d2lft.api.default_callbacks(_plan(rank=1))]
    assert names == ["HeapRetention"]


def test_live_learning_curve_in_jupyter(monkeypatch):
    """In a Jupyter kernel the live curve is drawn once and then updated."""
    import sys
    import types

    import matplotlib.pyplot  # noqa: F401  (imported before the fake IPython, as in a kernel)

    from d2lft.engine import callbacks as cb
    from d2lft.engine.history import History

    class ZMQInteractiveShell:
        events = types.SimpleNamespace(register=lambda *a: None)  # what matplotlib uses

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def display(obj, display_id=False):
        assert display_id is True
        shown.append(("display", obj))
        return Handle()

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: ZMQInteractiveShell()
    ipython.version_info = (9, 0, 0)
    ipython.display = types.ModuleType("IPython.display")
    ipython.display.display = display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython.display)
    assert cb.in_notebook()
    names = [type(c).__name__ for c in d2lft.api.default_callbacks(_plan())]
    assert "LiveCurve" in names
    h = History(backend="torch", devices=["cpu"])
    live = cb.LiveCurve()
    state = cb.RunState(history=h, num_epochs=2)
    for epoch in range(2):
        h.add_epoch(1.0 - 0.3 * epoch, 0.6 + 0.1 * epoch, 0.7)
        state.epoch = epoch
        live.on_epoch_end(state)
    assert [kind for kind, _ in shown] == ["display", "update"]
    loss_line = shown[-1][1].axes[0].get_lines()[0]
    assert list(loss_line.get_ydata()) == h.train_loss
