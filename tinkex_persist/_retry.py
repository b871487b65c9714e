"""The retry policy (``Retry``), its attempt history and the ``Deadline`` that bounds a call.

Modelled on urllib3's ``util/retry.py``: a policy is immutable; :meth:`Retry.increment` returns a new
policy with one more :class:`RequestHistory` entry. The transport, the poller, the archive-URL wait and
the download resume all decide "again, and after how long?" here, bounded by one deadline.
"""

import email.utils
import logging
import random
import threading
import time
from datetime import datetime, timezone
from typing import Any, FrozenSet, List, Mapping, Optional, Tuple, TypeVar

import attrs

logger = logging.getLogger(__name__)

#: Statuses worth another attempt: the request was not applied, or applying it again is harmless.
RETRY_STATUSES: FrozenSet[int] = frozenset({408, 429, 500, 502, 503, 504})
#: Longest ``Retry-After`` honoured, in seconds; a larger value is cut to this.
RETRY_AFTER_MAX = 600.0


class Deadline:
    """A point in monotonic time after which no new attempt starts and no answer is waited for."""

    __slots__ = ("end",)

    def __init__(self, seconds: Optional[float]) -> None:
        self.end: Optional[float] = None if seconds is None else time.monotonic() + seconds

    def __repr__(self) -> str:
        return "<Deadline %s>" % ("none" if self.end is None else "in %.3fs" % self.remaining())

    def remaining(self) -> float:
        """Seconds left (negative once passed); infinite without a bound."""
        return float("inf") if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self.remaining() <= 0

    def earliest(self, other: Optional["Deadline"]) -> "Deadline":
        """The earlier of this deadline and ``other``."""
        if other is None or other.end is None:
            return self
        if self.end is not None and self.end <= other.end:
            return self
        return other

    def cap(self, seconds: float, floor: float = 0.0) -> float:
        """``seconds`` cut to the time left, but not below ``floor``."""
        return min(seconds, max(self.remaining(), floor))


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date; None if absent or invalid.

    The result is clamped to ``[0, RETRY_AFTER_MAX]``; a date in the past means "now".
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:  # pragma: no cover - Python < 3.10 returns None for some malformed dates
            return None
        if when.tzinfo is None:  # "-0000" means UTC with no claim about the local zone
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, RETRY_AFTER_MAX))


@attrs.frozen
class RequestHistory:
    """One failed attempt: what was sent, how it ended, and whether the server may have applied it."""

    method: str
    path: str
    #: What went wrong without an answer (e.g. ``connection refused to 127.0.0.1:1``), else None.
    error: Optional[str] = None
    #: The answer's status, when there was one.
    status: Optional[int] = None
    #: True when the outcome is unknown to the client: the request reached the server, which may have
    #: applied it (a lost answer, a 5xx, a body cut short). False when it certainly did not.
    maybe_applied: bool = False
    #: Seconds the server asked to wait (``Retry-After``), if it did.
    retry_after: Optional[float] = None


def _deadline_factory() -> Deadline:
    return Deadline(None)


@attrs.frozen(kw_only=True)
class Retry:
    """An immutable retry policy plus the history of the attempts made under it.

    ``total`` counts retries (None: only the deadline bounds them). Back-off after the n-th failure is
    ``backoff_factor * backoff_base ** (n - 1)``, capped at ``backoff_max``, drawn uniformly below that
    with ``jitter`` (so many clients do not retry in lockstep). A ``Retry-After`` answer overrides the
    back-off. Failures to reach the server at all (a refused connection) are retried only for
    ``patience`` seconds after the first one; after that, or past the deadline, the last error stands.
    """

    total: Optional[int] = 10
    backoff_factor: float = 0.5
    backoff_base: float = 2.0
    backoff_max: float = 30.0
    jitter: bool = True
    status_forcelist: FrozenSet[int] = RETRY_STATUSES
    respect_retry_after_header: bool = True
    patience: Optional[float] = None
    deadline: Deadline = attrs.field(factory=_deadline_factory, eq=False)
    history: Tuple[RequestHistory, ...] = ()
    #: Failed attempts so far (the back-off grows with it).
    failures: int = 0
    #: Most history entries kept (the newest); None keeps all. A long poll loop sets it.
    max_history: Optional[int] = None
    #: Monotonic time of the first failure to reach the server, for ``patience``.
    unreachable_since: Optional[float] = None
    #: Set to end every wait at once (the process is stopping); not kept on pickling.
    interrupt: Optional[threading.Event] = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def from_config(
        cls, config: Any, deadline: Optional[Deadline] = None, interrupt: Optional[threading.Event] = None
    ) -> "Retry":
        """The transport's policy for one call under ``config``, bounded by ``deadline``."""
        return cls(
            total=config.max_retries,
            backoff_factor=config.backoff_factor,
            backoff_max=config.backoff_max,
            patience=config.connect_patience,
            deadline=deadline if deadline is not None else Deadline(config.retry_deadline),
            interrupt=interrupt,
        )

    @property
    def interrupted(self) -> bool:
        """True once ``interrupt`` is set."""
        return self.interrupt is not None and self.interrupt.is_set()

    def new(self, **changes: Any) -> "Retry":
        """A copy with ``changes`` applied."""
        return attrs.evolve(self, **changes)

    def increment(
        self,
        method: str,
        path: str,
        *,
        error: Optional[str] = None,
        status: Optional[int] = None,
        maybe_applied: bool = False,
        unreachable: bool = False,
        headers: Optional[Mapping[str, str]] = None,
    ) -> "Retry":
        """Return a new policy that records one more failed attempt (one retry used)."""
        retry_after = self.get_retry_after(headers) if headers is not None else None
        entry = RequestHistory(method, path, error, status, maybe_applied, retry_after)
        since = self.unreachable_since
        if unreachable and since is None:
            since = time.monotonic()
        history = self.history + (entry,)
        if self.max_history is not None:
            history = history[-self.max_history :] if self.max_history > 0 else ()
        return self.new(
            total=None if self.total is None else self.total - 1,
            history=history,
            failures=self.failures + 1,
            unreachable_since=since,
        )

    @property
    def maybe_applied(self) -> bool:
        """True when some attempt may have been applied by the server although no success was seen."""
        return any(h.maybe_applied for h in self.history)

    def is_retry(self, status: int) -> bool:
        """True when an answer with ``status`` is worth another attempt."""
        return status in self.status_forcelist

    def is_exhausted(self) -> bool:
        """True when no retry is left (``total`` went below zero) or the patience for an unreachable server ran out."""
        if self.total is not None and self.total < 0:
            return True
        if self.patience is not None and self.unreachable_since is not None:
            return time.monotonic() - self.unreachable_since >= self.patience
        return False

    def time_left(self) -> float:
        """Seconds until the deadline, or until the patience for an unreachable server runs out if sooner."""
        left = self.deadline.remaining()
        if self.patience is not None and self.unreachable_since is not None:
            left = min(left, self.unreachable_since + self.patience - time.monotonic())
        return left

    def get_retry_after(self, headers: Optional[Mapping[str, str]]) -> Optional[float]:
        """The wait a ``Retry-After`` header asks for, in seconds, or None."""
        if headers is None:
            return None
        return parse_retry_after(headers.get("Retry-After"))

    def get_backoff_time(self) -> float:
        """The back-off before the next attempt, from the number of failures so far (0 before any)."""
        n = self.failures
        if n == 0 or self.backoff_factor <= 0:
            return 0.0
        try:
            base = self.backoff_factor * (self.backoff_base ** (n - 1))
        except OverflowError:
            base = self.backoff_max
        base = min(self.backoff_max, base)
        return random.uniform(0, base) if self.jitter else base

    def next_wait(self) -> float:
        """Seconds to wait before the next attempt: the last ``Retry-After``, or the back-off."""
        last = self.history[-1] if self.history else None
        if self.respect_retry_after_header and last is not None and last.retry_after is not None:
            return last.retry_after
        return self.get_backoff_time()

    def sleep(self, wait: Optional[float] = None) -> bool:
        """Sleep before the next attempt; return False, without sleeping, if that would pass the deadline
        (or the patience for an unreachable server).

        ``wait`` defaults to :meth:`next_wait`.
        """
        wait = self.next_wait() if wait is None else wait
        if wait >= self.time_left() or self.interrupted:
            return False
        if self.history:
            last = self.history[-1]
            logger.debug(
                "retrying %s %s in %.2fs after %s (attempt %d)",
                last.method, last.path, wait, last.error or last.status, self.failures,
            )
        if self.interrupt is not None:
            return not self.interrupt.wait(wait)
        if wait > 0:
            time.sleep(wait)
        return True

    sleep_for_retry = sleep


def schedule(policy: Retry, ready_at: float, round_trip: float = 0.0) -> List[float]:
    """The times (from the first attempt) at which ``policy`` makes attempts that fail until ``ready_at``.

    A pure simulation of a polling loop, without sleeping: each attempt takes ``round_trip`` seconds and
    fails while it starts before ``ready_at``; then the policy's back-off (without jitter, as a poll uses)
    is waited. The last time is the attempt that sees the result; ``len()`` is the number of attempts.
    """
    if policy.jitter:
        raise ValueError("schedule() needs a policy without jitter")
    times = [0.0]
    now = 0.0
    while now < ready_at:
        policy = policy.increment("SIMULATED", "schedule")
        now += round_trip + policy.get_backoff_time()
        times.append(now)
    return times


History = Tuple[RequestHistory, ...]
E = TypeVar("E", bound=BaseException)


def attach(exc: E, retry: Retry) -> E:
    """Record on ``exc`` the policy, with its history, under which the call failed; return ``exc``."""
    exc.retries = retry if retry.interrupt is None else retry.new(interrupt=None)  # type: ignore[attr-defined]
    return exc


def retries_of(exc: BaseException) -> Optional[Retry]:
    """The policy (with its history) under which the call that raised ``exc`` failed, if one was recorded."""
    retry = getattr(exc, "retries", None)
    return retry if isinstance(retry, Retry) else None


def maybe_applied(history: History) -> bool:
    """True when an attempt in ``history`` may have been applied by the server."""
    return any(h.maybe_applied for h in history)
