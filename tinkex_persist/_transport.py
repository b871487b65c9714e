"""``Transport``: per-thread ``requests.Session``, headers, timeouts, the retry loop and status -> exception.

The loop follows the one policy of ``_retry.Retry``. Every POST carries an ``X-Idempotency-Key`` created once
per logical call and reused on each retry, so retrying a submission can never apply it twice on a server
that honours it.
"""

import errno
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import uuid
import weakref
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.utils
from requests.structures import CaseInsensitiveDict

from ._version import __version__
from ._retry import RETRY_STATUSES, Deadline, Retry, attach, parse_retry_after
from ._wire import WIRE_SDK_VERSION
from .config import ENV_API_KEY, Config
from .exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    DecodeError,
    OperationCancelledError,
    TinkexPersistError,
    status_error_class,
)

logger = logging.getLogger(__name__)

USER_AGENT = "tinkex_persist/%s (tinker-wire/%s)" % (__version__, WIRE_SDK_VERSION)
_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})


def _redacted(headers: Mapping[str, str]) -> Dict[str, str]:
    """Return a copy of ``headers`` safe to log."""
    return {k: ("<redacted>" if k.lower() in _SECRET_HEADERS else v) for k, v in headers.items()}


_UNPARSED = object()


class Response:
    """The parts of a final HTTP response the operations need.

    ``content`` is the body exactly as received. ``secrets`` are what error messages built from this
    answer must not show (the request's API key and access token); they never alter ``content``.
    """

    __slots__ = ("status", "headers", "content", "method", "path", "request_id", "retries", "secrets", "_json")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        content: bytes,
        method: str,
        path: str,
        *,
        secrets: Tuple[str, ...] = (),
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.method = method
        self.path = path
        self.request_id = headers.get("x-request-id")
        self.secrets = secrets
        #: The policy after the call, whose history holds the failed attempts before this answer.
        self.retries: Optional[Retry] = None
        self._json: Any = _UNPARSED

    @property
    def content_type(self) -> str:
        """The media type of the body, lower-cased and without parameters (``""`` if none was sent)."""
        return (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        """Return the decoded JSON body (parsed once), or raise :class:`DecodeError`."""
        if self._json is not _UNPARSED:
            return self._json
        try:
            self._json = json.loads(self.content) if self.content else None
            return self._json
        except ValueError as exc:
            raise DecodeError(
                "%s %s -> %d: response is not JSON (%d bytes)" % (self.method, self.path, self.status, len(self.content)),
                errors=["$: not JSON: %s" % redact(str(exc), self.secrets)],
                body=redact(self.content[:2000].decode("utf-8", "replace"), self.secrets),
            ) from exc


def redact(text: str, secrets: Tuple[str, ...]) -> str:
    """``text`` with each secret replaced by ``<redacted>``: for messages and logs, never for data."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "<redacted>")
    return text


def _detail(content: bytes) -> str:
    """A short, single-line explanation from an error body, if it has one."""
    try:
        data = json.loads(content)
    except ValueError:
        text = content[:200].decode("utf-8", "replace")
    else:
        if isinstance(data, dict):
            text = next((str(data[k]) for k in ("detail", "error", "message") if data.get(k)), "")
        else:
            text = ""
    return " ".join(text.split())[:300]


def status_error(resp: Response) -> APIStatusError:
    """Build the exception for a final error response."""
    reason = requests.status_codes._codes.get(resp.status, ("",))[0].replace("_", " ").title()
    detail = redact(_detail(resp.content), resp.secrets)
    msg = "%s %s -> %d %s" % (resp.method, resp.path, resp.status, reason)
    if detail:
        msg += ": " + detail
    if resp.status == 401:
        msg += "; check the API key (api_key=... or the %s environment variable)" % ENV_API_KEY
    if resp.request_id:
        msg += " (request_id=%s)" % resp.request_id
    return status_error_class(resp.status)(
        msg,
        status_code=resp.status,
        method=resp.method,
        url=resp.path,
        request_id=resp.request_id,
        body=redact(resp.content.decode("utf-8", "replace"), resp.secrets),
    )


class Transport:
    """Blocking HTTP to one base URL. Safe to share between threads: each thread uses its own Session."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._base = config.base_url
        parts = urlsplit(config.base_url)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._local = threading.local()
        self._sessions: List[requests.Session] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Set by abort(): waits end, nothing new is sent, and reads in progress are cut.
        self.stopping = threading.Event()
        #: Connections lent out by this transport's pools (tracked so that abort() can cut their reads).
        self._in_flight: "weakref.WeakSet[Any]" = weakref.WeakSet()
        _watch_exit(self)
        self._headers = {
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        if config.api_key:
            self._headers["X-API-Key"] = config.api_key
        # Resolve proxies once: requests would re-read the environment on every call, and a cluster
        # HTTP_PROXY must never capture a loopback base URL.
        self._proxies: Dict[str, str] = {} if config.is_loopback else requests.utils.get_environ_proxies(self._base)

    # ------------------------------------------------------------------ sessions

    def _session(self) -> Tuple[requests.Session, requests.adapters.HTTPAdapter]:
        pair = getattr(self._local, "pair", None)
        if pair is None:
            if self._closed:
                raise APIConnectionError("client is closed", method="", url=self._base)
            s = requests.Session()
            s.trust_env = False
            s.proxies.update(self._proxies)
            s.verify = self.config.verify
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
            _track_connections(adapter, self._in_flight)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            with self._lock:
                self._sessions.append(s)
            pair = self._local.pair = (s, adapter)
        return pair

    def _secrets(self, body: Optional[bytes]) -> Tuple[str, ...]:
        """The key and any access token a request carries: messages about its answer must not show them."""
        secrets = [self.config.api_key] if self.config.api_key else []
        if body and b'"weights_access_token"' in body:
            try:
                token = json.loads(body).get("weights_access_token")
            except (ValueError, AttributeError):
                token = None
            if isinstance(token, str) and token:
                secrets.append(token)
        return tuple(secrets)

    def redact(self, text: str) -> str:
        """``text`` without the API key, for a message built from the server's words."""
        return redact(text, self._secrets(None))

    def abort(self) -> None:
        """Stop: end waits between attempts, send nothing more, and cut reads in progress (a held long-poll).

        A request already on the server may still complete there; the call that sent it fails with
        :class:`APIConnectionError` and is never reported as done.
        """
        self.stopping.set()
        for conn in list(self._in_flight):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Close every Session this transport created."""
        with self._lock:
            self._closed = True
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()

    # ------------------------------------------------------------------ requests

    def send(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        *,
        timeout: Optional[Tuple[float, float]] = None,
        headers: Optional[Mapping[str, str]] = None,
        deadline: Optional[Deadline] = None,
    ) -> Response:
        """Send one request without retrying and read its whole answer.

        Raises APIConnectionError (APITimeoutError for a timeout) if no complete answer came: the read
        timeout bounds each wait for bytes, and ``deadline`` bounds the whole answer, so a server
        trickling bytes cannot hold the call past it.
        """
        if self.stopping.is_set():
            raise APIConnectionError("%s %s not sent: the client is stopping" % (method, path), method=method, url=path)
        _, adapter = self._session()
        # A request prepared by hand and handed to the adapter skips Session.request's per-call
        # merging of environment, cookies and hooks: none apply here (trust_env is off, proxies and
        # verify are resolved once), and it costs about a third of a loopback call.
        prep = requests.PreparedRequest()
        prep.method = method
        prep.url = self._base + path
        prep.headers = CaseInsensitiveDict(self._headers)
        if headers:
            prep.headers.update(headers)
        if body is not None:
            prep.headers["Content-Length"] = str(len(body))
        elif method not in ("GET", "HEAD"):
            prep.headers["Content-Length"] = "0"
        else:
            del prep.headers["Content-Type"]
        prep.body = body
        connect, read = timeout or self.config.timeout
        if deadline is not None:
            # Never wait for a byte past the deadline (but leave a loopback answer time to arrive).
            read = deadline.cap(read, MIN_READ_TIMEOUT)
        t0 = time.monotonic()
        try:
            r = adapter.send(prep, stream=True, timeout=(connect, read), verify=self.config.verify, proxies=self._proxies)
            try:
                content = b"".join(_read_body(r, deadline))
            finally:
                r.close()
        except _DeadlinePassed as exc:
            raise APITimeoutError(
                "%s %s: the answer was not complete by the deadline (%d bytes in %.1f s)"
                % (method, path, exc.received, time.monotonic() - t0),
                method=method,
                url=path,
            ) from None
        except requests.RequestException as exc:
            kind, cause = describe_failure(exc, self._host, self._port)
            logger.debug("%s %s failed after %.1f ms: %s", method, path, (time.monotonic() - t0) * 1e3, cause)
            cls = APITimeoutError if kind in (CONNECT_TIMEOUT, READ_TIMEOUT) else APIConnectionError
            raise cls("%s %s failed: %s" % (method, path, cause), method=method, url=path) from exc
        resp = Response(r.status_code, r.headers, content, method, path, secrets=self._secrets(body))
        logger.debug(
            "%s %s -> %d in %.1f ms (request_id=%s)", method, path, r.status_code, (time.monotonic() - t0) * 1e3, resp.request_id
        )
        return resp

    def stopped_error(self, method: str, path: str, partial_path: Optional[str] = None) -> OperationCancelledError:
        """The error of a call ended by :meth:`abort`."""
        kept = "" if partial_path is None else "; the partial download is kept at %s" % partial_path
        return OperationCancelledError(
            "%s %s stopped: the client is stopping (the server may still complete the request)%s" % (method, path, kept),
            method=method,
            url=path,
            partial_path=partial_path,
        )

    def track(self, session: requests.Session) -> None:
        """Let :meth:`abort` cut the reads of ``session`` too (the download's bare session)."""
        for adapter in set(session.adapters.values()):
            if isinstance(adapter, requests.adapters.HTTPAdapter):
                _track_connections(adapter, self._in_flight)

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's Sessions, connections and locks (a parent thread may hold one)."""
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions = []  # dropped, not closed: the sockets are the parent's too
        self._in_flight = weakref.WeakSet()
        self.stopping = threading.Event()

    def note_failure(self, retry: Retry, method: str, path: str, exc: APIConnectionError) -> Retry:
        """``retry`` incremented for an attempt that got no answer; raise ``exc`` at once if it cannot heal."""
        return note_failure(retry, method, path, exc, exc.__cause__, self._host, self._port)

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        *,
        timeout: Optional[Tuple[float, float]] = None,
        extra_headers: Optional[Mapping[str, str]] = None,
        deadline: Optional[Deadline] = None,
        ok_statuses: Tuple[int, ...] = (),
        expect_json: bool = False,
        accept: Optional[str] = None,
        retry: Optional[Retry] = None,
    ) -> Response:
        """Send a request, retrying transient failures, and return the final 2xx (or ``ok_statuses``) response.

        Follows ``retry`` (default: :meth:`Retry.from_config` bounded by ``deadline``, else by
        ``config.retry_deadline``): connection errors, timeouts and its retry statuses are retried with
        back-off, honouring ``Retry-After``; errors that cannot heal (an unknown host, a TLS failure) are
        not; a refused connection only for ``config.connect_patience``. Every attempt resends the same body
        and the same ``X-Idempotency-Key``. The returned response's ``retries``, and the raised error's
        (see :func:`_retry.retries_of`), hold the history of failed attempts, each marked with whether the
        server may have applied it. With ``expect_json``, a 2xx answer whose body is not JSON (a proxy's error page, a body cut short)
        is retried like a lost answer. ``accept`` names a binary media type (``application/x-protobuf``)
        asked for in the ``Accept`` header; a 2xx answer of that type is returned as it is. A binary
        request body states its own type with a ``Content-Type`` in ``extra_headers``.
        """
        cfg = self.config
        if retry is None:
            retry = Retry.from_config(cfg, deadline, self.stopping)
        headers: Dict[str, str] = dict(extra_headers or {})
        if accept is not None:
            headers["Accept"] = accept
        if method in ("POST", "PUT", "DELETE"):
            headers.setdefault("X-Idempotency-Key", uuid.uuid4().hex)
        while True:
            if self.stopping.is_set():
                raise attach(self.stopped_error(method, path), retry)
            try:
                resp = self.send(method, path, body, timeout=timeout, headers=headers, deadline=retry.deadline)
            except APIConnectionError as exc:
                failure: TinkexPersistError = exc
                retry = self.note_failure(retry, method, path, exc)
            else:
                binary = accept is not None and resp.content_type == accept
                decode_error = _not_json(resp) if expect_json and not binary else None
                if decode_error is not None:
                    failure = decode_error
                    retry = retry.increment(method, path, error="answer is not JSON", status=resp.status, maybe_applied=True)
                elif resp.status < 300 or resp.status in ok_statuses:
                    resp.retries = retry
                    return resp
                else:
                    failure = status_error(resp)
                    retry = retry.increment(
                        method, path, status=resp.status, maybe_applied=resp.status >= 500, headers=resp.headers
                    )
                    if not retry.is_retry(resp.status):
                        raise attach(failure, retry)
            if retry.is_exhausted() or not retry.sleep():
                if self.stopping.is_set():
                    raise attach(self.stopped_error(method, path), retry) from failure
                raise attach(failure, retry)


_LIVE: "weakref.WeakSet[Transport]" = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _watch_exit(transport: Transport) -> None:
    """Abort ``transport`` when the interpreter exits (after a Ctrl-C ended the main thread, say).

    The hook must run before ``concurrent.futures`` joins its workers at exit, or a worker held in a
    long-poll keeps the process alive: hooks run in reverse order of registration, so it is registered
    after importing ``concurrent.futures.thread``.
    """
    global _exit_hook_registered
    _LIVE.add(transport)
    with _exit_hook_lock:
        if _exit_hook_registered:
            return
        import concurrent.futures.thread  # noqa: F401 - registers its own exit hook first

        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            try:
                register(_abort_all)
            except RuntimeError:  # the interpreter is already shutting down
                return
        _exit_hook_registered = True


def _abort_all() -> None:
    for transport in list(_LIVE):
        transport.abort()


def _track_connections(adapter: requests.adapters.HTTPAdapter, in_flight: "weakref.WeakSet[Any]") -> None:
    """Make ``adapter``'s pools record each connection they lend out in ``in_flight`` until it comes back."""
    manager = adapter.poolmanager
    classes = {}
    for scheme, base in manager.pool_classes_by_scheme.items():

        def _get_conn(self: Any, timeout: Optional[float] = None, _base: Any = base) -> Any:
            conn = _base._get_conn(self, timeout)
            in_flight.add(conn)
            return conn

        def _put_conn(self: Any, conn: Any, _base: Any = base) -> None:
            if conn is not None:
                in_flight.discard(conn)
            _base._put_conn(self, conn)

        classes[scheme] = type("Tracked" + base.__name__, (base,), {"_get_conn": _get_conn, "_put_conn": _put_conn})
    manager.pool_classes_by_scheme = classes


#: Shortest read timeout an attempt gets near its deadline, in seconds.
MIN_READ_TIMEOUT = 1.0
#: Size of the reads of an answer's body, between which the deadline is checked.
READ_CHUNK = 64 * 1024

# What kind of failure left a request without an answer (see describe_failure).
NAME_RESOLUTION = "name resolution"
TLS = "tls"
REFUSED = "refused"
NETWORK_UNREACHABLE = "unreachable"
CONNECT_TIMEOUT = "connect timeout"
READ_TIMEOUT = "read timeout"
BROKEN = "broken"
#: Failures that cannot heal by trying again: not retried.
PERMANENT = frozenset({NAME_RESOLUTION, TLS})
#: Failures to reach the server at all: retried only for ``connect_patience``.
UNREACHABLE = frozenset({REFUSED, NETWORK_UNREACHABLE})
#: Failures before the request left the client: the server cannot have applied it.
NOT_SENT = frozenset({NAME_RESOLUTION, TLS, REFUSED, NETWORK_UNREACHABLE, CONNECT_TIMEOUT})


class _DeadlinePassed(Exception):
    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


def _read_body(r: requests.Response, deadline: Optional[Deadline]) -> Iterator[bytes]:
    """The body in pieces as they arrive, stopping once ``deadline`` has passed.

    ``read_pieces`` returns what each receive brought; ``iter_content`` waits to fill its chunk.
    """
    chunks = read_pieces(r) if deadline is not None else r.iter_content(READ_CHUNK)
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if deadline is not None and deadline.expired():
            raise _DeadlinePassed(received)
        yield chunk


def read_some(raw: Any, size: int, decode_content: Optional[bool] = True) -> bytes:
    """What the next receive brought of ``raw``'s body (at most ``size`` bytes), ``b""`` at its end.

    urllib3 2 has ``read1``. On urllib3 1.26, whose ``read`` waits to fill ``size``, the underlying
    ``http.client.HTTPResponse.read1`` (which handles chunked transfer encoding) is read under urllib3's
    error handling, and the content is decoded with the response's own decoder. A body that ends before
    its Content-Length raises urllib3's ``ProtocolError``, as urllib3 2 does.
    """
    read1 = getattr(raw, "read1", None)
    if read1 is not None:
        return read1(size, decode_content=decode_content)  # type: ignore[no-any-return]
    fp = raw._fp  # pragma: no cover - urllib3 1.26 (the lower-bound run)
    if fp is None:  # pragma: no cover
        return b""
    raw._init_decoder()  # pragma: no cover
    if decode_content is None:  # pragma: no cover
        decode_content = raw.decode_content
    while True:  # pragma: no cover
        with raw._error_catcher():
            data = fp.read1(size) if not fp.isclosed() else b""
            if data:
                raw._fp_bytes_read += len(data)
                if raw.length_remaining is not None:
                    raw.length_remaining -= len(data)
                decoded = raw._decode(data, decode_content, False)
                if not decoded:
                    continue  # compressed bytes that decode to nothing yet
                return decoded  # type: ignore[no-any-return]
            fp.close()
            if fp.length not in (0, None):
                # urllib3's error handling turns it into its ProtocolError.
                raise http.client.IncompleteRead(b"", fp.length)
            return raw._decode(b"", decode_content, True)  # type: ignore[no-any-return]


def read_pieces(r: requests.Response, size: int = READ_CHUNK) -> Iterator[bytes]:
    """The body of a streamed response in pieces of at most ``size`` bytes, each as soon as it arrives.

    urllib3's errors are raised wrapped as requests wraps them.
    """
    while True:
        try:
            chunk = read_some(r.raw, size)
        except Exception as exc:
            # urllib3's own errors (a read timeout, a body cut short), wrapped as requests wraps them.
            if type(exc).__module__.split(".")[0] == "urllib3":
                raise requests.exceptions.ConnectionError(exc) from exc
            raise
        if not chunk:
            return
        yield chunk


def _chain(exc: Optional[BaseException]) -> Iterator[BaseException]:
    """``exc``, the exceptions it wraps (``args[0]``, ``reason``) and its causes, each once."""
    todo = [exc]
    seen = set()
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        nested = [getattr(e, "reason", None), e.__cause__, e.__context__]
        nested += [a for a in e.args if isinstance(a, BaseException)]
        todo.extend(n for n in nested if isinstance(n, BaseException))


def _names(e: BaseException) -> List[str]:
    return [c.__name__ for c in type(e).__mro__]


def note_failure(
    retry: Retry, method: str, path: str, exc: BaseException, cause: Optional[BaseException], host: str, port: int
) -> Retry:
    """``retry`` incremented for a failure without an answer (``cause`` is the requests error, which may be
    ``exc`` itself); raise ``exc``, with the history attached, if the failure cannot heal."""
    kind, text = describe_failure(cause, host, port)
    retry = retry.increment(method, path, error=text, maybe_applied=kind not in NOT_SENT, unreachable=kind in UNREACHABLE)
    if kind in PERMANENT:
        raise attach(exc, retry)
    return retry


def describe_failure(exc: Optional[BaseException], host: str, port: int) -> Tuple[str, str]:
    """The kind of a failure without an answer and a one-line cause naming it, e.g. ``connection refused to 127.0.0.1:1``."""
    chain = list(_chain(exc))
    where = "%s:%d" % (host, port)
    for e in chain:
        if isinstance(e, socket.gaierror) or "NameResolutionError" in _names(e):
            return NAME_RESOLUTION, "cannot resolve host %s" % host
    for e in chain:
        if isinstance(e, ssl.SSLError):
            reason = getattr(e, "reason", None) or ""
            text = " ".join(str(e).split()) or reason
            if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
                text = "certificate verify failed: %s" % e.verify_message
            return TLS, "TLS handshake failed with %s: %s" % (where, text[:300])
    for e in chain:
        if isinstance(e, requests.exceptions.SSLError) or "SSLError" in _names(e):
            return TLS, "TLS handshake failed with %s: %s" % (where, " ".join(str(e).split())[:300])
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return REFUSED, "connection refused to %s" % where
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return NETWORK_UNREACHABLE, "no route to %s (%s)" % (where, e.strerror)
    names = [n for e in chain for n in _names(e)]
    if "ConnectTimeout" in names or "ConnectTimeoutError" in names:
        return CONNECT_TIMEOUT, "connecting to %s timed out" % where
    if "ReadTimeout" in names or "ReadTimeoutError" in names or "TimeoutError" in names:
        return READ_TIMEOUT, "no answer from %s within the read timeout" % where
    if "RemoteDisconnected" in names:
        return BROKEN, "%s closed the connection without an answer" % where
    if "ConnectionResetError" in names:
        return BROKEN, "connection to %s reset" % where
    if "IncompleteRead" in names or "ChunkedEncodingError" in names:
        return BROKEN, "the answer from %s was cut short" % where
    last = chain[-1] if chain else exc
    return BROKEN, "connection to %s broken (%s)" % (where, type(last).__name__)


def _not_json(resp: Response) -> Optional[DecodeError]:
    """The DecodeError of a 2xx answer whose body is not JSON, else None."""
    if resp.status >= 300 or not resp.content:
        return None
    try:
        resp.json()
    except DecodeError as exc:
        return exc
    return None
