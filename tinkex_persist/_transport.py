"""``Transport``: per-thread ``requests.Session``, headers, timeouts, the retry loop and status -> exception.

One retry policy lives here. Every POST carries an ``X-Idempotency-Key`` created once per logical call
and reused on each retry, so retrying a submission can never apply it twice on a server that honours it.
"""

import json
import logging
import random
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

import requests
import requests.adapters
import requests.utils
from requests.structures import CaseInsensitiveDict

from ._version import __version__
from ._wire import WIRE_SDK_VERSION
from .config import ENV_API_KEY, Config
from .exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    DecodeError,
    TinkexPersistError,
    status_error_class,
)

logger = logging.getLogger(__name__)

#: Statuses worth another attempt: the request was not applied, or applying it again is harmless.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
USER_AGENT = "tinkex_persist/%s (tinker-wire/%s)" % (__version__, WIRE_SDK_VERSION)
_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})


def _redacted(headers: Mapping[str, str]) -> Dict[str, str]:
    """Return a copy of ``headers`` safe to log."""
    return {k: ("<redacted>" if k.lower() in _SECRET_HEADERS else v) for k, v in headers.items()}


_UNPARSED = object()


class Response:
    """The parts of a final HTTP response the operations need."""

    __slots__ = ("status", "headers", "content", "method", "path", "request_id", "_json")

    def __init__(self, status: int, headers: Mapping[str, str], content: bytes, method: str, path: str) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.method = method
        self.path = path
        self.request_id = headers.get("x-request-id")
        self._json: Any = _UNPARSED

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
                errors=["$: not JSON: %s" % exc],
                body=self.content[:2000].decode("utf-8", "replace"),
            ) from exc


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
    detail = _detail(resp.content)
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
        body=resp.content.decode("utf-8", "replace"),
    )


class Deadline:
    """A point in monotonic time after which no new attempt starts."""

    __slots__ = ("end",)

    def __init__(self, seconds: Optional[float]) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()


class Transport:
    """Blocking HTTP to one base URL. Safe to share between threads: each thread uses its own Session."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._base = config.base_url
        self._local = threading.local()
        self._sessions: List[requests.Session] = []
        self._lock = threading.Lock()
        self._closed = False
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
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            with self._lock:
                self._sessions.append(s)
            pair = self._local.pair = (s, adapter)
        return pair

    def _secrets(self, body: Optional[bytes]) -> List[bytes]:
        """The key and any access token a request carries: a server that echoes them gets them redacted."""
        secrets = [self.config.api_key.encode("utf-8")] if self.config.api_key else []
        if body and b'"weights_access_token"' in body:
            try:
                token = json.loads(body).get("weights_access_token")
            except (ValueError, AttributeError):
                token = None
            if isinstance(token, str) and token:
                secrets.append(token.encode("utf-8"))
        return secrets

    def close(self) -> None:
        """Close every Session this transport created."""
        with self._lock:
            self._closed = True
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()

    # ------------------------------------------------------------------ requests

    def send_once(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        *,
        timeout: Optional[Tuple[float, float]] = None,
        headers: Optional[Mapping[str, str]] = None,
        stream: bool = False,
    ) -> Tuple[Response, Optional[requests.Response]]:
        """Send one request without retrying; raise APIConnectionError/APITimeoutError if no response came."""
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
        t0 = time.monotonic()
        try:
            r = adapter.send(
                prep, stream=stream, timeout=timeout or self.config.timeout, verify=self.config.verify, proxies=self._proxies
            )
            content = b"" if stream else _scrub(r.content, self._secrets(body))
        except requests.Timeout as exc:
            raise APITimeoutError("%s %s timed out: %s" % (method, path, type(exc).__name__), method=method, url=path) from exc
        except requests.RequestException as exc:
            raise APIConnectionError(
                "%s %s failed without a response: %s" % (method, path, type(exc).__name__), method=method, url=path
            ) from exc
        resp = Response(r.status_code, r.headers, content, method, path)
        logger.debug(
            "%s %s -> %d in %.1f ms (request_id=%s)", method, path, r.status_code, (time.monotonic() - t0) * 1e3, resp.request_id
        )
        return resp, (r if stream else None)

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
        attempts: Optional[List[str]] = None,
        expect_json: bool = False,
    ) -> Response:
        """Send a request, retrying transient failures, and return the final 2xx (or ``ok_statuses``) response.

        Retries connection errors, timeouts and RETRY_STATUSES with exponential back-off and full jitter,
        honouring ``Retry-After``, until ``config.max_retries`` or the deadline. Every attempt resends the
        same body and the same ``X-Idempotency-Key``. ``attempts``, when given, receives one entry per
        attempt whose outcome is unknown to the client (the server may have applied it); a connection
        that was never opened is not one. With ``expect_json``, a 2xx answer whose body is not JSON (a
        proxy's error page, a body cut short) is retried like a lost answer.
        """
        cfg = self.config
        deadline = deadline or Deadline(cfg.retry_deadline)
        headers: Dict[str, str] = dict(extra_headers or {})
        if method in ("POST", "PUT", "DELETE"):
            headers.setdefault("X-Idempotency-Key", uuid.uuid4().hex)
        attempt = 0
        while True:
            retry_after: Optional[float] = None
            try:
                resp, _ = self.send_once(method, path, body, timeout=timeout, headers=headers)
            except APIConnectionError as exc:
                failure: TinkexPersistError = exc
                if attempts is not None and not _never_sent(exc):
                    attempts.append(type(exc).__name__)
            else:
                decode_error = _not_json(resp) if expect_json else None
                if decode_error is not None:
                    failure = decode_error
                    if attempts is not None:
                        attempts.append(type(decode_error).__name__)
                elif resp.status < 300 or resp.status in ok_statuses:
                    return resp
                else:
                    failure = status_error(resp)
                    if resp.status not in RETRY_STATUSES:
                        raise failure
                    if attempts is not None and resp.status >= 500:
                        attempts.append(str(resp.status))
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if attempt >= cfg.max_retries:
                raise failure
            wait = retry_after if retry_after is not None else _backoff(attempt, cfg.backoff_factor, cfg.backoff_max)
            if wait >= deadline.remaining():
                raise failure
            logger.debug("retrying %s %s in %.2fs after %s (attempt %d)", method, path, wait, type(failure).__name__, attempt + 1)
            time.sleep(wait)
            attempt += 1


def _scrub(content: bytes, secrets: List[bytes]) -> bytes:
    for secret in secrets:
        if secret in content:
            content = content.replace(secret, b"<redacted>")
    return content


def _not_json(resp: Response) -> Optional[DecodeError]:
    """The DecodeError of a 2xx answer whose body is not JSON, else None."""
    if resp.status >= 300 or not resp.content:
        return None
    try:
        resp.json()
    except DecodeError as exc:
        return exc
    return None


def _never_sent(exc: APIConnectionError) -> bool:
    """True when the connection was never opened (refused, connect timeout): the server saw nothing."""
    cause = exc.__cause__
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(cause.args[0], "reason", None) if cause is not None and cause.args else None
    # urllib3's NewConnectionError (refused) subclasses ConnectTimeoutError; matched by name, since
    # urllib3 is requests' dependency, not ours.
    return isinstance(cause, requests.exceptions.ConnectionError) and any(
        c.__name__ == "ConnectTimeoutError" for c in type(reason).__mro__
    )


def _backoff(attempt: int, factor: float, cap: float) -> float:
    # Full jitter (uniform in [0, base]) keeps many clients from retrying in lockstep.
    return random.uniform(0, min(cap, factor * (2 ** attempt)))


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, min(float(value), 600.0))
    except ValueError:
        return None
