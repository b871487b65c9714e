"""tinkex_persist: checkpoint persistence for the Tinker training API, wire-identical to the official SDK."""

import logging

__version__ = "0.1.0"

from .api import (  # noqa: E402
    create_training_client_from_state,
    create_training_client_from_state_with_optimizer,
    load_state,
    load_state_with_optimizer,
    save_state,
)
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
    PermissionDeniedError,
    PromiseExpiredError,
    RateLimitError,
    RequestFailedError,
    TinkexPersistError,
    UnprocessableEntityError,
    UsageError,
)
from .exceptions import ArchiveChecksumError, CheckpointDeleteError, DownloadError, UnsafeArchiveError  # noqa: E402
from .types import LoadStateResult, SaveStateResult, WeightsInfo  # noqa: E402

__all__ = (
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "ArchiveChecksumError",
    "AuthenticationError",
    "BadRequestError",
    "CheckpointDeleteError",
    "CheckpointExistsError",
    "CheckpointInfo",
    "Config",
    "ConfigError",
    "ConflictError",
    "DecodeError",
    "DeleteOutcome",
    "DeleteReport",
    "DownloadError",
    "DownloadProgress",
    "DownloadResult",
    "InternalServerError",
    "LoadStateResult",
    "NotFoundError",
    "PermissionDeniedError",
    "PromiseExpiredError",
    "RateLimitError",
    "RequestFailedError",
    "RetentionReport",
    "SaveStateResult",
    "ServiceClient",
    "TinkexPersistError",
    "TrainingClient",
    "UnprocessableEntityError",
    "UnsafeArchiveError",
    "UsageError",
    "WeightsInfo",
    "__version__",
    "create_training_client_from_state",
    "create_training_client_from_state_with_optimizer",
    "delete_checkpoints",
    "download_checkpoint",
    "get_weights_info",
    "keep_last",
    "list_checkpoints",
    "load_state",
    "load_state_with_optimizer",
    "save_state",
    "set_checkpoint_ttl",
)

#: Names served from ``tinkex_persist.manage``, imported on first access (it pulls in tarfile and friends).
_LAZY = frozenset(
    {
        "CheckpointInfo",
        "DeleteOutcome",
        "DeleteReport",
        "DownloadProgress",
        "DownloadResult",
        "RetentionReport",
        "delete_checkpoints",
        "download_checkpoint",
        "get_weights_info",
        "keep_last",
        "list_checkpoints",
        "set_checkpoint_ttl",
    }
)


def __getattr__(name: str):  # PEP 562
    if name in _LAZY:
        from . import manage

        return getattr(manage, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


logging.getLogger(__name__).addHandler(logging.NullHandler())
