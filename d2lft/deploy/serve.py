"""A local web page for a trained model: ``d2lft serve`` and :func:`d2lft.serve`.

Hot dog or not, in a browser: pick or drop one or several photos (or take one with
the camera, where the browser offers it) and see the predicted class and every
class's probability as bars, with the model's classes and where it came from.

A small Starlette app (one HTML page, a JSON API) run by uvicorn, the `serve` extra
(``pip install 'd2lft[serve]'``):

    GET  /              the page (page.html: no external resources)
    GET  /api/info      the model: class names, arch, kind, image size, the backend
                        that trained it and the engine that serves it, its file
    POST /api/predict   a multipart form with one or more images in the field
                        ``files``; JSON: one result per file, in order, either
                        {name, ok: true, label, probability, probabilities: [...]}
                        or {name, ok: false, error}

The model is loaded once. Uploads are checked before any framework sees them: a
request over `max_upload_mb` is refused (413) without being stored, more than
`max_files` files get a 400, and a file that is not an image, is truncated or has
more than `max_pixels` pixels gets its own error message; none of them stops the
server. Requests are handled in a thread pool: decoding runs concurrently, the
forward pass runs under one lock (MXNet's imperative API is not thread-safe, and
on a CPU two concurrent forward passes only share the same cores).
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import os
import pathlib
import socket
import sys
import threading
import time
from typing import Any

from .._version import __version__
from ..backends import _registry
from ..data.images import to_rgb
from ..inference import predict
from ..io.checkpoint import load_checkpoint
from ..netinfo import net_info
from .onnx import OnnxModel, is_onnx, load_onnx

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: the largest request body accepted, in MiB (all files of one upload together)
MAX_UPLOAD_MB = 20.0
#: the most files in one upload
MAX_FILES = 16
#: the most pixels an uploaded image may have (a 48-megapixel phone photo fits)
MAX_PIXELS = 50_000_000
#: how much of a too-large request is read (and dropped) before the error is sent:
#: a client that is still sending when the server closes sees a reset connection
#: instead of the message
DRAIN_BYTES = 256 * 2**20
INSTALL_HINT = "pip install 'd2lft[serve]'  (starlette, uvicorn, python-multipart)"
PAGE = pathlib.Path(__file__).with_name("page.html")


class BadUpload(ValueError):
    """An uploaded file that cannot be used as an image; the message is shown."""


def require_web() -> None:
    """ImportError naming the `serve` extra unless starlette and uvicorn import."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ImportError(f"d2lft serve needs {err.name}: {INSTALL_HINT}") from err


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass(eq=False)
class ServedModel:
    """A loaded model and what the page shows about it; :meth:`predict` is safe to
    call from several threads (the forward pass runs under `lock`)."""

    model: Any
    info: dict
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def predict(self, image) -> dict:
        """One decoded image's prediction as the page's JSON."""
        with self.lock:
            if isinstance(self.model, OnnxModel):
                (p,) = predict(self.model, [image])
            else:
                with _registry.using(_registry.backend_of(self.model)):
                    (p,) = predict(self.model, [image])
        ranked = sorted(zip(p.classes, p.probs.tolist(), strict=True), key=lambda cp: -cp[1])
        return {
            "ok": True,
            "label": p.label,
            "probability": p.probability,
            "probabilities": [{"class": c, "p": q} for c, q in ranked],
        }


def _describe(model) -> dict:
    if isinstance(model, OnnxModel):
        return {
            "classes": model.classes,
            "arch": model.arch,
            "kind": model.kind,
            "image_size": model.image_size,
            "trained_with": model.trained_with,
            "served_by": "onnxruntime",
            "source": str(model.path),
            "epoch": (model.info.get("checkpoint") or {}).get("epoch"),
            "test_acc": (model.info.get("checkpoint") or {}).get("test_acc"),
        }
    info = net_info(model)
    ck = info.checkpoint
    history = ck.history if ck is not None else None
    package = _registry.package_of(model)
    n = package.num_outputs(model)
    return {
        "classes": list(info.classes) if info.classes else [f"class {i}" for i in range(n)],
        "arch": info.arch,
        "kind": info.kind,
        "image_size": info.image_size or 224,
        "trained_with": ck.backend if ck is not None else info.backend,
        "served_by": _registry.backend_of(model),
        "source": str(ck.path) if ck is not None else "a network built in this session",
        "epoch": ck.epoch if ck is not None else None,
        "test_acc": history.test_acc[-1] if history is not None and history.epochs else None,
    }


def load_model(source: Any) -> ServedModel:
    """A :class:`ServedModel` from a network, an OnnxModel, a ``.onnx`` path or a
    checkpoint (file or run folder; loaded under the active backend)."""
    if is_onnx(source):
        model = load_onnx(source)
    elif isinstance(source, (str, os.PathLike)):
        model = load_checkpoint(source)
    else:
        model = source
        net_info(model)  # a d2lft network, else TypeError saying how to get one
    info = _describe(model)
    info["d2lft_version"] = __version__
    return ServedModel(model, info)


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS):
    """An uploaded file's bytes as an 8-bit RGB PIL image, decoded exactly as
    ``d2lft predict`` decodes files; BadUpload with a message for the page when the
    file is empty, not an image, truncated or too large in pixels."""
    from PIL import Image

    if not data:
        raise BadUpload("the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise BadUpload(
                    f"the image has {w} x {h} pixels, more than this server takes "
                    f"({max_pixels / 1e6:g} megapixels): send a smaller photo"
                )
            im.load()
            return to_rgb(im)
    except Image.UnidentifiedImageError:
        raise BadUpload(
            "not an image that can be read (JPEG, PNG, GIF, BMP, TIFF, WebP, ...)"
        ) from None
    except Image.DecompressionBombError as err:
        raise BadUpload(f"the image is too large ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, BadUpload):
            raise
        raise BadUpload(
            f"the image cannot be decoded ({err}): the file is truncated or damaged"
        ) from None


def predict_upload(served: ServedModel, name: str, data: bytes, max_pixels: int = MAX_PIXELS):
    """One uploaded file's result for the page: the prediction, or the error."""
    try:
        image = decode_upload(data, max_pixels)
    except BadUpload as err:
        return {"name": name, "ok": False, "error": str(err)}
    return {"name": name, **served.predict(image)}


# --------------------------------------------------------------------------- the app


class _TooLarge(Exception):
    pass


class _Limited:
    """An ASGI `receive` that raises _TooLarge once the request body passes `limit`
    bytes; `ended`: whether the last part of the body has been received."""

    def __init__(self, receive, limit: int):
        self.receive, self.limit, self.seen, self.ended = receive, limit, 0, False

    async def __call__(self):
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.ended = not message.get("more_body", False)
            if self.seen > self.limit:
                raise _TooLarge
        return message

    async def drain(self, budget: int) -> None:
        """Read and drop what is left of the body (up to `budget` bytes), so that the
        browser, still sending, reads the error instead of a reset connection."""
        while not self.ended and budget > 0:
            message = await self.receive()
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            self.ended = not message.get("more_body", False)


def make_app(
    served: ServedModel,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_files: int = MAX_FILES,
    max_pixels: int = MAX_PIXELS,
) -> Any:
    """The Starlette app that serves `served` (see the module docstring)."""
    require_web()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    limit = int(max_upload_mb * 2**20)
    page = PAGE.read_text(encoding="utf-8")
    info = dict(served.info, max_upload_mb=max_upload_mb, max_files=max_files)

    def error(status, message):
        return JSONResponse({"error": message}, status_code=status)

    too_large = (
        f"the upload is larger than {max_upload_mb:g} MB: send fewer or smaller photos "
        f"(the server was started with --max-upload-mb {max_upload_mb:g})"
    )

    async def index(request):
        return HTMLResponse(page)

    async def api_info(request):
        return JSONResponse(info)

    async def api_predict(request):
        receive = _Limited(request.receive, limit)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await receive.drain(max(8 * limit, DRAIN_BYTES))
            return error(413, too_large)
        try:
            form = await Request(request.scope, receive).form(
                max_files=max_files, max_fields=max_files
            )
        except _TooLarge:
            await receive.drain(max(8 * limit, DRAIN_BYTES))
            return error(413, too_large)
        except HTTPException as err:  # starlette's: too many files, a malformed form
            detail = str(err.detail)
            if "files" in detail.lower():
                detail = f"at most {max_files} photos at a time ({detail})"
            return error(400, detail)
        try:
            items = form.getlist("files")
            if not items:
                return error(400, "no photo in the upload (the form field is 'files')")
            uploads = []
            for i, item in enumerate(items):
                if not isinstance(item, UploadFile):
                    return error(400, f"form field 'files' #{i} is not a file")
                uploads.append((item.filename or f"photo {i + 1}", await item.read()))
        finally:
            await form.close()
        results = [
            await run_in_threadpool(predict_upload, served, name, data, max_pixels)
            for name, data in uploads
        ]
        return JSONResponse({"results": results})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/info", api_info),
            Route("/api/predict", api_predict, methods=["POST"]),
        ]
    )


# --------------------------------------------------------------------------- serving


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one. ValueError
    saying what to do when the address is taken or not valid here."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ValueError(
            f"cannot listen on host {host!r} ({err}): pass --host 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port} ({err.strerror or err}): pass another --port "
            f"(0 picks a free one)"
        ) from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


@dataclasses.dataclass(eq=False)
class RunningServer:
    """A server started with ``block=False``: its `url`, and :meth:`stop`."""

    url: str
    served: ServedModel = dataclasses.field(repr=False)
    server: Any = dataclasses.field(repr=False)
    thread: threading.Thread = dataclasses.field(repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def serve(
    model: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_files: int = MAX_FILES,
    max_pixels: int = MAX_PIXELS,
    block: bool = True,
) -> RunningServer | None:
    """Serve `model` (a d2lft network, a checkpoint file or run folder, or an ONNX
    file from :func:`d2lft.export`) on a local web page at http://host:port/.

    Listens on 127.0.0.1 (this machine only) unless `host` says otherwise. With
    `block=True` (the CLI) it runs until Ctrl-C; with `block=False` (a notebook) it
    runs in a background thread and returns a :class:`RunningServer` (`url`,
    `stop()`). Needs the `serve` extra: ``pip install 'd2lft[serve]'``.
    """
    require_web()
    import uvicorn

    for name, value in (("max_upload_mb", max_upload_mb), ("max_files", max_files)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    sock = bind(host, port)  # before loading: a taken port fails fast
    try:
        served = model if isinstance(model, ServedModel) else load_model(model)
        app = make_app(
            served, max_upload_mb=max_upload_mb, max_files=int(max_files), max_pixels=max_pixels
        )
    except BaseException:
        sock.close()
        raise
    url = _url(sock)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    if not is_loopback(host):
        print(
            f"warning: listening on {host}: anyone who can reach this machine can use the "
            f"page (the default, 127.0.0.1, is this machine only)",
            file=sys.stderr,
        )
    if block:
        print(
            f"serving {served.info['source']} ({served.info['arch']}, classes "
            f"{served.info['classes']}, served by {served.info['served_by']}) at {url} "
            f"-- Ctrl-C to stop",
            flush=True,
        )
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn stops on Ctrl-C, then raises it again
            pass
        finally:
            sock.close()
        print("stopped", flush=True)
        return None
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="d2lft-serve", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"the server at {url} did not start")
    return RunningServer(url, served, server, thread)
