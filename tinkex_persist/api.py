"""The flat public functions. Each validates its arguments at once, then runs one work item on the pool.

Every function returns a plain ``concurrent.futures.Future``. ``Future.cancel()`` only works before the
work item starts (as in CPython); a started save or load runs to completion on the server.
"""

import concurrent.futures
import logging
from typing import Any, Dict, Optional

from . import _ops, _paths, _wire
from ._paths import parse_path
from .client import ServiceClient, TrainingClient
from .exceptions import (
    APIStatusError,
    BadRequestError,
    CheckpointExistsError,
    ConflictError,
    RequestFailedError,
    UnprocessableEntityError,
    UsageError,
)
from .types import LoadStateResult, SaveStateResult

logger = logging.getLogger(__name__)

__all__ = (
    "create_training_client_from_state",
    "create_training_client_from_state_with_optimizer",
    "load_state",
    "load_state_with_optimizer",
    "save_state",
)


def _training_client(tc: Any) -> TrainingClient:
    if not isinstance(tc, TrainingClient):
        raise TypeError("expected a tinkex_persist.TrainingClient, got %s" % type(tc).__name__)
    return tc


def _service_client(service: Any) -> ServiceClient:
    if not isinstance(service, ServiceClient):
        raise TypeError("expected a tinkex_persist.ServiceClient, got %s" % type(service).__name__)
    return service


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


def save_state(
    tc: TrainingClient,
    name: str,
    *,
    ttl_seconds: Optional[int] = None,
    overwrite: bool = False,
    user_metadata: Optional[Dict[str, str]] = None,
) -> "concurrent.futures.Future[SaveStateResult]":
    """Save the run's weights and optimizer state as checkpoint ``name``.

    Args:
        tc: the training client to save.
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
    tc = _training_client(tc)
    _paths.check_name(name)
    _paths.check_ttl(ttl_seconds)
    if not isinstance(overwrite, bool):
        raise UsageError("overwrite must be a bool, got %r" % (overwrite,))
    metadata = _metadata(user_metadata, values_str=True)

    def make(seq_id: int) -> _wire.SaveWeightsRequest:
        return _wire.SaveWeightsRequest(
            model_id=tc.model_id,
            path=name,
            seq_id=seq_id,
            ttl_seconds=ttl_seconds,
            overwrite=overwrite,
            user_metadata=metadata,
        )

    pending = tc._enqueue("/save_weights", make)
    expected = "tinker://%s/weights/%s" % (tc.model_id, name)

    def work() -> SaveStateResult:
        try:
            _, result = tc._finish(pending, _wire.SaveWeightsResponse, "SaveWeights")
        except (RequestFailedError, APIStatusError) as exc:
            if not _is_exists_error(exc) or overwrite:
                raise
            if pending.attempts:
                # An earlier attempt of this very call may have been committed before its answer was
                # lost; the name existing now is that save.
                logger.debug("save of %s retried after %s; treating 'already exists' as committed", expected, pending.attempts)
                return SaveStateResult(path=expected, model_id=tc.model_id, seq_id=pending.seq_id)
            raise CheckpointExistsError(
                "checkpoint %s already exists; pass overwrite=True to replace it, or choose another name" % expected,
                request_id=getattr(exc, "request_id", None),
                path=expected,
            ) from exc
        return SaveStateResult(path=result.path, model_id=tc.model_id, seq_id=pending.seq_id)

    return tc.service._submit(work)


def _load(
    tc: TrainingClient, path: str, *, optimizer: bool, weights_access_token: Optional[str]
) -> "concurrent.futures.Future[LoadStateResult]":
    tc = _training_client(tc)
    parse_path(path)
    token = _token(weights_access_token)

    def make(seq_id: int) -> _wire.LoadWeightsRequest:
        return _wire.LoadWeightsRequest(
            model_id=tc.model_id, seq_id=seq_id, path=path, optimizer=optimizer, weights_access_token=token
        )

    pending = tc._enqueue("/load_weights", make)

    def work() -> LoadStateResult:
        try:
            tc._finish(pending, _wire.LoadWeightsResponse, "LoadWeights")
        except (RequestFailedError, BadRequestError, UnprocessableEntityError) as exc:
            if pending.seq_id == 1 or isinstance(exc, RequestFailedError) and exc.category != "user":
                raise
            raise RequestFailedError(
                "the server refused to load %s onto %s: it accepts load_weights only as a model's first request "
                "(this was request %d); use create_training_client_from_state%s(service, path) to resume instead "
                "(server said: %s)"
                % (path, tc.model_id, pending.seq_id, "_with_optimizer" if optimizer else "", exc.message),
                request_id=getattr(exc, "request_id", None),
                category="user",
            ) from exc
        return LoadStateResult(path=path, model_id=tc.model_id, optimizer=optimizer)

    return tc.service._submit(work)


def load_state(
    tc: TrainingClient, path: str, *, weights_access_token: Optional[str] = None
) -> "concurrent.futures.Future[LoadStateResult]":
    """Load a checkpoint's weights onto ``tc``; the optimizer starts fresh (wire: ``"optimizer": false``).

    The service accepts this only as a model's first request (right after
    ``create_lora_training_client``); to resume a run, prefer :func:`create_training_client_from_state`.

    Args:
        tc: the training client to load into.
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
    return _load(tc, path, optimizer=False, weights_access_token=weights_access_token)


def load_state_with_optimizer(
    tc: TrainingClient, path: str, *, weights_access_token: Optional[str] = None
) -> "concurrent.futures.Future[LoadStateResult]":
    """Load a checkpoint's weights and Adam state onto ``tc`` (wire: ``"optimizer": true``).

    Same arguments, result and errors as :func:`load_state`.
    """
    return _load(tc, path, optimizer=True, weights_access_token=weights_access_token)


def _rejects_session_addressing(exc: APIStatusError) -> bool:
    body = (exc.body or "").lower()
    return isinstance(exc, (BadRequestError, UnprocessableEntityError)) and (
        "session_id" in body or "model_seq_id" in body or "model_id" in body
    )


def _from_state(
    service: ServiceClient,
    path: str,
    *,
    optimizer: bool,
    base_model: Optional[str],
    user_metadata: Optional[Dict[str, Any]],
    weights_access_token: Optional[str],
) -> "concurrent.futures.Future[TrainingClient]":
    service = _service_client(service)
    parse_path(path)
    if base_model is not None and (not isinstance(base_model, str) or not base_model):
        raise UsageError("base_model must be a non-empty str or None")
    metadata = _metadata(user_metadata, values_str=False)
    token = _token(weights_access_token)
    model_seq_id = service._allocate_model_seq()
    transport = service._transport

    def work() -> TrainingClient:
        session_id = service._ensure_session()
        request = _wire.LoadWeightsRequest(
            session_id=session_id,
            model_seq_id=model_seq_id,
            base_model=base_model,
            user_metadata=metadata,
            path=path,
            optimizer=optimizer,
            weights_access_token=token,
        )
        try:
            handle = _ops.submit(transport, "/load_weights", request)
        except APIStatusError as exc:
            if not _rejects_session_addressing(exc):
                raise
            return _from_state_legacy(service, session_id, model_seq_id, path, optimizer, base_model, metadata, token)
        result = _ops.poll(transport, handle.request_id, _wire.LoadWeightsResponse, "LoadWeights",
                           on_queue_state=service.on_queue_state)
        model_id = "%s:train:%d" % (session_id, model_seq_id)
        if result.model_id and result.model_id != model_id:
            logger.debug("server named the new model %s (expected %s)", result.model_id, model_id)
            model_id = result.model_id
        return TrainingClient(service, model_id, base_model=base_model, next_seq_id=1)

    return service._submit(work)


def _from_state_legacy(
    service: ServiceClient,
    session_id: str,
    model_seq_id: int,
    path: str,
    optimizer: bool,
    base_model: Optional[str],
    metadata: Optional[Dict[str, Any]],
    token: Optional[str],
) -> TrainingClient:
    """Older servers: weights_info, create_model, then load_weights as the model's first request."""
    transport = service._transport
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
    )
    model_id = _ops.create_model(transport, create, service.on_queue_state)
    load = _wire.LoadWeightsRequest(model_id=model_id, seq_id=1, path=path, optimizer=optimizer, weights_access_token=token)
    handle = _ops.submit(transport, "/load_weights", load)
    _ops.poll(transport, handle.request_id, _wire.LoadWeightsResponse, "LoadWeights", on_queue_state=service.on_queue_state)
    return TrainingClient(service, model_id, base_model=base_model or info.base_model, next_seq_id=2)


def create_training_client_from_state(
    service: ServiceClient,
    path: str,
    *,
    base_model: Optional[str] = None,
    user_metadata: Optional[Dict[str, Any]] = None,
    weights_access_token: Optional[str] = None,
) -> "concurrent.futures.Future[TrainingClient]":
    """Start a new training run from a checkpoint's weights; the optimizer starts fresh.

    Sends one session-addressed ``load_weights`` and polls it (2 requests). A server that rejects
    session addressing gets the older sequence: ``weights_info``, ``create_model``, ``load_weights``.

    Args:
        service: the service client whose session owns the new run.
        path: ``tinker://<run_id>/weights/<name>`` of a training checkpoint.
        base_model: override of the checkpoint's base model (must be compatible).
        user_metadata: metadata about the new run.
        weights_access_token: token for a checkpoint owned by another account.

    Returns:
        A Future of the new :class:`TrainingClient`.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    return _from_state(
        service,
        path,
        optimizer=False,
        base_model=base_model,
        user_metadata=user_metadata,
        weights_access_token=weights_access_token,
    )


def create_training_client_from_state_with_optimizer(
    service: ServiceClient,
    path: str,
    *,
    base_model: Optional[str] = None,
    user_metadata: Optional[Dict[str, Any]] = None,
    weights_access_token: Optional[str] = None,
) -> "concurrent.futures.Future[TrainingClient]":
    """Resume a training run from a checkpoint: weights and Adam state. The exact-resume path.

    Same arguments, result and errors as :func:`create_training_client_from_state`.
    """
    return _from_state(
        service,
        path,
        optimizer=True,
        base_model=base_model,
        user_metadata=user_metadata,
        weights_access_token=weights_access_token,
    )
