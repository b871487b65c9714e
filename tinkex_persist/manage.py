"""Checkpoint management: describe, list, delete, retention, TTL, and resumable verified archive download.

Every public function validates its arguments at once (``UsageError``/``TypeError``, nothing sent), then
runs one work item on the service client's pool and returns a plain ``concurrent.futures.Future``.
"""

import concurrent.futures
import datetime
import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urljoin, urlsplit

import attrs
import requests

from . import _ops, _paths, _wire
from ._converter import dumps
from ._paths import TinkerPath, parse_path
from ._transport import USER_AGENT, Deadline, _retry_after, _Transport, status_error
from .client import ServiceClient
from .config import is_loopback_host
from .exceptions import (
    APIConnectionError,
    APITimeoutError,
    ArchiveChecksumError,
    CheckpointDeleteError,
    DownloadError,
    NotFoundError,
    TinkexPersistError,
    UnsafeArchiveError,
    UsageError,
)
from .types import WeightsInfo

logger = logging.getLogger(__name__)

__all__ = (
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

#: Checkpoints requested per page of the user-wide listing (the official SDK's default).
LIST_PAGE_SIZE = 100
#: Deletes in flight at once by default.
DEFAULT_DELETE_CONCURRENCY = 4
#: Longest time in seconds ``download_checkpoint`` waits for the server to build an archive (503 answers).
DEFAULT_ARCHIVE_WAIT = 600.0
#: Longest single wait between two archive-readiness checks, in seconds.
ARCHIVE_POLL_MAX = 30.0
#: Times a download that broke off is resumed with a Range request inside one call.
DEFAULT_DOWNLOAD_RESUMES = 3
#: Bytes read from the network per chunk.
CHUNK_SIZE = 64 * 1024
#: Header carrying the archive's sha256 (hex) on the signed URL's answer.
SHA256_HEADERS = ("X-Checkpoint-Sha256", "X-Archive-Sha256", "X-Content-Sha256", "X-Checksum-Sha256")
#: Header carrying the archive's size in bytes, when the server sends it.
SIZE_HEADERS = ("X-Checkpoint-Size", "X-Archive-Size")

_REDIRECTS = (301, 302, 303, 307, 308)
_NOT_READY = (429, 502, 503, 504)
_SIGNED_URL_EXPIRED = (401, 403, 404, 410)


# --------------------------------------------------------------------------- errors


# --------------------------------------------------------------------------- result types


def _parse_time(value: Any) -> Optional[datetime.datetime]:
    """Parse the service's timestamps (RFC 3339, ``Z`` or offset, any fraction length) as aware UTC datetimes."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        dt = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc)
    else:
        text = str(value).strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return datetime.datetime.fromtimestamp(float(text), tz=datetime.timezone.utc)
        m = re.fullmatch(
            r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?)?\s*(Z|z|[+-]\d{2}:?\d{2})?", text
        )
        if not m:
            raise ValueError("not an ISO 8601 time: %r" % text[:64])
        date, clock, fraction, zone = m.groups()
        iso = date + "T" + (clock or "00:00")
        if fraction:
            iso += "." + (fraction + "000000")[:6]  # Python 3.9's fromisoformat takes only 3 or 6 digits
        if zone and zone not in ("Z", "z"):
            iso += zone if ":" in zone else zone[:3] + ":" + zone[3:]
        dt = datetime.datetime.fromisoformat(iso)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)  # the service speaks UTC
    return dt.astimezone(datetime.timezone.utc)


def _format_time(value: Optional[datetime.datetime]) -> Optional[str]:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@attrs.frozen(kw_only=True)
class CheckpointInfo:
    """One stored checkpoint, as listed by the service. Field names follow the official SDK's ``Checkpoint``."""

    checkpoint_id: str
    """``weights/<name>`` or ``sampler_weights/<name>``."""
    checkpoint_type: str
    """``training``, ``sampler`` or ``external``."""
    time: datetime.datetime
    """Creation time, timezone-aware UTC."""
    tinker_path: str
    """``tinker://<run_id>/<kind>/<name>``: the handle every other function takes."""
    size_bytes: Optional[int] = None
    """Stored size in bytes; ``None`` if the server does not say."""
    expires_at: Optional[datetime.datetime] = None
    """When the service deletes it (aware UTC); ``None`` means never."""
    public: bool = False
    user_metadata: Optional[Dict[str, str]] = None

    @property
    def run_id(self) -> str:
        """The training run (model id) the checkpoint belongs to."""
        return self.tinker_path[len(_paths.SCHEME) :].split("/", 1)[0]

    @property
    def name(self) -> str:
        """The checkpoint's name within its run."""
        return self.checkpoint_id.split("/", 1)[-1]

    def to_json(self) -> Dict[str, Any]:
        """Return a JSON-ready dict; times are RFC 3339 UTC strings."""
        return {
            "checkpoint_id": self.checkpoint_id,
            "checkpoint_type": self.checkpoint_type,
            "time": _format_time(self.time),
            "tinker_path": self.tinker_path,
            "size_bytes": self.size_bytes,
            "expires_at": _format_time(self.expires_at),
            "public": self.public,
            "user_metadata": self.user_metadata,
        }

    @classmethod
    def _from_wire(cls, cp: _wire.Checkpoint) -> "CheckpointInfo":
        return cls(
            checkpoint_id=cp.checkpoint_id,
            checkpoint_type=cp.checkpoint_type,
            time=_parse_time(cp.time),
            tinker_path=cp.tinker_path,
            size_bytes=cp.size_bytes,
            expires_at=_parse_time(cp.expires_at),
            public=cp.public,
            user_metadata=cp.user_metadata,
        )


@attrs.frozen(kw_only=True)
class DeleteOutcome:
    """What happened to one path of a delete batch.

    ``status`` is ``deleted``, ``would_delete`` (dry run), ``not_found`` or ``failed``. ``error`` holds
    the exception of a failure (``not_found`` included) and is ``None`` otherwise.
    """

    path: str
    status: str
    error: Optional[BaseException] = attrs.field(default=None, eq=False)
    size_bytes: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.status in ("deleted", "would_delete")

    def to_json(self) -> Dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "error": None if self.error is None else str(self.error),
            "size_bytes": self.size_bytes,
        }


@attrs.frozen(kw_only=True)
class DeleteReport:
    """Outcome of :func:`delete_checkpoints`, one entry per requested path, in request order."""

    outcomes: Tuple[DeleteOutcome, ...]
    dry_run: bool

    @property
    def ok(self) -> bool:
        """True when every path was deleted (or, in a dry run, would be)."""
        return all(o.ok for o in self.outcomes)

    @property
    def deleted(self) -> List[str]:
        """Paths deleted (or that a dry run would delete)."""
        return [o.path for o in self.outcomes if o.ok]

    @property
    def failed(self) -> List[DeleteOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def to_json(self) -> Dict[str, Any]:
        return {"dry_run": self.dry_run, "results": [o.to_json() for o in self.outcomes]}


@attrs.frozen(kw_only=True)
class RetentionReport:
    """Outcome of :func:`keep_last`: the training checkpoints kept (newest first) and the deletes."""

    run_id: str
    kept: Tuple[CheckpointInfo, ...]
    deletes: DeleteReport

    @property
    def dry_run(self) -> bool:
        return self.deletes.dry_run

    def to_json(self) -> Dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "kept": [c.to_json() for c in self.kept],
            "results": [o.to_json() for o in self.deletes.outcomes],
        }


@attrs.frozen(kw_only=True)
class DownloadProgress:
    """A progress report of :func:`download_checkpoint`, passed to its ``progress`` callback.

    ``phase`` is ``waiting`` (the archive is being built; ``waited`` seconds so far), ``downloading``,
    ``verifying``, ``extracting`` or ``done``. ``bytes_total`` is ``None`` until the server says.
    """

    phase: str
    bytes_done: int = 0
    bytes_total: Optional[int] = None
    resumed_from: int = 0
    elapsed: float = 0.0
    waited: float = 0.0


@attrs.frozen(kw_only=True)
class DownloadResult:
    """A downloaded, verified and extracted checkpoint archive."""

    tinker_path: str
    directory: str
    """Where the archive was extracted: ``<dest_dir>/<run_id>/<kind>/<name>``."""
    archive_bytes: int
    """Size of the whole archive."""
    bytes_fetched: int
    """Bytes received by this call (less than ``archive_bytes`` after a resume)."""
    resumed_from: int
    """Offset the first transfer of this call started at (0 for a fresh download)."""
    range_requests: int
    """Transfers of this call that continued a partial file with HTTP Range (0 when nothing broke off)."""
    sha256: str
    """sha256 (hex) of the archive."""
    sha256_verified: bool
    """True when the server announced a sha256 and it matched."""
    files: Tuple[str, ...]
    """Relative paths of the regular files extracted."""
    archive_path: Optional[str] = None
    """The kept archive (``keep_archive=True``), else ``None``."""

    def to_json(self) -> Dict[str, Any]:
        return {
            "tinker_path": self.tinker_path,
            "directory": self.directory,
            "archive_bytes": self.archive_bytes,
            "bytes_fetched": self.bytes_fetched,
            "resumed_from": self.resumed_from,
            "range_requests": self.range_requests,
            "sha256": self.sha256,
            "sha256_verified": self.sha256_verified,
            "files": list(self.files),
            "archive_path": self.archive_path,
        }


# --------------------------------------------------------------------------- argument checks


def _service_client(service: Any) -> ServiceClient:
    if not isinstance(service, ServiceClient):
        raise TypeError("expected a tinkex_persist.ServiceClient, got %s" % type(service).__name__)
    return service


def _check_positive_int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError("%s must be an int >= %d, got %r" % (what, minimum, value))
    return value


def _checkpoint_api_path(tp: TinkerPath) -> str:
    # The run id goes in raw (colons unescaped) and the checkpoint id keeps its slash, as the official SDK sends.
    return "/training_runs/%s/checkpoints/%s" % (tp.run_id, tp.checkpoint_id)


# --------------------------------------------------------------------------- plain operations (no threads)


def _weights_info(transport: _Transport, path: str) -> WeightsInfo:
    resp = _ops.weights_info(transport, path)
    return WeightsInfo(
        base_model=resp.base_model,
        is_lora=resp.is_lora,
        lora_rank=resp.lora_rank,
        train_unembed=resp.train_unembed,
        train_mlp=resp.train_mlp,
        train_attn=resp.train_attn,
        optimizer=resp.optimizer_config.type if resp.optimizer_config is not None else None,
    )


def _list(
    transport: _Transport, run_id: Optional[str], limit: Optional[int], page_size: int = LIST_PAGE_SIZE
) -> List[CheckpointInfo]:
    if run_id is not None:
        resp = _ops.call(transport, "GET", "/training_runs/%s/checkpoints" % run_id, None, _wire.CheckpointsListResponse)
        found = [CheckpointInfo._from_wire(c) for c in resp.checkpoints]
        return found if limit is None else found[:limit]
    found = []
    offset = 0
    while True:
        page = page_size if limit is None else min(page_size, limit - len(found))
        resp = _ops.call(
            transport, "GET", "/checkpoints?limit=%d&offset=%d" % (page, offset), None, _wire.CheckpointsListResponse
        )
        found.extend(CheckpointInfo._from_wire(c) for c in resp.checkpoints)
        offset += len(resp.checkpoints)
        if (
            not resp.checkpoints
            or resp.cursor is None
            or offset >= resp.cursor.total_count
            or (limit is not None and len(found) >= limit)
        ):
            return found if limit is None else found[:limit]


def _delete_one(transport: _Transport, tp: TinkerPath, size: Optional[int]) -> DeleteOutcome:
    path = str(tp)
    attempts: List[str] = []
    try:
        transport.request("DELETE", _ops.API + _checkpoint_api_path(tp), attempts=attempts)
    except NotFoundError as exc:
        if attempts:
            # An earlier attempt whose answer was lost deleted it: the 404 is this call's own work.
            logger.debug("deleted %s (404 after %s)", path, attempts)
            return DeleteOutcome(path=path, status="deleted", size_bytes=size)
        return DeleteOutcome(path=path, status="not_found", error=exc, size_bytes=size)
    except TinkexPersistError as exc:
        return DeleteOutcome(path=path, status="failed", error=exc, size_bytes=size)
    logger.debug("deleted %s", path)
    return DeleteOutcome(path=path, status="deleted", size_bytes=size)


def _delete_all(
    service: ServiceClient,
    parsed: Sequence[TinkerPath],
    dry_run: bool,
    concurrency: int,
    sizes: Optional[Dict[str, Optional[int]]] = None,
) -> DeleteReport:
    transport = service._transport
    if sizes is None:
        # One listing per run: a dry run names the paths that do not exist, and every outcome gets its size.
        sizes = {}
        missing = set()
        for run_id in sorted({tp.run_id for tp in parsed}):
            try:
                listed = {c.tinker_path: c.size_bytes for c in _list(transport, run_id, None)}
            except NotFoundError:
                listed = {}
            sizes.update(listed)
            missing.update(str(tp) for tp in parsed if tp.run_id == run_id and str(tp) not in listed)
    else:
        missing = {str(tp) for tp in parsed if str(tp) not in sizes}
    if dry_run:
        outcomes = tuple(
            DeleteOutcome(
                path=str(tp),
                status="not_found",
                error=NotFoundError("checkpoint %s does not exist" % (tp,), status_code=404),
            )
            if str(tp) in missing
            else DeleteOutcome(path=str(tp), status="would_delete", size_bytes=sizes.get(str(tp)))
            for tp in parsed
        )
        return DeleteReport(outcomes=outcomes, dry_run=True)
    if not parsed:
        return DeleteReport(outcomes=(), dry_run=False)
    # Deletes fan out on a private, short-lived pool and transport: never submit() to the service's own pool
    # from inside its work item (deadlocks at max_workers=1), and close every connection the fan-out opened.
    fanout = _Transport(service.config)
    try:
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=min(concurrency, len(parsed)), thread_name_prefix="tinkex_persist-delete"
        ) as pool:
            outcomes = tuple(pool.map(lambda tp: _delete_one(fanout, tp, sizes.get(str(tp))), parsed))
    finally:
        fanout.close()
    return DeleteReport(outcomes=outcomes, dry_run=False)


def _raise_for_report(report: DeleteReport, what: str) -> None:
    failed = report.failed
    if not failed:
        return
    first = failed[0]
    raise CheckpointDeleteError(
        "%s: %d of %d checkpoint(s) not deleted; first: %s: %s"
        % (what, len(failed), len(report.outcomes), first.path, first.error),
        report=report,
    )


def _delete_batch(
    service: ServiceClient, parsed: Sequence[TinkerPath], dry_run: bool, concurrency: int
) -> DeleteReport:
    report = _delete_all(service, parsed, dry_run, concurrency)
    _raise_for_report(report, "delete_checkpoints")
    return report


def _newest_first(checkpoints: Iterable[CheckpointInfo]) -> List[CheckpointInfo]:
    # Ties in time (fast consecutive saves) are broken by name, so the plan is deterministic.
    return sorted(checkpoints, key=lambda c: (c.time, c.checkpoint_id), reverse=True)


def _keep_last(service: ServiceClient, run_id: str, n: int, dry_run: bool, concurrency: int) -> RetentionReport:
    listed = _list(service._transport, run_id, None)
    training = _newest_first(c for c in listed if c.checkpoint_type == "training")
    kept, doomed = training[:n], training[n:]
    logger.debug("keep_last(%s, %d): keeping %d, deleting %d", run_id, n, len(kept), len(doomed))
    parsed = [parse_path(c.tinker_path, training=False) for c in doomed]
    report = _delete_all(service, parsed, dry_run, concurrency, sizes={c.tinker_path: c.size_bytes for c in doomed})
    _raise_for_report(report, "keep_last(%s, %d)" % (run_id, n))
    return RetentionReport(run_id=run_id, kept=tuple(kept), deletes=report)


def _set_ttl(transport: _Transport, tp: TinkerPath, ttl_seconds: Optional[int]) -> None:
    body = dumps(_wire.SetTtlRequest(ttl_seconds=ttl_seconds))
    transport.request("PUT", _ops.API + _checkpoint_api_path(tp) + "/ttl", body)


# --------------------------------------------------------------------------- public functions


def get_weights_info(service: ServiceClient, path: str) -> "concurrent.futures.Future[WeightsInfo]":
    """Describe a checkpoint: base model, LoRA rank, trained layers (``POST /api/v1/weights_info``).

    Args:
        service: the service client to use.
        path: ``tinker://<run_id>/weights/<name>``.

    Returns:
        A Future of :class:`~tinkex_persist.types.WeightsInfo`.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        NotFoundError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    service = _service_client(service)
    parse_path(path, training=False)
    return service._submit(_weights_info, service._transport, path)


def list_checkpoints(
    service: ServiceClient,
    run_id: Optional[str] = None,
    *,
    limit: Optional[int] = None,
    page_size: int = LIST_PAGE_SIZE,
) -> "concurrent.futures.Future[List[CheckpointInfo]]":
    """List the checkpoints of one training run, or all of the user's (every page is fetched).

    Args:
        service: the service client to use.
        run_id: a training run (model) id such as ``sess-1:train:0``; ``None`` lists every run's.
        limit: return at most this many (stops paging early); ``None`` returns all.
        page_size: checkpoints asked for per request of the user-wide listing.

    Returns:
        A Future of a list of :class:`CheckpointInfo`, in the server's order.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        NotFoundError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    service = _service_client(service)
    if run_id is not None:
        _paths.check_run_id(run_id)
    if limit is not None:
        _check_positive_int(limit, "limit")
    _check_positive_int(page_size, "page_size")
    return service._submit(_list, service._transport, run_id, limit, page_size)


def delete_checkpoints(
    service: ServiceClient,
    paths: Iterable[str],
    dry_run: bool = False,
    *,
    max_concurrency: int = DEFAULT_DELETE_CONCURRENCY,
) -> "concurrent.futures.Future[DeleteReport]":
    """Delete checkpoints, at most ``max_concurrency`` at a time; one failure does not stop the others.

    A dry run lists each run once and reports, per path, ``would_delete`` or ``not_found``; it deletes nothing.

    Args:
        service: the service client to use.
        paths: ``tinker://<run_id>/<kind>/<name>`` paths (training or sampler checkpoints). Duplicates are removed.
        dry_run: only report what would be deleted.
        max_concurrency: deletes in flight at once.

    Returns:
        A Future of :class:`DeleteReport` when every path was deleted (or would be).

    Raises:
        UsageError, TypeError: a bad path or argument (immediately; nothing is sent).
        CheckpointDeleteError: some paths were not deleted, missing ones included; its ``report`` has every
            outcome, the successes too (set on the Future).
        APIStatusError, APIConnectionError: the dry run's listing failed (set on the Future).
    """
    service = _service_client(service)
    if isinstance(paths, str):
        raise TypeError("paths must be an iterable of tinker:// paths, not a single str")
    parsed: List[TinkerPath] = []
    for p in paths:
        tp = parse_path(p, training=False)
        if tp not in parsed:
            parsed.append(tp)
    if not isinstance(dry_run, bool):
        raise UsageError("dry_run must be a bool, got %r" % (dry_run,))
    _check_positive_int(max_concurrency, "max_concurrency")
    return service._submit(_delete_batch, service, parsed, dry_run, max_concurrency)


def keep_last(
    service: ServiceClient,
    run_id: str,
    n: int,
    dry_run: bool = False,
    *,
    max_concurrency: int = DEFAULT_DELETE_CONCURRENCY,
) -> "concurrent.futures.Future[RetentionReport]":
    """Delete all but the newest ``n`` training checkpoints of a run. Sampler checkpoints are left alone.

    ``n`` is at least 1, so a run's only training checkpoint is never deleted.

    Args:
        service: the service client to use.
        run_id: the training run (model) id.
        n: how many of the newest training checkpoints to keep (>= 1).
        dry_run: only report what would be deleted.
        max_concurrency: deletes in flight at once.

    Returns:
        A Future of :class:`RetentionReport` (kept checkpoints, newest first, and each delete's outcome).

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        CheckpointDeleteError: some deletes failed; ``report`` has every outcome (set on the Future).
        NotFoundError, APIStatusError, APIConnectionError, DecodeError: the listing failed (set on the Future).
    """
    service = _service_client(service)
    _paths.check_run_id(run_id)
    _check_positive_int(n, "n")
    if not isinstance(dry_run, bool):
        raise UsageError("dry_run must be a bool, got %r" % (dry_run,))
    _check_positive_int(max_concurrency, "max_concurrency")
    return service._submit(_keep_last, service, run_id, n, dry_run, max_concurrency)


def set_checkpoint_ttl(
    service: ServiceClient, path: str, ttl_seconds: Optional[int]
) -> "concurrent.futures.Future[None]":
    """Set a checkpoint's lifetime from now, or remove its expiry with ``None``.

    Args:
        service: the service client to use.
        path: ``tinker://<run_id>/<kind>/<name>``.
        ttl_seconds: seconds from now, 3600 (1 hour) to 10 years; ``None`` keeps it until deleted.

    Returns:
        A Future of ``None``.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        NotFoundError, BadRequestError, APIStatusError, APIConnectionError: failures (set on the Future).
    """
    service = _service_client(service)
    tp = parse_path(path, training=False)
    _paths.check_ttl(ttl_seconds)
    return service._submit(_set_ttl, service._transport, tp, ttl_seconds)


# --------------------------------------------------------------------------- archive download


ProgressCallback = Callable[[DownloadProgress], None]


def _safe_url(url: str) -> str:
    """The URL's origin only: a signed URL carries its credential in the path or the query."""
    parts = urlsplit(url)
    return "%s://%s/<signed>" % (parts.scheme, parts.hostname if parts.port is None else "%s:%d" % (parts.hostname, parts.port))


def _archive_url(
    transport: _Transport, tp: TinkerPath, wait: float, progress: Optional[ProgressCallback]
) -> str:
    """Ask the API for the archive and return the signed URL it redirects to, waiting while it is built."""
    cfg = transport.config
    api_path = _ops.API + _checkpoint_api_path(tp) + "/archive"
    start = time.monotonic()
    deadline = Deadline(wait)
    attempt = 0
    while True:
        try:
            resp, _ = transport.send_once("GET", api_path)
        except APIConnectionError as exc:
            failure: TinkexPersistError = exc
            retry_after = None
        else:
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise APIConnectionError(
                        "GET %s -> %d without a Location header" % (api_path, resp.status), method="GET", url=api_path
                    )
                url = urljoin(cfg.base_url + api_path, location)
                if urlsplit(url).scheme not in ("http", "https"):
                    raise DownloadError("GET %s redirected to a non-HTTP URL %s" % (api_path, _safe_url(url)))
                return url
            if resp.status == 200:
                data = resp.json()
                if isinstance(data, dict) and isinstance(data.get("url"), str):
                    return urljoin(cfg.base_url + api_path, data["url"])
                raise APIConnectionError(
                    "GET %s -> 200 without a redirect or a url" % api_path, method="GET", url=api_path
                )
            failure = status_error(resp)
            if resp.status not in _NOT_READY:
                raise failure
            retry_after = _retry_after(resp.headers.get("Retry-After"))
        delay = retry_after
        if delay is None:
            delay = min(cfg.backoff_max, cfg.backoff_factor * (2 ** attempt))
        delay = min(delay, ARCHIVE_POLL_MAX)
        waited = time.monotonic() - start
        if delay > deadline.remaining():
            raise APITimeoutError(
                "archive of %s not ready after %.0f s (%d checks; last: %s)" % (tp, waited, attempt + 1, failure),
                method="GET",
                url=api_path,
            ) from failure
        logger.debug("archive of %s not ready (%s); checking again in %.2fs", tp, failure, delay)
        if progress is not None:
            progress(DownloadProgress(phase="waiting", elapsed=waited, waited=waited))
        time.sleep(delay)
        attempt += 1


def _header(headers: Any, names: Sequence[str]) -> Optional[str]:
    for name in names:
        value = headers.get(name)
        if value:
            return value.strip()
    return None


def _announced_sha256(headers: Any) -> Optional[str]:
    value = _header(headers, SHA256_HEADERS)
    if value:
        value = value.lower()
        if value.startswith("sha256="):  # e.g. "sha256=<hex>"
            value = value[len("sha256=") :]
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
        logger.debug("ignoring malformed sha256 header")
        return None
    digest = headers.get("Repr-Digest") or headers.get("Digest")
    if digest:  # RFC 9530 "sha-256=:<base64>:" or RFC 3230 "SHA-256=<base64>"
        m = re.search(r"sha-256=:?([A-Za-z0-9+/=]+):?", digest, re.IGNORECASE)
        if m:
            import base64
            import binascii

            try:
                return base64.b64decode(m.group(1)).hex()
            except (binascii.Error, ValueError):
                return None
    return None


def _total_size(resp: requests.Response, offset: int) -> Optional[int]:
    if resp.status_code == 206:
        m = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != offset:
            raise DownloadError("server answered a Range request from byte %d with Content-Range %r"
                                % (offset, resp.headers.get("Content-Range")))
        if m.group(3) != "*":
            return int(m.group(3))
    announced = _header(resp.headers, SIZE_HEADERS)
    if announced and announced.isdigit():
        return int(announced)
    length = resp.headers.get("Content-Length")
    if resp.status_code == 200 and length and length.isdigit():
        return int(length)
    return None


def _file_sha256(path: str, h: Optional[Any] = None) -> Any:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


class _Fetch:
    """State of one download call: the partial file, what the server announced, what was fetched."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.total: Optional[int] = None
        self.sha256: Optional[str] = None
        self.fetched = 0
        self.resumed_from: Optional[int] = None
        self.ranged = 0


def _fetch_once(
    session: requests.Session,
    url: str,
    state: _Fetch,
    timeout: Tuple[float, float],
    progress: Optional[ProgressCallback],
    started: float,
) -> int:
    """One GET of the signed URL, appending to the partial file; return its HTTP status."""
    offset = os.path.getsize(state.part) if os.path.exists(state.part) else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = "bytes=%d-" % offset
    logger.debug("GET %s (from byte %d)", _safe_url(url), offset)
    with session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True) as resp:
        logger.debug("GET %s -> %d", _safe_url(url), resp.status_code)
        if resp.status_code == 416 and offset:
            # Nothing left to send: the partial file already holds the whole archive (verified below).
            m = re.match(r"\s*bytes\s+\*/(\d+)", resp.headers.get("Content-Range", ""))
            if m:
                state.total = int(m.group(1))
            state.sha256 = state.sha256 or _announced_sha256(resp.headers)
            if state.resumed_from is None:
                state.resumed_from = offset
            return 416
        if resp.status_code not in (200, 206):
            return resp.status_code
        if resp.status_code == 200 and offset:
            logger.debug("server ignored the Range request; restarting %s from byte 0", state.part)
            offset = 0
        if resp.status_code == 206:
            state.ranged += 1
        total = _total_size(resp, offset)
        sha = _announced_sha256(resp.headers)
        if state.total is not None and total is not None and total != state.total:
            raise DownloadError("archive size changed during the download (%d, then %d bytes)" % (state.total, total),
                                partial_path=state.part)
        state.total = total if total is not None else state.total
        state.sha256 = sha or state.sha256
        if state.resumed_from is None:
            state.resumed_from = offset
        done = offset
        last_report = 0.0
        with open(state.part, "r+b" if offset else "wb") as f:
            f.seek(offset)
            f.truncate()
            for chunk in resp.iter_content(CHUNK_SIZE):
                f.write(chunk)
                done += len(chunk)
                state.fetched += len(chunk)
                now = time.monotonic()
                if progress is not None and now - last_report >= 0.1:
                    last_report = now
                    progress(DownloadProgress(phase="downloading", bytes_done=done, bytes_total=state.total,
                                              resumed_from=state.resumed_from, elapsed=now - started))
        return resp.status_code


def _download_archive(
    transport: _Transport,
    tp: TinkerPath,
    part: str,
    wait: float,
    resumes: int,
    progress: Optional[ProgressCallback],
) -> _Fetch:
    cfg = transport.config
    started = time.monotonic()
    url = _archive_url(transport, tp, wait, progress)
    state = _Fetch(part)
    # A bare session: the signed URL carries its own authorization and must never see the API key.
    session = requests.Session()
    session.headers.clear()
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "*/*"})
    session.trust_env = not is_loopback_host(urlsplit(url).hostname)
    session.verify = cfg.verify
    failures = 0
    refreshed = False
    try:
        while True:
            try:
                status = _fetch_once(session, url, state, cfg.timeout, progress, started)
            except (requests.RequestException, ConnectionError) as exc:
                failures += 1
                have = os.path.getsize(part) if os.path.exists(part) else 0
                if failures > resumes:
                    raise DownloadError(
                        "download of %s broke off at byte %d of %s (%s); %d resume(s) tried; call again to resume"
                        % (tp, have, state.total if state.total is not None else "?", type(exc).__name__, resumes),
                        partial_path=part,
                    ) from exc
                logger.debug("download of %s broke off at byte %d (%s); resuming", tp, have, type(exc).__name__)
                continue
            if status in _SIGNED_URL_EXPIRED and not refreshed:
                # Signed URLs expire; ask the API for a fresh one once.
                refreshed = True
                url = _archive_url(transport, tp, wait, progress)
                continue
            if status not in (200, 206, 416):
                raise DownloadError("GET %s -> %d: archive of %s not downloaded" % (_safe_url(url), status, tp),
                                    partial_path=part if os.path.exists(part) else None)
            have = os.path.getsize(part)
            if state.total is None or have >= state.total:
                return state
            failures += 1
            if failures > resumes:
                raise DownloadError(
                    "download of %s stopped at byte %d of %d; call again to resume" % (tp, have, state.total),
                    partial_path=part,
                )
    finally:
        session.close()


def _check_member(member: tarfile.TarInfo) -> str:
    """Return the member's normalised relative path, or raise :class:`UnsafeArchiveError`."""
    name = member.name
    if not name or "\x00" in name:
        raise UnsafeArchiveError("archive member with an empty or NUL-bearing name")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError("archive member %r has an absolute path" % name[:200])
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError("archive member %r escapes the destination with '..'" % name[:200])
    if member.issym() or member.islnk():
        raise UnsafeArchiveError("archive member %r is a link (to %r); links are refused" % (name[:200], member.linkname[:200]))
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError("archive member %r is a device, FIFO or other special file; refused" % name[:200])
    return "/".join(parts)


def safe_extract(archive: str, dest: str) -> Tuple[str, ...]:
    """Extract a tar archive (any compression) into the new directory ``dest``, refusing anything unsafe.

    Every member is checked before anything is written: absolute paths, ``..`` components, symbolic and
    hard links, devices and FIFOs are refused. Files are created exclusively (a duplicate member fails),
    without set-uid/set-gid bits.

    Args:
        archive: path of the tar file.
        dest: directory to create and fill; it must not exist.

    Returns:
        The relative paths of the regular files written, sorted.

    Raises:
        UnsafeArchiveError: a member could escape ``dest``, is not a regular file or directory, or repeats
            a file (nothing written).
        DownloadError: not a readable tar archive.
        FileExistsError: ``dest`` exists.
    """
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise DownloadError("%s is not a readable tar archive: %s" % (archive, exc)) from exc
    with tf:
        try:
            members = tf.getmembers()
        except tarfile.TarError as exc:
            raise DownloadError("%s is not a readable tar archive: %s" % (archive, exc)) from exc
        checked = [(m, _check_member(m)) for m in members]
        files_seen = set()
        for member, rel in checked:
            # A repeated file, or a file later used as a directory, would overwrite or redirect output.
            prefixes = ["/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)]
            if rel in files_seen or any(p in files_seen for p in prefixes):
                raise UnsafeArchiveError("archive member %r collides with an earlier file member" % member.name[:200])
            if member.isfile():
                files_seen.add(rel)
        os.mkdir(dest)
        files = []
        for member, rel in checked:
            if not rel:
                continue
            target = os.path.join(dest, *rel.split("/"))
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            mode = (member.mode & 0o777 & ~0o022) | 0o600
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
            with os.fdopen(fd, "wb") as out:
                src = tf.extractfile(member)
                assert src is not None
                with src:
                    shutil.copyfileobj(src, out, CHUNK_SIZE)
            files.append(rel)
    return tuple(sorted(files))


def _download(
    transport: _Transport,
    tp: TinkerPath,
    dest_dir: str,
    overwrite: bool,
    keep_archive: bool,
    wait: float,
    resumes: int,
    progress: Optional[ProgressCallback],
) -> DownloadResult:
    target = os.path.join(dest_dir, tp.run_id, tp.kind, tp.name)
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError("%s already exists; pass overwrite=True (--overwrite) to replace it" % target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    part = target + ".tar.part"
    started = time.monotonic()
    if os.path.exists(part):
        logger.debug("resuming %s from %d bytes in %s", tp, os.path.getsize(part), part)
    for attempt in (1, 2):
        state = _download_archive(transport, tp, part, wait, resumes, progress)
        size = os.path.getsize(part)
        if progress is not None:
            progress(DownloadProgress(phase="verifying", bytes_done=size, bytes_total=state.total,
                                      resumed_from=state.resumed_from or 0, elapsed=time.monotonic() - started))
        digest = _file_sha256(part).hexdigest()
        problem = None
        if state.total is not None and size != state.total:
            problem = "is %d bytes, the server announced %d" % (size, state.total)
        elif state.sha256 is not None and digest != state.sha256:
            problem = "has sha256 %s, the server announced %s" % (digest, state.sha256)
        if problem is None:
            break
        if not state.fetched and attempt == 1:
            # A partial file kept from an earlier call was already whole and is bad: resuming cannot
            # repair it, so fetch the archive again from byte 0.
            logger.debug("kept partial file %s %s; fetching the archive again", part, problem)
            os.remove(part)
            continue
        raise ArchiveChecksumError(
            "archive of %s failed verification: it %s; nothing extracted; the partial file is kept at %s "
            "and the next call resumes or refetches it" % (tp, problem, part),
            partial_path=part,
        )
    if progress is not None:
        progress(DownloadProgress(phase="extracting", bytes_done=size, bytes_total=size,
                                  resumed_from=state.resumed_from or 0, elapsed=time.monotonic() - started))
    staging = tempfile.mkdtemp(prefix=".%s." % tp.name, suffix=".extract", dir=parent)
    os.rmdir(staging)  # safe_extract creates it, so a leftover can never be mistaken for a finished one
    try:
        files = safe_extract(part, staging)
        if os.path.lexists(target):
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.remove(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    archive_path = None
    if keep_archive:
        archive_path = target + ".tar"
        os.replace(part, archive_path)
    else:
        os.remove(part)
    result = DownloadResult(
        tinker_path=str(tp),
        directory=target,
        archive_bytes=size,
        bytes_fetched=state.fetched,
        resumed_from=state.resumed_from or 0,
        range_requests=state.ranged,
        sha256=digest,
        sha256_verified=state.sha256 is not None,
        files=files,
        archive_path=archive_path,
    )
    if progress is not None:
        progress(DownloadProgress(phase="done", bytes_done=size, bytes_total=size,
                                  resumed_from=result.resumed_from, elapsed=time.monotonic() - started))
    return result


def download_checkpoint(
    service: ServiceClient,
    path: str,
    dest_dir: str,
    *,
    overwrite: bool = False,
    keep_archive: bool = False,
    wait_timeout: float = DEFAULT_ARCHIVE_WAIT,
    max_resumes: int = DEFAULT_DOWNLOAD_RESUMES,
    progress: Optional[ProgressCallback] = None,
) -> "concurrent.futures.Future[DownloadResult]":
    """Download a checkpoint's archive, verify it and extract it into ``<dest_dir>/<run_id>/<kind>/<name>``.

    The API answers ``GET .../checkpoints/<kind>/<name>/archive`` with a redirect to a signed URL; that URL
    is fetched with a bare request that never carries the API key. While the archive is being built the
    API answers 503: the call waits (``Retry-After``, else back-off) up to ``wait_timeout`` seconds,
    reporting ``waiting`` progress. A transfer that breaks off is resumed with HTTP Range, up to
    ``max_resumes`` times in this call; after that the partial file (``<target>.tar.part``) stays and the
    next call resumes from it. The size and, when the server sends one, the sha256 are checked before
    anything is extracted; extraction refuses absolute paths, ``..``, links and special files.

    Args:
        service: the service client to use.
        path: ``tinker://<run_id>/<kind>/<name>``.
        dest_dir: directory under which the checkpoint is extracted (created if needed).
        overwrite: replace an existing extracted checkpoint; otherwise its presence is an error.
        keep_archive: keep the verified archive as ``<target>.tar`` next to the directory.
        wait_timeout: longest wait in seconds for the archive to be built.
        max_resumes: Range resumes tried in this call after the transfer breaks off.
        progress: called with :class:`DownloadProgress` from the worker thread; an exception it raises
            aborts the download.

    Returns:
        A Future of :class:`DownloadResult`.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        FileExistsError: the target exists and ``overwrite`` is False (set on the Future).
        ArchiveChecksumError: size or sha256 mismatch; nothing extracted (set on the Future).
        UnsafeArchiveError: the archive holds an unsafe member; nothing extracted (set on the Future).
        DownloadError: the transfer failed; ``partial_path`` is kept for a resume (set on the Future).
        APITimeoutError: the archive was not ready within ``wait_timeout`` (set on the Future).
        NotFoundError, APIStatusError, APIConnectionError: other failures (set on the Future).
    """
    service = _service_client(service)
    tp = parse_path(path, training=False)
    if not isinstance(dest_dir, (str, os.PathLike)) or not os.fspath(dest_dir):
        raise UsageError("dest_dir must be a non-empty path, got %r" % (dest_dir,))
    for flag, value in (("overwrite", overwrite), ("keep_archive", keep_archive)):
        if not isinstance(value, bool):
            raise UsageError("%s must be a bool, got %r" % (flag, value))
    if isinstance(wait_timeout, bool) or not isinstance(wait_timeout, (int, float)) or wait_timeout < 0:
        raise UsageError("wait_timeout must be a number of seconds >= 0, got %r" % (wait_timeout,))
    _check_positive_int(max_resumes, "max_resumes", minimum=0)
    if progress is not None and not callable(progress):
        raise TypeError("progress must be callable or None")
    return service._submit(
        _download,
        service._transport,
        tp,
        os.fspath(dest_dir),
        overwrite,
        keep_archive,
        float(wait_timeout),
        max_resumes,
        progress,
    )
