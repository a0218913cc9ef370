"""d2lft.predict / d2lft.evaluate and their pictures, in both backends."""

import importlib
import pathlib

import numpy as np
import pytest
from PIL import Image

import d2lft

PNG = b"\x89PNG\r\n\x1a\n"
LR = {"torch": 1e-3, "mxnet": 0.05}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import make_image_folder

    return make_image_folder(
        tmp_path_factory.mktemp("pred") / "colors",
        n_train=16,
        n_test=6,
        size=(36, 36),
        classes=("red", "blue"),
    )


_trained = {}


def trained(backend, data):
    """A scratch net trained on the two colours (3 epochs), once per backend."""
    if backend not in _trained:
        if backend == "torch":
            import torch

            torch.manual_seed(0)
        else:
            import mxnet as mx

            mx.random.seed(0)
        net = d2lft.build_scratch_net()
        d2lft.train_fine_tuning(
            net,
            LR[backend],
            batch_size=8,
            num_epochs=3,
            param_group=False,
            data_dir=data,
            image_size=32,
            seed=0,
            run=d2lft.RunSpec(verbose=False),
        )
        _trained[backend] = net
    return _trained[backend]


def test_predict_names_probabilities_and_input_kinds(backend, data):
    net = trained(backend, data)
    assert (
        d2lft.net_info(net).classes == ["blue", "red"] and d2lft.net_info(net).image_size == 32
    )  # sorted folder names
    paths = [data / "test" / "red" / "0.jpg", data / "test" / "blue" / "1.jpg"]
    preds = d2lft.predict(net, paths)
    assert [p.label for p in preds] == ["red", "blue"]
    for p in preds:
        assert p.probs.shape == (2,) and abs(p.probs.sum() - 1) < 1e-5
        assert p.probability == pytest.approx(p.probs.max()) and p.probability > 0.5
        assert p.classes == ["blue", "red"] and p.top(2)[0] == (p.label, p.probability)
    assert str(preds[0]).startswith(str(paths[0])) and "red (" in str(preds[0])
    # the same image as a path, a PIL image and an array gives the same answer
    pil = Image.open(paths[1]).convert("RGB")
    arr = np.asarray(pil)
    one = d2lft.predict(net, pil)  # a single image, not a list
    assert len(one) == 1 and one[0].source == "<image 0>"
    for other in (one[0], d2lft.predict(net, [arr])[0], d2lft.predict(net, [arr / 255.0])[0]):
        np.testing.assert_allclose(other.probs, preds[1].probs, atol=1e-5)
    # explicit names override the ones that travel with the net
    assert d2lft.predict(net, paths[:1], classes=["B", "R"])[0].label == "R"


def test_predict_uses_the_test_transform(backend, data):
    """predict = softmax(net(test_augs(image))) at the net's image size."""
    net = trained(backend, data)
    path = data / "test" / "blue" / "2.jpg"
    got = d2lft.predict(net, [path])[0].probs
    tf = d2lft.test_augs(32)
    if backend == "torch":
        import torch

        net.eval()
        with torch.no_grad():
            x = tf(Image.open(path).convert("RGB"))[None]
            want = torch.softmax(net(x), 1)[0].numpy()
    else:
        import mxnet as mx

        x = tf(mx.nd.array(np.asarray(Image.open(path).convert("RGB")), dtype="uint8"))
        want = mx.nd.softmax(net(x.expand_dims(0)))[0].asnumpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    other_size = d2lft.predict(net, [path], image_size=48)[0].probs
    # relative: a confident net's small probability still moves with the input size
    assert not np.allclose(other_size, got, rtol=1e-3, atol=0)


def test_evaluate_matches_training_accuracy_and_orders_mistakes(backend, data, tmp_path):
    net = trained(backend, data)
    ev = d2lft.evaluate(net, data)
    train_mod = importlib.import_module(f"d2lft.backends.{backend}.runners")
    data_mod = importlib.import_module(f"d2lft.backends.{backend}.data")
    _, test_iter = data_mod.make_loaders(data, 8, 32, num_workers=0)
    assert ev.accuracy == pytest.approx(train_mod.evaluate_accuracy(net, test_iter))
    assert ev.classes == ["blue", "red"] and len(ev.paths) == 12
    assert ev.confusion.sum() == 12 and ev.confusion.trace() == round(ev.accuracy * 12)
    assert (ev.true == np.array([0] * 6 + [1] * 6)).all()  # blue/ sorts before red/
    p_true = ev.probs[np.arange(12), ev.true]
    order = ev.order_worst_first()
    assert list(p_true[order]) == sorted(p_true)
    # an evaluation with mistakes: the same net told the classes the other way round
    flipped = d2lft.evaluate(net, data / "test", classes=["red", "blue"])
    assert flipped.accuracy == pytest.approx(1 - ev.accuracy)
    worst = flipped.mistakes()
    assert len(worst) == round(12 * (1 - flipped.accuracy)) and len(worst) > 0
    probs = [m[3] for m in worst]
    assert probs == sorted(probs, reverse=True)  # most confident mistakes first
    d = flipped.to_dict()
    assert d["confusion"] == flipped.confusion.tolist() and len(d["mistakes"]) == len(worst)
    assert "true \\ predicted" in str(flipped)
    for name, fig in (
        ("grid.png", flipped.plot_predictions(tmp_path / "grid.png", n=6)),
        ("confusion.png", flipped.plot_confusion(tmp_path / "confusion.png")),
    ):
        raw = (tmp_path / name).read_bytes()
        assert raw.startswith(PNG) and len(raw) > 5000
        assert fig.axes
    titles = [ax.get_title() for ax in fig.axes]  # the confusion matrix
    assert any("accuracy" in t for t in titles)
    grid_titles = [ax.get_title() for ax in flipped.plot_predictions(n=4).axes]
    assert "true:" in grid_titles[0] and grid_titles[0].split(" (")[0] == f"\u2717 {worst[0][2]}"


def test_bad_inputs(backend, data, tmp_path):
    net = trained(backend, data)
    with pytest.raises(FileNotFoundError, match="image 1: .*missing.jpg is not a file"):
        d2lft.predict(net, [data / "test" / "red" / "0.jpg", tmp_path / "missing.jpg"])
    with pytest.raises(TypeError, match="image 0: expected a path, a PIL image"):
        d2lft.predict(net, [123])
    with pytest.raises(ValueError, match="must be HxW, HxWx1, HxWx3 or HxWx4"):
        d2lft.predict(net, [np.zeros((4, 5, 6, 7))])
    with pytest.raises(ValueError, match="3 class names given"):
        d2lft.predict(net, [data / "test" / "red" / "0.jpg"], classes=["a", "b", "c"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(d2lft.BadImageError, match="bad.jpg"):
        d2lft.predict(net, [bad])
    other = tmp_path / "other"
    for c in ("red", "green"):
        (other / c).mkdir(parents=True)
        Image.new("RGB", (20, 20), "green").save(other / c / "x.png")
    with pytest.raises(d2lft.DataLayoutError, match=r"\['green'\].*does not know"):
        d2lft.evaluate(net, other, split=None)  # every image of ONE folder
    with pytest.raises(ValueError, match="image_size must be an integer between 8 and 4096"):
        d2lft.predict(net, [bad], image_size=4)
    theirs = "mxnet" if backend == "torch" else "torch"
    with d2lft.using(theirs), pytest.raises(TypeError, match=f"built with the {backend!r}"):
        d2lft.predict(net, [data / "test" / "red" / "0.jpg"])


def test_unnamed_net_gets_generic_names(backend, data):
    net = d2lft.build_finetune_net(num_classes=3, pretrained=False)
    preds = d2lft.predict(net, [data / "test" / "red" / "0.jpg"], image_size=32)
    assert preds[0].classes == ["class 0", "class 1", "class 2"]


# --------------------------------------------------------------------------- own folder


def one_folder(root, n=5):
    """ONE folder of class subfolders (no train/ and test/): root/<class>/<i>.jpg."""
    import shutil

    from conftest import make_image_folder

    made = make_image_folder(
        root.parent / (root.name + "-gen"),
        n_train=n,
        n_test=0,
        size=(36, 36),
        classes=("red", "blue"),
    )
    shutil.move(str(made / "train"), str(root))
    shutil.rmtree(made)
    return root


def split_plan(data, val_fraction):
    import json

    from d2lft.data.split import resolve_images

    plan = json.loads((resolve_images(data, val_fraction) / "split.json").read_text())
    held = sorted(f for files in plan["test"].values() for f in files)
    kept = sorted(f for files in plan["train"].values() for f in files)
    return held, kept


def test_evaluate_with_val_fraction_scores_exactly_the_held_out_images(
    backend, tmp_path, monkeypatch
):
    """Bug: evaluate() on the folder that training split with val_fraction scored every
    image of it, training images included."""
    import pathlib

    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    data = one_folder(tmp_path / "chairs")
    net = d2lft.build_finetune_net(pretrained=False)
    h = d2lft.train_fine_tuning(
        net,
        LR[backend],
        batch_size=4,
        num_epochs=1,
        data_dir=data,
        image_size=32,
        seed=0,
        run=d2lft.RunSpec(val_fraction=0.4, verbose=False),
    )
    assert h.config["val_fraction"] == 0.4  # recorded for evaluate
    held, kept = split_plan(data, 0.4)
    assert len(held) == 4 and len(kept) == 6  # round(5 * 0.4) per class
    ev = d2lft.evaluate(net, data, val_fraction=0.4)
    assert len(ev.true) == len(ev.paths) == 4
    # the user's own files (not the split's 00000-<name> links in the cache), and only
    # the held-out ones: none of the training files
    assert sorted(ev.paths) == held and not set(ev.paths) & set(kept)
    assert all(pathlib.Path(p).parent.parent == data.resolve() for p in ev.paths)
    assert ev.accuracy == pytest.approx(h.test_acc[-1])  # training's own test set
    # mistakes, to_dict and the prediction grid name the user's files too
    flipped = d2lft.evaluate(net, data, val_fraction=0.4, classes=["red", "blue"])
    mistakes = ev.mistakes() + flipped.mistakes()
    assert len(mistakes) == 4 and {m[0] for m in mistakes} <= set(held)
    assert {m["path"] for e in (ev, flipped) for m in e.to_dict()["mistakes"]} == {
        m[0] for m in mistakes
    }
    fig = flipped.plot_predictions(n=4)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 4
    from d2lft.plot import _pyplot

    _pyplot().close(fig)
    # split='train' of the same split: the other six files
    assert sorted(d2lft.evaluate(net, data, val_fraction=0.4, split="train").paths) == kept


def test_evaluate_refuses_one_folder_without_a_split(backend, tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    data = one_folder(tmp_path / "chairs")
    net = d2lft.build_finetune_net(pretrained=False)
    d2lft.net_info(net).classes = ["blue", "red"]
    # no test/ folder and no val_fraction: refused, saying what to pass
    with pytest.raises(d2lft.DataLayoutError) as err:
        d2lft.evaluate(net, data, image_size=32)
    msg = str(err.value)
    assert "has no test/ folder" in msg and "val_fraction=" in msg and "split=None" in msg
    assert str(data) in msg and "blue/, red/" in msg
    archive = tmp_path / "chairs.zip"  # a zip of the folder too
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(data.rglob("*.jpg")):
            zf.write(p, p.relative_to(tmp_path))
    with pytest.raises(
        d2lft.DataLayoutError,
        match=r"chairs\.zip .*has no test/ folder.*"
        r"val_fraction=.*split=None",
    ):
        d2lft.evaluate(net, archive, image_size=32)
    # split=None: every image, by explicit choice (the user's files)
    mine = sorted(str(p) for p in data.rglob("*.jpg"))
    ev = d2lft.evaluate(net, data, split=None, image_size=32)
    assert len(ev.true) == 10 and sorted(ev.paths) == mine
    assert len(d2lft.evaluate(net, archive, split=None, image_size=32).true) == 10
    # ... but not where train/ and test/ exist, nor together with val_fraction
    from conftest import make_image_folder

    both = make_image_folder(
        tmp_path / "both", n_train=2, n_test=2, size=(36, 36), classes=("red", "blue")
    )
    with pytest.raises(d2lft.DataLayoutError, match="has train/ and test/.*split='test'"):
        d2lft.evaluate(net, both, split=None, image_size=32)
    assert len(d2lft.evaluate(net, both, image_size=32).true) == 4  # as before
    assert len(d2lft.evaluate(net, both / "test", image_size=32).true) == 4  # the split itself
    with pytest.raises(d2lft.DataLayoutError, match="has no val/ folder"):
        d2lft.evaluate(net, both, split="val", image_size=32)
    with pytest.raises(ValueError, match="split=None scores every image"):
        d2lft.evaluate(net, data, split=None, val_fraction=0.4, image_size=32)
    for bad in (3, "", "../test", "a/b", ["test"]):
        with pytest.raises(ValueError, match="split must name one subfolder"):
            d2lft.evaluate(net, both, split=bad, image_size=32)
    with pytest.raises(ValueError, match="val_fraction must be a number"):
        d2lft.evaluate(net, data, val_fraction=1.5, image_size=32)


def test_split_links_map_back_to_their_source_files(tmp_path):
    """split.json's "sources" maps every link to the user's file; split folders made
    before it existed get the same mapping from the plan."""
    import json
    import os

    from d2lft.data.split import source_paths, split_sources

    data = one_folder(tmp_path / "chairs", n=4)
    dest = d2lft.split_image_folder(data, 0.5, root=tmp_path / "cache")
    links = sorted(p for p in dest.rglob("*.jpg"))
    assert len(links) == 8
    sources = split_sources(dest)
    assert sorted(sources) == sorted(p.relative_to(dest).as_posix() for p in links)
    for link, src in zip(links, source_paths(links, dest), strict=False):
        assert pathlib_name(src) == link.name.split("-", 1)[1] and os.path.isfile(src)
        assert pathlib_parent(src) == data.resolve() / link.parent.name
        assert pathlib.Path(src).read_bytes() == link.read_bytes()
    stamp = dest / "split.json"
    plan = json.loads(stamp.read_text())
    assert plan["sources"] == sources
    del plan["sources"]  # a split folder made before
    stamp.write_text(json.dumps(plan))
    assert split_sources(dest) == sources
    other = tmp_path / "elsewhere.jpg"
    assert source_paths([other], dest) == [str(other)]  # not a link: unchanged
    assert split_sources(tmp_path) == {}


def pathlib_name(p):
    import pathlib

    return pathlib.Path(p).name


def pathlib_parent(p):
    import pathlib

    return pathlib.Path(p).parent
