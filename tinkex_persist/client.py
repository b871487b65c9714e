"""``ServiceClient`` (session, thread pool, heartbeat) and ``TrainingClient`` (ordered submission per model)."""

import collections
import concurrent.futures
import logging
import threading
import uuid
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Type, TypeVar

from . import _ops, _wire
from ._transport import _Transport
from .config import Config
from .exceptions import (
    APIConnectionError,
    APIStatusError,
    ConfigError,
    DecodeError,
    PromiseExpiredError,
    TinkexPersistError,
    UsageError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ServiceClient:
    """Entry point: holds the configuration, one HTTP transport, one thread pool and the server session.

    Safe to share between threads. ``Config`` is immutable. Each worker uses its own Session.
    Nothing is sent until the first operation; the session is then created once, kept alive by a
    heartbeat every ``heartbeat_interval`` seconds, and finished by :meth:`close` (or ``with``).

    Args:
        base_url: API root; default ``$TINKER_BASE_URL``, else the hosted service.
        api_key: the ``X-API-Key``; default ``$TINKER_API_KEY``. Required.
        config: a complete :class:`Config`; explicit arguments override its fields.
        user_metadata: metadata attached to the session.
        project_id: project the session belongs to.
        timeout: ``(connect, read)`` seconds, or one number for both.
        max_workers: threads in the pool (at least 1; every operation works with 1).
        on_queue_state: called as ``fn(request_id, queue_state)`` when a pending request's queue state changes.

    Raises:
        ConfigError: missing API key, bad base URL or option (before anything is sent).
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        config: Optional[Config] = None,
        user_metadata: Optional[Dict[str, Any]] = None,
        project_id: Optional[str] = None,
        timeout: Any = None,
        max_workers: Optional[int] = None,
        on_queue_state: Optional[Callable[[str, str], None]] = None,
        **options: Any,
    ) -> None:
        overrides = dict(
            base_url=base_url,
            api_key=api_key,
            user_metadata=user_metadata,
            project_id=project_id,
            timeout=timeout,
            max_workers=max_workers,
            **options,
        )
        try:
            cfg = config.evolve(**overrides) if config is not None else Config.from_env(**overrides)
        except TypeError as exc:
            raise ConfigError("unknown ServiceClient option: %s" % exc) from None
        cfg.require_api_key()
        self.config = cfg
        self.on_queue_state = on_queue_state
        self._transport = _Transport(cfg)
        self._lock = threading.Lock()
        self._session_lock = threading.Lock()
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._session_id: Optional[str] = None
        self._next_model_seq = 0
        self._closed = False
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return "<ServiceClient base_url=%r session_id=%r>" % (self.config.base_url, self._session_id)

    def __enter__(self) -> "ServiceClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _submit(self, fn: Callable[..., T], *args: Any) -> "concurrent.futures.Future[T]":
        with self._lock:
            if self._closed:
                raise UsageError("ServiceClient is closed")
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.config.max_workers, thread_name_prefix="tinkex_persist"
                )
            return self._executor.submit(fn, *args)

    def _allocate_model_seq(self) -> int:
        with self._lock:
            seq = self._next_model_seq
            self._next_model_seq += 1
            return seq

    @property
    def session_id(self) -> Optional[str]:
        """The server session id, once the first operation created it."""
        return self._session_id

    def _ensure_session(self) -> str:
        """Create the server session on first use (inside a worker)."""
        if self._session_id is not None:
            return self._session_id
        with self._session_lock:
            if self._session_id is None:
                request = _wire.CreateSessionRequest(
                    user_metadata=self.config.user_metadata or {}, project_id=self.config.project_id
                )
                self._session_id = _ops.create_session(self._transport, request)
                logger.debug("created session %s", self._session_id)
                if self.config.heartbeat_interval:
                    self._heartbeat = threading.Thread(
                        target=self._beat, args=(self._session_id,), name="tinkex_persist-heartbeat", daemon=True
                    )
                    self._heartbeat.start()
            return self._session_id

    def _beat(self, session_id: str) -> None:
        interval = self.config.heartbeat_interval or 10.0
        while not self._stop.wait(interval):
            try:
                _ops.heartbeat(self._transport, session_id)
            except PromiseExpiredError:
                logger.warning("session %s was ended by the server (410); heartbeats stopped", session_id)
                return
            except Exception as exc:  # a missed heartbeat is not the user's error; the next one may pass
                logger.debug("heartbeat for session %s failed: %s", session_id, exc)

    # ------------------------------------------------------------------ public

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        *,
        seed: Optional[int] = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: Optional[Dict[str, Any]] = None,
    ) -> "concurrent.futures.Future[TrainingClient]":
        """Create a new LoRA training run.

        Args:
            base_model: the model to fine-tune, e.g. ``"Qwen/Qwen3-8B"``.
            rank: LoRA rank, a positive int.
            seed: seed of the initial LoRA weights.
            train_mlp, train_attn, train_unembed: which layers get LoRA.
            user_metadata: metadata about the run.

        Returns:
            A Future of the new :class:`TrainingClient`.

        Raises:
            UsageError: bad arguments (immediately).
            TinkexPersistError: server or transport failure (set on the Future).
        """
        if not isinstance(base_model, str) or not base_model:
            raise UsageError("base_model must be a non-empty str, got %r" % (base_model,))
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise UsageError("rank must be a positive int, got %r" % (rank,))
        lora = _wire.LoraConfig(
            rank=rank, seed=seed, train_unembed=train_unembed, train_mlp=train_mlp, train_attn=train_attn
        )
        model_seq_id = self._allocate_model_seq()

        def work() -> TrainingClient:
            session_id = self._ensure_session()
            request = _wire.CreateModelRequest(
                session_id=session_id,
                model_seq_id=model_seq_id,
                base_model=base_model,
                user_metadata=user_metadata,
                lora_config=lora,
            )
            model_id = _ops.create_model(self._transport, request, self.on_queue_state)
            return TrainingClient(self, model_id, base_model=base_model, next_seq_id=1)

        return self._submit(work)

    def create_training_client_from_state(self, path: str, **kwargs: Any) -> "concurrent.futures.Future[TrainingClient]":
        """Same as :func:`tinkex_persist.create_training_client_from_state` with this client."""
        from .api import create_training_client_from_state

        return create_training_client_from_state(self, path, **kwargs)

    def create_training_client_from_state_with_optimizer(
        self, path: str, **kwargs: Any
    ) -> "concurrent.futures.Future[TrainingClient]":
        """Same as :func:`tinkex_persist.create_training_client_from_state_with_optimizer` with this client."""
        from .api import create_training_client_from_state_with_optimizer

        return create_training_client_from_state_with_optimizer(self, path, **kwargs)

    def close(self) -> None:
        """Wait for running operations, finish the server session and release connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor = self._executor
        if executor is not None:
            executor.shutdown(wait=True)
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._session_id is not None:
            try:
                _ops.finish_session(self._transport, self._session_id)
            except Exception as exc:  # the session expires on its own without heartbeats
                logger.debug("finishing session %s failed: %s", self._session_id, exc)
        self._transport.close()


class _Pending:
    """One queued submission of a training client, in call order."""

    __slots__ = ("path", "make", "done", "handle", "error", "seq_id", "attempts")

    def __init__(self, path: str, make: Callable[[int], Any]) -> None:
        self.path = path
        self.make = make
        self.done = False
        self.handle: Optional[_wire.UntypedAPIFuture] = None
        self.error: Optional[BaseException] = None
        self.seq_id = 0
        self.attempts: List[str] = []


class TrainingClient:
    """A handle on one training run (model) of a :class:`ServiceClient`.

    Requests on a model are numbered by ``seq_id`` in call order and reach the server in that order,
    whatever thread calls and whichever worker runs them. Polling for results runs concurrently.
    """

    def __init__(self, service: ServiceClient, model_id: str, *, base_model: Optional[str] = None, next_seq_id: int = 1) -> None:
        self.service = service
        self.model_id = model_id
        self.base_model = base_model
        self._next_seq = next_seq_id
        self._queue: Deque[_Pending] = collections.deque()
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        #: (path, request, idempotency key) of a submission whose outcome is unknown; see _reconcile.
        self._unresolved: Optional[Tuple[str, Any, str]] = None

    def __repr__(self) -> str:
        return "<TrainingClient model_id=%r>" % self.model_id

    def _enqueue(self, path: str, make: Callable[[int], Any]) -> _Pending:
        """Queue a submission; its seq_id is given at send time, in queue (call) order."""
        pending = _Pending(path, make)
        with self._lock:
            self._queue.append(pending)
        return pending

    def _ensure_submitted(self, pending: _Pending) -> _wire.UntypedAPIFuture:
        """Send queued submissions in order up to and including ``pending``; return its handle.

        Whichever worker gets here first sends everything queued before its own request, so no
        task ever waits for another queued task to be scheduled (works with ``max_workers=1``).
        """
        with self._submit_lock:
            while not pending.done:
                with self._lock:
                    item = self._queue.popleft()
                blocked = self._reconcile()
                if blocked is not None:
                    item.error, item.done = blocked, True
                    continue
                seq_id = self._next_seq
                item.seq_id = seq_id
                request, key = item.make(seq_id), uuid.uuid4().hex
                try:
                    item.handle = _ops.submit(
                        self.service._transport, item.path, request, attempts=item.attempts, idempotency_key=key
                    )
                    self._next_seq += 1
                except BaseException as exc:
                    item.error = exc
                    # A 4xx answer to an unambiguous send means the server did not take the seq_id. After a
                    # lost answer, a 5xx or an undecodable 2xx it may have: that request is re-sent first.
                    if (
                        item.attempts
                        or isinstance(exc, DecodeError)
                        or isinstance(exc, APIStatusError) and exc.status_code >= 500
                    ):
                        self._unresolved = (item.path, request, key)
                item.done = True
        if pending.error is not None:
            raise pending.error
        assert pending.handle is not None
        return pending.handle

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
            _ops.submit(self.service._transport, path, request, idempotency_key=key)
        except APIStatusError as exc:
            if exc.status_code >= 500:
                return self._unresolved_error(exc)
        except TinkexPersistError as exc:
            return self._unresolved_error(exc)
        else:
            self._next_seq += 1
        logger.debug("settled the earlier submission with seq_id %d of %s", request.seq_id, self.model_id)
        self._unresolved = None
        return None

    def _unresolved_error(self, exc: TinkexPersistError) -> APIConnectionError:
        err = APIConnectionError(
            "not sent: the outcome of the earlier request with seq_id %d of %s is still unknown (%s)"
            % (self._next_seq, self.model_id, exc.message),
            method="POST",
            url=getattr(exc, "url", ""),
        )
        err.__cause__ = exc
        return err

    def _finish(self, pending: _Pending, result_cls: Type[T], request_type: str) -> Tuple[_Pending, T]:
        """Submit in order, then poll for the result (inside a worker)."""
        handle = self._ensure_submitted(pending)
        result = _ops.poll(
            self.service._transport, handle.request_id, result_cls, request_type, on_queue_state=self.service.on_queue_state
        )
        return pending, result

    # Methods mirroring the official SDK's names; each delegates to the flat function.

    def save_state(self, name: str, **kwargs: Any) -> "concurrent.futures.Future[Any]":
        """Same as :func:`tinkex_persist.save_state` on this client."""
        from .api import save_state

        return save_state(self, name, **kwargs)

    def load_state(self, path: str, **kwargs: Any) -> "concurrent.futures.Future[Any]":
        """Same as :func:`tinkex_persist.load_state` on this client."""
        from .api import load_state

        return load_state(self, path, **kwargs)

    def load_state_with_optimizer(self, path: str, **kwargs: Any) -> "concurrent.futures.Future[Any]":
        """Same as :func:`tinkex_persist.load_state_with_optimizer` on this client."""
        from .api import load_state_with_optimizer

        return load_state_with_optimizer(self, path, **kwargs)
