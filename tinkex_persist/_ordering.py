"""Per-model ordered submission: requests on one model get gapless ``seq_id`` s in call order.

A :class:`ModelQueue` numbers and sends the submissions of one model. It never touches the network
itself: the caller injects a ``send`` callable, so the ordering rules are testable without a server.

``send(path, request, idempotency_key)`` sends one request and returns the server's handle with the
history of the attempts that failed before it (``_retry.RequestHistory``); a failure carries its history
on the raised error (``_retry.retries_of``). An attempt the server may have applied (a lost answer, a
5xx) makes a failure ambiguous.
"""

import collections
import logging
import threading
import uuid
from typing import Any, Callable, Deque, Generic, List, Optional, Sequence, Tuple, TypeVar

from ._retry import History, maybe_applied, retries_of
from .exceptions import APIConnectionError, APIStatusError, DecodeError, TinkexPersistError

logger = logging.getLogger(__name__)

H = TypeVar("H")

#: ``send(path, request, idempotency_key) -> (handle, history of failed attempts)``.
Sender = Callable[[str, Any, str], Tuple[H, History]]


class Submission(Generic[H]):
    """One queued submission of a model, in call order.

    ``seq_id`` is given when it is sent; ``history`` records its failed attempts (a save retried after a
    lost answer uses it to read "already exists" as its own work).
    """

    __slots__ = ("path", "make", "done", "handle", "error", "seq_id", "history", "after")

    def __init__(self, path: str, make: Callable[[int], Any]) -> None:
        self.path = path
        self.make = make
        self.done = False
        self.handle: Optional[H] = None
        self.error: Optional[BaseException] = None
        self.seq_id = 0
        self.history: History = ()
        #: The previous part of the same call (see :meth:`ModelQueue.enqueue_parts`), or None.
        self.after: Optional[Submission[H]] = None

    @property
    def maybe_applied(self) -> bool:
        """True when an attempt the server may have applied failed before the final outcome."""
        return maybe_applied(self.history)


class ModelQueue(Generic[H]):
    """Sends the submissions of one model in call order, numbering them with gapless ``seq_id`` s.

    :meth:`enqueue` runs in the calling thread (it fixes the order); :meth:`send_through` runs in any
    worker. Whichever worker gets there first sends everything queued before its own submission, so
    no task ever waits for another queued task to be scheduled (works with one worker).

    Args:
        send: the injected sender (see the module docstring).
        model_id: the model's id, for messages.
        next_seq_id: the ``seq_id`` of the model's next request.
    """

    def __init__(self, send: Sender[H], model_id: str, next_seq_id: int = 1) -> None:
        self._send = send
        self._model_id = model_id
        self._next_seq = next_seq_id
        self._queue: Deque[Submission[H]] = collections.deque()
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        #: (path, request, idempotency key) of a submission whose outcome is unknown; see _reconcile.
        self._unresolved: Optional[Tuple[str, Any, str]] = None

    def reset_after_fork(self) -> None:
        """In a forked child: new locks (a parent thread may have held them) and an empty queue.

        Submissions queued before the fork belong to the parent, whose worker threads send them.
        """
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._queue = collections.deque()

    @property
    def next_seq_id(self) -> int:
        """The ``seq_id`` the next sent submission gets."""
        return self._next_seq

    def enqueue(self, path: str, make: Callable[[int], Any]) -> Submission[H]:
        """Queue a submission; ``make(seq_id)`` builds its request when it is sent, in queue (call) order."""
        submission: Submission[H] = Submission(path, make)
        with self._lock:
            self._queue.append(submission)
        return submission

    def enqueue_parts(self, path: str, makes: Sequence[Callable[[int], Any]]) -> List[Submission[H]]:
        """Queue the parts of one call (a split ``forward_backward``) together: consecutive, in order.

        Once a part fails, the parts after it are not sent (their seq_ids stay free); they fail with its error.
        """
        parts: List[Submission[H]] = []
        for make in makes:
            part: Submission[H] = Submission(path, make)
            part.after = parts[-1] if parts else None
            parts.append(part)
        with self._lock:
            self._queue.extend(parts)
        return parts

    def send_through(self, submission: Submission[H]) -> H:
        """Send queued submissions in order up to and including ``submission``; return its handle.

        Raises:
            the exception its send raised, or :class:`APIConnectionError` when an earlier submission's
            outcome stays unknown (nothing is then sent, so no ``seq_id`` is skipped).
        """
        with self._submit_lock:
            while not submission.done:
                with self._lock:
                    item = self._queue.popleft()
                if item.after is not None and item.after.error is not None:
                    item.error, item.done = item.after.error, True
                    continue
                blocked = self._reconcile()
                if blocked is not None:
                    item.error, item.done = blocked, True
                    continue
                seq_id = self._next_seq
                item.seq_id = seq_id
                request, key = item.make(seq_id), uuid.uuid4().hex
                try:
                    item.handle, item.history = self._send(item.path, request, key)
                    self._next_seq += 1
                except BaseException as exc:
                    item.error = exc
                    retries = retries_of(exc)
                    item.history = retries.history if retries is not None else ()
                    # A 4xx answer to an unambiguous send means the server did not take the seq_id. After a
                    # lost answer, a 5xx or an undecodable 2xx it may have: that request is re-sent first.
                    if (
                        item.maybe_applied
                        or isinstance(exc, DecodeError)
                        or isinstance(exc, APIStatusError) and exc.status_code >= 500
                    ):
                        self._unresolved = (item.path, request, key)
                item.done = True
        if submission.error is not None:
            raise submission.error
        assert submission.handle is not None
        return submission.handle

    def _reconcile(self) -> Optional[BaseException]:
        """Settle a submission whose outcome is unknown, so seq_ids stay gapless; return an error if it stays unknown.

        The request is re-sent with its seq_id, body and ``X-Idempotency-Key``: a server that applied it
        replays its answer (nothing runs twice); one that never received it applies it now. Either way
        its seq_id is then taken. A 4xx answer means it was not taken, and the seq_id is reused.
        """
        if self._unresolved is None:
            return None
        path, request, key = self._unresolved
        try:
            self._send(path, request, key)
        except APIStatusError as exc:
            if exc.status_code >= 500:
                return self._unresolved_error(exc)
        except TinkexPersistError as exc:
            return self._unresolved_error(exc)
        else:
            self._next_seq += 1
        logger.debug("settled the earlier submission with seq_id %s of %s", getattr(request, "seq_id", "?"), self._model_id)
        self._unresolved = None
        return None

    def _unresolved_error(self, exc: TinkexPersistError) -> APIConnectionError:
        err = APIConnectionError(
            "not sent: the outcome of the earlier request with seq_id %d of %s is still unknown (%s)"
            % (self._next_seq, self._model_id, exc.message),
            method="POST",
            url=getattr(exc, "url", ""),
        )
        err.__cause__ = exc
        return err
