"""What d2lft writes gets the permissions of a plain open() / os.mkdir() under the
user's umask (0o666 / 0o777 less the umask), not tempfile's private 0600 / 0700; a
file that replaces an existing one keeps that file's permission bits."""

import contextlib
import hashlib
import os
import pathlib
import stat
import zipfile

import pytest

import d2lft
from d2lft._sys import atomic as _io
from d2lft.data import extract_zip, fetch

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")

UMASKS = (0o022, 0o077, 0o002)


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def files_want(mask):
    return 0o666 & ~mask


def dirs_want(mask):
    return 0o777 & ~mask


@pytest.fixture(scope="module")
def torch_net():
    pytest.importorskip("torch")
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False)
    d2lft.net_info(net).classes, d2lft.net_info(net).image_size = ["a", "b"], 32
    return net


def small_history():
    return d2lft.History(
        backend="torch",
        devices=["cpu"],
        train_loss=[0.7, 0.5],
        train_acc=[0.5, 0.75],
        test_acc=[0.5, 0.8],
    )


@pytest.mark.parametrize("mask", UMASKS)
def test_umask_is_read_without_changing_it(mask, monkeypatch):
    with umask(mask):
        assert _io.current_umask() == mask
        assert (_io.default_file_mode(), _io.default_dir_mode()) == (
            files_want(mask),
            dirs_want(mask),
        )
        monkeypatch.setattr(_io, "_umask_from_proc", lambda: None)  # not Linux
        assert _io.current_umask() == mask
        assert os.umask(mask) == mask  # left as it was


@pytest.mark.parametrize("mask", UMASKS)
def test_written_files_follow_the_umask(mask, tmp_path, torch_net):
    from d2lft.plot import _pyplot

    with umask(mask):
        h = small_history()
        h.to_json(tmp_path / "metrics.json")
        d2lft.save_params(torch_net, tmp_path / "w.safetensors")
        ck = d2lft.save_checkpoint(torch_net, tmp_path / "run", epoch=2, history=h)
        assert ck == tmp_path / "run" / "checkpoint.safetensors"
        _pyplot().close(d2lft.plot_history(h, tmp_path / "plots" / "curve.png"))
        assert (tmp_path / "plots" / "curve.png").read_bytes().startswith(b"\x89PNG")
        written = (
            "metrics.json",
            "w.safetensors",
            "run/checkpoint.safetensors",
            "plots/curve.png",
            "run",
            "plots",
        )
        got = {name: oct(mode(tmp_path / name)) for name in written}
        want = {
            name: oct(dirs_want(mask) if (tmp_path / name).is_dir() else files_want(mask))
            for name in written
        }
        assert got == want
        # no temporary file is left beside them
        assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("mask", (0o022, 0o077))
def test_overwriting_keeps_the_files_permissions(mask, tmp_path):
    with umask(mask):
        path = tmp_path / "metrics.json"
        path.write_text("{}")
        os.chmod(path, 0o640)
        small_history().to_json(path)
        assert mode(path) == 0o640 and '"train_loss"' in path.read_text()
        os.chmod(path, 0o604)  # bits that the umask would have removed
        small_history().to_json(path)
        assert mode(path) == 0o604


def make_zip(path, images):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in images.items():
            zf.writestr(name, data)
    return path


def tiny_png(color):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mask", UMASKS)
def test_extracted_zip_and_split_folder_follow_the_umask(mask, tmp_path, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    images = {f"chairs/{c}/{i}.png": tiny_png(c) for c in ("red", "blue") for i in range(3)}
    archive = make_zip(tmp_path / "chairs.zip", images)
    with umask(mask):
        dest = extract_zip(archive, tmp_path / "cache" / "chairs.extracted", marker="m")
        split = d2lft.split_image_folder(dest / "chairs", 0.4, root=tmp_path / "splits")
        got = {
            "extracted folder": mode(dest),
            "extracted class folder": mode(dest / "chairs" / "red"),
            "extracted file": mode(dest / "chairs" / "red" / "0.png"),
            "split folder": mode(split),
            "split test/": mode(split / "test"),
            "split.json": mode(split / "split.json"),
        }
        d, f = dirs_want(mask), files_want(mask)
        assert {k: oct(v) for k, v in got.items()} == {
            "extracted folder": oct(d),
            "extracted class folder": oct(d),
            "extracted file": oct(f),
            "split folder": oct(d),
            "split test/": oct(d),
            "split.json": oct(f),
        }


@pytest.mark.parametrize("mask", UMASKS)
def test_fetched_file_follows_the_umask(mask, tmp_path, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    source = tmp_path / "site" / "data.zip"
    source.parent.mkdir()
    make_zip(source, {"x/a/0.png": tiny_png("red")})
    os.chmod(source, 0o600)  # the copy does not take the source's mode
    sha1 = hashlib.sha1(source.read_bytes()).hexdigest()
    with umask(mask):
        got = fetch(source.as_uri(), sha1)
        assert got == tmp_path / "home" / "data.zip" and mode(got) == files_want(mask)
        os.chmod(got, 0o640)  # a file already in the cache is left alone
        assert fetch(source.as_uri(), sha1) == got and mode(got) == 0o640
        other = fetch(str(source), sha1, fname="copy.zip")  # a plain local path
        assert mode(other) == files_want(mask)
        assert pathlib.Path(other).read_bytes() == source.read_bytes()
