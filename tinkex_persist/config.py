"""``Config`` (immutable), the ``DEFAULT_*`` constants and ``Config.from_env``.

This is the only module that reads ``os.environ``. Precedence: explicit argument, then the ``Config``
given to the client, then the environment, then the defaults below.
"""

import ipaddress
import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

import attrs

from .exceptions import ConfigError

#: Base URL of the hosted Tinker service.
DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
#: (connect, read) timeout in seconds for submissions and REST calls.
DEFAULT_TIMEOUT: Tuple[float, float] = (5.0, 60.0)
#: Read timeout in seconds of one ``retrieve_future`` long-poll (the server holds it up to 45 s).
DEFAULT_POLL_READ_TIMEOUT = 60.0
#: Total time in seconds a submission may spend retrying (the official SDK's budget is 5 minutes).
DEFAULT_RETRY_DEADLINE = 300.0
#: Most retries of one request.
DEFAULT_MAX_RETRIES = 10
#: First back-off in seconds; doubles each retry up to DEFAULT_BACKOFF_MAX, with jitter.
DEFAULT_BACKOFF_FACTOR = 0.5
#: Longest single back-off in seconds.
DEFAULT_BACKOFF_MAX = 30.0
#: Seconds to keep retrying a server that refuses connections (one restarting) after the first refusal.
DEFAULT_CONNECT_PATIENCE = 5.0
#: Threads in a client's pool.
DEFAULT_MAX_WORKERS = 4
#: Longest wait in seconds for a server-side future before APITimeoutError; None waits without bound.
DEFAULT_POLL_TIMEOUT: Optional[float] = 3600.0
#: Seconds between session heartbeats.
DEFAULT_HEARTBEAT_INTERVAL = 10.0
#: Most datums in one ``forward_backward`` request (the SDK's client config ``fwdbwd_max_chunk_len``).
DEFAULT_FWDBWD_MAX_CHUNK_LEN = 1024
#: Most estimated bytes in one ``forward_backward`` request (the SDK's ``fwdbwd_max_chunk_bytes_count``).
DEFAULT_FWDBWD_MAX_CHUNK_BYTES_COUNT = 5_000_000

ENV_API_KEY = "TINKER_API_KEY"
ENV_BASE_URL = "TINKER_BASE_URL"
ENV_PREFIX = "TINKEX_PERSIST_"

Verify = Union[bool, str]


def is_loopback_host(host: Optional[str]) -> bool:
    """Return True for ``localhost`` and loopback IP addresses."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: Any, allow_http: bool = False) -> str:
    """Return the normalised base URL, or raise :class:`ConfigError` saying what is accepted."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigError("base_url must be a non-empty str such as https://host/path, got %r" % (base_url,))
    url = base_url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError("base_url %r is not a valid URL: %s" % (url, exc)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("base_url %r must start with https:// (or http:// for a loopback host)" % url)
    if parts.username or parts.password:
        raise ConfigError("base_url must not contain credentials; give the API key via api_key or TINKER_API_KEY")
    if parts.query or parts.fragment:
        raise ConfigError("base_url %r must not have a query string or fragment" % url)
    if parts.scheme == "http" and not allow_http and not is_loopback_host(parts.hostname):
        raise ConfigError(
            "base_url %r uses plain http:// to a non-loopback host, which would send the API key in clear; "
            "use https://, or pass allow_insecure_http=True if you really mean it" % url
        )
    return url


def read_env(name: str, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Return one environment variable whose name is chosen at run time (e.g. ``serve --api-key-env``)."""
    return (os.environ if environ is None else environ).get(name) or None


def _env_float(environ: Mapping[str, str], name: str, default: Any) -> Any:
    raw = environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError("%s%s=%r is not a number" % (ENV_PREFIX, name, raw)) from None
    if value <= 0:
        raise ConfigError("%s%s=%r must be positive" % (ENV_PREFIX, name, raw))
    return value


def check_api_key(key: Any, source: str = "file or " + ENV_API_KEY) -> Optional[str]:
    """Return ``key`` without surrounding whitespace (a trailing newline from a file or a mounted secret).

    Used by the client for the key it sends and by the local server for the key it requires. None, or a key
    that is only whitespace, gives None. Anything but printable ASCII inside the key is a :class:`ConfigError`
    naming ``source`` and the position, never the key.
    """
    if key is None:
        return None
    if not isinstance(key, str):
        raise ConfigError("api_key must be a str, got %s" % type(key).__name__)
    key = key.strip()
    for i, ch in enumerate(key):
        if not "\x21" <= ch <= "\x7e":
            raise ConfigError(
                "api_key has a space, control or non-ASCII character at position %d; "
                "check the key's source (%s)" % (i, source)
            )
    return key or None


def _positive(name: str):
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError("%s must be a positive number, got %r" % (name, value))

    return check


def _check_timeout(_inst: Any, _attr: Any, value: Any) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in value)
    ):
        raise ConfigError("timeout must be a (connect, read) tuple of positive seconds, got %r" % (value,))


def _to_timeout(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value), float(value))
    if isinstance(value, list):
        return tuple(value)
    return value


@attrs.frozen(kw_only=True)
class Config:
    """Immutable settings of a client. Build one directly, or with :meth:`from_env`."""

    base_url: str = DEFAULT_BASE_URL
    api_key: Optional[str] = attrs.field(default=None, repr=False)
    """The ``X-API-Key``; a secret, never shown in repr, logs or errors."""
    timeout: Tuple[float, float] = attrs.field(default=DEFAULT_TIMEOUT, converter=_to_timeout, validator=_check_timeout)
    poll_read_timeout: float = attrs.field(default=DEFAULT_POLL_READ_TIMEOUT, validator=_positive("poll_read_timeout"))
    poll_timeout: Optional[float] = attrs.field(default=DEFAULT_POLL_TIMEOUT, validator=_positive("poll_timeout"))
    retry_deadline: float = attrs.field(default=DEFAULT_RETRY_DEADLINE, validator=_positive("retry_deadline"))
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    backoff_max: float = DEFAULT_BACKOFF_MAX
    connect_patience: Optional[float] = attrs.field(default=DEFAULT_CONNECT_PATIENCE, validator=_positive("connect_patience"))
    """Seconds to keep retrying refused connections after the first; None waits up to ``retry_deadline``.

    Errors that cannot heal (an unknown host name, a TLS handshake or certificate failure) are never retried.
    """
    max_workers: int = attrs.field(default=DEFAULT_MAX_WORKERS, validator=_positive("max_workers"))
    heartbeat_interval: Optional[float] = attrs.field(
        default=DEFAULT_HEARTBEAT_INTERVAL, validator=_positive("heartbeat_interval")
    )
    """Seconds between heartbeats; None sends none."""
    user_metadata: Optional[Dict[str, Any]] = None
    project_id: Optional[str] = None
    verify: Verify = True
    """TLS verification: True, or the path of a CA bundle. There is no way to turn it off by default."""
    allow_insecure_http: bool = False
    """Allow ``http://`` to a non-loopback host (the API key then travels in clear)."""
    fwdbwd_max_chunk_len: int = attrs.field(
        default=DEFAULT_FWDBWD_MAX_CHUNK_LEN, validator=_positive("fwdbwd_max_chunk_len")
    )
    """Most datums per ``forward_backward`` request; a larger batch is split into several, as the SDK splits it."""
    fwdbwd_max_chunk_bytes_count: int = attrs.field(
        default=DEFAULT_FWDBWD_MAX_CHUNK_BYTES_COUNT, validator=_positive("fwdbwd_max_chunk_bytes_count")
    )
    """Most estimated bytes per ``forward_backward`` request; a single larger datum is refused."""

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "base_url", check_base_url(self.base_url, self.allow_insecure_http))
        object.__setattr__(self, "api_key", check_api_key(self.api_key))
        if isinstance(self.max_workers, float) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ConfigError("max_workers must be a positive int and max_retries a non-negative int")
        if self.backoff_factor < 0 or self.backoff_max < 0:
            raise ConfigError("backoff_factor and backoff_max must not be negative")

    @property
    def is_loopback(self) -> bool:
        """True when the base URL names a loopback host."""
        return is_loopback_host(urlsplit(self.base_url).hostname)

    def require_api_key(self) -> str:
        """Return the API key, or raise :class:`ConfigError` naming ``TINKER_API_KEY``."""
        if not self.api_key:
            raise ConfigError(
                "no API key: pass api_key=... or set the %s environment variable" % ENV_API_KEY
            )
        return self.api_key

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> "Config":
        """Build a Config from the environment; keyword arguments that are not None take precedence."""
        env = os.environ if environ is None else environ
        values: Dict[str, Any] = {
            "base_url": env.get(ENV_BASE_URL) or DEFAULT_BASE_URL,
            "api_key": env.get(ENV_API_KEY) or None,
            "poll_timeout": _env_float(env, "POLL_TIMEOUT", DEFAULT_POLL_TIMEOUT),
            "retry_deadline": _env_float(env, "RETRY_DEADLINE", DEFAULT_RETRY_DEADLINE),
            "connect_patience": _env_float(env, "CONNECT_PATIENCE", DEFAULT_CONNECT_PATIENCE),
        }
        connect = _env_float(env, "CONNECT_TIMEOUT", DEFAULT_TIMEOUT[0])
        read = _env_float(env, "READ_TIMEOUT", DEFAULT_TIMEOUT[1])
        values["timeout"] = (connect, read)
        workers = env.get(ENV_PREFIX + "MAX_WORKERS")
        if workers:
            if not workers.isdigit() or int(workers) < 1:
                raise ConfigError("%sMAX_WORKERS=%r must be a positive int" % (ENV_PREFIX, workers))
            values["max_workers"] = int(workers)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def evolve(self, **changes: Any) -> "Config":
        """Return a copy with ``changes`` applied (None values are ignored)."""
        return attrs.evolve(self, **{k: v for k, v in changes.items() if v is not None})
