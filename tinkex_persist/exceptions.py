"""The whole error hierarchy of tinkex_persist.

Status-error names match the official Tinker SDK's, so ported ``except`` clauses keep working.
Messages are one line and never contain headers, API keys or access tokens.
"""

from typing import Any, Dict, List, Optional, Type

__all__ = (
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "ArchiveChecksumError",
    "AuthenticationError",
    "BadRequestError",
    "CheckpointDeleteError",
    "CheckpointExistsError",
    "ConfigError",
    "ConflictError",
    "DecodeError",
    "DownloadError",
    "InternalServerError",
    "NotFoundError",
    "OperationCancelledError",
    "PermissionDeniedError",
    "PromiseExpiredError",
    "RateLimitError",
    "RequestFailedError",
    "RootInUseError",
    "TinkexPersistError",
    "UnprocessableEntityError",
    "UnsafeArchiveError",
    "UsageError",
)

#: Longest excerpt of a response body kept on an exception.
MAX_BODY_CHARS = 2000


def _clip(body: Optional[str]) -> Optional[str]:
    if body is None:
        return None
    return body if len(body) <= MAX_BODY_CHARS else body[:MAX_BODY_CHARS] + "...[truncated]"


class TinkexPersistError(Exception):
    """Base class of every error raised by tinkex_persist."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # type: ignore[override]
        return (self.__class__, (self.message,), self.__dict__.copy())


class UsageError(TinkexPersistError, ValueError):
    """A bad argument, detected before any request was sent."""


class ConfigError(TinkexPersistError, ValueError):
    """Bad or missing configuration: base URL, API key, an environment value."""


class APIConnectionError(TinkexPersistError):
    """No response was received (refused, reset, DNS, TLS); ``__cause__`` holds the low-level error."""

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class APITimeoutError(APIConnectionError):
    """A request, or the polling of a server-side future, ran out of time."""


class OperationCancelledError(APIConnectionError):
    """The client stopped waiting: Ctrl-C, ``ServiceClient.close(cancel=True)`` or interpreter exit.

    A request the server had already accepted (a save, say) may still complete there; it is not
    reported as done. A cancelled download keeps its partial file (``partial_path``) for a resume.
    """

    def __init__(self, message: str, *, method: str = "", url: str = "", partial_path: Optional[str] = None) -> None:
        super().__init__(message, method=method, url=url)
        self.partial_path = partial_path


class APIStatusError(TinkexPersistError):
    """The server answered with an error status (4xx or 5xx)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 0,
        method: str = "",
        url: str = "",
        request_id: Optional[str] = None,
        body: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.method = method
        self.url = url
        self.request_id = request_id
        self.body = _clip(body)


class BadRequestError(APIStatusError):
    """HTTP 400."""


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing or wrong."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403."""


class NotFoundError(APIStatusError):
    """HTTP 404."""


class ConflictError(APIStatusError):
    """HTTP 409."""


class UnprocessableEntityError(APIStatusError):
    """HTTP 422."""


class RateLimitError(APIStatusError):
    """HTTP 429."""


class InternalServerError(APIStatusError):
    """HTTP 500 and above."""


class PromiseExpiredError(APIStatusError):
    """HTTP 410 from ``retrieve_future``: the server no longer holds the result of that request."""


#: Status code -> exception class; anything else >= 500 is InternalServerError, other 4xx APIStatusError.
STATUS_ERRORS: Dict[int, Type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: PromiseExpiredError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> Type[APIStatusError]:
    """Return the exception class for an HTTP error status."""
    if status_code >= 500:
        return InternalServerError
    return STATUS_ERRORS.get(status_code, APIStatusError)


class DecodeError(TinkexPersistError):
    """A response body was not JSON, or did not match the expected schema."""

    def __init__(self, message: str, *, errors: Optional[List[str]] = None, body: Optional[str] = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])
        self.body = _clip(body)


class RequestFailedError(TinkexPersistError):
    """The server accepted a request and later reported that it failed.

    ``category`` is the server's word for whose fault it was: ``"user"``, ``"server"`` or ``"unknown"``.
    """

    def __init__(self, message: str, *, request_id: Optional[str] = None, category: str = "unknown") -> None:
        super().__init__(message)
        self.request_id = request_id
        self.category = category


class CheckpointExistsError(RequestFailedError):
    """``save_state`` with ``overwrite=False`` named a checkpoint that already exists."""

    def __init__(
        self, message: str, *, request_id: Optional[str] = None, category: str = "user", path: str = ""
    ) -> None:
        super().__init__(message, request_id=request_id, category=category)
        self.path = path


class CheckpointDeleteError(TinkexPersistError):
    """Some deletes of a batch failed; ``report`` holds the outcome of every path, including the successes."""

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class DownloadError(TinkexPersistError):
    """A checkpoint archive could not be downloaded or installed; ``partial_path`` is kept for a resume."""

    def __init__(self, message: str, *, partial_path: Optional[str] = None) -> None:
        super().__init__(message)
        self.partial_path = partial_path


class ArchiveChecksumError(DownloadError):
    """The downloaded archive's size or sha256 differs from what the server announced. Nothing was extracted."""


class UnsafeArchiveError(DownloadError):
    """The archive holds a member that could escape the destination (absolute path, ``..``, link, device)."""


class RootInUseError(TinkexPersistError):
    """A local server's checkpoint root is already served by another server (in this or another process)."""

    def __init__(self, message: str, *, root: str = "") -> None:
        super().__init__(message)
        self.root = root
