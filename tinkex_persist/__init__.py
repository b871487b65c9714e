"""tinkex_persist: checkpoint persistence for the Tinker training API, wire-identical to the official SDK."""

import logging

from ._version import __version__

from .api import (  # noqa: E402
    create_training_client_from_state,
    create_training_client_from_state_with_optimizer,
    forward,
    forward_backward,
    load_state,
    load_state_with_optimizer,
    optim_step,
    save_state,
    save_weights_for_sampler,
    save_weights_external,
)
from .checkpointer import Checkpointer, Resume, ResumePlan  # noqa: E402
from .client import ServiceClient, TrainingClient  # noqa: E402
from .config import Config  # noqa: E402
from .exceptions import (  # noqa: E402
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CheckpointExistsError,
    ConfigError,
    ConflictError,
    DecodeError,
    InternalServerError,
    NotFoundError,
    OperationCancelledError,
    PermissionDeniedError,
    PromiseExpiredError,
    RateLimitError,
    RequestFailedError,
    TinkexPersistError,
    UnprocessableEntityError,
    UsageError,
)
from .exceptions import ArchiveChecksumError, CheckpointDeleteError, DownloadError, UnsafeArchiveError  # noqa: E402
from .types import (  # noqa: E402
    CheckpointInfo,
    CheckpointStorageUsage,
    DeleteOutcome,
    DeleteReport,
    DownloadProgress,
    DownloadResult,
    ExternalWeightsUrls,
    LoadStateResult,
    PruneReport,
    RetentionReport,
    SaveStateResult,
    SaveWeightsForSamplerResult,
    SaveWeightsExternalResult,
    StorageUsageItem,
    TrainingRun,
    WeightsInfo,
)
from .training_types import (  # noqa: E402
    AdamParams,
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageChunk,
    ModelInput,
    OptimStepResponse,
    TensorData,
)

__all__ = (
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AdamParams",
    "ArchiveChecksumError",
    "AuthenticationError",
    "BadRequestError",
    "CheckpointDeleteError",
    "CheckpointExistsError",
    "CheckpointInfo",
    "CheckpointStorageUsage",
    "Checkpointer",
    "Config",
    "ConfigError",
    "ConflictError",
    "Datum",
    "DecodeError",
    "DeleteOutcome",
    "DeleteReport",
    "DownloadError",
    "DownloadProgress",
    "DownloadResult",
    "EncodedTextChunk",
    "ExternalWeightsUrls",
    "ForwardBackwardOutput",
    "ImageChunk",
    "InternalServerError",
    "LoadStateResult",
    "ModelInput",
    "NotFoundError",
    "OperationCancelledError",
    "OptimStepResponse",
    "PermissionDeniedError",
    "PromiseExpiredError",
    "PruneReport",
    "RateLimitError",
    "RequestFailedError",
    "Resume",
    "ResumePlan",
    "RetentionReport",
    "SaveStateResult",
    "SaveWeightsExternalResult",
    "SaveWeightsForSamplerResult",
    "ServiceClient",
    "StorageUsageItem",
    "TensorData",
    "TinkexPersistError",
    "TrainingClient",
    "TrainingRun",
    "UnprocessableEntityError",
    "UnsafeArchiveError",
    "UsageError",
    "WeightsInfo",
    "__version__",
    "copy_weights",
    "create_training_client_from_state",
    "create_training_client_from_state_with_optimizer",
    "delete_checkpoints",
    "download_checkpoint",
    "forward",
    "forward_backward",
    "get_checkpoint_storage_usage",
    "get_external_weights_urls",
    "get_training_run",
    "get_weights_info",
    "keep_last",
    "list_checkpoints",
    "list_training_runs",
    "list_user_checkpoints",
    "load_state",
    "load_state_with_optimizer",
    "optim_step",
    "prune",
    "publish_checkpoint",
    "save_state",
    "save_weights_external",
    "save_weights_for_sampler",
    "set_checkpoint_ttl",
    "unpublish_checkpoint",
)

#: Functions served from the modules that pull in tarfile, hashlib and friends, imported on first access.
_LAZY = {
    "copy_weights": "checkpoints",
    "delete_checkpoints": "checkpoints",
    "download_checkpoint": "download",
    "get_checkpoint_storage_usage": "checkpoints",
    "get_external_weights_urls": "checkpoints",
    "get_training_run": "runs",
    "get_weights_info": "checkpoints",
    "keep_last": "checkpoints",
    "list_checkpoints": "checkpoints",
    "list_training_runs": "runs",
    "list_user_checkpoints": "checkpoints",
    "prune": "checkpoints",
    "publish_checkpoint": "checkpoints",
    "set_checkpoint_ttl": "checkpoints",
    "unpublish_checkpoint": "checkpoints",
}


def __getattr__(name: str) -> object:  # PEP 562
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    import importlib

    return getattr(importlib.import_module("." + module, __name__), name)


logging.getLogger(__name__).addHandler(logging.NullHandler())
