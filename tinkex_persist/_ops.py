"""One plain synchronous function per wire operation, ``(transport, ...) -> result``. No threads here."""

import logging
import threading
import time
from typing import Any, Callable, Optional, Tuple, Type, TypeVar

import attrs

from . import _wire
from ._converter import decode, dumps
from ._retry import Deadline, History, Retry
from ._transport import Transport
from .exceptions import APITimeoutError, DecodeError, OperationCancelledError, PromiseExpiredError, RequestFailedError

logger = logging.getLogger(__name__)

T = TypeVar("T")

API = "/api/v1"
#: First wait after a ``try_again`` answered at once, in seconds; later waits grow by POLL_GROWTH.
POLL_FIRST_WAIT = 0.05
POLL_GROWTH = 4.0
#: Longest wait between two polls of a pending future, in seconds. With the ramp above, a result pending
#: 2 s costs 12 polls (0, 0.05, 0.25, ... 2.05 s) and is seen at most POLL_MAX_WAIT after it is ready.
POLL_MAX_WAIT = 0.2
#: An answer that took at least this long was a server-side long-poll, so re-poll at once.
LONG_POLL_SECONDS = 1.0

QueueStateCallback = Callable[[str, str], None]
#: ``(media type, decoder)`` of a result asked for in a binary form (``retrieve_future`` with that ``Accept``).
BinaryResult = Tuple[str, Callable[[bytes], Any]]


@attrs.frozen
class EncodedRequest:
    """A request body already encoded in a binary form (the protobuf ``forward_backward``), and its media type.

    ``seq_id`` repeats the one inside the body, for messages about it.
    """

    content: bytes = attrs.field(repr=lambda c: "<%d bytes>" % len(c))
    content_type: str
    seq_id: Optional[int] = None


def submit(transport: Transport, path: str, request: Any, *, idempotency_key: Optional[str] = None) -> _wire.UntypedAPIFuture:
    """POST a typed request (or an :class:`EncodedRequest`) and return the server's future handle.

    ``idempotency_key`` re-sends an earlier submission under its original ``X-Idempotency-Key``.
    """
    return submit_recorded(transport, path, request, idempotency_key=idempotency_key)[0]


def submit_recorded(
    transport: Transport, path: str, request: Any, *, idempotency_key: Optional[str] = None
) -> Tuple[_wire.UntypedAPIFuture, History]:
    """:func:`submit`, also returning the history of the attempts that failed before the answer.

    A failure carries its history on the raised error (``_retry.retries_of``).
    """
    headers = {"X-Idempotency-Key": idempotency_key} if idempotency_key else {}
    if isinstance(request, EncodedRequest):
        body = request.content
        headers["Content-Type"] = request.content_type
    else:
        body = dumps(request)
    resp = transport.request("POST", API + path, body, extra_headers=headers, expect_json=True)
    history = resp.retries.history if resp.retries is not None else ()
    return decode(resp.json(), _wire.UntypedAPIFuture), history


def call(transport: Transport, method: str, path: str, request: Any, result_cls: Type[T]) -> T:
    """Send a request answered directly (not through a future) and decode the answer."""
    body = None if request is None else dumps(request)
    resp = transport.request(method, API + path, body, expect_json=True)
    return decode(resp.json(), result_cls)


def poll_waits(deadline: Optional[Deadline] = None, interrupt: Optional[threading.Event] = None) -> Retry:
    """The policy of the waits between polls answered ``try_again`` at once: short, growing, capped.

    :func:`tinkex_persist._retry.schedule` turns it into poll times without sleeping.
    """
    return Retry(
        total=None,
        backoff_factor=POLL_FIRST_WAIT,
        backoff_base=POLL_GROWTH,
        backoff_max=POLL_MAX_WAIT,
        jitter=False,
        respect_retry_after_header=False,
        deadline=deadline if deadline is not None else Deadline(None),
        max_history=1,
        interrupt=interrupt,
    )


def poll(
    transport: Transport,
    request_id: str,
    result_cls: Type[T],
    request_type: str,
    *,
    on_queue_state: Optional[QueueStateCallback] = None,
    binary: Optional[BinaryResult] = None,
) -> T:
    """Wait for a server-side future and return its decoded result.

    With ``binary=(media_type, decoder)`` the poll asks for that media type (``Accept``) and the result
    must come in it: ``decoder(body)`` is returned (``result_cls`` is then only its type). A JSON
    result instead is a :class:`DecodeError`, as in the official SDK.

    Long-polls ``retrieve_future``; when the server answers ``try_again`` (or 408) at once, waits with a
    short, capped, growing back-off instead of re-polling in a hot loop. Raises
    :class:`RequestFailedError` for a failed request, :class:`PromiseExpiredError` on 410, and
    :class:`APITimeoutError` when ``config.poll_timeout`` runs out.
    """
    cfg = transport.config
    deadline = Deadline(cfg.poll_timeout)
    timeout = (cfg.timeout[0], cfg.poll_read_timeout)
    fresh = poll_waits(deadline, transport.stopping)
    waits = fresh
    allow_metadata_only = True
    queue_state: Optional[str] = None
    iteration = 0
    path = API + "/retrieve_future"
    while True:
        body = dumps(_wire.RetrieveFutureRequest(request_id=request_id, allow_metadata_only=allow_metadata_only))
        headers = {"X-Tinker-Request-Iteration": str(iteration), "X-Tinker-Request-Type": request_type}
        t0 = time.monotonic()
        try:
            resp = transport.request(
                "POST",
                path,
                body,
                timeout=timeout,
                extra_headers=headers,
                ok_statuses=(408,),
                expect_json=True,
                accept=binary[0] if binary is not None else None,
                deadline=deadline.earliest(Deadline(cfg.retry_deadline)),
            )
        except PromiseExpiredError as exc:
            raise PromiseExpiredError(
                "the server no longer holds the result of request %s (410: promise expired); "
                "the operation may or may not have completed" % request_id,
                status_code=410,
                method="POST",
                url=path,
                request_id=request_id,
                body=exc.body,
            ) from exc
        except APITimeoutError as exc:
            if deadline.expired():
                raise _poll_timeout(request_id, cfg.poll_timeout) from exc
            raise
        iteration += 1
        if binary is not None and resp.status == 200 and resp.content_type == binary[0]:
            return binary[1](resp.content)  # type: ignore[no-any-return]
        data = resp.json()
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(data, dict) and data.get("status") == "complete_metadata" and allow_metadata_only:
            allow_metadata_only = False  # the result is too large to inline: fetch it in full
            continue
        if kind == "try_again" or resp.status == 408:
            state = data.get("queue_state") if isinstance(data, dict) else None
            if state and state != queue_state:
                queue_state = state
                logger.info("request %s is queued: %s", request_id, state)
                if on_queue_state is not None:
                    on_queue_state(request_id, state)
            if time.monotonic() - t0 >= LONG_POLL_SECONDS:
                waits = fresh  # the server held the poll: it long-polls, so no back-off is needed
                if deadline.expired():
                    raise _poll_timeout(request_id, cfg.poll_timeout)
                continue
            waits = waits.increment("POST", path, status=resp.status, error=kind)
            if not waits.sleep():
                if transport.stopping.is_set():
                    raise OperationCancelledError(
                        "stopped waiting for request %s: the client is stopping (the server may still complete it)"
                        % request_id,
                        method="POST",
                        url=path,
                    )
                raise _poll_timeout(request_id, cfg.poll_timeout)
            continue
        if isinstance(data, dict) and "error" in data and "category" in data and kind is None:
            failed = decode(data, _wire.RequestFailedResponse)
            raise RequestFailedError(
                "request %s failed (%s error): %s" % (request_id, failed.category, transport.redact(failed.error)),
                request_id=request_id,
                category=failed.category,
            )
        if binary is not None:
            raise DecodeError(
                "request %s: expected its %s result as %s, got %s"
                % (request_id, request_type, binary[0], resp.content_type or "no content type"),
                errors=["$: expected %s" % binary[0]],
                body=resp.content[:2000].decode("utf-8", "replace"),
            )
        return decode(data, result_cls)


def _poll_timeout(request_id: str, seconds: Optional[float]) -> APITimeoutError:
    return APITimeoutError(
        "request %s still pending after %.0f s (poll_timeout)" % (request_id, seconds or 0),
        method="POST",
        url=API + "/retrieve_future",
    )


def create_session(transport: Transport, request: _wire.CreateSessionRequest) -> str:
    """Create a session and return its id."""
    resp = call(transport, "POST", "/create_session", request, _wire.CreateSessionResponse)
    if resp.error_message:
        raise DecodeError("create_session refused: %s" % resp.error_message)
    for msg in (resp.warning_message, resp.info_message):
        if msg:
            logger.warning("server: %s", msg)
    return resp.session_id


def heartbeat(transport: Transport, session_id: str) -> None:
    """Tell the server the session is alive."""
    body = dumps(_wire.SessionHeartbeatRequest(session_id=session_id))
    transport.request("POST", API + "/session_heartbeat", body, deadline=Deadline(5.0))


def finish_session(transport: Transport, session_id: str) -> None:
    """Close the session on the server."""
    body = dumps(_wire.FinishSessionRequest())
    transport.request("POST", "%s/sessions/%s/finish" % (API, session_id), body, deadline=Deadline(5.0))


def create_model(
    transport: Transport, request: _wire.CreateModelRequest, on_queue_state: Optional[QueueStateCallback] = None
) -> str:
    """Create a training model and return its id."""
    fut = submit(transport, "/create_model", request)
    result = poll(transport, fut.request_id, _wire.CreateModelResponse, "CreateModel", on_queue_state=on_queue_state)
    return result.model_id


def weights_info(transport: Transport, tinker_path: str) -> _wire.WeightsInfoResponse:
    """Describe a checkpoint."""
    return call(transport, "POST", "/weights_info", _wire.WeightsInfoRequest(tinker_path=tinker_path), _wire.WeightsInfoResponse)


def get_info(transport: Transport, model_id: str) -> _wire.GetInfoResponse:
    """Describe a training model."""
    return call(transport, "POST", "/get_info", _wire.GetInfoRequest(model_id=model_id), _wire.GetInfoResponse)
