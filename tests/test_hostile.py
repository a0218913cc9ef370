"""Issue 14: nothing lost, nothing hung, nothing unbounded.

Concurrent first use with real processes, user files that must never be written over,
limits on disk, memory and time (zip bombs, endless and trickling HTTP bodies, FIFOs,
image and batch sizes), leftovers of killed processes (signals sent to child
processes), and one clear message instead of a traceback. Every file is made on the
spot, every server is a loopback one started here, and every test is bounded in time
(subprocess timeouts, thread joins).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.server
import io
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from conftest import make_image_folder

import d2lft
from d2lft import cli
from d2lft.data import DataLayoutError, DownloadError, hub
from d2lft.data.hub import CacheError
from d2lft.io.checkpoint import CheckpointError

HOST = socket.gethostname()
LIMIT = 120  # seconds: the most any child process of these tests may run


# --------------------------------------------------------------------------- helpers


def child_env(home, **extra):
    env = dict(
        os.environ,
        D2LFT_HOME=str(home),
        D2LFT_PROGRESS="0",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
    )
    env.pop("D2LFT_DEBUG", None)
    env.pop("PYTHONUNBUFFERED", None)  # buffered output, as most users have it
    env.update({k: str(v) for k, v in extra.items()})
    return env


def python(code, home, *, timeout=LIMIT, **extra):
    """Run `code` in a fresh interpreter (bounded by `timeout`)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=child_env(home, **extra),
        timeout=timeout,
    )


def d2lft_cmd(args, home, *, timeout=LIMIT, cwd=None, **extra):
    """Run the `d2lft` command in a fresh interpreter (bounded by `timeout`)."""
    return subprocess.run(
        [sys.executable, "-m", "d2lft", *map(str, args)],
        capture_output=True,
        text=True,
        errors="surrogateescape",  # file names that are not UTF-8 come back as they are
        env=child_env(home, **extra),
        timeout=timeout,
        cwd=cwd,
    )


def one_clear_line(p, *fragments, code=2):
    """`p` ended with exit status `code` and one error line holding `fragments`."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = [x for x in p.stderr.splitlines() if x.startswith("d2lft ")]
    assert "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and ": error: " in lines[0], p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def names_in(folder):
    """Names in `folder`, the (empty, hidden) lock files left out."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def leftovers(folder):
    """Temporary names (`.<base>.<host>-<pid>.<tag>.tmp`) in `folder`."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def wait_for(predicate, timeout=60.0, what="a condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def zip_of(folder, arcroot, path, *, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for p in sorted(pathlib.Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, f"{arcroot}/{p.relative_to(folder).as_posix()}")
    return path


def sha1_of(path) -> str:
    return hashlib.sha1(pathlib.Path(path).read_bytes()).hexdigest()


class Site:
    """A loopback HTTP server; `routes[path] = handler(request)` (a function that
    writes the whole response). Handlers here stream, trickle or never end."""

    def __init__(self):
        self.routes = {}
        self.hits = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                route = outer.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    route(self)  # a client that gives up: what these tests want

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve_bytes(self, path, body: bytes, delay=0.0):
        def send(h):
            time.sleep(delay)
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

        self.routes[path] = send
        return self.url(path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def site():
    s = Site()
    yield s
    s.close()


@pytest.fixture(scope="module")
def many_files_zip(tmp_path_factory):
    """A hotdog-layout zip with enough files (about 400) that extracting it takes a
    while, so that concurrent processes overlap."""
    base = tmp_path_factory.mktemp("many")
    folder = make_image_folder(base / "hotdog", n_train=120, n_test=80, size=(16, 16))
    return zip_of(folder, "hotdog", base / "many.zip")


@pytest.fixture(scope="module")
def small_zip(tmp_path_factory):
    base = tmp_path_factory.mktemp("small")
    folder = make_image_folder(base / "hotdog", n_train=3, n_test=2, size=(16, 16))
    return zip_of(folder, "hotdog", base / "small.zip")


def start_together(codes, home, **extra):
    """Start one child per code string, release them at once (a barrier file), and
    return their CompletedProcess-like results (bounded by LIMIT)."""
    gate = pathlib.Path(home).parent / f"gate-{time.monotonic_ns()}"
    ready = pathlib.Path(str(gate) + ".ready")
    ready.mkdir()
    pre = (
        "import os, pathlib, time, sys\n"
        f"pathlib.Path({str(ready)!r}, str(os.getpid())).touch()\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.002)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", pre + code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(home, **extra),
        )
        for code in codes
    ]
    try:
        wait_for(lambda: len(list(ready.iterdir())) == len(procs), LIMIT, "the children")
        gate.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=LIMIT)
            results.append((p.returncode, out, err))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------- 1. concurrency


READ_ALL = """
n = 0
for _ in range(3):  # read every file, three times: a removed folder fails here
    for p in sorted(pathlib.Path(folder).rglob('*.jpg')):
        n += len(p.read_bytes())
print(folder, n)
"""


def test_concurrent_first_use_of_one_zip_extracts_once(many_files_zip, tmp_path):
    """Six processes start on one archive with an empty cache: all succeed, all read
    the same complete folder, which is extracted once and never removed."""
    home = tmp_path / "home"
    code = (
        "from d2lft.data import resolve_data_dir\n"
        f"folder = resolve_data_dir({str(many_files_zip)!r})\n" + READ_ALL
    )
    results = start_together([code] * 6, home)
    for rc, _, err in results:
        assert rc == 0, err
    assert len({out for _, out, _ in results}) == 1  # same folder, same bytes
    archives = home / "archives"
    assert len(names_in(archives)) == 1 and leftovers(archives) == []
    folder = pathlib.Path(results[0][1].split()[0])
    assert len(list(folder.rglob("*.jpg"))) == 400


def test_concurrent_download_hotdog_downloads_once(site, many_files_zip, tmp_path):
    """Four processes call download_hotdog() at once with an empty cache: one download
    (the server sees one request), one extraction, all succeed."""
    url = site.serve_bytes("/hotdog.zip", many_files_zip.read_bytes(), delay=0.3)
    home = tmp_path / "home"
    code = (
        "import d2lft\n"
        f"folder = d2lft.download_hotdog(url={url!r}, sha1={sha1_of(many_files_zip)!r})\n"
        + READ_ALL
    )
    results = start_together([code] * 4, home)
    for rc, _, err in results:
        assert rc == 0, err
    assert len({out for _, out, _ in results}) == 1
    assert site.hits["/hotdog.zip"] == 1
    assert names_in(home) == ["hotdog.extracted", "hotdog.zip"]


def test_concurrent_split_of_one_folder(tmp_path):
    """Four processes split the same folder of classes at once: one split folder."""
    mine = tmp_path / "mine"
    for c in ("a", "b"):
        (mine / c).mkdir(parents=True)
    from PIL import Image

    for c, color in (("a", "red"), ("b", "blue")):
        for i in range(60):
            Image.new("RGB", (8, 8), color).save(mine / c / f"{i}.png")
    home = tmp_path / "home"
    code = (
        "from d2lft.data.split import resolve_images\n"
        f"folder = resolve_images({str(mine)!r}, 0.3)\n" + READ_ALL.replace("*.jpg", "*.png")
    )
    results = start_together([code] * 4, home)
    for rc, _, err in results:
        assert rc == 0, err
    assert len({out for _, out, _ in results}) == 1
    assert len(names_in(home / "splits")) == 1 and leftovers(home / "splits") == []


# --------------------------------------------------------------------------- 2. user files


TINY = dict(n_train=4, n_test=2, size=(20, 20))  # conftest's `tiny`


def test_checkpoint_dir_never_writes_over_what_is_not_d2lfts(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    with d2lft.using("torch"):
        net = d2lft.build_scratch_net(2, seed=0)

        def plan(checkpoint_dir):
            return d2lft.plan_run(
                net,
                1e-3,
                4,
                1,
                data_dir=tiny,
                image_size=16,
                run=d2lft.RunSpec(checkpoint_dir=checkpoint_dir, verbose=False),
            )

        zipped = zip_of(tiny, "hotdog", tmp_path / "data.zip")
        before = zipped.read_bytes()
        with pytest.raises(CheckpointError, match="not a d2lft checkpoint"):
            plan(zipped)  # the training zip itself
        assert zipped.read_bytes() == before
        photos = tmp_path / "photos"
        photos.mkdir()
        (photos / "me.jpg").write_bytes(b"mine")
        with pytest.raises(CheckpointError, match=r"did not write \(me.jpg\)"):
            plan(photos)
        odd = tmp_path / "odd"
        odd.mkdir()
        (odd / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
        with pytest.raises(CheckpointError, match="not a d2lft checkpoint"):
            plan(odd)
        assert (odd / "checkpoint.safetensors").read_bytes() == b"not a checkpoint"
        # d2lft's own folder (a checkpoint, metrics, an evaluation subfolder) is fine
        run = tmp_path / "run"
        d2lft.save_checkpoint(net, run, epoch=1)
        (run / "metrics.json").write_text("{}")
        (run / "eval").mkdir()
        assert plan(run).run.checkpoint_dir == str(run)
        assert plan(tmp_path / "new").run.checkpoint_dir == str(tmp_path / "new")


TRAIN = [
    "train",
    "scratch",
    "--backend",
    "torch",
    "--epochs",
    "1",
    "--image-size",
    "16",
    "--batch-size",
    "4",
    "--seed",
    "0",
]


def test_second_run_into_the_same_out_needs_resume_or_overwrite(
    tiny, tmp_path, capsys, monkeypatch, one_torch_thread
):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    argv = [*TRAIN, "--data-dir", str(tiny), "--out", str(out)]
    assert cli.main(argv) == 0
    first = (out / "checkpoint.safetensors").read_bytes()
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err
    assert "--resume" in err and "--overwrite" in err
    assert (out / "checkpoint.safetensors").read_bytes() == first  # untouched
    assert cli.main([*argv, "--resume", "--overwrite"]) == 2
    assert "pick one" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite", "--lr", "0.01"]) == 0
    assert (out / "checkpoint.safetensors").read_bytes() != first
    assert d2lft.History.from_json(out / "metrics.json").config["learning_rate"] == 0.01
    capsys.readouterr()
    # --out naming a file, or a folder of someone else's files: refused, untouched
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    assert cli.main([*TRAIN, "--data-dir", str(tiny), "--out", str(mine)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert mine.read_text() == "mine"
    assert cli.main([*TRAIN, "--data-dir", str(tiny), "--out", str(tmp_path)]) == 2
    assert "did not write" in capsys.readouterr().err and mine.read_text() == "mine"
    # a picture's --out replaces only a PNG
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 my photo")
    image = tiny / "test" / "hotdog" / "0.jpg"
    argv = ["predict", "--checkpoint", str(out), str(image), "--out", str(photo)]
    assert cli.main(argv) == 2
    assert "is not a PNG picture" in capsys.readouterr().err
    assert photo.read_bytes() == b"\xff\xd8 my photo"
    assert cli.main(["show", "--data-dir", str(tiny), "--out", str(photo)]) == 2
    assert photo.read_bytes() == b"\xff\xd8 my photo"
    capsys.readouterr()
    # compare and sweep: a second run needs --overwrite
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text("[]")
    argv = ["sweep", *TRAIN[2:], "--data-dir", str(tiny), "--lrs", "1e-3", "--modes", "scratch"]
    assert cli.main([*argv, "--out", str(tmp_path / "sw")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "sw" / "sweep.json").read_text() == "[]"


# --------------------------------------------------------------------------- 3. limits


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for c in ("a", "b"):
            zf.writestr(f"hotdog/train/{c}/zeros.jpg", b"\0" * (24 << 20))
            zf.writestr(f"hotdog/test/{c}/zeros.jpg", b"\0" * 16)
    assert bomb.stat().st_size < 200_000  # ~48 MB from ~100 kB: a ratio of ~1000
    with pytest.raises(DataLayoutError, match="zip bomb") as err:
        d2lft.data.resolve_data_dir(bomb)
    assert "D2LFT_MAX_EXTRACT_RATIO" in str(err.value)
    assert names_in(tmp_path / "home" / "archives") == []  # nothing kept
    # the documented overrides: the ratio, then the total size
    monkeypatch.setenv("D2LFT_MAX_EXTRACT_RATIO", "5000")
    monkeypatch.setenv("D2LFT_MAX_EXTRACT_MB", "10")
    with pytest.raises(DataLayoutError, match="more than the 10.0 MB allowed"):
        d2lft.data.extract_zip(bomb, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    monkeypatch.setenv("D2LFT_MAX_EXTRACT_MB", "lots")
    with pytest.raises(ValueError, match=r"\$D2LFT_MAX_EXTRACT_MB must be a number"):
        d2lft.data.extract_zip(bomb, tmp_path / "x")
    monkeypatch.setenv("D2LFT_MAX_EXTRACT_MB", "100")
    assert (d2lft.data.extract_zip(bomb, tmp_path / "x") / "hotdog").is_dir()


def test_cli_names_the_zip_bomb(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("hotdog/train/a/zeros.jpg", b"\0" * (8 << 20))
    p = d2lft_cmd(["show", "--data-dir", bomb, "--out", tmp_path / "s.png"], tmp_path / "home")
    one_clear_line(p, "zip bomb", "D2LFT_MAX_EXTRACT_RATIO")
    assert names_in(tmp_path / "home" / "archives") == []


def _endless(h):
    h.send_response(200)
    h.end_headers()  # no Content-Length: the body "ends" when the connection does
    chunk = b"\0" * (1 << 16)
    while True:
        h.wfile.write(chunk)


def _announce_huge(h):
    h.send_response(200)
    h.send_header("Content-Length", str(500 << 20))
    h.end_headers()
    h.wfile.write(b"PK")


def _trickle(h):
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    for _ in range(1000):
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.2)


def test_download_size_is_capped(site, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("D2LFT_DOWNLOAD_TIMEOUT", "20")  # bounds the test if the cap broke
    site.routes["/endless.zip"] = _endless
    monkeypatch.setenv("D2LFT_MAX_DOWNLOAD_MB", "2")
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"sends more than 2.0 MB .*D2LFT_MAX_DOWNLOAD_MB"):
        d2lft.data.fetch(site.url("/endless.zip"), "0" * 40, root=root)
    assert time.monotonic() - t0 < 30
    assert names_in(root) == []  # no partial file, no staging folder
    # the hotdog data's own cap: its known size (mirrors: $D2LFT_MAX_DOWNLOAD_MB)
    monkeypatch.delenv("D2LFT_MAX_DOWNLOAD_MB")
    site.routes["/hotdog.zip"] = _announce_huge
    with pytest.raises(DownloadError, match=f"more than {hub.HOTDOG_MAX_MB}.0 MB"):
        d2lft.download_hotdog(root, url=site.url("/hotdog.zip"))
    assert names_in(root) == []


def test_trickling_download_meets_its_deadline(site, tmp_path):
    """1 byte every 0.2 s never trips a read timeout; the overall deadline stops it."""
    site.routes["/slow.zip"] = _trickle
    code = (
        "import d2lft, time\n"
        "t0 = time.monotonic()\n"
        "try:\n"
        f"    d2lft.data.fetch({site.url('/slow.zip')!r}, '0' * 40)\n"
        "except d2lft.data.DownloadError as err:\n"
        "    print(round(time.monotonic() - t0, 1), err)\n"
    )
    p = python(code, tmp_path / "home", timeout=60, D2LFT_DOWNLOAD_TIMEOUT="1.5")
    assert p.returncode == 0, p.stderr
    seconds, msg = p.stdout.split(" ", 1)
    assert float(seconds) < 10 and "did not finish within 1.5 s" in msg
    assert "D2LFT_DOWNLOAD_TIMEOUT" in msg
    assert names_in(tmp_path / "home") == []


def test_killed_download_leaves_a_staging_folder_that_the_next_one_reclaims(
    site, small_zip, tmp_path
):
    site.routes["/slow.zip"] = _trickle
    slow = site.url("/slow.zip")
    home = tmp_path / "home"
    child = subprocess.Popen(
        [sys.executable, "-c", f"import d2lft; d2lft.data.fetch({slow!r}, '0' * 40)"],
        env=child_env(home),
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: leftovers(home), 60, "the staging folder")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    (left,) = leftovers(home)
    assert f"{child.pid}" in left
    good = site.serve_bytes("/slow.zip", small_zip.read_bytes())  # same file name
    path = d2lft.data.fetch(good, sha1_of(small_zip), root=home)
    assert path.read_bytes() == small_zip.read_bytes()
    assert leftovers(home) == []


def test_fifo_named_like_an_image_is_never_read(tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    os.mkfifo(data / "train" / "hotdog" / "x.jpg")
    os.mkfifo(data / "test" / "hotdog" / "y.jpg")
    # in child processes: opening a FIFO blocks for ever, and the tests must end
    code = (
        "import d2lft\n"
        f"classes, samples = d2lft.data.list_images({str(data / 'train')!r})\n"
        "print(len(samples), sum(p.endswith('x.jpg') for p, _ in samples))\n"
    )
    p = python(code, tmp_path / "home", timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["8", "0"], p.stderr
    assert "skipped 1 file(s)" in p.stderr and "not regular files" in p.stderr
    p = d2lft_cmd(
        ["show", "--data-dir", data, "--out", tmp_path / "s.png"], tmp_path / "home", timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert "not regular files" in p.stderr and (tmp_path / "s.png").is_file()


def test_image_and_batch_size_bounded_by_memory(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("D2LFT_MEMORY_MB", "1024")
    with d2lft.using("torch"):
        net = d2lft.build_scratch_net(2, seed=0)
        with pytest.raises(ValueError, match="the largest batch that fits at image size 448 is 4"):
            d2lft.plan_run(net, 1e-3, 64, 1, data_dir=tiny, image_size=448)
        with pytest.raises(ValueError, match="not even one image fits: .* at most 896"):
            d2lft.plan_run(net, 1e-3, 1, 1, data_dir=tiny, image_size=4096)
        assert d2lft.plan_run(net, 1e-3, 4, 1, data_dir=tiny, image_size=224).batch_size == 4
        with pytest.raises(ValueError, match="a prediction batch .* the largest batch"):
            d2lft.predict(net, [np.zeros((8, 8, 3), "uint8")] * 32, image_size=1024)
    monkeypatch.setenv("D2LFT_MEMORY_MB", "a lot")
    with d2lft.using("torch"), pytest.raises(ValueError, match=r"\$D2LFT_MEMORY_MB must be"):
        d2lft.plan_run(net, 1e-3, 4, 1, data_dir=tiny, image_size=16)
    monkeypatch.setenv("D2LFT_MEMORY_MB", "1024")
    argv = [*TRAIN, "--data-dir", str(tiny), "--out", str(tmp_path / "o")]
    argv[argv.index("--image-size") + 1] = "3000"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--image-size" in err and "D2LFT_MEMORY_MB" in err and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint (torch, 2 classes, image size 16)."""
    with d2lft.using("torch"):
        net = d2lft.build_scratch_net(2, seed=0)
        d2lft.net_info(net).classes = ["hotdog", "not-hotdog"]
        path = tmp_path_factory.mktemp("ck") / "run"
        h = d2lft.History(backend="torch", devices=["cpu"], config={"image_size": 16})
        h.add_epoch(0.5, 0.75, 0.5)
        d2lft.save_checkpoint(net, path, epoch=1, history=h, image_size=16)
    return path / "checkpoint.safetensors"


def edited(src, dst, change):
    """A copy of checkpoint `src` with its metadata changed and its hash recomputed
    (the hash proves integrity, not authorship: anyone can recompute it)."""
    from d2lft.io.checkpoint import HASH_KEY, INFO_KEY, content_hash
    from d2lft.io.weights import read_params, write_params

    arrays, meta = read_params(src)
    info = json.loads(meta[INFO_KEY])
    change(info)
    text = json.dumps(info, sort_keys=True)
    meta[INFO_KEY], meta[HASH_KEY] = text, content_hash(arrays, text)
    write_params(dst, arrays, meta)
    return dst


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i.update(image_size=10**6), "image_size is 1000000"),
        (lambda i: i.update(checkpoint_version="1"), "checkpoint_version is '1'"),
        (lambda i: i.pop("kind"), "kind is None"),
        (lambda i: i.update(history={"train_loss": "low"}), "history.train_loss"),
        (lambda i: i.update(history=[1, 2]), "history is a JSON list"),
        (lambda i: i.update(classes=["a", "b", "c"]), "3 class names for a head of 2"),
        (lambda i: i.update(epoch=-1), "epoch is -1"),
    ],
)
def test_edited_checkpoint_metadata_is_one_clear_error(checkpoint, tmp_path, change, message):
    bad = edited(checkpoint, tmp_path / "bad.safetensors", change)
    with pytest.raises(CheckpointError, match=message):
        d2lft.read_checkpoint(bad)
    if "image_size" in message:  # the case that drove predict into the OOM killer
        p = d2lft_cmd(
            ["predict", "--checkpoint", bad, checkpoint.parent.parent / "none.jpg"],
            tmp_path / "home",
        )
        one_clear_line(p, "image_size is 1000000")
    with d2lft.using("torch"), pytest.raises(CheckpointError, match=message):
        d2lft.load_checkpoint(bad)


# --------------------------------------------------------------------------- leftovers


def _slow_extraction_child(zip_path, started):
    """Code for a child that starts a real extraction and stalls inside it."""
    return (
        "import zipfile, pathlib, time\n"
        "real = zipfile.ZipFile.extractall\n"
        "def slow(self, path=None, *a, **k):\n"
        "    self.extract(self.namelist()[0], path)\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(60)\n"
        "zipfile.ZipFile.extractall = slow\n"
        "from d2lft.data import resolve_data_dir\n"
        f"resolve_data_dir({str(zip_path)!r})\n"
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_extraction_killed_leaves_a_temp_folder_that_the_next_run_reclaims(
    small_zip, tmp_path, monkeypatch, sig
):
    home = tmp_path / "home"
    started = tmp_path / "started"
    child = subprocess.Popen(
        [sys.executable, "-c", _slow_extraction_child(small_zip, started)],
        env=child_env(home),
        stderr=subprocess.DEVNULL,
    )
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_for(started.exists, 60, "the extraction to start")
        child.send_signal(sig)
        child.wait(timeout=30)
        archives = home / "archives"
        (dead,) = leftovers(archives)
        assert f"{HOST}-{child.pid}." in dead or f"-{child.pid}." in dead
        # a live process's temporary folder of the same archive is left alone
        live = archives / dead.replace(f"-{child.pid}.", f"-{sleeper.pid}.")
        live.mkdir()
        monkeypatch.setenv("D2LFT_HOME", str(home))
        folder = d2lft.data.resolve_data_dir(small_zip)
        assert d2lft.data.check_splits(folder) == folder
        assert leftovers(archives) == [live.name]
    finally:
        for p in (child, sleeper):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_killed_checkpoint_save_leaves_a_tmp_that_the_next_save_reclaims(checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    target = run / "checkpoint.safetensors"
    saving = (
        "import os, signal, time\n"
        "from d2lft._sys.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_bytes(b'half a checkpoint')\n"
        "    {stop}\n"
    )
    # a save in progress in a live process, and one killed (SIGKILL) in the middle
    alive = subprocess.Popen(
        [sys.executable, "-c", saving.format(stop="time.sleep(60)")],
        env=child_env(tmp_path / "home"),
    )
    try:
        wait_for(lambda: len(leftovers(run)) == 1, 60, "the live save's temporary file")
        (live,) = leftovers(run)
        p = python(saving.format(stop="os.kill(os.getpid(), signal.SIGKILL)"), tmp_path / "home")
        assert p.returncode == -signal.SIGKILL
        (dead,) = set(leftovers(run)) - {live}
        with d2lft.using("torch"):
            net = d2lft.load_checkpoint(checkpoint)
            d2lft.save_checkpoint(net, run, epoch=1)
        assert leftovers(run) == [live]  # the dead one's is gone, the live one's is kept
        assert d2lft.read_checkpoint(run).epoch == 1
        alive.send_signal(signal.SIGTERM)  # no handler outside training: it just dies
        alive.wait(timeout=30)
        assert leftovers(run) == [live]
        d2lft.save_checkpoint(net, run, epoch=2)
        assert leftovers(run) == [] and d2lft.read_checkpoint(run).epoch == 2
    finally:
        if alive.poll() is None:
            alive.kill()
            alive.wait()


# --------------------------------------------------------------------------- 4. messages


def _patched_zip(path, entries, *, flag=None, method=None):
    """A stored zip of `entries` with the general-purpose flag or the compression
    method of every entry patched in both headers (as other tools write them)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    raw = bytearray(buf.getvalue())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(sig)
        while at >= 0:
            if flag is not None:
                raw[at + flag_at : at + flag_at + 2] = flag.to_bytes(2, "little")
            if method is not None:
                raw[at + flag_at + 2 : at + flag_at + 4] = method.to_bytes(2, "little")
            at = raw.find(sig, at + 4)
    path.write_bytes(bytes(raw))
    return path


ENTRIES = {"hotdog/train/a/1.jpg": b"x", "hotdog/test/a/1.jpg": b"y"}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _patched_zip(p, ENTRIES, flag=1), "encrypted"),
        (lambda p: _patched_zip(p, ENTRIES, method=9), "deflate64"),
        (
            lambda p: _patched_zip(p, {"hotdog/train": b"x", "hotdog/train/a/1.jpg": b"y"}),
            "both a file and a folder",
        ),
        (lambda p: _patched_zip(p, {"hotdog/" + "x" * 300 + ".jpg": b"x"}), "longer than 255"),
    ],
)
def test_unsupported_zip_entries_are_one_clear_error(tmp_path, monkeypatch, make, message):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    archive = make(tmp_path / "odd.zip")
    with pytest.raises(DataLayoutError, match=message):
        d2lft.data.resolve_data_dir(archive)
    assert names_in(tmp_path / "home" / "archives") == []
    if message == "encrypted":
        p = d2lft_cmd(["show", "--data-dir", archive], tmp_path / "home")
        one_clear_line(p, "encrypted", "nothing was written")


def test_cache_that_is_a_file_or_cannot_be_written(small_zip, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("a file")
    p = d2lft_cmd(["show", "--data-dir", small_zip, "--out", tmp_path / "s.png"], home)
    one_clear_line(p, "is a file, not a folder", "D2LFT_HOME")
    # a write that fails in the middle (EROFS, ENOSPC) is named, and nothing is kept
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "cache"))
    for code in (errno.EROFS, errno.ENOSPC):

        def fail(self, *a, _code=code, **k):
            raise OSError(_code, os.strerror(_code), str(tmp_path / "cache" / "x"))

        monkeypatch.setattr(zipfile.ZipFile, "extractall", fail)
        with pytest.raises(CacheError, match="cannot write the d2lft cache folder"):
            d2lft.data.resolve_data_dir(small_zip)
        assert leftovers(tmp_path / "cache" / "archives") == []


def _can_mount() -> bool:
    try:
        return (
            subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_mount(), reason="needs user namespaces (unshare -rm) to mount")
def test_real_full_and_read_only_cache_and_out(small_zip, many_files_zip, tiny, tmp_path):
    """A really full and a really read-only file system (a tmpfs mounted in a user
    namespace): one clear line each, nothing half-written kept."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = child_env(mnt / "home")
    cmd = f"{sys.executable} -m d2lft"
    show = f"{cmd} show --out {tmp_path}/s.png --data-dir"

    def inside(script, size="1m"):
        mount = f"mount -t tmpfs -o size={size} tmpfs {mnt}"
        listing = f"ls -A {mnt}/home/archives 2>/dev/null"
        return subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"{mount} && {script}; rc=$?; {listing}; exit $rc"],
            capture_output=True,
            text=True,
            env=env,
            timeout=LIMIT,
        )

    # 400 files of <1 kB: 0.3 MB by their sizes (the check before extracting passes),
    # but a tmpfs page each: the disk fills up in the middle of the extraction
    p = inside(f"{show} {many_files_zip}")
    one_clear_line(p, "cannot write the d2lft cache folder", "disk is full", "D2LFT_HOME")
    assert [n for n in p.stdout.split() if not n.endswith(".lock")] == []  # nothing kept
    p = inside(f"{show} {many_files_zip}", size="64k")  # refused before extracting
    one_clear_line(p, "is free in", "D2LFT_HOME")
    p = inside(f"mkdir {mnt}/home && mount -o remount,ro {mnt} && {show} {small_zip}")
    one_clear_line(p, "read-only", "D2LFT_HOME")
    p = inside(f"mount -o remount,ro {mnt} && {cmd} show --data-dir {tiny} --out {mnt}/s.png")
    one_clear_line(p, f"cannot use {mnt}/s.png: the file system is read-only", "--out")
    fill = f"dd if=/dev/zero of={mnt}/fill bs=4k count=1000 2>/dev/null"
    p = inside(f"{fill}; {cmd} show --data-dir {tiny} --out {mnt}/s.png", size="64k")
    one_clear_line(p, f"cannot use {mnt}/s.png: the disk is full", "--out")


def test_damaged_decode_cache_pack_is_rebuilt_not_fatal(tiny, tmp_path):
    from d2lft.data import decode_cache as dc

    paths = sorted(str(p) for p in (tiny / "train" / "hotdog").glob("*.jpg"))
    cache = dc.DecodeCache(tmp_path / "cache", memory_mb=0)
    store = cache.load(paths, "k", dc.decode_rgb)
    (pack,) = (tmp_path / "cache").glob("*.npz")
    with np.load(pack) as z:
        parts = {k: z[k] for k in z.files}
    parts["offsets"] = parts["offsets"] + 10**9  # contents that do not match
    with open(pack, "wb") as f:
        np.savez(f, **parts)
    with pytest.warns(UserWarning, match="offsets point past its data"):
        again = dc.DecodeCache(tmp_path / "cache", memory_mb=0).load(paths, "k", dc.decode_rgb)
    assert all((again.image(k) == store.image(k)).all() for k in range(len(paths)))
    fresh = dc.DecodeCache(tmp_path / "cache", memory_mb=0)  # rebuilt: used, no warning
    again = fresh.load(paths, "k", dc.decode_rgb)
    assert fresh.decoded == 0
    assert all((again.image(k) == store.image(k)).all() for k in range(len(paths)))
    with np.load(pack) as z:
        assert (z["offsets"] == store.offsets).all()


def test_decode_cache_size_variable_is_named(tiny, tmp_path):
    p = python("import d2lft, d2lft.data.decode_cache", tmp_path, D2LFT_DECODE_CACHE_MB="lots")
    assert p.returncode == 0, p.stderr  # importing never fails
    p = d2lft_cmd(
        [*TRAIN, "--pipeline", "fast", "--data-dir", tiny, "--out", tmp_path / "o"],
        tmp_path / "home",
        D2LFT_DECODE_CACHE_MB="lots",
    )
    one_clear_line(p, "$D2LFT_DECODE_CACHE_MB must be a whole number", "'lots'")


def test_sweep_keeps_finished_runs_when_a_later_one_fails(
    tiny, tmp_path, monkeypatch, capsys, one_torch_thread
):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    real = d2lft.exercises.sweep.train_fine_tuning
    calls = []

    def second_fails(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(d2lft.exercises.sweep, "train_fine_tuning", second_fails)
    out = tmp_path / "sw"
    argv = ["sweep", *TRAIN[2:], "--data-dir", str(tiny), "--modes", "scratch", "--out", str(out)]
    code = cli.main([*argv, "--lrs", "1e-3", "1e-2", "1e-4"])
    assert code == 2
    err = capsys.readouterr().err
    # the warning is the command's own line (issue 23: no source line of d2lft's code)
    assert "d2lft sweep: warning: the scratch run at lr 0.01 failed" in err
    assert "the scratch run at lr 0.01 failed: RuntimeError: out of memory" in err
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["learning_rate"] for r in rows] == [1e-3, 1e-2, 1e-4]
    assert [r["test_acc"] is not None for r in rows] == [True, False, True]
    assert "out of memory" in rows[1]["error"]
    # --lr 1e300 (float32 overflow in the framework) is refused up front
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--overwrite", "--lrs", "1e-3", "1e300"])
    assert exit_.value.code == 2 and "at most 1e30" in capsys.readouterr().err
    assert cli.main([*TRAIN, "--data-dir", str(tiny), "--weight-decay", "1e300"]) == 2
    assert "--weight-decay: weight_decay must be a finite number >= 0 and at most" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_info_into_a_closed_pipe(checkpoint, tmp_path, extra):
    """`d2lft info RUN | head -1`: the reader goes away; no traceback, status 141."""
    p = subprocess.Popen(
        [sys.executable, "-m", "d2lft", "info", str(checkpoint), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(tmp_path / "home"),
    )
    p.stdout.close()  # before the command writes anything
    _, err = p.communicate(timeout=LIMIT)
    assert p.returncode == 141 and b"Traceback" not in err and b"Exception" not in err, err
    shell = subprocess.run(
        ["sh", "-c", f"{sys.executable} -m d2lft info {checkpoint} | head -1"],
        capture_output=True,
        text=True,
        env=child_env(tmp_path / "home"),
        timeout=LIMIT,
    )
    assert shell.stdout.count("\n") == 1 and "Traceback" not in shell.stderr


def test_names_at_file_name_limits_and_not_utf8(tmp_path, monkeypatch, checkpoint):
    """A 246-character folder name with --val-fraction, 250-character file names, and
    file names that are not UTF-8 (the disk decode cache, evaluate --out, show)."""
    from PIL import Image

    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    long = tmp_path / ("d" * 246)
    for c, color in (("hotdog", "red"), ("not-hotdog", "blue")):
        (long / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), color).save(long / c / (f"{i}" + "n" * 245 + ".jpg"))
    split = d2lft.data.split.resolve_images(long, 0.4)
    assert len(list(split.rglob("*.jpg"))) == 6
    sources = d2lft.data.split.split_sources(split)
    assert sorted(sources.values()) == sorted(str(p) for p in long.rglob("*.jpg"))
    # not UTF-8: a file and a class folder whose names are bytes no codec decodes
    raw = tmp_path / "raw"
    make_image_folder(raw, n_train=2, n_test=2, size=(12, 12))
    odd = os.fsdecode(b"caf\xe9-\xff.jpg")
    for split_name in ("train", "test"):  # the same picture in both classes: one of the
        for c in ("hotdog", "not-hotdog"):  # two is a mistake, printed with its name
            Image.new("RGB", (12, 12), "red").save(raw / split_name / c / odd)
    from d2lft.data import decode_cache as dc

    paths = [str(p) for p in (raw / "train" / "hotdog").iterdir()]
    cache = dc.DecodeCache(tmp_path / "decoded", memory_mb=0)
    assert len(cache.load(paths, "k", dc.decode_rgb)) == 3
    assert (
        len(dc.DecodeCache(tmp_path / "decoded", memory_mb=0).load(paths, "k", dc.decode_rgb)) == 3
    )
    strict = {"PYTHONIOENCODING": "utf-8:strict"}  # a UTF-8 desktop locale's default
    p = d2lft_cmd(
        ["evaluate", "--checkpoint", checkpoint, "--data-dir", raw, "--out", tmp_path / "ev"]
        + ["--show-mistakes", "100"],
        tmp_path / "home",
        **strict,
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert (tmp_path / "ev" / "evaluation.json").is_file()
    assert os.fsencode(odd) in p.stdout.encode("utf-8", "surrogateescape")  # printed as is
    p = d2lft_cmd(
        ["show", "--data-dir", raw, "--out", tmp_path / "s.png"], tmp_path / "home", **strict
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr


def test_cli_hints_name_cli_flags_not_api_arguments(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    (data / "train" / "hotdog" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert cli.main(["show", "--data-dir", str(data), "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "skip_bad" not in err and "remove, replace" in err
    assert err.count("\n") == 1
    # evaluate --out naming a file
    (tmp_path / "f").write_text("mine")
    argv = ["evaluate", "--checkpoint", "x", "--data-dir", str(tiny), "--out", str(tmp_path / "f")]
    assert cli.main(argv) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
