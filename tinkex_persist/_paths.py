"""Validation of checkpoint names, run ids, counts and ``tinker://`` paths, shared by the client and the local server."""

from typing import Any, NamedTuple
from urllib.parse import quote

from .exceptions import UsageError

#: Longest accepted checkpoint name, in characters.
MAX_NAME_LENGTH = 128
#: Longest accepted training-run id, in characters.
MAX_RUN_ID_LENGTH = 256
#: Shortest lifetime the service accepts for a checkpoint, in seconds.
MIN_TTL_SECONDS = 3600
#: Longest lifetime the service accepts (10 years), in seconds.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600

SCHEME = "tinker://"
#: Path segment of each checkpoint kind.
KINDS = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}

#: Characters left as they are in a URL path segment (RFC 3986 pchar); the rest is percent-encoded.
_PATH_SAFE = ":@!$&'()*+,;=~"
_FORBIDDEN = set("/\\?#%") | {chr(c) for c in range(32)} | {"\x7f"}


class TinkerPath(NamedTuple):
    """A parsed ``tinker://<run_id>/<kind>/<name>``."""

    run_id: str
    kind: str
    name: str

    @property
    def checkpoint_id(self) -> str:
        return "%s/%s" % (self.kind, self.name)

    @property
    def api_path(self) -> str:
        """The checkpoint's REST path below ``/api/v1``: ``/training_runs/<run_id>/checkpoints/<kind>/<name>``."""
        # The run id goes in with its colons and the checkpoint id keeps its slash, as the official SDK sends;
        # anything outside ASCII (or a space) is percent-encoded as UTF-8, as httpx does for the SDK.
        return "/training_runs/%s/checkpoints/%s/%s" % (_quote(self.run_id), self.kind, _quote(self.name))

    def __str__(self) -> str:
        return "%s%s/%s/%s" % (SCHEME, self.run_id, self.kind, self.name)


def _quote(segment: str) -> str:
    return quote(segment, safe=_PATH_SAFE)


def _segment_problem(value: str, max_length: int) -> str:
    if not value:
        return "is empty"
    if len(value) > max_length:
        return "is %d characters long (at most %d)" % (len(value), max_length)
    if value.strip() != value:
        return "has leading or trailing white space"
    if ".." in value or value == ".":
        return "contains '..' or is '.'"
    bad = sorted({ch for ch in value if ch in _FORBIDDEN})
    if bad:
        return "contains %s" % ", ".join(repr(ch) for ch in bad)
    return ""


def check_name(name: Any, what: str = "checkpoint name") -> str:
    """Return ``name`` if it is a valid checkpoint name, else raise :class:`UsageError`."""
    if not isinstance(name, str):
        raise UsageError("%s must be a str, got %s" % (what, type(name).__name__))
    problem = _segment_problem(name, MAX_NAME_LENGTH)
    if problem:
        raise UsageError(
            "%s %r %s; use 1-%d characters without '/', '\\', '?', '#', '%%', '..' or control characters"
            % (what, name[:80], problem, MAX_NAME_LENGTH)
        )
    return name


def check_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it is a valid training-run (model) id, else raise :class:`UsageError`."""
    if not isinstance(run_id, str):
        raise UsageError("run id must be a str, got %s" % type(run_id).__name__)
    problem = _segment_problem(run_id, MAX_RUN_ID_LENGTH)
    if problem:
        raise UsageError("run id %r %s" % (run_id[:80], problem))
    return run_id


def parse_path(path: Any, *, training: bool = True) -> TinkerPath:
    """Parse a ``tinker://<run_id>/weights/<name>`` path, or raise :class:`UsageError` saying what is accepted.

    With ``training=True`` (loading state) only ``weights`` checkpoints are accepted; sampler weights
    hold no optimizer state and cannot resume training.
    """
    accepted = "expected tinker://<run_id>/weights/<name>"
    if not isinstance(path, str):
        raise UsageError("checkpoint path must be a str, got %s; %s" % (type(path).__name__, accepted))
    if not path.startswith(SCHEME):
        raise UsageError("checkpoint path %r does not start with %r; %s" % (path[:120], SCHEME, accepted))
    parts = path[len(SCHEME) :].split("/")
    if len(parts) != 3:
        raise UsageError("checkpoint path %r has %d segments, not 3; %s" % (path[:120], len(parts), accepted))
    run_id, kind, name = parts
    if kind not in KINDS:
        raise UsageError("checkpoint path %r has unknown kind %r; %s" % (path[:120], kind, accepted))
    if training and kind != "weights":
        raise UsageError(
            "checkpoint path %r is a %s checkpoint, which cannot restore training state; %s"
            % (path[:120], KINDS[kind], accepted)
        )
    try:
        check_run_id(run_id)
        check_name(name)
    except UsageError as exc:
        raise UsageError("checkpoint path %r: %s; %s" % (path[:120], exc.message, accepted)) from None
    return TinkerPath(run_id, kind, name)


def check_ttl(ttl_seconds: Any) -> Any:
    """Return ``ttl_seconds`` if it is None or an int in the accepted range, else raise :class:`UsageError`."""
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise UsageError(
            "ttl_seconds must be an int number of seconds or None, got %s %r" % (type(ttl_seconds).__name__, ttl_seconds)
        )
    if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        raise UsageError(
            "ttl_seconds=%d is out of range; use %d (1 hour) to %d (10 years), or None for no expiry"
            % (ttl_seconds, MIN_TTL_SECONDS, MAX_TTL_SECONDS)
        )
    return ttl_seconds


def check_int(value: Any, what: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum``, else raise :class:`UsageError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError("%s must be an int >= %d, got %r" % (what, minimum, value))
    return value
