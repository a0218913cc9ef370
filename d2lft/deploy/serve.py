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

Who may use it (:class:`_Guard`, every response): a request whose ``Host`` is not an
IP address, ``localhost``, the ``host`` it listens on or a name in `allow_hosts` is
refused (400: DNS rebinding, where a web page's own name is pointed at this
machine); a POST whose ``Origin`` is another site is refused (403); every answer
carries a Content-Security-Policy (the page's inline script and style by their
hashes), ``X-Frame-Options: DENY`` and ``X-Content-Type-Options: nosniff``; the API
names the model's file, never its folder. Slow and idle clients
(:func:`_guarded_protocol`): a connection has `header_timeout` seconds to send a
request's headers and `body_timeout` seconds to send its body, an idle keep-alive
connection is closed after `keep_alive` seconds, and at most `max_connections` are
open at once (a new one closes the oldest idle one; the cap is lowered to fit the
file-descriptor limit, :func:`connection_budget`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import ipaddress
import logging
import os
import pathlib
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

try:
    import resource  # the file-descriptor limit (POSIX)
except ImportError:  # pragma: no cover (Windows)
    resource = None

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
#: seconds a client has to send a request's headers (from its first byte, or from
#: connecting)
HEADER_TIMEOUT = 10.0
#: seconds a client has to send a request's body, once its headers are in (20 MB at
#: 2 Mbit/s takes 80 s)
BODY_TIMEOUT = 120.0
#: seconds an idle keep-alive connection is kept open
KEEP_ALIVE = 5.0
#: the most connections open at once (lowered to fit the file-descriptor limit)
MAX_CONNECTIONS = 100
#: the listening socket's backlog, and the most connections accepted in one go
BACKLOG = 64
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
    #: where the model came from, as given (printed on this machine, never sent)
    path: str = ""
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
            "source": pathlib.Path(model.path).name,
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
        "source": _file_name(ck.path) if ck is not None else "a network built in this session",
        "epoch": ck.epoch if ck is not None else None,
        "test_acc": history.test_acc[-1] if history is not None and history.epochs else None,
    }


def _file_name(path) -> str:
    """A checkpoint's name for clients: its run folder and file, not where they are."""
    path = pathlib.Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


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
    if isinstance(model, OnnxModel):
        path = str(model.path)
    else:
        ck = net_info(model).checkpoint
        path = str(ck.path) if ck is not None else info["source"]
    return ServedModel(model, info, path)


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


#: the scope key set when the server cut a request short (it has logged why)
_CUT = "d2lft.cut"
_log = logging.getLogger("uvicorn.error")  # uvicorn's own log: one format, one place


def _host_name(value: str) -> str | None:
    """The name in a Host header (lower case, without the port or IPv6 brackets);
    None when it is not a valid one."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, port = value[1:].partition("]")
        if not bracket:
            return None
    else:
        name, colon, number = value.partition(":")
        port = colon + number
    if not name or (port and not (port[0] == ":" and port[1:].isdigit())):
        return None
    return name


def check_host_names(names: Sequence[str] | str) -> list[str]:
    """`names` (for `allow_hosts`, ``--allow-host``) as a list; ValueError for one
    that is not a bare host name."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        ok = isinstance(name, str) and (
            re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9])?", name.lower())
            or _is_ip(name.strip("[]"))
        )
        if not ok:
            raise ValueError(
                f"--allow-host {name!r} is not a host name: give the name people type, "
                f"such as mybox.lan (no http://, no port)"
            )
    return names


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def content_security_policy(page: str) -> str:
    """The page's Content-Security-Policy: nothing from elsewhere, its own inline
    ``<script>`` and ``<style>`` by their SHA-256 (so no injected one runs), fetches
    to this server, images from it or from the photos picked (blob:), no framing."""

    def hashes(tag):
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        digests = [base64.b64encode(hashlib.sha256(t.encode()).digest()).decode() for t in found]
        return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class _Guard:
    """ASGI middleware: refuses a Host that is not this server's (400) and a
    state-changing request from another origin (403), and adds the security headers
    to every response."""

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app, allowed_hosts: Sequence[str], csp: str):
        from starlette.datastructures import Headers
        from starlette.responses import PlainTextResponse

        self.app, self.Headers, self.PlainText = app, Headers, PlainTextResponse
        self.allowed = {"localhost"} | {h.strip("[]").lower() for h in allowed_hosts}
        self.headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]

    @staticmethod
    def same_origin(origin: str | None, host: str) -> bool:
        """Whether a request's Origin (None: not from a browser's page) is the
        server's own (the Host it was sent to)."""
        if origin is None:
            return True
        return origin.lower() in (f"http://{host.lower()}", f"https://{host.lower()}")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), *self.headers])
            await send(message)

        headers = self.Headers(scope=scope)
        host = headers.get("host", "")
        name = _host_name(host)
        if name is None or not (name in self.allowed or _is_ip(name)):
            message = (
                f"refused: this server does not answer to the host name {host!r} "
                f"(a guard against DNS rebinding); open it by its address, or start "
                f"d2lft serve with --allow-host {name or 'NAME'}\n"
            )
            await self.PlainText(message, status_code=400)(scope, receive, secured)
            return
        origin = headers.get("origin")
        if scope["method"] not in self.SAFE and not self.same_origin(origin, host):
            message = f"refused: a request from another site ({origin}) cannot use this page\n"
            await self.PlainText(message, status_code=403)(scope, receive, secured)
            return
        await self.app(scope, receive, secured)


def make_app(
    served: ServedModel,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_files: int = MAX_FILES,
    max_pixels: int = MAX_PIXELS,
    allowed_hosts: Sequence[str] = (DEFAULT_HOST,),
) -> Any:
    """The Starlette app that serves `served` (see the module docstring); requests
    are answered for IP addresses, ``localhost`` and the names in `allowed_hosts`."""
    require_web()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    limit = int(max_upload_mb * 2**20)
    page = PAGE.read_text(encoding="utf-8")
    csp = content_security_policy(page)
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
        except ClientDisconnect:  # one line, not a traceback
            if not request.scope.get(_CUT):  # else the server cut it, and said why
                _log.warning(
                    "d2lft serve: the client %s went away during an upload (%d bytes "
                    "received); nothing was classified",
                    _peer(request.scope.get("client")),
                    receive.seen,
                )
            return Response(status_code=400)  # goes nowhere: the connection is closed
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
        ],
        middleware=[Middleware(_Guard, allowed_hosts=list(allowed_hosts), csp=csp)],
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
        sock.listen(BACKLOG)
    except OSError as err:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port} ({err.strerror or err}): pass another --port "
            f"(0 picks a free one)"
        ) from None
    return sock


def _peer(address) -> str:
    return "{}:{}".format(*address) if address else "an unknown client"


def _raw_response(status: str, message: str) -> bytes:
    body = message.encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


class _GuardedProtocol:
    """Deadlines and a connection cap, mixed into uvicorn's h11 protocol by
    :func:`_guarded_protocol` (which sets the class attributes)."""

    header_timeout: float
    body_timeout: float
    max_connections: int
    slow_headers: bytes
    slow_body: bytes
    busy: bytes

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.opened = time.monotonic()
        self.header_timer = self.body_timer = None
        self.watched = None  # the request whose body is being timed
        self.spoke = False  # whether the client has sent anything yet
        self.arm_header_timer()
        self.make_room()

    def connection_lost(self, exc) -> None:
        self.cancel_timers()
        super().connection_lost(exc)

    def cancel_timers(self) -> None:
        for timer in (self.header_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.header_timer = self.body_timer = None

    def idle(self) -> bool:
        """No request in progress: one still sending its headers, or a keep-alive one."""
        return self.cycle is None or self.cycle.response_complete

    def close(self, answer: bytes | None = None) -> None:
        """Close at once (after `answer`), and count the connection as gone already."""
        if answer is not None:
            self.transport.write(answer)
        self.connections.discard(self)
        self.transport.close()

    def make_room(self) -> None:
        if len(self.connections) <= self.max_connections:
            return
        idle = [
            c
            for c in self.connections
            if c is not self and isinstance(c, _GuardedProtocol) and c.idle()
        ]
        if idle:
            min(idle, key=lambda c: c.opened).close()
        else:
            self.close(self.busy)

    def arm_header_timer(self) -> None:
        self.header_timer = self.loop.call_later(self.header_timeout, self.headers_due, self.cycle)

    def headers_due(self, cycle) -> None:
        self.header_timer = None
        if self.cycle is cycle and not self.transport.is_closing():
            # no new request since the timer was armed; one that never spoke is closed
            # without an answer (a browser's spare connection: it would take a 408
            # for the answer to its next request)
            self.close(self.slow_headers if self.spoke else None)

    def data_received(self, data: bytes) -> None:
        self.spoke = True
        if self.header_timer is None and self.idle():  # the next request begins
            self.arm_header_timer()
        super().data_received(data)
        self.watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.watch()  # a pipelined request may have begun

    def watch(self) -> None:
        """Time the body of a request whose headers have just come in; stop timing
        one whose body is all in."""
        cycle = self.cycle
        if cycle is not None and cycle is not self.watched:  # a new request's headers
            self.watched = cycle
            self.cancel_timers()
            self.body_timer = self.loop.call_later(self.body_timeout, self.body_due, cycle)
        if self.body_timer is not None and (cycle is None or not cycle.more_body):
            self.body_timer.cancel()
            self.body_timer = None

    def body_due(self, cycle) -> None:
        self.body_timer = None
        if cycle is not self.cycle or not cycle.more_body or self.transport.is_closing():
            return
        if cycle.response_complete:  # answered without reading it all: just close
            self.close()
            return
        _log.warning(
            "d2lft serve: closed the connection from %s: its request body did not arrive "
            "within %g s (--body-timeout)",
            _peer(self.client),
            self.body_timeout,
        )
        cycle.scope[_CUT] = True
        answer = None if cycle.response_started else self.slow_body
        cycle.response_started = cycle.disconnected = True  # the app's answer: dropped
        cycle.message_event.set()
        self.close(answer)


def _guarded_protocol(header_timeout: float, body_timeout: float, max_connections: int):
    """uvicorn's h11 protocol with deadlines and a connection cap (uvicorn itself
    only times out idle keep-alive connections, and its `limit_concurrency` answers
    real requests with 503 while idle connections hold every place):

    - a connection has `header_timeout` seconds from connecting (or from the first
      byte of its next request) until its request's headers are in, else it is
      answered 408 (if it sent anything) and closed;
    - a request's body must be in within `body_timeout` seconds of its headers, else
      it is answered 408 (when no answer has started), logged and closed;
    - when more than `max_connections` are open, the oldest idle one (no request in
      progress: one still sending headers, or a keep-alive one) is closed; when none
      is idle, the new one is answered 503 and closed.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return type(
        "GuardedH11Protocol",
        (_GuardedProtocol, H11Protocol),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections,
            "slow_headers": _raw_response(
                "408 Request Timeout",
                f"the request headers did not arrive within {header_timeout:g} s\n",
            ),
            "slow_body": _raw_response(
                "408 Request Timeout",
                f"the request body did not arrive within {body_timeout:g} s\n",
            ),
            "busy": _raw_response("503 Service Unavailable", "the server is busy: try again\n"),
        },
    )


def _open_files() -> int:
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return 64


def connection_budget(wanted: int, backlog: int = BACKLOG) -> tuple[int, str | None]:
    """(the most connections to keep open, a warning or None) under this process's
    file-descriptor limit (RLIMIT_NOFILE). The soft limit is raised toward the hard
    one when `wanted` does not fit; what stays reserved: the files open now, twice
    the `backlog` (connections accepted in one go, and as many being closed) and 32
    more. ValueError when not even one connection fits."""
    if resource is None:  # Windows: no such limit on sockets
        return wanted, None
    in_use = _open_files()
    reserve = in_use + 2 * backlog + 32
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + reserve
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted, None
    cap = soft - reserve
    if cap < 1:
        raise ValueError(
            f"the file-descriptor limit (ulimit -n {soft}) leaves no room for connections "
            f"({in_use} files open, {reserve - in_use} kept in reserve): raise it, e.g. "
            f"ulimit -n 4096"
        )
    return cap, (
        f"warning: the file-descriptor limit (ulimit -n {soft}) leaves room for {cap} "
        f"connections at once, not --max-connections {wanted}; raise it with ulimit -n"
    )


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
    allow_hosts: Sequence[str] = (),
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
    keep_alive: float = KEEP_ALIVE,
    max_connections: int = MAX_CONNECTIONS,
    block: bool = True,
) -> RunningServer | None:
    """Serve `model` (a d2lft network, a checkpoint file or run folder, or an ONNX
    file from :func:`d2lft.export`) on a local web page at http://host:port/.

    Listens on 127.0.0.1 (this machine only) unless `host` says otherwise. With
    `block=True` (the CLI) it runs until Ctrl-C; with `block=False` (a notebook) it
    runs in a background thread and returns a :class:`RunningServer` (`url`,
    `stop()`). Needs the `serve` extra: ``pip install 'd2lft[serve]'``.

    Requests must name the server by an IP address, ``localhost``, `host` or one of
    `allow_hosts` (the names people on a LAN type). `header_timeout`,
    `body_timeout` and `keep_alive` (seconds) and `max_connections` bound slow and
    idle clients (see the module docstring).
    """
    require_web()
    import uvicorn

    for name, value in (
        ("max_upload_mb", max_upload_mb),
        ("max_files", max_files),
        ("header_timeout", header_timeout),
        ("body_timeout", body_timeout),
        ("keep_alive", keep_alive),
        ("max_connections", max_connections),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    allow_hosts = check_host_names(allow_hosts)
    sock = bind(host, port)  # before loading: a taken port fails fast
    try:
        served = model if isinstance(model, ServedModel) else load_model(model)
        app = make_app(
            served,
            max_upload_mb=max_upload_mb,
            max_files=int(max_files),
            max_pixels=max_pixels,
            allowed_hosts=[host, *allow_hosts],
        )
        cap, fd_warning = connection_budget(int(max_connections))
    except BaseException:
        sock.close()
        raise
    url = _url(sock)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http=_guarded_protocol(header_timeout, body_timeout, cap),
        timeout_keep_alive=keep_alive,
        limit_concurrency=cap + 1,  # requests in progress (uvicorn counts the new one)
        backlog=BACKLOG,
    )
    server = uvicorn.Server(config)
    if fd_warning:
        print(fd_warning, file=sys.stderr)
    if not is_loopback(host):
        print(
            f"warning: listening on {host}: anyone who can reach this machine can use the "
            f"page (the default, 127.0.0.1, is this machine only)",
            file=sys.stderr,
        )
    if block:
        print(
            f"serving {served.path or served.info['source']} ({served.info['arch']}, classes "
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
