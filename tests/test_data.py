"""Downloads (against a loopback HTTP server), the cache folder, archives and layouts.

Every server here is a `http.server` on 127.0.0.1 that the test starts itself; nothing
reaches the internet. The zips are generated from tiny images in the hotdog layout.
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import io
import pathlib
import shutil
import sys
import threading
import zipfile

import pytest
from conftest import make_image_folder

import d2lft
from d2lft import data
from d2lft.data import DataLayoutError, DownloadError

UNREACHABLE = "http://127.0.0.1:1/hotdog.zip"  # nothing listens on port 1: any request fails


# --------------------------------------------------------------------------- helpers


class Server:
    """A loopback HTTP server. `routes[path]` is a list of responses served in turn
    (the last one repeats); each is (status, body bytes or a file path, mode) with mode
    None or 'truncate' (announce more bytes than are sent, then close)."""

    def __init__(self):
        self.routes = {}
        self.hits = collections.Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits[self.path] += 1
                queue = outer.routes.get(self.path)
                if not queue:
                    self.send_error(404, "File not found")
                    return
                status, body, mode = queue.pop(0) if len(queue) > 1 else queue[0]
                if status != 200:
                    self.send_error(status)
                    return
                if isinstance(body, pathlib.Path):
                    size = body.stat().st_size
                    self.send_response(200)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    with open(body, "rb") as f:
                        shutil.copyfileobj(f, self.wfile, 1 << 20)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                if mode == "truncate":
                    self.send_header("Content-Length", str(len(body) + 4096))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def serve(self, path, *responses):
        self.routes[path] = [r if isinstance(r, tuple) else (200, r, None) for r in responses]
        return self.url(path)

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def zip_folder(folder, arcroot="hotdog", extra=None) -> bytes:
    """The bytes of a zip of `folder` under `arcroot/` (+ `extra` {name: bytes})."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(pathlib.Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, f"{arcroot}/{p.relative_to(folder).as_posix()}")
        for name, payload in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(name), payload)
    return buf.getvalue()


def sha1(b: bytes) -> str:
    return hashlib.sha1(b).hexdigest()


def files_under(folder):
    """The files under `folder`, but the (empty, hidden) lock files that d2lft keeps
    beside what it downloads and extracts."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in pathlib.Path(folder).rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    )


def names_in(folder):
    """The names in `folder`, lock files left out."""
    return sorted(p.name for p in pathlib.Path(folder).iterdir() if not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    """Two different valid hotdog-layout zips (`good`, `other`) as bytes."""
    base = tmp_path_factory.mktemp("zips")
    good = zip_folder(make_image_folder(base / "a", n_train=3, n_test=2, size=(16, 16)))
    other = zip_folder(make_image_folder(base / "b", n_train=2, n_test=2, size=(16, 16), seed=1))
    return {"good": good, "other": other}


@pytest.fixture
def count_extractions(monkeypatch):
    """Counts real extractions (calls of ZipFile.extractall)."""
    calls = []
    real = zipfile.ZipFile.extractall

    def spy(self, *args, **kw):
        calls.append(self.filename)
        return real(self, *args, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "extractall", spy)
    return calls


# --------------------------------------------------------------------------- downloads


def test_download_then_cache_reuse_and_single_extraction(
    server, zips, tmp_path, count_extractions
):
    url = server.serve("/hotdog.zip", zips["good"])
    root = tmp_path / "cache"
    folder = d2lft.download_hotdog(root, url=url, sha1=sha1(zips["good"]))
    assert folder.name == "hotdog" and folder.is_dir()
    assert (folder / "train" / "hotdog").is_dir() and (folder / "test" / "not-hotdog").is_dir()
    assert len(list((folder / "train" / "hotdog").glob("*.jpg"))) == 3
    assert (root / "hotdog.zip").read_bytes() == zips["good"]
    assert server.hits["/hotdog.zip"] == 1 and len(count_extractions) == 1
    sentinel = folder / "train" / "hotdog" / "sentinel.txt"
    sentinel.write_text("kept")  # would vanish if the archive were extracted again

    again = d2lft.download_hotdog(root, url=url, sha1=sha1(zips["good"]))
    assert again == folder
    assert server.hits["/hotdog.zip"] == 1, "the second call must not download again"
    assert len(count_extractions) == 1, "the second call must not extract again"
    assert sentinel.read_text() == "kept"
    # nothing else was left in the cache: no temporary download or extraction folders
    assert names_in(root) == ["hotdog.extracted", "hotdog.zip"]


def test_wrong_sha1_raises_and_leaves_nothing(server, zips, tmp_path):
    url = server.serve("/hotdog.zip", zips["good"])
    root = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        d2lft.download_hotdog(root, url=url, sha1=sha1(zips["other"]))
    msg = str(err.value)
    assert url in msg and sha1(zips["other"]) in msg and "does not match" in msg
    assert files_under(root) == [], "no zip, partial or temporary file may stay in the cache"
    assert names_in(root) == []


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_names_url_and_how_to_place_by_hand(server, zips, tmp_path, status):
    url = server.serve("/hotdog.zip", (status, b"", None))
    root = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        d2lft.download_hotdog(root, url=url, sha1=sha1(zips["good"]))
    msg = str(err.value)
    assert url in msg and str(status) in msg
    assert str(root / "hotdog.zip") in msg and "place it at" in msg
    assert sha1(zips["good"]) in msg
    assert files_under(root) == []


def test_connection_closed_mid_body_then_next_call_succeeds(server, zips, tmp_path):
    good = zips["good"]
    url = server.serve("/hotdog.zip", (200, good, "truncate"), (200, good, None))
    root = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        d2lft.download_hotdog(root, url=url, sha1=sha1(good))
    assert url in str(err.value)
    assert files_under(root) == [], "a partial download must never stay in the cache"
    folder = d2lft.download_hotdog(root, url=url, sha1=sha1(good))  # the server is healthy now
    assert server.hits["/hotdog.zip"] == 2
    assert (root / "hotdog.zip").read_bytes() == good
    assert data.check_splits(folder) == folder


def test_mirror_serving_another_file_is_rejected(server, zips, tmp_path, monkeypatch):
    genuine = sha1(zips["good"])
    bad_url = server.serve("/mirror/hotdog.zip", zips["other"])
    ok_url = server.serve("/ok/hotdog.zip", zips["good"])
    with pytest.raises(DownloadError, match="does not match"):
        d2lft.download_hotdog(tmp_path / "a", url=bad_url, sha1=genuine)
    assert files_under(tmp_path / "a") == []

    monkeypatch.setenv("D2LFT_DATA_URL", bad_url)
    with pytest.raises(DownloadError) as err:
        d2lft.download_hotdog(tmp_path / "b", sha1=genuine)
    assert bad_url in str(err.value) and files_under(tmp_path / "b") == []
    assert server.hits["/mirror/hotdog.zip"] == 2

    monkeypatch.setenv("D2LFT_DATA_URL", ok_url)  # the env var is used when url= is absent
    assert d2lft.download_hotdog(tmp_path / "b", sha1=genuine).is_dir()
    assert server.hits["/ok/hotdog.zip"] == 1
    # url= wins over the env var
    with pytest.raises(DownloadError):
        d2lft.download_hotdog(tmp_path / "c", url=bad_url, sha1=genuine)
    assert server.hits["/mirror/hotdog.zip"] == 3


def test_default_sha1_is_the_real_hotdog_zip(server, zips, tmp_path):
    """A mirror given without sha1= must serve d2l's genuine hotdog.zip."""
    url = server.serve("/hotdog.zip", zips["good"])
    with pytest.raises(DownloadError) as err:
        d2lft.download_hotdog(tmp_path, url=url)
    assert d2lft.HOTDOG_SHA1 in str(err.value)
    assert files_under(tmp_path) == []


def test_cache_folder_from_home_env_and_root(server, zips, tmp_path, monkeypatch):
    url = server.serve("/hotdog.zip", zips["good"])
    digest = sha1(zips["good"])
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    folder = d2lft.download_hotdog(url=url, sha1=digest)
    assert folder == tmp_path / "home" / "hotdog.extracted" / "hotdog"
    assert (tmp_path / "home" / "hotdog.zip").is_file()
    folder = d2lft.download_hotdog(tmp_path / "root", url=url, sha1=digest)  # root= wins
    assert folder == tmp_path / "root" / "hotdog.extracted" / "hotdog"
    assert server.hits["/hotdog.zip"] == 2
    # neither: the per-user cache folder (pooch.os_cache honours XDG_CACHE_HOME on Linux)
    monkeypatch.delenv("D2LFT_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert data.cache_dir() == tmp_path / "xdg" / "d2lft"


def test_cache_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="D2LFT_HOME"):
        data.cache_dir(blocker / "cache")


def test_file_placed_by_hand_is_used_offline(zips, tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    (root / "hotdog.zip").write_bytes(zips["good"])
    folder = d2lft.download_hotdog(root, url=UNREACHABLE, sha1=sha1(zips["good"]))
    assert data.check_splits(folder) == folder


def test_file_placed_by_hand_with_wrong_hash_is_not_used(zips, tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    (root / "hotdog.zip").write_bytes(zips["other"])
    with pytest.warns(UserWarning, match="moved to"), pytest.raises(DownloadError) as err:
        d2lft.download_hotdog(root, url=UNREACHABLE, sha1=sha1(zips["good"]))
    assert UNREACHABLE in str(err.value)
    assert f"had SHA-1 {sha1(zips['other'])}" in str(err.value)
    # not used, and not deleted either (issue 23): moved aside, and the message says where
    aside = f"hotdog.sha1-{sha1(zips['other'])[:12]}.zip"
    assert files_under(root) == [aside] and aside in str(err.value)
    assert (root / aside).read_bytes() == zips["other"]


def test_local_path_and_file_url_as_source(zips, tmp_path):
    src = tmp_path / "mirror" / "hotdog.zip"
    src.parent.mkdir()
    src.write_bytes(zips["good"])
    digest = sha1(zips["good"])
    assert d2lft.download_hotdog(tmp_path / "a", url=str(src), sha1=digest).is_dir()
    assert d2lft.download_hotdog(tmp_path / "b", url=src.as_uri(), sha1=digest).is_dir()
    with pytest.raises(DownloadError, match="could not download"):
        d2lft.download_hotdog(tmp_path / "c", url=str(tmp_path / "missing.zip"), sha1=digest)
    assert files_under(tmp_path / "c") == []


def test_interrupted_extraction_leaves_no_half_filled_folder(server, zips, tmp_path, monkeypatch):
    url = server.serve("/hotdog.zip", zips["good"])
    real = zipfile.ZipFile.extractall

    def interrupted(self, path=None, *a, **k):
        with zipfile.ZipFile(self.filename) as zf:
            zf.extract(zf.namelist()[0], path)  # some files are written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        d2lft.download_hotdog(tmp_path, url=url, sha1=sha1(zips["good"]))
    assert names_in(tmp_path) == ["hotdog.zip"]
    monkeypatch.setattr(zipfile.ZipFile, "extractall", real)
    folder = d2lft.download_hotdog(tmp_path, url=url, sha1=sha1(zips["good"]))
    assert data.check_splits(folder) == folder
    assert server.hits["/hotdog.zip"] == 1, "the verified zip is reused"


def test_progress_bar_when_asked(server, zips, tmp_path, monkeypatch, capfd):
    url = server.serve("/hotdog.zip", zips["good"])
    monkeypatch.setenv("D2LFT_PROGRESS", "1")
    data.fetch(url, sha1(zips["good"]), root=tmp_path / "on")
    assert "100%" in capfd.readouterr().err
    monkeypatch.setenv("D2LFT_PROGRESS", "0")
    data.fetch(url, sha1(zips["good"]), root=tmp_path / "off")
    assert "100%" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"sha1": "abc"}, "40 hex digits"),
        ({"sha1": "z" * 40}, "40 hex digits"),
        ({"url": "gopher://example.invalid/hotdog.zip", "sha1": "a" * 40}, "http://"),
    ],
)
def test_bad_url_or_sha1_argument(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        d2lft.download_hotdog(tmp_path, **kw)
    assert files_under(tmp_path) == []


def test_load_hotdog_end_to_end(server, zips, tmp_path, backend):
    url = server.serve("/hotdog.zip", zips["good"])
    train, test = d2lft.load_hotdog(tmp_path, url=url, sha1=sha1(zips["good"]))
    assert (len(train), len(test)) == (6, 4)
    classes = train.classes if backend == "torch" else train.synsets
    assert classes == ["hotdog", "not-hotdog"]
    img, label = train[0]
    shape = img.size[::-1] + (3,) if backend == "torch" else img.shape
    assert tuple(shape) == (16, 16, 3) and label == 0
    assert train[len(train) - 1][1] == 1
    d2lft.load_hotdog(tmp_path, url=url, sha1=sha1(zips["good"]))
    assert server.hits["/hotdog.zip"] == 1


@pytest.mark.shared
def test_real_hotdog_zip_over_loopback(server, shared_data, tmp_path):
    real = shared_data / "hotdog-real.zip"
    url = server.serve("/hotdog.zip", real)
    with d2lft.using("torch"):
        train, test = d2lft.load_hotdog(
            tmp_path, url=url, sha1="6273bb527df347c12811527ced8eab594e874794"
        )
    assert (len(train), len(test)) == (2000, 800)
    assert sorted(collections.Counter(label for _, label in train.samples).values()) == [1000] * 2
    assert (tmp_path / "hotdog.zip").stat().st_size == real.stat().st_size


# --------------------------------------------------------------------------- archives


def _zip_with(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in entries.items():
            zf.writestr(zipfile.ZipInfo(name), payload)
    return path


@pytest.mark.parametrize(
    "evil",
    ["../evil.txt", "hotdog/../../evil.txt", "/tmp/d2lft-evil.txt", "..\\evil.txt", "C:/evil.txt"],
)
def test_zip_slip_entries_are_refused(tmp_path, evil):
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip_with(work / "evil.zip", {"hotdog/train/a/0.jpg": b"x", evil: b"pwned"})
    dest = work / "cache" / "out"
    with pytest.raises(DataLayoutError, match="unsafe"):
        data.extract_zip(archive, dest)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.zip", "work"]
    assert not pathlib.Path("/tmp/d2lft-evil.txt").exists()


def test_zip_slip_through_download_and_data_dir(server, tmp_path, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    evil = zip_folder(
        make_image_folder(tmp_path / "src", n_train=1, n_test=1, size=(8, 8)),
        extra={"../../outside.txt": b"pwned"},
    )
    url = server.serve("/hotdog.zip", evil)
    with pytest.raises(DataLayoutError, match="unsafe"):
        d2lft.download_hotdog(tmp_path / "cache", url=url, sha1=sha1(evil))
    (tmp_path / "evil.zip").write_bytes(evil)
    with pytest.raises(DataLayoutError, match="unsafe"):
        data.resolve_data_dir(tmp_path / "evil.zip")
    assert not list(tmp_path.rglob("outside.txt"))
    assert not (tmp_path / "cache" / "hotdog.extracted").exists()


def test_truncated_zip_is_a_clear_error(zips, tmp_path, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    cut = tmp_path / "cut.zip"
    cut.write_bytes(zips["good"][: len(zips["good"]) // 2])  # central directory gone
    with pytest.raises(DataLayoutError, match="truncated or not a zip"):
        data.resolve_data_dir(cut)
    # central directory intact, compressed data damaged
    raw = bytearray(zips["good"])
    with zipfile.ZipFile(io.BytesIO(zips["good"])) as zf:
        info = zf.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start, start + info.compress_size):
        raw[i] ^= 0xFF
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(DataLayoutError, match="truncated or corrupt"):
        data.resolve_data_dir(damaged)
    assert names_in(tmp_path / "home" / "archives") == []


def test_non_zip_file_is_a_clear_error(tmp_path, server):
    text = tmp_path / "hotdog.zip"
    text.write_text("<html>this is a login page, not a zip</html>")
    with pytest.raises(DataLayoutError, match="not a readable zip"):
        data.extract_zip(text, tmp_path / "out")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DataLayoutError, match="not a .zip archive"):
        data.resolve_data_dir(notes)
    # served with a matching hash (user's own sha1): the archive check still refuses it
    body = b"<html>not a zip</html>"
    url = server.serve("/hotdog.zip", body)
    with pytest.raises(DataLayoutError, match="not a readable zip"):
        d2lft.download_hotdog(tmp_path / "cache", url=url, sha1=sha1(body))


def test_wrong_layout_archive_shows_expected_layout(server, tmp_path):
    flat = tmp_path / "flat"  # images with no train/ test/
    (flat / "hotdog").mkdir(parents=True)
    (flat / "hotdog" / "0.jpg").write_bytes(b"x")
    body = zip_folder(flat, arcroot="data")
    url = server.serve("/hotdog.zip", body)
    with pytest.raises(DataLayoutError) as err:
        d2lft.download_hotdog(tmp_path / "cache", url=url, sha1=sha1(body))
    assert "expected layout" in str(err.value) and "train/<class_a>" in str(err.value)
    assert not (tmp_path / "cache" / "hotdog.extracted").exists(), "no half-valid folder kept"
    assert names_in(tmp_path / "cache") == ["hotdog.zip"]


@pytest.mark.parametrize(
    "case", ["no_splits", "no_classes", "classes_differ", "empty_class", "missing"]
)
def test_wrong_folder_layouts(tmp_path, case):
    root = make_image_folder(tmp_path / "d", n_train=2, n_test=1, size=(8, 8))
    if case == "no_splits":
        shutil.rmtree(root / "test")
        expect = "no train/ folder beside a test/, val/ or valid/ folder"
    elif case == "no_classes":
        for f in (root / "train" / "hotdog").iterdir():
            f.rename(root / "train" / f"h{f.name}")
        shutil.rmtree(root / "train" / "hotdog")
        shutil.rmtree(root / "train" / "not-hotdog")
        expect = "move them into one subfolder per class"
    elif case == "classes_differ":
        (root / "test" / "not-hotdog").rename(root / "test" / "sausage")
        expect = "differ"
    elif case == "empty_class":
        for f in (root / "test" / "hotdog").iterdir():
            f.unlink()
        (root / "test" / "hotdog" / "readme.txt").write_text("no images here")
        expect = "holds no image"
    else:
        root = tmp_path / "nowhere"
        expect = "does not exist"
    with pytest.raises(DataLayoutError) as err:
        data.resolve_data_dir(root)
    assert expect in str(err.value) and "expected layout" in str(err.value)


def test_resolve_data_dir_on_folder_parent_and_zip(tmp_path, monkeypatch, count_extractions):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    root = make_image_folder(tmp_path / "src" / "hotdog", n_train=2, n_test=1, size=(8, 8))
    assert data.resolve_data_dir(root) == root
    assert data.resolve_data_dir(root.parent) == root  # its only subfolder holds the splits
    assert data.resolve_data_dir(str(root)) == root
    archive = tmp_path / "hotdog.zip"
    # a zip made on macOS: __MACOSX debris beside hotdog/ must not confuse the layout check
    archive.write_bytes(zip_folder(root, extra={"__MACOSX/hotdog/._x": b"\0\5\26\7"}))
    out = data.resolve_data_dir(archive)
    assert out.name == "hotdog" and (tmp_path / "home" / "archives") in out.parents
    assert files_under(out) == files_under(root)
    assert data.resolve_data_dir(archive) == out
    assert len(count_extractions) == 1, "a zip is extracted once"


def test_single_class_fails_for_training_not_for_a_dataset(tmp_path):
    root = make_image_folder(tmp_path / "d", n_train=2, n_test=1, size=(8, 8), classes=("only",))
    assert data.check_image_folder(root / "train") == ["only"]
    with pytest.raises(DataLayoutError, match="at least 2 classes"):
        data.resolve_data_dir(root)
