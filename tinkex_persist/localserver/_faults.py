"""Fault injection of the local server: a queue of one-shot faults that the HTTP layer applies to requests."""

import fnmatch
import threading
from typing import Any, Dict, List, NamedTuple, Optional


class Fault(NamedTuple):
    """One injected fault; see :class:`FaultQueue`."""

    #: ``fnmatch`` pattern on the request path (without the query).
    path: str
    #: HTTP method the fault applies to (upper case); None: any method.
    method: Optional[str] = None
    #: Answer this status without processing the request; None: process it.
    status: Optional[int] = None
    #: JSON value or bytes of the injected answer; None: ``{"detail": "injected fault"}``.
    body: Any = None
    #: Extra headers of the injected answer.
    headers: Optional[Dict[str, str]] = None
    #: Process (commit) the request, then close the connection without answering.
    drop: bool = False
    #: Seconds to wait before answering (combines with ``status`` and ``drop``).
    delay: float = 0.0

    def injected_answer(self) -> Any:
        """Return the body of the injected answer."""
        return self.body if self.body is not None else {"detail": "injected fault"}


class FaultQueue:
    """Thread-safe FIFO of one-shot faults, each used by the first request whose path matches it.

    ``path`` is an ``fnmatch`` pattern on the request path (without the query), e.g. ``/api/v1/save_weights``
    or ``/api/v1/training_runs/*``. A fault does one of:

    * ``status=N`` (with optional ``body`` and ``headers``): answer N without processing the request;
    * ``drop=True``: process (commit) the request, then close the connection without answering;
    * ``delay=S``: process the request, then wait S seconds before answering (combines with the above).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: List[Fault] = []

    def add(
        self,
        path: str,
        *,
        method: Optional[str] = None,
        status: Optional[int] = None,
        body: Any = None,
        headers: Optional[Dict[str, str]] = None,
        drop: bool = False,
        delay: float = 0.0,
        count: int = 1,
    ) -> None:
        """Queue ``count`` copies of a fault for requests matching ``path`` (and ``method`` if given).

        Raises:
            ValueError: ``status`` is not an HTTP status (100-599), or ``delay`` or ``count`` is negative.
        """
        if status is not None and not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status 100-599, got %r" % (status,))
        if delay < 0 or count < 0:
            raise ValueError("delay and count must not be negative, got delay=%r count=%r" % (delay, count))
        fault = Fault(path, method.upper() if method else None, status, body, headers, drop, delay)
        with self._lock:
            self._faults.extend([fault] * count)

    def take(self, method: str, path: str) -> Optional[Fault]:
        """Remove and return the first fault matching this request, or None."""
        with self._lock:
            for i, f in enumerate(self._faults):
                if (f.method is None or f.method == method) and fnmatch.fnmatchcase(path, f.path):
                    return self._faults.pop(i)
        return None

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)
