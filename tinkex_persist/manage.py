"""Checkpoint management and download under one name, kept for code written against earlier releases.

The functions live in :mod:`tinkex_persist.checkpoints` and :mod:`tinkex_persist.download`, the
result types in :mod:`tinkex_persist.types`; all public ones are also served by ``tinkex_persist``.
"""

from ._archive import safe_extract
from .checkpoints import (
    DEFAULT_DELETE_CONCURRENCY,
    LIST_PAGE_SIZE,
    delete_checkpoints,
    get_weights_info,
    keep_last,
    list_checkpoints,
    set_checkpoint_ttl,
)
from .download import CHUNK_SIZE, DEFAULT_ARCHIVE_WAIT, DEFAULT_DOWNLOAD_RESUMES, download_checkpoint
from .exceptions import ArchiveChecksumError, CheckpointDeleteError, DownloadError, UnsafeArchiveError
from .types import CheckpointInfo, DeleteOutcome, DeleteReport, DownloadProgress, DownloadResult, RetentionReport

__all__ = (
    "CHUNK_SIZE",
    "DEFAULT_ARCHIVE_WAIT",
    "DEFAULT_DELETE_CONCURRENCY",
    "DEFAULT_DOWNLOAD_RESUMES",
    "LIST_PAGE_SIZE",
    "ArchiveChecksumError",
    "CheckpointDeleteError",
    "CheckpointInfo",
    "DeleteOutcome",
    "DeleteReport",
    "DownloadError",
    "DownloadProgress",
    "DownloadResult",
    "RetentionReport",
    "UnsafeArchiveError",
    "delete_checkpoints",
    "download_checkpoint",
    "get_weights_info",
    "keep_last",
    "list_checkpoints",
    "safe_extract",
    "set_checkpoint_ttl",
)
