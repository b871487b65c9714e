"""HTTP layer of the local server: routing, API-key check, strict request decoding and one-write responses.

Each response (status line, headers and body) goes out in a single ``sendall`` on a TCP_NODELAY socket;
otherwise keep-alive requests stall ~40 ms on delayed ACK.
"""

import base64
import hashlib
import hmac
import json
import logging
import re
import socket
import ssl
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Dict, List, Optional, Pattern, Tuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .. import _converter, _proto, _wire
from ..exceptions import DecodeError
from ._service import HTTPError, Service, canonical
from ._store import iso

logger = logging.getLogger(__name__)

_RUN = r"/api/v1/training_runs/(?P<run>[^/]+)/checkpoints"
_CKPT = _RUN + r"/(?P<kind>[^/]+)/(?P<name>[^/]+)"
_SIGNED = r"/local/v1/archives/(?P<token>[^/]+)"
_SIGNED_TOKEN = re.compile(r"/local/v1/archives/[^/ ?]+")
_FILE = r"/signed/(?P<run>[^/]+)/(?P<kind>[^/]+)/(?P<name>[^/]+)/(?P<file>[^/]+)"
_FILE_TOKEN = re.compile(r"token=[0-9a-f]+")
_NO_CONTENT: Tuple[int, None, Dict[str, str]] = (204, None, {})
_REASONS = BaseHTTPRequestHandler.responses
#: Routes that run a model operation and honour ``X-Idempotency-Key``; their handler is the Service method.
SUBMITS = (
    "create_model", "save_weights", "load_weights", "optim_step", "forward_backward", "forward", "save_weights_for_sampler",
    "save_weights_external", "copy_weights",
)
#: Request classes whose bodies are protobuf, with their strict decoders.
BINARY_BODIES: Dict[type, Callable[[bytes], Any]] = {
    _proto.ForwardBackwardRequestMessage: _proto.decode_forward_backward_request,
}


class Handler(BaseHTTPRequestHandler):
    """Request handler of :class:`LocalServer`; ``self.server.local`` is the owning LocalServer."""

    protocol_version = "HTTP/1.1"
    server_version = "tinkex-persist-localserver"

    def setup(self) -> None:
        local = self.server.local  # type: ignore[attr-defined]
        self.timeout = local.options.socket_timeout  # type: ignore[misc]  # a silent client must not pin a thread
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        local.track_connection(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.local.track_connection(self.connection, False)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        # A signed download path is a bearer credential: log it without its token.
        args = tuple(
            _FILE_TOKEN.sub("token=<signed>", _SIGNED_TOKEN.sub("/local/v1/archives/<signed>", a)) if isinstance(a, str) else a
            for a in args
        )
        logger.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, obj: Any = None, headers: Optional[Dict[str, str]] = None) -> None:
        stream: Optional[FileBody] = None
        if isinstance(obj, FileBody):  # a file range: the head in one write, then the bytes from disk
            stream, obj = obj, None
            headers = dict(headers or {}, **{"Content-Type": "application/octet-stream",
                                            "Content-Length": str(stream.length)})
        if isinstance(obj, (bytes, bytearray)):
            body, ctype = bytes(obj), "application/octet-stream"
        elif obj is None:
            body, ctype = b"", None
        else:
            body, ctype = json.dumps(obj, separators=(",", ":")).encode("utf-8"), "application/json"
        lines = ["HTTP/1.1 %d %s" % (status, _REASONS.get(status, ("Unknown",))[0])]
        hdrs = {"Date": formatdate(usegmt=True)}
        if ctype:
            hdrs["Content-Type"] = ctype
        hdrs.update(headers or {})
        if status != 204 and "Content-Length" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        if self.close_connection:
            hdrs["Connection"] = "close"
        lines.extend("%s: %s" % kv for kv in hdrs.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # Count and log before writing, so a client that has its answer also sees them recorded.
        self.server.local.stats.record(self._path, status)  # type: ignore[attr-defined]
        self.log_request(status, len(body) if stream is None else stream.length)
        self.wfile.write(head + (b"" if self.command == "HEAD" else body))  # one write: see module docstring
        if stream is not None and self.command != "HEAD":
            stream.send(self.connection)

    def _fail(self, status: int, detail: str, close: bool = False, **extra: Any) -> None:
        if close:
            self.close_connection = True
        self._send(status, dict({"detail": detail}, **extra))

    def _dispatch(self, method: str) -> None:
        local = self.server.local  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        self._path = url.path
        local.stats.record(url.path)
        route, groups, allowed = None, {}, []
        for m, pattern, cls, fn in ROUTES:
            match = pattern.match(url.path)
            if match:
                allowed.append(m)
                if m == method:
                    route, groups = (cls, fn), {k: unquote(v) for k, v in match.groupdict().items()}
                    break
        if route is None or route[1] not in _SIGNED_ROUTES:  # a signed download carries its own signature
            key = self.headers.get("X-API-Key") or ""
            if local.api_key is not None and not hmac.compare_digest(key.encode(), local.api_key.encode()):
                return self._fail(401, "missing or wrong X-API-Key", close=True)
        if route is not None and route[1] in _OPTIONAL_ROUTES:
            flag = _OPTIONAL_ROUTES[route[1]]
            if not getattr(local.options, flag):
                route, allowed = None, []  # switched off: the server plays one without this route
        if route is None:
            if allowed:
                return self._fail(405, "method %s not allowed on %s" % (method, url.path), close=True)
            return self._fail(404, "no route for %s %s" % (method, url.path), close=True)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._fail(411, "send a Content-Length; chunked bodies are not accepted", close=True)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._fail(400, "bad Content-Length", close=True)
        max_body = local.options.max_body
        if length > max_body:
            return self._fail(413, "body of %d bytes exceeds the limit of %d" % (length, max_body), close=True)
        raw = self.rfile.read(length) if length else b""
        fault = local.faults.take(method, url.path)
        if fault is not None and fault.status is not None:  # answer instead of processing
            time.sleep(fault.delay)
            return self._send(fault.status, fault.injected_answer(), fault.headers)
        try:
            status, obj, headers = self._call(local.service, route[0], route[1], groups, raw, url.query)
        except HTTPError as exc:
            status, obj, headers = exc.status, exc.body, {}
        except Exception:  # the server must answer; a bug here is reported as 500
            logger.warning("%s %s failed", method, url.path, exc_info=True)
            status, obj, headers = 500, {"detail": "internal error in the local server"}, {}
        if fault is not None and fault.drop:
            logger.debug("fault: dropping the connection after %s %s", method, url.path)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        self._send(status, obj, headers)

    def _call(
        self, service: Service, cls: Optional[type], fn: Any, groups: Dict[str, str], raw: bytes, query: str
    ) -> Any:
        data: Any = None
        if cls in BINARY_BODIES:
            return self._call_binary(service, cls, fn, raw)
        if raw or cls is not None:
            try:
                data = json.loads(raw) if raw else None
            except ValueError as exc:
                raise HTTPError(400, "request body is not JSON: %s" % exc) from None
        req: Any = None
        if cls is not None:
            try:
                req = _converter.decode_request(data, cls)
            except DecodeError as exc:
                raise HTTPError(400, exc.message, errors=exc.errors) from None
        if fn in SUBMITS:
            body_key = canonical([fn, data])
            submit = lambda: (200, getattr(service, fn)(req, body_key))  # noqa: E731
            status, obj = service.idempotent(self.headers.get("X-Idempotency-Key"), body_key, submit)
            return status, obj, {}
        out = fn(self, service, req, groups, query)
        return out if isinstance(out, tuple) else (200, out, {})

    def _call_binary(self, service: Service, cls: type, fn: str, raw: bytes) -> Any:
        """A submission with a protobuf body: checked media type and encoding, strict decoding, idempotency."""
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != _proto.CONTENT_TYPE:
            raise HTTPError(415, "%s takes a protobuf body (Content-Type: %s), got %r" % (self._path, _proto.CONTENT_TYPE, ctype))
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise HTTPError(415, "Content-Encoding %r is not supported by the local server; send the body as it is" % encoding)
        try:
            req = BINARY_BODIES[cls](raw)
        except DecodeError as exc:
            raise HTTPError(400, exc.message, errors=exc.errors) from None
        body_key = canonical([fn, hashlib.sha256(raw).hexdigest()])
        submit = lambda: (200, getattr(service, fn)(req, body_key))  # noqa: E731
        status, obj = service.idempotent(self.headers.get("X-Idempotency-Key"), body_key, submit)
        return status, obj, {}


def _attachment(filename: str) -> str:
    """A ``Content-Disposition`` value for any file name: header bytes must be Latin-1, so a name
    outside ASCII goes in RFC 6266's ``filename*`` (UTF-8, percent-encoded) beside an ASCII fallback."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename)
    if fallback == filename:
        return 'attachment; filename="%s"' % filename
    return "attachment; filename=\"%s\"; filename*=UTF-8''%s" % (fallback, quote(filename, safe=""))


def _parse_range(header: Optional[str], size: int) -> Any:
    """Return None (whole body), ``"unsatisfiable"`` or an inclusive (start, end) for one byte range."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None  # absent, another unit or several ranges: RFC 9110 lets us send the whole body
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _list_user(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    limit, offset = _page(_query(query, ("limit", "offset")), 100)
    return s.list_user(limit, offset)


def _query(query: str, allowed: Tuple[str, ...]) -> Dict[str, str]:
    """Decode a query string strictly: one value per key, every key in ``allowed`` (else 400 naming it)."""
    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise HTTPError(400, "unknown query parameter(s): %s" % ", ".join(unknown))
    repeated = sorted(k for k, v in params.items() if len(v) > 1)
    if repeated:
        raise HTTPError(400, "query parameter(s) given more than once: %s" % ", ".join(repeated))
    out = {k: v[0] for k, v in params.items()}
    scope = out.get("access_scope", "owned")
    if scope not in ("owned", "accessible"):
        raise HTTPError(400, "access_scope must be 'owned' or 'accessible', got %r" % scope)
    return out


def _page(params: Dict[str, str], default_limit: int) -> Tuple[int, int]:
    try:
        limit, offset = int(params.get("limit", default_limit)), int(params.get("offset", 0))
    except ValueError:
        raise HTTPError(400, "limit and offset must be integers") from None
    if not (1 <= limit <= 10000 and offset >= 0):
        raise HTTPError(400, "limit must be 1-10000 and offset >= 0")
    return limit, offset


def _list_runs(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    limit, offset = _page(_query(query, ("limit", "offset", "access_scope", "project_id")), 20)
    return s.list_runs(limit, offset)


def _get_run(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    _query(query, ("access_scope",))
    return s.training_run(g["run"])


def _retrieve(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    status, outcome = s.retrieve_future(req)
    if isinstance(outcome, bytes):  # a forward_backward result, kept as protobuf
        accepted = [a.split(";", 1)[0].strip().lower() for a in (h.headers.get("Accept") or "").split(",")]
        if _proto.CONTENT_TYPE not in accepted:
            raise HTTPError(
                406, "the result of request %s is protobuf: poll with Accept: %s" % (req.request_id, _proto.CONTENT_TYPE)
            )
        return status, outcome, {"Content-Type": _proto.CONTENT_TYPE}
    return status, outcome, {}


def _ckpt(g: Dict[str, str]) -> str:
    return Service.tinker_path(g["run"], g["kind"], g["name"])


def _archive_url(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    token, expires = s.sign(_ckpt(g))
    url = "%s/local/v1/archives/%s" % (h.server.local.url, token)  # type: ignore[attr-defined]
    return 302, {"url": url, "expires": iso(expires)}, {"Location": url, "Expires": formatdate(expires, usegmt=True)}


def _download(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    entry = s.verify(g["token"])
    blob, digest = s.store.archive(entry)
    headers = {
        "Content-Type": "application/x-tar",
        "Accept-Ranges": "bytes",
        "ETag": '"%s"' % digest,
        "X-Checkpoint-SHA256": digest,
        "Content-Disposition": _attachment(entry["name"] + ".tar"),
    }
    rng = _parse_range(h.headers.get("Range"), len(blob))
    if rng is None:
        return 200, blob, headers
    if rng == "unsatisfiable":
        headers["Content-Range"] = "bytes */%d" % len(blob)
        return 416, {"detail": "range not satisfiable for %d bytes" % len(blob)}, headers
    headers["Content-Range"] = "bytes %d-%d/%d" % (rng[0], rng[1], len(blob))
    return 206, blob[rng[0] : rng[1] + 1], headers


class FileBody:
    """``length`` bytes of the file at ``path`` from ``start``: an answer streamed from disk, never held in memory."""

    __slots__ = ("path", "start", "length")

    def __init__(self, path: str, start: int, length: int) -> None:
        self.path, self.start, self.length = path, start, length

    def send(self, conn: socket.socket) -> None:
        with open(self.path, "rb") as f:
            conn.sendfile(f, self.start, self.length)  # zero-copy on a plain socket; TLS falls back to send()


def _external_urls(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    base = h.server.local.url  # type: ignore[attr-defined]
    host = h.headers.get("Host") or ""
    if re.fullmatch(r"(127\.0\.0\.1|localhost|\[::1\]):\d+", host):
        # Signed URLs name the address the client used (a loopback proxy in front of the server, say).
        base = "%s://%s" % (urlsplit(base).scheme, host)
    return s.external_urls(_ckpt(g), base)


def _signed_file(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    params = parse_qs(query)
    entry, local = s.signed_file(
        _ckpt(g), g["file"], params.get("expires", [""])[0], params.get("token", [""])[0]
    )
    size = entry["files"][g["file"]]["size"]
    digest = entry["files"][g["file"]]["sha256"]
    # The whole file's digest (RFC 9530), on every answer, a Range answer included: the client checks it.
    headers = {"Accept-Ranges": "bytes", "ETag": '"%s"' % digest,
               "Repr-Digest": "sha-256=:%s:" % base64.b64encode(bytes.fromhex(digest)).decode("ascii")}
    rng = _parse_range(h.headers.get("Range"), size)
    if rng is None:
        return 200, FileBody(local, 0, size), headers
    if rng == "unsatisfiable":
        headers["Content-Range"] = "bytes */%d" % size
        return 416, {"detail": "range not satisfiable for %d bytes" % size}, headers
    headers["Content-Range"] = "bytes %d-%d/%d" % (rng[0], rng[1], size)
    return 206, FileBody(local, rng[0], rng[1] - rng[0] + 1), headers


def _storage_usage(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    return s.storage_usage(_query(query, ("project_id",)).get("project_id"))


def _checkpoint_info(h: Handler, s: Service, req: Any, g: Dict[str, str], query: str) -> Any:
    entry = s.store.get(parse_qs(query).get("tinker_path", [""])[0])
    if entry is None:
        raise HTTPError(404, "checkpoint not found")
    keys = ("tinker_path", "base_model", "lora_rank", "step", "size_bytes", "weights_sha256", "optimizer_sha256")
    return dict(
        {k: entry[k] for k in keys}, archive_sha256=s.store.archive(entry)[1], expires_at=iso(entry["expires_at"])
    )


_CAPABILITIES = _wire.GetServerCapabilitiesResponse(
    supported_models=[_wire.SupportedModel(model_name="Qwen/Qwen3-8B", trainable=True, sampleable=False)]
)

#: (method, path regex, request wire class or None, handler): a Service method name for SUBMITS,
#: else ``fn(handler, service, request, path_groups, query)`` returning a JSON value or (status, body, headers).
ROUTES: List[Tuple[str, Pattern[str], Optional[type], Any]] = [
    (m, re.compile(p + r"\Z"), c, f)
    for m, p, c, f in [
        ("POST", "/api/v1/client/config", _wire.ClientConfigRequest, lambda h, *a: dict(h.server.local.client_config)),
        ("POST", "/api/v1/client/dynamic_config", _wire.ClientConfigRequest, lambda *a: {}),
        ("POST", "/api/v1/telemetry", None, lambda *a: _converter.encode_response(_wire.TelemetryResponse(status="accepted"))),
        ("GET", "/api/v1/healthz", None, lambda *a: {"status": "ok"}),
        ("GET", "/api/v1/get_server_capabilities", None, lambda *a: _converter.encode_response(_CAPABILITIES)),
        ("POST", "/api/v1/create_session", _wire.CreateSessionRequest, lambda h, s, r, g, q: s.create_session(r)),
        ("POST", "/api/v1/session_heartbeat", _wire.SessionHeartbeatRequest, lambda h, s, r, g, q: s.heartbeat(r)),
        (
            "POST",
            r"/api/v1/sessions/(?P<sid>[^/]+)/finish",
            _wire.FinishSessionRequest,
            lambda h, s, r, g, q: s.finish_session(g["sid"], r),
        ),
        ("POST", "/api/v1/create_model", _wire.CreateModelRequest, "create_model"),
        ("POST", "/api/v1/get_info", _wire.GetInfoRequest, lambda h, s, r, g, q: s.get_info(r)),
        ("POST", "/api/v1/save_weights", _wire.SaveWeightsRequest, "save_weights"),
        ("POST", "/api/v1/load_weights", _wire.LoadWeightsRequest, "load_weights"),
        ("POST", "/api/v1/optim_step", _wire.OptimStepRequest, "optim_step"),
        ("POST", "/api/v1/retrieve_future", _wire.RetrieveFutureRequest, _retrieve),
        ("POST", "/api/v1/forward_backward", _proto.ForwardBackwardRequestMessage, "forward_backward"),
        ("POST", "/api/v1/forward", _proto.ForwardBackwardRequestMessage, "forward"),
        ("POST", "/api/v1/save_weights_for_sampler", _wire.SaveWeightsForSamplerRequest, "save_weights_for_sampler"),
        ("POST", "/api/v1/weights_info", _wire.WeightsInfoRequest, lambda h, s, r, g, q: s.weights_info(r)),
        ("GET", "/api/v1/checkpoints", None, _list_user),
        ("GET", "/api/v1/training_runs", None, _list_runs),
        ("GET", r"/api/v1/training_runs/(?P<run>[^/]+)", None, _get_run),
        ("GET", _RUN, None, lambda h, s, r, g, q: s.list_run(g["run"])),
        ("DELETE", _CKPT, None, lambda h, s, r, g, q: s.delete(_ckpt(g)) or _NO_CONTENT),
        ("PUT", _CKPT + "/ttl", _wire.SetTtlRequest, lambda h, s, r, g, q: s.set_ttl(_ckpt(g), r) or _NO_CONTENT),
        ("POST", _CKPT + "/publish", None, lambda h, s, r, g, q: s.set_public(_ckpt(g), True) or _NO_CONTENT),
        ("DELETE", _CKPT + "/publish", None, lambda h, s, r, g, q: s.set_public(_ckpt(g), False) or _NO_CONTENT),
        ("GET", _CKPT + "/archive", None, _archive_url),
        ("GET", _CKPT + "/external_weights_urls", None, _external_urls),
        ("GET", _FILE, None, _signed_file),
        ("HEAD", _FILE, None, _signed_file),
        ("GET", "/api/v1/billing/usage/checkpoints/current", None, _storage_usage),
        ("POST", "/api/v1/copy_weights", _wire.CopyWeightsRequest, "copy_weights"),
        ("POST", "/api/v1/save_weights_external", _wire.SaveWeightsExternalRequest, "save_weights_external"),
        ("GET", _SIGNED, None, _download),
        ("HEAD", _SIGNED, None, _download),
        ("GET", r"/local/v1/models/(?P<model_id>[^/]+)", None, lambda h, s, r, g, q: s.model_info(g["model_id"])),
        ("GET", "/local/v1/checkpoint", None, _checkpoint_info),
    ]
]

#: Handlers of signed URLs: they check their own signature instead of the API key.
_SIGNED_ROUTES = (_download, _signed_file)
#: Routes a server option can switch off (``ServerOptions`` field that keeps them).
_OPTIONAL_ROUTES = {_archive_url: "archive_route", "save_weights_external": "external_weights",
                    _external_urls: "external_weights"}
