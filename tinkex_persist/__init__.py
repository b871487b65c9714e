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
from .types import LoadStateResult, SaveStateResult, WeightsInfo  # noqa: E402

__all__ = (
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CheckpointExistsError",
    "Config",
    "ConfigError",
    "ConflictError",
    "DecodeError",
    "InternalServerError",
    "LoadStateResult",
    "NotFoundError",
    "PermissionDeniedError",
    "PromiseExpiredError",
    "RateLimitError",
    "RequestFailedError",
    "SaveStateResult",
    "ServiceClient",
    "TinkexPersistError",
    "TrainingClient",
    "UnprocessableEntityError",
    "UsageError",
    "WeightsInfo",
    "__version__",
    "create_training_client_from_state",
    "create_training_client_from_state_with_optimizer",
    "load_state",
    "load_state_with_optimizer",
    "save_state",
)

logging.getLogger(__name__).addHandler(logging.NullHandler())
