"""Issue 23: files from elsewhere that hang, grow without bound, or are lost.

Downloads from loopback servers that trickle their headers or their body (the whole
request has a deadline, and a low-speed limit like curl's --speed-limit/--speed-time),
an archive with 60,000 empty entries, an archive whose layout is refused after its
extraction (nothing kept in the cache), a user's file in the cache that does not match
(moved aside, never deleted), and the quick start's `load_hotdog(url=..., sha1=...)`
followed by `train_fine_tuning(net)` (the loaded data trains; nothing is downloaded).
Every server here is a thread on 127.0.0.1 and ends on its own within seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pathlib
import shutil
import ssl
import subprocess
import time
import warnings
import zipfile

import pytest
from conftest import make_image_folder
from test_hostile import Site

import d2lft
from d2lft.data import DataLayoutError, DownloadError, hub

#: the longest a trickling server goes on (a broken guard then shows up as a slow test)
TRICKLE_FOR = 20.0


def trickle_headers(h):
    """The status line and headers one byte every 0.2 s."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Pad: " + b"x" * 400 + b"\r\n\r\n"
    end = time.monotonic() + TRICKLE_FOR
    for byte in head:
        if time.monotonic() > end:
            break
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(0.2)
    h.wfile.write(b"PK\x05\x06")


def trickle_body(h):
    """The body one byte every 0.1 s."""
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    h.wfile.flush()
    end = time.monotonic() + TRICKLE_FOR
    while time.monotonic() < end:
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.1)


BIG = bytes(range(256)) * 800  # 200 KiB


def steady(h):
    """200 KiB in 64 KiB pieces every 0.3 s."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(BIG)))
    h.end_headers()
    for i in range(0, len(BIG), 64 << 10):
        h.wfile.write(BIG[i : i + (64 << 10)])
        h.wfile.flush()
        time.sleep(0.3)


@pytest.fixture
def serve():
    """serve(handler) -> the URL of a loopback server whose one route runs `handler`."""
    site = Site()

    def start(handler):
        site.routes["/data.zip"] = handler
        return site.url("/data.zip")

    yield start
    site.close()


def in_cache(root) -> list[str]:
    """Everything under the cache folder `root` (files and folders, hidden ones too),
    the empty lock files left out (a failed download leaves one, harmless)."""
    root = pathlib.Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix != ".lock")


def timed_fetch(url, root, sha1="0" * 40):
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        d2lft.data.fetch(url, sha1, root=root, progressbar=False)
    return time.monotonic() - t0, str(err.value)


# --------------------------------------------------------------------------- deadlines


def test_trickled_headers_meet_the_whole_request_deadline(serve, tmp_path, monkeypatch):
    """Headers at one byte per 0.2 s never trip a read timeout; the deadline covers
    the whole request, headers included."""
    url = serve(trickle_headers)
    monkeypatch.setenv("D2LFT_DOWNLOAD_TIMEOUT", "1.5")
    monkeypatch.setenv("D2LFT_DOWNLOAD_SPEED_LIMIT", "0")  # the deadline alone
    seconds, msg = timed_fetch(url, tmp_path / "cache")
    assert seconds < 6, seconds
    assert "did not finish within 1.5 s" in msg and "$D2LFT_DOWNLOAD_TIMEOUT" in msg
    assert in_cache(tmp_path / "cache") == []


@pytest.fixture
def tls_site(tmp_path, monkeypatch):
    """A loopback HTTPS server (a self-signed certificate made with the openssl command,
    trusted through $REQUESTS_CA_BUNDLE); skipped where openssl is missing."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is missing")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    site = Site()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    site.httpd.socket = context.wrap_socket(site.httpd.socket, server_side=True)
    yield site
    site.close()


def test_the_deadline_ends_a_tls_download_too(tls_site, tmp_path, monkeypatch):
    """TLS wraps the socket that the watchdog shuts: it holds a duplicate, so a
    trickled HTTPS request ends at its deadline like a plain one."""

    def quiet(handler):
        def run(h):
            with contextlib.suppress(OSError):  # ssl's errors once the client has gone
                handler(h)

        return run

    tls_site.routes["/h.zip"] = quiet(trickle_headers)
    tls_site.routes["/b.zip"] = quiet(trickle_body)
    monkeypatch.setenv("D2LFT_DOWNLOAD_TIMEOUT", "1.5")
    monkeypatch.setenv("D2LFT_DOWNLOAD_SPEED_LIMIT", "0")
    for path in ("/h.zip", "/b.zip"):
        url = tls_site.url(path).replace("http://", "https://")
        seconds, msg = timed_fetch(url, tmp_path / "cache")
        assert seconds < 6 and "did not finish within 1.5 s" in msg, (seconds, msg)
    assert in_cache(tmp_path / "cache") == []


def test_trickled_body_meets_the_low_speed_limit(serve, tmp_path, monkeypatch):
    """10 bytes/s under a 1 KiB/s limit over 1.5 s: stopped after about 1.5 s,
    long before the whole-request deadline (60 s)."""
    url = serve(trickle_body)
    monkeypatch.setenv("D2LFT_DOWNLOAD_TIMEOUT", "60")
    monkeypatch.setenv("D2LFT_DOWNLOAD_SPEED_LIMIT", "1024")
    monkeypatch.setenv("D2LFT_DOWNLOAD_SPEED_TIME", "1.5")
    seconds, msg = timed_fetch(url, tmp_path / "cache")
    assert 1.4 < seconds < 6, seconds
    assert "in the last 1.5 s, slower than the 1024 bytes/s" in msg
    assert "$D2LFT_DOWNLOAD_SPEED_LIMIT" in msg and "$D2LFT_DOWNLOAD_SPEED_TIME" in msg
    assert in_cache(tmp_path / "cache") == []


def test_trickled_headers_meet_the_low_speed_limit(serve, tmp_path, monkeypatch):
    """Nothing of the body arrives while headers trickle: the speed limit ends it too."""
    url = serve(trickle_headers)
    monkeypatch.setenv("D2LFT_DOWNLOAD_TIMEOUT", "60")
    monkeypatch.setenv("D2LFT_DOWNLOAD_SPEED_TIME", "1")
    seconds, msg = timed_fetch(url, tmp_path / "cache")
    assert seconds < 6 and "slower than the 1024 bytes/s" in msg, (seconds, msg)


def test_a_steady_download_passes_the_speed_limit(serve, tmp_path, monkeypatch):
    """200 KiB over about 1 s, in pieces 0.3 s apart, with a 1 KiB/s limit over 0.5 s:
    the limit does not stop a download that keeps up."""
    url = serve(steady)
    monkeypatch.setenv("D2LFT_DOWNLOAD_TIMEOUT", "30")
    monkeypatch.setenv("D2LFT_DOWNLOAD_SPEED_TIME", "0.5")
    digest = hashlib.sha1(BIG).hexdigest()
    path = d2lft.data.fetch(url, digest, root=tmp_path / "cache", progressbar=False)
    assert path.read_bytes() == BIG


# --------------------------------------------------------------------------- archives


def test_zip_of_60000_empty_entries_is_refused(tmp_path, monkeypatch):
    """The byte limits do not count empty files; the number of entries is bounded
    (default 50,000), before anything is written."""
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "cache"))
    bomb = tmp_path / "inodes.zip"
    with zipfile.ZipFile(bomb, "w") as zf:
        for i in range(60_000):
            zf.writestr(f"hotdog/train/a/{i}.jpg", b"")
    with pytest.raises(DataLayoutError) as err:
        d2lft.data.resolve_data_dir(bomb)
    msg = str(err.value)
    assert "holds 60,000 entries" in msg and "more than the 50,000 allowed" in msg
    assert "$D2LFT_MAX_EXTRACT_FILES" in msg and "nothing was written" in msg
    assert in_cache(tmp_path / "cache") == []


def one_class_zip(tmp_path) -> pathlib.Path:
    """A hotdog-layout zip with a single class (training needs two)."""
    folder = make_image_folder(
        tmp_path / "one" / "hotdog", n_train=2, n_test=1, size=(8, 8), classes=("a",)
    )
    path = tmp_path / "one.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted(folder.rglob("*.jpg")):
            zf.write(p, f"hotdog/{p.relative_to(folder).as_posix()}")
    return path


def test_a_refused_layout_leaves_no_extraction_in_the_cache(tmp_path, monkeypatch):
    """The layout is checked before the extraction is put in place, with the same
    demands (two classes) as after it: a refused archive leaves nothing extracted."""
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    zipped = one_class_zip(tmp_path)
    root = tmp_path / "cache"
    with pytest.raises(DataLayoutError, match="fewer than 2|at least 2|2 class"):
        d2lft.download_hotdog(root, url=str(zipped), sha1=hub.file_sha1(zipped))
    assert in_cache(root) == ["hotdog.zip"]  # the download itself is sound; no extraction
    with pytest.raises(DataLayoutError, match="nothing extracted from it was kept"):
        d2lft.data.resolve_data_dir(zipped)
    assert in_cache(tmp_path / "home") == ["archives"]


# --------------------------------------------------------------------------- user files


def zip_bytes(folder) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(pathlib.Path(folder).rglob("*.jpg")):
            zf.write(p, f"hotdog/{p.relative_to(folder).as_posix()}")
    return buf.getvalue()


@pytest.fixture(scope="module")
def two_zips(tmp_path_factory):
    """Two different small hotdog-layout zips (their bytes)."""
    base = tmp_path_factory.mktemp("zips")
    a = make_image_folder(base / "a", n_train=3, n_test=2, size=(16, 16), seed=1)
    b = make_image_folder(base / "b", n_train=3, n_test=2, size=(16, 16), seed=2)
    return zip_bytes(a), zip_bytes(b)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def test_a_mismatching_file_in_the_cache_is_moved_aside_not_deleted(two_zips, tmp_path):
    mine, other = two_zips
    root = tmp_path / "cache"
    root.mkdir()
    (root / "hotdog.zip").write_bytes(mine)  # placed by hand
    source = tmp_path / "other.zip"
    source.write_bytes(other)
    with pytest.warns(UserWarning, match="was not used; it was moved to") as caught:
        d2lft.download_hotdog(root, url=str(source), sha1=sha1(other))
    aside = root / f"hotdog.sha1-{sha1(mine)[:12]}.zip"
    assert str(aside) in str(caught[0].message)
    assert aside.read_bytes() == mine and (root / "hotdog.zip").read_bytes() == other
    # asked for again, the file set aside comes back without any download
    gone = "http://127.0.0.1:1/hotdog.zip"  # nothing listens on port 1
    with warnings.catch_warnings(record=True):
        folder = d2lft.download_hotdog(root, url=gone, sha1=sha1(mine))
    assert (root / "hotdog.zip").read_bytes() == mine and folder.is_dir()
    assert (root / f"hotdog.sha1-{sha1(other)[:12]}.zip").read_bytes() == other


def test_a_failed_download_says_where_the_users_file_went(two_zips, tmp_path, monkeypatch):
    """The issue's case: the user's zip in the cache as hotdog.zip, then d2l's file
    asked for while offline: the user's file is kept, and the error says where."""
    mine, _ = two_zips
    root = tmp_path / "cache"
    root.mkdir()
    (root / "hotdog.zip").write_bytes(mine)
    monkeypatch.setenv("D2LFT_DATA_URL", "http://127.0.0.1:1/hotdog.zip")
    with pytest.warns(UserWarning), pytest.raises(DownloadError) as err:
        d2lft.download_hotdog(root)
    aside = root / f"hotdog.sha1-{sha1(mine)[:12]}.zip"
    assert f"it was moved to {aside}" in str(err.value)
    assert aside.read_bytes() == mine


# --------------------------------------------------------------------------- quick start


def test_load_hotdog_then_train_trains_on_the_loaded_data(
    two_zips, tmp_path, monkeypatch, one_torch_thread
):
    """README's quick start with a local zip: `load_hotdog(url=ZIP, sha1=...)`, then
    `train_fine_tuning(net)` trains on that zip's data, and nothing is fetched."""
    mine, _ = two_zips
    zipped = tmp_path / "mine.zip"
    zipped.write_bytes(mine)
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    with d2lft.using("torch"):
        train, test = d2lft.load_hotdog(url=str(zipped), sha1=sha1(mine))
        assert len(train) == 6 and len(test) == 4
        loaded = hub.cache_dir() / "hotdog.extracted" / "hotdog"

        def no_fetch(*args, **kwargs):
            raise AssertionError(f"a download was attempted: {args}")

        monkeypatch.setattr(hub, "fetch", no_fetch)
        monkeypatch.setattr(hub.pooch, "retrieve", no_fetch)
        net = d2lft.build_scratch_net(2, seed=0)
        history = d2lft.train_fine_tuning(net, 1e-3, batch_size=4, num_epochs=1, image_size=16)
    assert pathlib.Path(history.config["data_dir"]) == loaded
    assert history.num_examples == 6
    assert (tmp_path / "home" / "hotdog.zip").read_bytes() == mine  # kept, not deleted
