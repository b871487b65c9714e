"""``ServiceClient`` (session, thread pool, heartbeat) and ``TrainingClient`` (one training run).

The clients own the behaviour: every operation is a method that validates its arguments at once
(nothing is sent on bad input), then runs one work item on the service client's pool and returns a
plain ``concurrent.futures.Future``. ``api.py`` is one-line delegations over these methods.
``Runner``, ``runner_of`` and the ``check_*`` functions at the end are the
package's internal interface to the clients.
"""

import concurrent.futures
import json
import logging
import os
import threading
import math
import weakref
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Set, Tuple, Type, TypeVar, Union

import attrs

from . import _ops, _paths, _wire
from ._ordering import ModelQueue, Submission
from ._paths import parse_path
from ._retry import History
from ._transport import Transport
from .config import Config
from .exceptions import (
    APIStatusError,
    BadRequestError,
    CheckpointExistsError,
    ConfigError,
    ConflictError,
    NotFoundError,
    PromiseExpiredError,
    RequestFailedError,
    UnprocessableEntityError,
    UsageError,
)
from .training_types import AdamParams, Datum, ForwardBackwardOutput, OptimStepResponse
from .types import LoadStateResult, SaveStateResult, SaveWeightsExternalResult, SaveWeightsForSamplerResult

logger = logging.getLogger(__name__)

__all__ = ("ServiceClient", "TrainingClient")

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
        self._transport = Transport(cfg)
        self._lock = threading.Lock()
        self._session_lock = threading.Lock()
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._session_id: Optional[str] = None
        self._next_model_seq = 0
        self._closed = False
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None
        #: Sessions the server said it no longer knows (it restarted or ended them); their models are gone.
        self._lost_sessions: Set[str] = set()
        self._models: "weakref.WeakSet[TrainingClient]" = weakref.WeakSet()
        _track(self)

    def __repr__(self) -> str:
        return "<ServiceClient base_url=%r session_id=%r>" % (self.config.base_url, self._session_id)

    def __reduce__(self) -> Any:
        raise TypeError(
            "ServiceClient cannot be pickled: it holds a thread pool, HTTP connections and a server session; "
            "create one in each process, e.g. ServiceClient(config=service.config)"
        )

    def __enter__(self) -> "ServiceClient":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Ctrl-C (or SystemExit) inside the block: stop waiting for the operations instead of finishing them.
        self.close(cancel=exc_type is not None and not issubclass(exc_type, Exception))

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
                self._session_id = self._create_session()
                self._start_heartbeat()
            return self._session_id

    def _create_session(self) -> str:
        request = _wire.CreateSessionRequest(user_metadata=self.config.user_metadata or {}, project_id=self.config.project_id)
        session_id = _ops.create_session(self._transport, request)
        logger.debug("created session %s", session_id)
        return session_id

    def _start_heartbeat(self) -> None:
        if self.config.heartbeat_interval and not self._stop.is_set():
            self._heartbeat = threading.Thread(target=self._beat, name="tinkex_persist-heartbeat", daemon=True)
            self._heartbeat.start()

    def _renew_session(self, stale: str) -> str:
        """Replace a session the server no longer knows (it restarted) by a new one, once; return the current id."""
        with self._session_lock:
            if self._session_id == stale:
                self._lost_sessions.add(stale)
                self._session_id = self._create_session()
                logger.warning(
                    "the server no longer knows session %s (it restarted or ended it); continuing in new session %s. "
                    "Models of the old session are gone: create them again from a checkpoint", stale, self._session_id
                )
            assert self._session_id is not None
            return self._session_id

    def _in_session(self, attempt: Callable[[str], T]) -> T:
        """Run a session-addressed ``attempt(session_id)``; if the server no longer knows the session, renew it once and retry."""
        session_id = self._ensure_session()
        try:
            return attempt(session_id)
        except APIStatusError as exc:
            if not _unknown_session(exc):
                raise
            return attempt(self._renew_session(session_id))

    def _beat(self) -> None:
        interval = self.config.heartbeat_interval or 10.0
        while not self._stop.wait(interval):
            session_id = self._session_id
            if session_id is None:  # pragma: no cover - the heartbeat starts after the session exists
                continue
            try:
                _ops.heartbeat(self._transport, session_id)
            except PromiseExpiredError:
                logger.warning("session %s was ended by the server (410); heartbeats stopped", session_id)
                return
            except APIStatusError as exc:
                if not _unknown_session(exc):
                    logger.debug("heartbeat for session %s failed: %s", session_id, exc)
                    continue
                try:
                    self._renew_session(session_id)
                except Exception as renew_exc:  # the next heartbeat, or the next call, tries again
                    logger.debug("renewing session %s failed: %s", session_id, renew_exc)
            except Exception as exc:  # a missed heartbeat is not the user's error; the next one may pass
                logger.debug("heartbeat for session %s failed: %s", session_id, exc)

    def _after_fork(self) -> None:
        """In a forked child: new locks, no pool (the parent's worker threads do not exist here), new connections.

        The child creates a session of its own on first need: the parent's stays the parent's (it keeps
        its heartbeat, and its own new models' numbers), and closing the child never finishes it. Models
        created before the fork keep working in the child by their id; drive each from one process.
        """
        self._lock = threading.Lock()
        self._session_lock = threading.Lock()
        self._executor = None
        self._heartbeat = None
        self._stop = threading.Event()
        self._session_id = None
        self._next_model_seq = 0
        self._transport.reset_after_fork()
        for tc in list(self._models):
            tc._queue.reset_after_fork()

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
        optimizer: Optional[Any] = None,
    ) -> "concurrent.futures.Future[TrainingClient]":
        """Create a new LoRA training run.

        Args:
            base_model: the model to fine-tune, e.g. ``"Qwen/Qwen3-8B"``.
            rank: LoRA rank, a positive int.
            seed: seed of the initial LoRA weights.
            train_mlp, train_attn, train_unembed: which layers get LoRA.
            user_metadata: metadata about the run.
            optimizer: the run's optimizer family, fixed for its life, as ``{"type": "adamw"}`` (the
                default) or another family such as ``{"type": "dimuon", "version": 1}`` (an SDK
                ``tinker.types.*OptimizerConfig`` works too).

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
        optimizer_config = _optimizer_config(optimizer) or _wire.OptimizerConfig()
        model_seq_id = self._allocate_model_seq()

        def attempt(session_id: str) -> TrainingClient:
            request = _wire.CreateModelRequest(
                session_id=session_id,
                model_seq_id=model_seq_id,
                base_model=base_model,
                user_metadata=user_metadata,
                lora_config=lora,
                optimizer_config=optimizer_config,
            )
            model_id = _ops.create_model(self._transport, request, self.on_queue_state)
            return TrainingClient(self, model_id, base_model=base_model, next_seq_id=1, session_id=session_id)

        return self._submit(self._in_session, attempt)

    def create_training_client_from_state(
        self,
        path: str,
        *,
        base_model: Optional[str] = None,
        user_metadata: Optional[Dict[str, Any]] = None,
        weights_access_token: Optional[str] = None,
        optimizer: Optional[Any] = None,
    ) -> "concurrent.futures.Future[TrainingClient]":
        """Start a new training run from a checkpoint's weights; the optimizer starts fresh.

        Sends one session-addressed ``load_weights`` and polls it (2 requests). A server that rejects
        session addressing gets the older sequence: ``weights_info``, ``create_model``, ``load_weights``.

        Args:
            path: ``tinker://<run_id>/weights/<name>`` of a training checkpoint.
            base_model: override of the checkpoint's base model (must be compatible).
            user_metadata: metadata about the new run.
            weights_access_token: token for a checkpoint owned by another account.
            optimizer: the new run's optimizer family (see :meth:`create_lora_training_client`); None
                lets the server choose (AdamW). Sent as ``optimizer_config``, as SDK 0.38 does.

        Returns:
            A Future of the new :class:`TrainingClient`.

        Raises:
            UsageError, TypeError: bad arguments (immediately; nothing is sent).
            RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
        """
        return self._from_state(
            path, optimizer=False, base_model=base_model, user_metadata=user_metadata,
            weights_access_token=weights_access_token, optimizer_config=_optimizer_config(optimizer),
        )

    def create_training_client_from_state_with_optimizer(
        self,
        path: str,
        *,
        base_model: Optional[str] = None,
        user_metadata: Optional[Dict[str, Any]] = None,
        weights_access_token: Optional[str] = None,
    ) -> "concurrent.futures.Future[TrainingClient]":
        """Resume a training run from a checkpoint: weights and Adam state. The exact-resume path.

        Same arguments (except ``optimizer``: the checkpoint's optimizer is restored), result and errors
        as :meth:`create_training_client_from_state`.
        """
        return self._from_state(
            path, optimizer=True, base_model=base_model, user_metadata=user_metadata,
            weights_access_token=weights_access_token, optimizer_config=None,
        )

    def _from_state(
        self,
        path: str,
        *,
        optimizer: bool,
        base_model: Optional[str],
        user_metadata: Optional[Dict[str, Any]],
        weights_access_token: Optional[str],
        optimizer_config: Optional[_wire.OptimizerConfig],
    ) -> "concurrent.futures.Future[TrainingClient]":
        parse_path(path)
        if base_model is not None and (not isinstance(base_model, str) or not base_model):
            raise UsageError("base_model must be a non-empty str or None")
        metadata = _metadata(user_metadata, values_str=False)
        token = _token(weights_access_token)
        model_seq_id = self._allocate_model_seq()
        return self._submit(
            self._load_from_state, model_seq_id, path, optimizer, base_model, metadata, token, optimizer_config
        )

    def _load_from_state(
        self,
        model_seq_id: int,
        path: str,
        optimizer: bool,
        base_model: Optional[str],
        metadata: Optional[Dict[str, Any]],
        token: Optional[str],
        optimizer_config: Optional[_wire.OptimizerConfig] = None,
    ) -> "TrainingClient":
        """Inside a worker: a new model in this session, loaded from ``path`` (session-addressed ``load_weights``)."""
        transport = self._transport

        def attempt(session_id: str) -> TrainingClient:
            request = _wire.LoadWeightsRequest(
                session_id=session_id,
                model_seq_id=model_seq_id,
                base_model=base_model,
                user_metadata=metadata,
                path=path,
                optimizer=optimizer,
                optimizer_config=optimizer_config,
                weights_access_token=token,
            )
            try:
                handle = _ops.submit(transport, "/load_weights", request)
            except APIStatusError as exc:
                if _unknown_session(exc) or not _rejects_session_addressing(exc):
                    raise
                return self._from_state_legacy(
                    session_id, model_seq_id, path, optimizer, base_model, metadata, token, optimizer_config
                )
            result = _ops.poll(transport, handle.request_id, _wire.LoadWeightsResponse, "LoadWeights",
                               on_queue_state=self.on_queue_state)
            model_id = "%s:train:%d" % (session_id, model_seq_id)
            if result.model_id and result.model_id != model_id:
                logger.debug("server named the new model %s (expected %s)", result.model_id, model_id)
                model_id = result.model_id
            return TrainingClient(self, model_id, base_model=base_model, next_seq_id=1, session_id=session_id)

        return self._in_session(attempt)

    def _from_state_legacy(
        self,
        session_id: str,
        model_seq_id: int,
        path: str,
        optimizer: bool,
        base_model: Optional[str],
        metadata: Optional[Dict[str, Any]],
        token: Optional[str],
        optimizer_config: Optional[_wire.OptimizerConfig] = None,
    ) -> "TrainingClient":
        """Older servers: weights_info, create_model, then load_weights as the model's first request.

        The model is created with ``optimizer_config`` when the caller gave one, else with the checkpoint's
        optimizer configuration as ``weights_info`` reports it (family and extra keys), else the default adamw.
        """
        transport = self._transport
        logger.debug("server rejected session-addressed load_weights; using weights_info + create_model")
        info = _ops.weights_info(transport, path)
        lora = _wire.LoraConfig(
            rank=info.lora_rank or 32,
            train_unembed=info.train_unembed if info.train_unembed is not None else True,
            train_mlp=info.train_mlp if info.train_mlp is not None else True,
            train_attn=info.train_attn if info.train_attn is not None else True,
        )
        create = _wire.CreateModelRequest(
            session_id=session_id,
            model_seq_id=model_seq_id,
            base_model=base_model or info.base_model,
            user_metadata=metadata,
            lora_config=lora if info.is_lora else None,
            # The family the caller asked for, else the checkpoint's own (its state is what a load restores).
            optimizer_config=optimizer_config or info.optimizer_config or _wire.OptimizerConfig(),
        )
        model_id = _ops.create_model(transport, create, self.on_queue_state)
        load = _wire.LoadWeightsRequest(model_id=model_id, seq_id=1, path=path, optimizer=optimizer, weights_access_token=token)
        handle = _ops.submit(transport, "/load_weights", load)
        _ops.poll(transport, handle.request_id, _wire.LoadWeightsResponse, "LoadWeights", on_queue_state=self.on_queue_state)
        return TrainingClient(self, model_id, base_model=base_model or info.base_model, next_seq_id=2, session_id=session_id)

    def close(self, *, cancel: bool = False) -> None:
        """Wait for running operations, finish the server session and release connections. Idempotent.

        Args:
            cancel: stop waiting instead: operations not started are cancelled, running ones stop at
                their next chance (polls, back-off waits, download reads) and fail with
                :class:`OperationCancelledError`; a request the server already accepted may still complete
                there. Leaving a ``with`` block by Ctrl-C does this, and interpreter exit stops the
                waits of every client the same way.
        """
        if cancel:
            self._cancel()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor = self._executor
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=cancel)
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._session_id is not None and self._transport.stopping.is_set():
            logger.debug("not finishing session %s after a cancel; it expires without heartbeats", self._session_id)
        elif self._session_id is not None:
            try:
                _ops.finish_session(self._transport, self._session_id)
            except Exception as exc:  # the session expires on its own without heartbeats
                logger.debug("finishing session %s failed: %s", self._session_id, exc)
        self._transport.close()

    def _cancel(self) -> None:
        self._stop.set()
        self._transport.abort()


class TrainingClient:
    """A handle on one training run (model) of a :class:`ServiceClient`.

    Requests on a model are numbered by ``seq_id`` in call order and reach the server in that order,
    whatever thread calls and whichever worker runs them. Polling for results runs concurrently.
    """

    def __init__(
        self,
        service: ServiceClient,
        model_id: str,
        *,
        base_model: Optional[str] = None,
        next_seq_id: int = 1,
        session_id: Optional[str] = None,
    ) -> None:
        self.service = service
        self.model_id = model_id
        self.base_model = base_model
        #: The server session the model was created in; the model lives only as long as the session.
        self.session_id = session_id
        self._queue: ModelQueue[_wire.UntypedAPIFuture] = ModelQueue(self._send, model_id, next_seq_id)
        service._models.add(self)

    def __repr__(self) -> str:
        return "<TrainingClient model_id=%r>" % self.model_id

    def __reduce__(self) -> Any:
        raise TypeError(
            "TrainingClient cannot be pickled: it belongs to this process's ServiceClient; in the other process "
            "resume from a checkpoint path with create_training_client_from_state_with_optimizer(service, path)"
        )

    def _lost(self, exc: APIStatusError) -> Optional[NotFoundError]:
        """The error for a request on a model whose session the server no longer knows, or None if it is another 404."""
        text = (exc.body or "").lower()
        lost = self.session_id is not None and self.session_id in self.service._lost_sessions
        if not lost and not ("model" in text and ("not found" in text or "unknown" in text)):
            return None
        return NotFoundError(
            "model %s belonged to session %s, which the server no longer knows (it restarted or ended the session); "
            "models do not survive that: create it again from a checkpoint with "
            "create_training_client_from_state_with_optimizer(service, path) (server said: %s)"
            % (self.model_id, self.session_id or "?", exc.message),
            status_code=exc.status_code,
            method=exc.method,
            url=exc.url,
            request_id=exc.request_id,
            body=exc.body,
        )

    def _send(self, path: str, request: Any, idempotency_key: str) -> Tuple[_wire.UntypedAPIFuture, History]:
        return _ops.submit_recorded(self.service._transport, path, request, idempotency_key=idempotency_key)

    def _finish(self, submission: Submission[_wire.UntypedAPIFuture], result_cls: Type[T], request_type: str) -> T:
        """Send in order, then poll for the result (inside a worker)."""
        try:
            handle = self._queue.send_through(submission)
        except NotFoundError as exc:
            lost = self._lost(exc)
            if lost is None:
                raise
            raise lost from exc
        return _ops.poll(
            self.service._transport, handle.request_id, result_cls, request_type, on_queue_state=self.service.on_queue_state
        )

    def save_state(
        self,
        name: str,
        *,
        ttl_seconds: Optional[int] = None,
        overwrite: bool = False,
        user_metadata: Optional[Dict[str, str]] = None,
    ) -> "concurrent.futures.Future[SaveStateResult]":
        """Save the run's weights and optimizer state as checkpoint ``name``.

        Args:
            name: checkpoint name, 1-128 characters without ``/``, ``..`` or control characters.
            ttl_seconds: lifetime in seconds, 3600 to 10 years; None keeps it until deleted.
            overwrite: replace an existing checkpoint of the same name.
            user_metadata: str -> str metadata stored with the checkpoint.

        Returns:
            A Future of :class:`SaveStateResult`; its ``path`` is ``tinker://<model_id>/weights/<name>``.
            It resolves only after the server reports the checkpoint committed.

        Raises:
            UsageError, TypeError: bad arguments (immediately; nothing is sent).
            CheckpointExistsError: the name exists and ``overwrite`` is False (set on the Future).
            APIStatusError, APIConnectionError, RequestFailedError, DecodeError: failures (set on the Future).
        """
        _paths.check_name(name)
        _paths.check_ttl(ttl_seconds)
        if not isinstance(overwrite, bool):
            raise UsageError("overwrite must be a bool, got %r" % (overwrite,))
        metadata = _metadata(user_metadata, values_str=True)

        def make(seq_id: int) -> _wire.SaveWeightsRequest:
            return _wire.SaveWeightsRequest(
                model_id=self.model_id,
                path=name,
                seq_id=seq_id,
                ttl_seconds=ttl_seconds,
                overwrite=overwrite,
                user_metadata=metadata,
            )

        pending = self._queue.enqueue("/save_weights", make)
        expected = "tinker://%s/weights/%s" % (self.model_id, name)

        def work() -> SaveStateResult:
            try:
                result = self._finish(pending, _wire.SaveWeightsResponse, "SaveWeights")
            except (RequestFailedError, APIStatusError) as exc:
                if not _is_exists_error(exc) or overwrite:
                    raise
                if pending.maybe_applied:
                    # An earlier attempt of this very call may have been committed before its answer was
                    # lost; the name existing now is that save.
                    logger.debug(
                        "save of %s retried after %s; treating 'already exists' as committed",
                        expected, [h.error or h.status for h in pending.history if h.maybe_applied],
                    )
                    return SaveStateResult(path=expected, model_id=self.model_id, seq_id=pending.seq_id)
                raise CheckpointExistsError(
                    "checkpoint %s already exists; pass overwrite=True to replace it, or choose another name" % expected,
                    request_id=getattr(exc, "request_id", None),
                    path=expected,
                ) from exc
            return SaveStateResult(path=result.path, model_id=self.model_id, seq_id=pending.seq_id)

        return self.service._submit(work)

    def load_state(self, path: str, *, weights_access_token: Optional[str] = None) -> "concurrent.futures.Future[LoadStateResult]":
        """Load a checkpoint's weights onto this model; the optimizer starts fresh (wire: ``"optimizer": false``).

        The service accepts this only as a model's first request (right after
        ``create_lora_training_client``); to resume a run, prefer
        :meth:`ServiceClient.create_training_client_from_state`.

        Args:
            path: ``tinker://<run_id>/weights/<name>`` of a training checkpoint.
            weights_access_token: token for a checkpoint owned by another account.

        Returns:
            A Future of :class:`LoadStateResult`.

        Raises:
            UsageError, TypeError: bad arguments (immediately; nothing is sent).
            RequestFailedError: the server refused or failed the load; a refusal because the model already
                ran other requests names the create-from-state remedy (set on the Future).
            APIStatusError, APIConnectionError, DecodeError: other failures (set on the Future).
        """
        return self._load(path, optimizer=False, weights_access_token=weights_access_token)

    def load_state_with_optimizer(
        self, path: str, *, weights_access_token: Optional[str] = None
    ) -> "concurrent.futures.Future[LoadStateResult]":
        """Load a checkpoint's weights and Adam state onto this model (wire: ``"optimizer": true``).

        Same arguments, result and errors as :meth:`load_state`.
        """
        return self._load(path, optimizer=True, weights_access_token=weights_access_token)

    def _load(
        self, path: str, *, optimizer: bool, weights_access_token: Optional[str]
    ) -> "concurrent.futures.Future[LoadStateResult]":
        parse_path(path)
        token = _token(weights_access_token)

        def make(seq_id: int) -> _wire.LoadWeightsRequest:
            return _wire.LoadWeightsRequest(
                model_id=self.model_id, seq_id=seq_id, path=path, optimizer=optimizer, weights_access_token=token
            )

        pending = self._queue.enqueue("/load_weights", make)

        def work() -> LoadStateResult:
            try:
                self._finish(pending, _wire.LoadWeightsResponse, "LoadWeights")
            except (RequestFailedError, BadRequestError, UnprocessableEntityError) as exc:
                if pending.seq_id == 1 or isinstance(exc, RequestFailedError) and exc.category != "user":
                    raise
                raise RequestFailedError(
                    "the server refused to load %s onto %s: it accepts load_weights only as a model's first request "
                    "(this was request %d); use create_training_client_from_state%s(service, path) to resume instead "
                    "(server said: %s)"
                    % (path, self.model_id, pending.seq_id, "_with_optimizer" if optimizer else "", exc.message),
                    request_id=getattr(exc, "request_id", None),
                    category="user",
                ) from exc
            return LoadStateResult(path=path, model_id=self.model_id, optimizer=optimizer)

        return self.service._submit(work)

    # ------------------------------------------------------------------ training

    def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: str,
        loss_fn_config: Optional[Mapping[str, Union[float, str]]] = None,
    ) -> "concurrent.futures.Future[ForwardBackwardOutput]":
        """Compute the loss of ``data`` and accumulate its gradient on the server, for the next :meth:`optim_step`.

        The body is protobuf (``application/x-protobuf``), as the official SDK sends it. A batch over the
        per-request limits (``Config.fwdbwd_max_chunk_len`` datums, ``fwdbwd_max_chunk_bytes_count``
        estimated bytes) is split as the SDK splits it: several consecutive requests on the model, whose
        results are combined as the SDK combines them (outputs concatenated, metrics reduced by their
        ``:<reduction>`` suffix, e.g. ``loss:sum`` summed).

        Args:
            data: the examples, a non-empty list of :class:`Datum`.
            loss_fn: the loss, one of SDK 0.38's names, e.g. ``"cross_entropy"``.
            loss_fn_config: optional loss parameters, str -> number or str.

        Returns:
            A Future of :class:`ForwardBackwardOutput` (per-datum ``loss_fn_outputs`` such as
            ``logprobs``, and ``metrics`` such as ``metrics["loss:sum"]``).

        Raises:
            UsageError: empty data, a non-Datum entry, an unknown ``loss_fn``, a bad config value, or a
                single datum larger than one request may carry (immediately; nothing is sent).
            RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
        """
        return self._forward_backward(data, loss_fn, loss_fn_config, forward_only=False)

    def forward(
        self,
        data: Sequence[Datum],
        loss_fn: str,
        loss_fn_config: Optional[Mapping[str, Union[float, str]]] = None,
    ) -> "concurrent.futures.Future[ForwardBackwardOutput]":
        """Compute the loss and outputs of ``data`` without accumulating a gradient.

        Same arguments, result and errors as :meth:`forward_backward` (wire: ``forward_only`` set).
        """
        return self._forward_backward(data, loss_fn, loss_fn_config, forward_only=True)

    def _forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: str,
        loss_fn_config: Optional[Mapping[str, Union[float, str]]],
        *,
        forward_only: bool,
    ) -> "concurrent.futures.Future[ForwardBackwardOutput]":
        # The codec loads on the first training call: a script that only saves and loads never pays its import.
        from . import _proto

        cfg = self.service.config
        chunks = _proto.split_data(data, max_len=cfg.fwdbwd_max_chunk_len, max_bytes=cfg.fwdbwd_max_chunk_bytes_count)
        # Everything but model_id and seq_id is encoded now, so bad input fails here. Fields 1 and 2 lead the
        # message (field-number order), so prefixing them when the seq_id is known gives the canonical bytes.
        payloads = [
            _proto.encode_forward_backward_request(
                model_id="", seq_id=0, data=chunk, loss_fn=loss_fn, loss_fn_config=loss_fn_config,
                forward_only=forward_only,
            )
            for chunk in chunks
        ]

        def part(payload: bytes) -> Callable[[int], _ops.EncodedRequest]:
            def make(seq_id: int) -> _ops.EncodedRequest:
                head = _proto.encode("ForwardBackwardRequest", {"model_id": self.model_id, "seq_id": seq_id})
                return _ops.EncodedRequest(head + payload, _proto.CONTENT_TYPE, seq_id)

            return make

        parts = self._queue.enqueue_parts("/forward_backward", [part(p) for p in payloads])
        request_type = "Forward" if forward_only else "ForwardBackward"
        transport = self.service._transport

        #: Results are asked for, and decoded, as protobuf.
        binary: _ops.BinaryResult = (_proto.CONTENT_TYPE, _proto.decode_forward_backward_output)

        def work() -> ForwardBackwardOutput:
            handles = [self._queue.send_through(p) for p in parts]
            results = [
                _ops.poll(
                    transport, handle.request_id, ForwardBackwardOutput, request_type,
                    on_queue_state=self.service.on_queue_state, binary=binary,
                )
                for handle in handles
            ]
            return _proto.combine_forward_backward_outputs(results)

        return self.service._submit(work)

    def optim_step(
        self, optim_params: Optional[Any] = None, *, adam_params: Optional[AdamParams] = None
    ) -> "concurrent.futures.Future[OptimStepResponse]":
        """Apply the accumulated gradient with the run's optimizer, then clear it.

        Args:
            optim_params: :class:`AdamParams` for an AdamW run (positional, as in SDK 0.38), or another
                family's parameters as a dict with a ``type`` key, e.g. ``{"type": "dimuon",
                "learning_rate": 0.01}`` (sent under ``optimizer_params``; dimuon's defaults filled in as
                the SDK's ``DimuonParams`` does). An SDK parameter object works too.
            adam_params: the legacy keyword for :class:`AdamParams`; not together with ``optim_params``.

        Returns:
            A Future of :class:`OptimStepResponse` (its ``metrics``, when the server sends any).

        Raises:
            UsageError: no parameters, both arguments, a negative learning rate or another bad value
                (immediately; nothing is sent).
            RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
        """
        adam, other = _optim_params(optim_params, adam_params)

        def make(seq_id: int) -> _wire.OptimStepRequest:
            return _wire.OptimStepRequest(model_id=self.model_id, seq_id=seq_id, adam_params=adam, optimizer_params=other)

        pending = self._queue.enqueue("/optim_step", make)

        def work() -> OptimStepResponse:
            result = self._finish(pending, _wire.OptimStepResponse, "OptimStep")
            return OptimStepResponse(metrics=dict(result.metrics) if result.metrics is not None else None)

        return self.service._submit(work)

    def save_weights_for_sampler(
        self,
        name: str,
        *,
        ttl_seconds: Optional[int] = None,
        user_metadata: Optional[Dict[str, str]] = None,
    ) -> "concurrent.futures.Future[SaveWeightsForSamplerResult]":
        """Save the run's weights for sampling (no optimizer state) as sampler checkpoint ``name``.

        Args:
            name: checkpoint name, 1-128 characters without ``/``, ``..`` or control characters.
            ttl_seconds: lifetime in seconds, 3600 to 10 years; None keeps it until deleted.
            user_metadata: str -> str metadata stored with the checkpoint.

        Returns:
            A Future of :class:`SaveWeightsForSamplerResult`; its ``path`` is
            ``tinker://<model_id>/sampler_weights/<name>``. It resolves only after the server reports the
            weights committed. A sampler path is not training state: ``load_state*`` and
            ``create_training_client_from_state*`` refuse it.

        Raises:
            UsageError: bad arguments (immediately; nothing is sent).
            RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
        """
        _paths.check_name(name)
        _paths.check_ttl(ttl_seconds)
        metadata = _metadata(user_metadata, values_str=True)

        def make(seq_id: int) -> _wire.SaveWeightsForSamplerRequest:
            return _wire.SaveWeightsForSamplerRequest(
                model_id=self.model_id, path=name, seq_id=seq_id, ttl_seconds=ttl_seconds, user_metadata=metadata
            )

        pending = self._queue.enqueue("/save_weights_for_sampler", make)
        expected = "tinker://%s/sampler_weights/%s" % (self.model_id, name)

        def work() -> SaveWeightsForSamplerResult:
            result = self._finish(pending, _wire.SaveWeightsForSamplerResponse, "SaveWeightsForSampler")
            return SaveWeightsForSamplerResult(path=result.path or expected, model_id=self.model_id, seq_id=pending.seq_id)

        return self.service._submit(work)


    def save_weights_external(
        self, name: str, *, ttl_seconds: Optional[int] = None
    ) -> "concurrent.futures.Future[SaveWeightsExternalResult]":
        """Export the run's current weights as adapter files with signed download URLs (``save_weights_external``).

        Ordered with the model's other requests, like :meth:`save_state`.

        Args:
            name: export name, 1-128 characters without ``/``, ``..`` or control characters.
            ttl_seconds: lifetime in seconds, 3600 to 10 years; None keeps it until deleted.

        Returns:
            A Future of :class:`SaveWeightsExternalResult`; its ``path`` is
            ``tinker://<model_id>/external_weights/<name>``, for ``get_external_weights_urls``.

        Raises:
            UsageError, TypeError: bad arguments (immediately; nothing is sent).
            RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
        """
        _paths.check_name(name, "export name")
        _paths.check_ttl(ttl_seconds)

        def make(seq_id: int) -> _wire.SaveWeightsExternalRequest:
            return _wire.SaveWeightsExternalRequest(model_id=self.model_id, path=name, seq_id=seq_id, ttl_seconds=ttl_seconds)

        pending = self._queue.enqueue("/save_weights_external", make)

        expected = "tinker://%s/external_weights/%s" % (self.model_id, name)

        def work() -> SaveWeightsExternalResult:
            try:
                result = self._finish(pending, _wire.SaveWeightsExternalResponse, "SaveWeightsExternal")
            except (RequestFailedError, APIStatusError) as exc:
                if not (_is_exists_error(exc) and pending.maybe_applied):
                    raise
                # An earlier attempt of this very call was committed before its answer was lost.
                logger.debug("export %s retried; treating 'already exists' as committed", expected)
                return SaveWeightsExternalResult(path=expected, model_id=self.model_id, seq_id=pending.seq_id)
            return SaveWeightsExternalResult(
                path=result.path or expected, size_bytes=result.size_bytes, model_id=self.model_id, seq_id=pending.seq_id
            )

        return self.service._submit(work)


# --------------------------------------------------------------------------- fork
# A fork copies the clients but not their threads, and a lock a parent thread held stays held in the
# child: without a reset, the child's pool waits forever for worker threads that do not exist there.

_CLIENTS: "weakref.WeakSet[ServiceClient]" = weakref.WeakSet()
_registry_lock = threading.Lock()
_fork_hook_installed = False


def _track(service: ServiceClient) -> None:
    global _fork_hook_installed
    with _registry_lock:
        _CLIENTS.add(service)
        if _fork_hook_installed or not hasattr(os, "register_at_fork"):
            return
        _fork_hook_installed = True
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for service in list(_CLIENTS):
        service._after_fork()


# --------------------------------------------------------------------------- internal interface
# What the package's other modules (checkpoints, download, demo) may use of the clients. Nothing
# outside this module reaches into the clients' underscore members.


class Runner:
    """Runs work items of one :class:`ServiceClient` on its pool, over its transport. Internal."""

    __slots__ = ("_service",)

    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    @property
    def config(self) -> Config:
        """The service client's configuration."""
        return self._service.config

    @property
    def transport(self) -> Transport:
        """The service client's HTTP transport (shared by its workers)."""
        return self._service._transport

    def submit(self, fn: Callable[..., T], *args: Any) -> "concurrent.futures.Future[T]":
        """Run ``fn(*args)`` on the service client's pool; raises :class:`UsageError` once it is closed."""
        return self._service._submit(fn, *args)

    def export_external(self, path: str, name: str, ttl_seconds: Optional[int], user_metadata: Dict[str, Any]) -> str:
        """Inside a worker, synchronously: start a run from training checkpoint ``path`` (weights only) and
        export its weights with ``save_weights_external`` as ``name``; return the export's ``tinker://`` path.

        The requests are those of SDK 0.38's ``tinker checkpoint download``: session-addressed
        ``load_weights``, its poll, ``save_weights_external`` (seq_id 1), its poll. No pool task is waited for.
        """
        service = self._service
        tc = service._load_from_state(service._allocate_model_seq(), path, False, None, dict(user_metadata), None)

        def make(seq_id: int) -> _wire.SaveWeightsExternalRequest:
            return _wire.SaveWeightsExternalRequest(model_id=tc.model_id, path=name, seq_id=seq_id, ttl_seconds=ttl_seconds)

        submission = tc._queue.enqueue("/save_weights_external", make)
        result = tc._finish(submission, _wire.SaveWeightsExternalResponse, "SaveWeightsExternal")
        return result.path or "tinker://%s/external_weights/%s" % (tc.model_id, name)


def runner_of(service: Any) -> Runner:
    """Return the :class:`Runner` of ``service``; raise ``TypeError`` if it is not a :class:`ServiceClient`."""
    return Runner(check_service(service))


def check_service(service: Any) -> ServiceClient:
    """Return ``service``, or raise ``TypeError`` if it is not a :class:`ServiceClient`."""
    if not isinstance(service, ServiceClient):
        raise TypeError("expected a tinkex_persist.ServiceClient, got %s" % type(service).__name__)
    return service


def check_training_client(tc: Any) -> TrainingClient:
    """Return ``tc``, or raise ``TypeError`` if it is not a :class:`TrainingClient`."""
    if not isinstance(tc, TrainingClient):
        raise TypeError("expected a tinkex_persist.TrainingClient, got %s" % type(tc).__name__)
    return tc


# --------------------------------------------------------------------------- argument checks


def _metadata(value: Any, *, values_str: bool) -> Optional[Dict[str, Any]]:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UsageError("user_metadata must be a dict with str keys, got %s" % type(value).__name__)
    if values_str and not all(isinstance(v, str) for v in value.values()):
        raise UsageError("user_metadata of a checkpoint must map str to str")
    return dict(value)


def _token(value: Any) -> Optional[str]:
    if value is not None and (not isinstance(value, str) or not value):
        raise UsageError("weights_access_token must be a non-empty str or None")
    return value


def _is_exists_error(exc: BaseException) -> bool:
    if isinstance(exc, ConflictError):
        return True
    text = exc.message if isinstance(exc, RequestFailedError) else ""
    return "already exist" in text.lower()


def _unknown_session(exc: APIStatusError) -> bool:
    """True for an answer saying the server does not know the session (it restarted, or expired it).

    The embedded server answers 404 ``session ... not found``; other servers may say "unknown session"
    or answer 400. A finished session (410) is not unknown: it is not renewed.
    """
    if exc.status_code not in (400, 404):
        return False
    text = (exc.body or "").lower()  # the body only: the message names the route (session_heartbeat)
    return "session" in text and ("not found" in text or "unknown" in text or "does not exist" in text)


def _rejects_session_addressing(exc: APIStatusError) -> bool:
    body = (exc.body or "").lower()
    return isinstance(exc, (BadRequestError, UnprocessableEntityError)) and (
        "session_id" in body or "model_seq_id" in body or "model_id" in body
    )


def _sdk_object(value: Any) -> Any:
    """The dict of an official-SDK (pydantic) parameter object, so ported code can pass one; else ``value``."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, Mapping):
        return dump()
    return value


def _optimizer_config(value: Any) -> Optional[_wire.OptimizerConfig]:
    """The ``optimizer_config`` of ``optimizer=``: None, or a dict (or SDK object) with a str ``type``."""
    if value is None:
        return None
    value = _sdk_object(value)
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str) or not value["type"]:
        raise UsageError('optimizer must be a dict with a "type", e.g. {"type": "adamw"}, got %r' % (value,))
    extra = {k: v for k, v in value.items() if k != "type"}
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError("optimizer settings must be JSON values: %s" % exc) from None
    return _wire.OptimizerConfig(type=value["type"], extra=extra)


#: The fields of SDK 0.38's ``DimuonParams``, in its order, with their defaults (learning_rate is required).
_DIMUON_DEFAULTS = (("learning_rate", None), ("grad_clip_norm", 0.0), ("beta1", 0.9))


def _number(family: str, key: str, value: Any, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError("%s %s must be a finite number, got %r" % (family, key, value))
    if not low <= value < high:
        raise UsageError("%s %s must be in [%g, %g), got %r" % (family, key, low, high, value))
    return float(value)


def _optim_params(optim_params: Any, adam_params: Any) -> Tuple[Optional[_wire.AdamParams], Optional[Dict[str, Any]]]:
    """Split ``optim_step``'s arguments into ``(adam_params, optimizer_params)``, one of them None."""
    if optim_params is not None and adam_params is not None:
        raise UsageError("pass optim_params or the legacy adam_params, not both")
    params = _sdk_object(optim_params if optim_params is not None else adam_params)
    if params is None:
        raise UsageError("optim_step needs its parameters, e.g. optim_step(AdamParams(learning_rate=1e-4))")
    if isinstance(params, Mapping) and "type" not in params:
        try:
            params = AdamParams(**params)
        except TypeError as exc:
            raise UsageError("AdamParams: %s" % exc) from None
    if isinstance(params, AdamParams):
        return _wire.AdamParams(**attrs.asdict(params)), None
    if not isinstance(params, Mapping):
        raise UsageError(
            'optim_params must be AdamParams or a dict with a "type" (another optimizer family), got %s'
            % type(params).__name__
        )
    family = params["type"]
    if not isinstance(family, str) or not family:
        raise UsageError('optim_params "type" must be a non-empty str, got %r' % (family,))
    if family in ("adam", "adamw"):
        raise UsageError("AdamW parameters are passed as AdamParams(...), not as a dict with a type")
    if family == "dimuon":
        unknown = sorted(set(params) - {"type"} - {k for k, _ in _DIMUON_DEFAULTS})
        if unknown:
            raise UsageError("dimuon parameters have no %s" % ", ".join(unknown))
        if "learning_rate" not in params:
            raise UsageError("dimuon parameters need a learning_rate")
        out: Dict[str, Any] = {"type": "dimuon"}
        for key, default in _DIMUON_DEFAULTS:
            value = params.get(key, default)
            out[key] = _number(family, key, value, -math.inf if key == "grad_clip_norm" else 0.0,
                               1.0 if key == "beta1" else math.inf)
        return None, out
    out = dict(params)
    if "learning_rate" in out:
        _number(family, "learning_rate", out["learning_rate"])
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError("%s parameters must be JSON numbers, strings, lists and dicts: %s" % (family, exc)) from None
    return None, out
