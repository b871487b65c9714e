"""The flat public functions: one-line delegations over the client methods, which own the behaviour.

Every function returns a plain ``concurrent.futures.Future``. Bad arguments raise at once (nothing is
sent). ``Future.cancel()`` only works before the work item starts (as in CPython); a started save or
load runs to completion on the server.
"""

import concurrent.futures
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from .client import ServiceClient, TrainingClient, check_service, check_training_client
from .training_types import AdamParams, Datum, ForwardBackwardOutput, OptimStepResponse
from .types import LoadStateResult, SaveStateResult, SaveWeightsExternalResult, SaveWeightsForSamplerResult

__all__ = (
    "create_training_client_from_state",
    "create_training_client_from_state_with_optimizer",
    "forward",
    "forward_backward",
    "get_training_run",
    "list_training_runs",
    "load_state",
    "load_state_with_optimizer",
    "optim_step",
    "save_state",
    "save_weights_external",
    "save_weights_for_sampler",
)


def save_state(
    tc: TrainingClient,
    name: str,
    *,
    ttl_seconds: Optional[int] = None,
    overwrite: bool = False,
    user_metadata: Optional[Dict[str, str]] = None,
) -> "concurrent.futures.Future[SaveStateResult]":
    """Save the run's weights and optimizer state as checkpoint ``name``: :meth:`TrainingClient.save_state`.

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
    return check_training_client(tc).save_state(
        name, ttl_seconds=ttl_seconds, overwrite=overwrite, user_metadata=user_metadata
    )


def load_state(
    tc: TrainingClient, path: str, *, weights_access_token: Optional[str] = None
) -> "concurrent.futures.Future[LoadStateResult]":
    """Load a checkpoint's weights onto ``tc``; the optimizer starts fresh: :meth:`TrainingClient.load_state`.

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
    return check_training_client(tc).load_state(path, weights_access_token=weights_access_token)


def load_state_with_optimizer(
    tc: TrainingClient, path: str, *, weights_access_token: Optional[str] = None
) -> "concurrent.futures.Future[LoadStateResult]":
    """Load a checkpoint's weights and Adam state onto ``tc``: :meth:`TrainingClient.load_state_with_optimizer`.

    Same arguments, result and errors as :func:`load_state`.
    """
    return check_training_client(tc).load_state_with_optimizer(path, weights_access_token=weights_access_token)


def create_training_client_from_state(
    service: ServiceClient,
    path: str,
    *,
    base_model: Optional[str] = None,
    user_metadata: Optional[Dict[str, Any]] = None,
    weights_access_token: Optional[str] = None,
    optimizer: Optional[Any] = None,
) -> "concurrent.futures.Future[TrainingClient]":
    """Start a new training run from a checkpoint's weights; the optimizer starts fresh.

    :meth:`ServiceClient.create_training_client_from_state`: one session-addressed ``load_weights``
    and its poll (2 requests); a server that rejects session addressing gets the older sequence
    ``weights_info``, ``create_model``, ``load_weights``.

    Args:
        service: the service client whose session owns the new run.
        path: ``tinker://<run_id>/weights/<name>`` of a training checkpoint.
        base_model: override of the checkpoint's base model (must be compatible).
        user_metadata: metadata about the new run.
        weights_access_token: token for a checkpoint owned by another account.
        optimizer: the new run's optimizer family, e.g. ``{"type": "adamw"}``; None lets the server choose.

    Returns:
        A Future of the new :class:`TrainingClient`.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    return check_service(service).create_training_client_from_state(
        path, base_model=base_model, user_metadata=user_metadata, weights_access_token=weights_access_token,
        optimizer=optimizer,
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

    :meth:`ServiceClient.create_training_client_from_state_with_optimizer`; same arguments, result and
    errors as :func:`create_training_client_from_state`.
    """
    return check_service(service).create_training_client_from_state_with_optimizer(
        path, base_model=base_model, user_metadata=user_metadata, weights_access_token=weights_access_token
    )


def get_training_run(service: ServiceClient, run_id_or_tinker_path: str) -> "concurrent.futures.Future[Any]":
    """Describe a training run (``last_checkpoint``, ``corrupted``, ...): :func:`tinkex_persist.runs.get_training_run`."""
    from . import runs  # loaded on first use, like the other REST modules

    return runs.get_training_run(service, run_id_or_tinker_path)


def list_training_runs(service: ServiceClient, *, limit: Optional[int] = None) -> "concurrent.futures.Future[Any]":
    """List the user's training runs, every page: :func:`tinkex_persist.runs.list_training_runs`."""
    from . import runs

    return runs.list_training_runs(service, limit=limit)


def forward_backward(
    tc: TrainingClient,
    data: Sequence[Datum],
    loss_fn: str,
    loss_fn_config: Optional[Mapping[str, Union[float, str]]] = None,
) -> "concurrent.futures.Future[ForwardBackwardOutput]":
    """Compute the loss of ``data`` and accumulate its gradient: :meth:`TrainingClient.forward_backward`.

    Args:
        tc: the training client.
        data: the examples, a non-empty list of :class:`Datum`.
        loss_fn: the loss, one of SDK 0.38's names, e.g. ``"cross_entropy"``.
        loss_fn_config: optional loss parameters, str -> number or str.

    Returns:
        A Future of :class:`ForwardBackwardOutput` (``loss_fn_outputs``, ``metrics["loss:sum"]``).

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    return check_training_client(tc).forward_backward(data, loss_fn, loss_fn_config)


def forward(
    tc: TrainingClient,
    data: Sequence[Datum],
    loss_fn: str,
    loss_fn_config: Optional[Mapping[str, Union[float, str]]] = None,
) -> "concurrent.futures.Future[ForwardBackwardOutput]":
    """Compute the loss and outputs of ``data`` without a gradient: :meth:`TrainingClient.forward`.

    Same arguments, result and errors as :func:`forward_backward`.
    """
    return check_training_client(tc).forward(data, loss_fn, loss_fn_config)


def optim_step(
    tc: TrainingClient, optim_params: Optional[Any] = None, *, adam_params: Optional[AdamParams] = None
) -> "concurrent.futures.Future[OptimStepResponse]":
    """Apply the accumulated gradient with the run's optimizer: :meth:`TrainingClient.optim_step`.

    Args:
        tc: the training client.
        optim_params: :class:`AdamParams`, or another family's parameters as a dict with a ``type``
            (``{"type": "dimuon", "learning_rate": 0.01}``).
        adam_params: the legacy keyword for :class:`AdamParams`.

    Returns:
        A Future of :class:`OptimStepResponse`.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    return check_training_client(tc).optim_step(optim_params, adam_params=adam_params)


def save_weights_for_sampler(
    tc: TrainingClient,
    name: str,
    *,
    ttl_seconds: Optional[int] = None,
    user_metadata: Optional[Dict[str, str]] = None,
) -> "concurrent.futures.Future[SaveWeightsForSamplerResult]":
    """Save the run's weights for sampling as ``name``: :meth:`TrainingClient.save_weights_for_sampler`.

    Args:
        tc: the training client to save.
        name: checkpoint name, 1-128 characters without ``/``, ``..`` or control characters.
        ttl_seconds: lifetime in seconds, 3600 to 10 years; None keeps it until deleted.
        user_metadata: str -> str metadata stored with the checkpoint.

    Returns:
        A Future of :class:`SaveWeightsForSamplerResult`; its ``path`` is
        ``tinker://<model_id>/sampler_weights/<name>`` (not loadable as training state).

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    return check_training_client(tc).save_weights_for_sampler(name, ttl_seconds=ttl_seconds, user_metadata=user_metadata)


def save_weights_external(
    tc: TrainingClient, name: str, *, ttl_seconds: Optional[int] = None
) -> "concurrent.futures.Future[SaveWeightsExternalResult]":
    """Export the run's weights as adapter files with signed URLs: :meth:`TrainingClient.save_weights_external`.

    Args:
        tc: the training client whose weights to export (ordered with its other requests).
        name: export name, 1-128 characters without ``/``, ``..`` or control characters.
        ttl_seconds: lifetime in seconds, 3600 to 10 years; None keeps it until deleted.

    Returns:
        A Future of :class:`SaveWeightsExternalResult` (``path`` is ``tinker://<model_id>/external_weights/<name>``).

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        RequestFailedError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    return check_training_client(tc).save_weights_external(name, ttl_seconds=ttl_seconds)
