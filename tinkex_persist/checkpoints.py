"""Checkpoint management: describe, list, select, delete, keep the newest N, and set a lifetime.

Every public function taking a ``ServiceClient`` validates its arguments at once (``UsageError``/
``TypeError``, nothing sent), then runs one work item on the client's pool and returns a plain
``concurrent.futures.Future``. The result types live in :mod:`tinkex_persist.types`.
"""

import concurrent.futures
import datetime
import logging
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple
from urllib.parse import quote

from . import _ops, _paths, _wire
from ._converter import decode, dumps
from ._paths import TinkerPath, parse_path
from ._time import parse_time
from ._retry import retries_of
from ._transport import Transport
from .client import Runner, ServiceClient, runner_of
from .exceptions import CheckpointDeleteError, NotFoundError, TinkexPersistError, UsageError
from .types import (
    CheckpointInfo,
    CheckpointStorageUsage,
    DeleteOutcome,
    DeleteReport,
    ExternalWeightsUrls,
    PruneReport,
    RetentionReport,
    StorageUsageItem,
    WeightsInfo,
)

logger = logging.getLogger(__name__)

__all__ = (
    "CheckpointInfo",
    "DeleteOutcome",
    "DeleteReport",
    "RetentionReport",
    "copy_weights",
    "delete_checkpoints",
    "get_checkpoint_storage_usage",
    "get_external_weights_urls",
    "get_weights_info",
    "keep_last",
    "list_checkpoints",
    "list_user_checkpoints",
    "plan_prune",
    "prune",
    "publish_checkpoint",
    "select_checkpoints",
    "set_checkpoint_ttl",
    "unpublish_checkpoint",
)

#: Checkpoints requested per page of the user-wide listing (the official SDK's default).
LIST_PAGE_SIZE = 100
#: Deletes in flight at once by default.
DEFAULT_DELETE_CONCURRENCY = 4


def _checkpoint_info(cp: _wire.Checkpoint) -> CheckpointInfo:
    return CheckpointInfo(
        checkpoint_id=cp.checkpoint_id,
        checkpoint_type=cp.checkpoint_type,
        time=parse_time(cp.time),  # type: ignore[arg-type]  # an empty time stays None, as before
        tinker_path=cp.tinker_path,
        size_bytes=cp.size_bytes,
        expires_at=parse_time(cp.expires_at),
        public=cp.public,
        user_metadata=cp.user_metadata,
    )


#: The public type of one listed checkpoint (used by :mod:`tinkex_persist.runs` for ``last_checkpoint``).
checkpoint_info_from_wire = _checkpoint_info


def select_checkpoints(
    checkpoints: Iterable[CheckpointInfo],
    *,
    before: Optional[datetime.datetime] = None,
    after: Optional[datetime.datetime] = None,
) -> List[CheckpointInfo]:
    """Return the checkpoints created strictly before ``before`` and strictly after ``after``, in their order.

    Args:
        checkpoints: checkpoints, e.g. from :func:`list_checkpoints`.
        before: keep only those whose ``time`` is earlier; ``None`` sets no upper bound.
        after: keep only those whose ``time`` is later; ``None`` sets no lower bound.

    Raises:
        UsageError: a bound is not a timezone-aware datetime (immediately).
    """
    for what, bound in (("before", before), ("after", after)):
        if bound is not None and (not isinstance(bound, datetime.datetime) or bound.tzinfo is None):
            raise UsageError("%s must be a timezone-aware datetime or None, got %r" % (what, bound))
    return [
        c for c in checkpoints
        if (before is None or c.time < before) and (after is None or c.time > after)
    ]


# --------------------------------------------------------------------------- plain operations (no threads)


def _weights_info(transport: Transport, path: str) -> WeightsInfo:
    resp = _ops.weights_info(transport, path)
    config = resp.optimizer_config
    return WeightsInfo(
        base_model=resp.base_model,
        is_lora=resp.is_lora,
        lora_rank=resp.lora_rank,
        train_unembed=resp.train_unembed,
        train_mlp=resp.train_mlp,
        train_attn=resp.train_attn,
        optimizer=config.type if config is not None else None,
        optimizer_config={"type": config.type, **config.extra} if config is not None else None,
    )


def _list(
    transport: Transport, run_id: Optional[str], limit: Optional[int], page_size: int = LIST_PAGE_SIZE
) -> List[CheckpointInfo]:
    if run_id is not None:
        resp = _ops.call(transport, "GET", "/training_runs/%s/checkpoints" % run_id, None, _wire.CheckpointsListResponse)
        found = _unique(_checkpoint_info(c) for c in resp.checkpoints)
        return found if limit is None else found[:limit]
    return _list_pages(transport, limit, page_size)


def _unique(checkpoints: Iterable[CheckpointInfo]) -> List[CheckpointInfo]:
    seen: Set[str] = set()
    out = []
    for c in checkpoints:
        if c.tinker_path not in seen:
            seen.add(c.tinker_path)
            out.append(c)
    return out


def _list_pages(transport: Transport, limit: Optional[int], page_size: int) -> List[CheckpointInfo]:
    """Page through the user-wide listing; each checkpoint once, none skipped while others come and go.

    Offset paging over a list that changes shifts it under the reader: a save ahead of the offset
    repeats an entry, a delete behind it skips one. So each page after the first starts one entry
    early, on the last one already seen (the anchor). If no entry of a page was seen before, entries
    before the offset were deleted and the reader moved past unseen ones: it steps back (1, 2, 4 ...
    entries) until a page overlaps what it has, then goes on from there. Entries are kept by
    ``tinker_path``, so overlaps never repeat one.
    """
    found: Dict[str, CheckpointInfo] = {}
    start = 0  # offset of the first entry not yet read, as far as the reader knows
    step_back = 0
    requests = 0
    budget = None  # requests allowed once the size is known: churn must not keep the reader forever
    while True:
        anchored = start > 0 and page_size > 1
        offset = max(0, start - (1 if anchored else 0) - step_back)
        resp = _ops.call(
            transport, "GET", "/checkpoints?limit=%d&offset=%d" % (page_size, offset), None,
            _wire.CheckpointsListResponse,
        )
        requests += 1
        items = [_checkpoint_info(c) for c in resp.checkpoints]
        total = resp.cursor.total_count if resp.cursor is not None else None
        if budget is None and total is not None:
            budget = 4 * (total // max(1, page_size - 1) + 1) + 16
        overlaps = any(c.tinker_path in found for c in items)
        if offset > 0 and items and not overlaps and (anchored or step_back) and (budget is None or requests < budget):
            # Entries before this page were deleted since the last one: step back to find where we were.
            logger.debug("listing moved under the reader at offset %d; stepping back", offset)
            step_back = max(1, 2 * step_back)
            continue
        step_back = 0
        for c in items:
            found.setdefault(c.tinker_path, c)
        start = offset + len(items)
        if (
            not items
            or len(items) < page_size
            or (total is not None and start >= total)
            or (limit is not None and len(found) >= limit)
            or (budget is not None and requests >= budget)
        ):
            listed = list(found.values())
            return listed if limit is None else listed[:limit]


def _delete_one(transport: Transport, tp: TinkerPath, size: Optional[int]) -> DeleteOutcome:
    path = str(tp)
    try:
        transport.request("DELETE", _ops.API + tp.api_path)
    except NotFoundError as exc:
        retries = retries_of(exc)
        if retries is not None and retries.maybe_applied:
            # An earlier attempt whose answer was lost deleted it: the 404 is this call's own work.
            logger.debug("deleted %s (404 after %s)", path, [h.error or h.status for h in retries.history])
            return DeleteOutcome(path=path, status="deleted", size_bytes=size)
        return DeleteOutcome(path=path, status="not_found", error=exc, size_bytes=size)
    except TinkexPersistError as exc:
        return DeleteOutcome(path=path, status="failed", error=exc, size_bytes=size)
    logger.debug("deleted %s", path)
    return DeleteOutcome(path=path, status="deleted", size_bytes=size)


def _delete_all(
    runner: Runner,
    parsed: Sequence[TinkerPath],
    dry_run: bool,
    concurrency: int,
    sizes: Optional[Dict[str, Optional[int]]] = None,
) -> DeleteReport:
    transport = runner.transport
    if sizes is None:
        # One listing per run: a dry run names the paths that do not exist, and every outcome gets its size.
        sizes = {}
        missing: Set[str] = set()
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
    fanout = Transport(runner.config)
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
    runner: Runner, parsed: Sequence[TinkerPath], dry_run: bool, concurrency: int
) -> DeleteReport:
    report = _delete_all(runner, parsed, dry_run, concurrency)
    _raise_for_report(report, "delete_checkpoints")
    return report


def _newest_first(checkpoints: Iterable[CheckpointInfo]) -> List[CheckpointInfo]:
    # Ties in time (fast consecutive saves) are broken by name, so the plan is deterministic.
    return sorted(checkpoints, key=lambda c: (c.time, c.checkpoint_id), reverse=True)


def _keep_last(runner: Runner, run_id: str, n: int, dry_run: bool, concurrency: int) -> RetentionReport:
    listed = _list(runner.transport, run_id, None)
    training = _newest_first(c for c in listed if c.checkpoint_type == "training")
    kept, doomed = training[:n], training[n:]
    logger.debug("keep_last(%s, %d): keeping %d, deleting %d", run_id, n, len(kept), len(doomed))
    parsed = [parse_path(c.tinker_path, training=False) for c in doomed]
    report = _delete_all(runner, parsed, dry_run, concurrency, sizes={c.tinker_path: c.size_bytes for c in doomed})
    _raise_for_report(report, "keep_last(%s, %d)" % (run_id, n))
    return RetentionReport(run_id=run_id, kept=tuple(kept), deletes=report)


def _set_ttl(transport: Transport, tp: TinkerPath, ttl_seconds: Optional[int]) -> None:
    body = dumps(_wire.SetTtlRequest(ttl_seconds=ttl_seconds))
    transport.request("PUT", _ops.API + tp.api_path + "/ttl", body)


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
    runner = runner_of(service)
    parse_path(path, training=False)
    return runner.submit(_weights_info, runner.transport, path)


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
    runner = runner_of(service)
    if run_id is not None:
        _paths.check_run_id(run_id)
    if limit is not None:
        _paths.check_int(limit, "limit")
    _paths.check_int(page_size, "page_size")
    return runner.submit(_list, runner.transport, run_id, limit, page_size)


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
    runner = runner_of(service)
    if isinstance(paths, str):
        raise TypeError("paths must be an iterable of tinker:// paths, not a single str")
    parsed: List[TinkerPath] = []
    for p in paths:
        tp = parse_path(p, training=False)
        if tp not in parsed:
            parsed.append(tp)
    if not isinstance(dry_run, bool):
        raise UsageError("dry_run must be a bool, got %r" % (dry_run,))
    _paths.check_int(max_concurrency, "max_concurrency")
    return runner.submit(_delete_batch, runner, parsed, dry_run, max_concurrency)


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
    runner = runner_of(service)
    _paths.check_run_id(run_id)
    _paths.check_int(n, "n")
    if not isinstance(dry_run, bool):
        raise UsageError("dry_run must be a bool, got %r" % (dry_run,))
    _paths.check_int(max_concurrency, "max_concurrency")
    return runner.submit(_keep_last, runner, run_id, n, dry_run, max_concurrency)


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
    runner = runner_of(service)
    tp = parse_path(path, training=False)
    _paths.check_ttl(ttl_seconds)
    return runner.submit(_set_ttl, runner.transport, tp, ttl_seconds)


# --------------------------------------------------------------------------- the rest of the SDK 0.38 REST surface

#: Checkpoint types a user-wide listing can be narrowed to (the ``checkpoint_type`` values).
CHECKPOINT_TYPES = ("training", "sampler", "external")


def _external_urls(transport: Transport, tp: TinkerPath) -> ExternalWeightsUrls:
    resp = _ops.call(transport, "GET", tp.api_path + "/external_weights_urls", None, _wire.ExternalWeightsUrlsResponse)
    return ExternalWeightsUrls(urls=dict(resp.urls), expires=parse_time(resp.expires))


def _publish(transport: Transport, tp: TinkerPath, public: bool) -> None:
    transport.request("POST" if public else "DELETE", _ops.API + tp.api_path + "/publish")


def _list_user(
    transport: Transport, type: Optional[str], limit: Optional[int], page_size: int
) -> List[CheckpointInfo]:
    if type is None:
        return _list(transport, None, limit, page_size)
    chosen = [c for c in _list(transport, None, None, page_size) if c.checkpoint_type == type]
    return chosen if limit is None else chosen[:limit]


def _usage(transport: Transport, project_id: Optional[str]) -> CheckpointStorageUsage:
    query = "" if project_id is None else "?project_id=" + quote(project_id, safe="")
    resp = _ops.call(transport, "GET", "/billing/usage/checkpoints/current" + query, None,
                     _wire.CheckpointStorageUsageResponse)
    items = tuple(
        StorageUsageItem(
            project_id=i.project_id,
            org_user_urn=i.org_user_urn,
            user_email=i.user_email,
            user_name=i.user_name,
            checkpoint_count=i.checkpoint_count,
            size_bytes=i.size_bytes,
            size_gigabytes=i.size_gigabytes,
            estimated_monthly_cost_usd=i.estimated_monthly_cost_usd,
        )
        for i in resp.data
    )
    return CheckpointStorageUsage(effective_rate_usd_per_gigabyte_month=resp.effective_rate_usd_per_gigabyte_month, data=items)


def _copy(transport: Transport, request: _wire.CopyWeightsRequest, token: Optional[str]) -> str:
    # One idempotency key (a bare UUID, as the SDK sends) for every retry: a retried copy is never made twice.
    headers = {"X-Idempotency-Key": str(uuid.uuid4())}
    if token is not None:
        headers["X-Tinker-Weights-Access-Token"] = token
    resp = transport.request("POST", _ops.API + "/copy_weights", dumps(request), extra_headers=headers, expect_json=True)
    return decode(resp.json(), _wire.CopyWeightsResponse).tinker_path


def get_external_weights_urls(service: ServiceClient, path: str) -> "concurrent.futures.Future[ExternalWeightsUrls]":
    """Signed download URLs, one per file, of an ``external_weights`` checkpoint (``.../external_weights_urls``).

    Fetch each URL with a plain GET and no API key; ask again before ``expires`` for fresh ones.

    Args:
        service: the service client to use.
        path: ``tinker://<run_id>/external_weights/<name>``, e.g. from ``save_weights_external``.

    Returns:
        A Future of :class:`~tinkex_persist.types.ExternalWeightsUrls`.

    Raises:
        UsageError, TypeError: bad arguments, or a path of another kind (immediately; nothing is sent).
        NotFoundError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    runner = runner_of(service)
    tp = parse_path(path, training=False)
    if tp.kind != "external_weights":
        raise UsageError(
            "%s is a %s checkpoint; signed URLs exist only for tinker://<run_id>/external_weights/<name> "
            "(export one with save_weights_external)" % (path, _paths.KINDS[tp.kind])
        )
    return runner.submit(_external_urls, runner.transport, tp)


def publish_checkpoint(service: ServiceClient, path: str) -> "concurrent.futures.Future[None]":
    """Make a checkpoint public (``POST .../publish``); a checkpoint that already is fails with ConflictError (409).

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        ConflictError, NotFoundError, APIStatusError, APIConnectionError: failures (set on the Future).
    """
    runner = runner_of(service)
    tp = parse_path(path, training=False)
    return runner.submit(_publish, runner.transport, tp, True)


def unpublish_checkpoint(service: ServiceClient, path: str) -> "concurrent.futures.Future[None]":
    """Make a public checkpoint private again (``DELETE .../publish``); one already private fails with ConflictError.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        ConflictError, NotFoundError, APIStatusError, APIConnectionError: failures (set on the Future).
    """
    runner = runner_of(service)
    tp = parse_path(path, training=False)
    return runner.submit(_publish, runner.transport, tp, False)


def list_user_checkpoints(
    service: ServiceClient,
    *,
    type: Optional[str] = None,
    limit: Optional[int] = None,
    page_size: int = LIST_PAGE_SIZE,
) -> "concurrent.futures.Future[List[CheckpointInfo]]":
    """List all of the user's checkpoints across runs, every page (``GET /api/v1/checkpoints?limit=&offset=``).

    Args:
        service: the service client to use.
        type: ``training``, ``sampler`` or ``external`` keeps only that type; None keeps all.
        limit: return at most this many (of the chosen type); None returns all.
        page_size: checkpoints asked for per request.

    Returns:
        A Future of a list of :class:`CheckpointInfo`, in the server's order (newest first).

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    runner = runner_of(service)
    if type is not None and type not in CHECKPOINT_TYPES:
        raise UsageError("type must be one of %s or None, got %r" % (", ".join(CHECKPOINT_TYPES), type))
    if limit is not None:
        _paths.check_int(limit, "limit")
    _paths.check_int(page_size, "page_size")
    return runner.submit(_list_user, runner.transport, type, limit, page_size)


def get_checkpoint_storage_usage(
    service: ServiceClient, *, project_id: Optional[str] = None
) -> "concurrent.futures.Future[CheckpointStorageUsage]":
    """Current checkpoint storage: count, bytes and estimated cost per group (``billing/usage/checkpoints/current``).

    Args:
        service: the service client to use.
        project_id: only this project's storage; None: all of the organisation's that the key sees.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    runner = runner_of(service)
    if project_id is not None and (not isinstance(project_id, str) or not project_id):
        raise UsageError("project_id must be a non-empty str or None, got %r" % (project_id,))
    return runner.submit(_usage, runner.transport, project_id)


def copy_weights(
    service: ServiceClient,
    path: str,
    destination_project_id: Optional[str],
    *,
    ttl_seconds: Optional[int] = None,
    weights_access_token: Optional[str] = None,
) -> "concurrent.futures.Future[str]":
    """Copy a checkpoint into a project, as a new training run (``POST /api/v1/copy_weights``).

    Args:
        service: the service client to use.
        path: ``tinker://`` path of the checkpoint to copy (any kind).
        destination_project_id: project that will own the copy; None: the client's ``project_id``.
        ttl_seconds: lifetime of the copy, 3600 s to 10 years; None: it never expires (the source's expiry
            is not inherited).
        weights_access_token: token for weights of another account (sent in a header, never logged).

    Returns:
        A Future of the copy's ``tinker://`` path.

    Raises:
        UsageError, TypeError: bad arguments, or no project at all (immediately; nothing is sent).
        NotFoundError, APIStatusError, APIConnectionError, DecodeError: failures (set on the Future).
    """
    runner = runner_of(service)
    parse_path(path, training=False)
    project = destination_project_id if destination_project_id is not None else runner.config.project_id
    if not isinstance(project, str) or not project:
        raise UsageError("copy_weights needs destination_project_id (or a ServiceClient project_id), got %r" % (project,))
    _paths.check_ttl(ttl_seconds)
    if weights_access_token is not None and (not isinstance(weights_access_token, str) or not weights_access_token):
        raise UsageError("weights_access_token must be a non-empty str or None")
    request = _wire.CopyWeightsRequest(destination_project_id=project, source_path=path, ttl_seconds=ttl_seconds)
    return runner.submit(_copy, runner.transport, request, weights_access_token)


# --------------------------------------------------------------------------- pruning across runs


def plan_prune(
    checkpoints: Iterable[CheckpointInfo],
    *,
    keep_last: Optional[int] = None,
    older_than: Optional[datetime.timedelta] = None,
    type: Optional[str] = None,
    include_published: bool = False,
    now: Optional[datetime.datetime] = None,
) -> Tuple[List[CheckpointInfo], List[CheckpointInfo], List[CheckpointInfo]]:
    """Split checkpoints into (kept, to delete, published and spared); no request. What ``prune`` uses.

    Only checkpoints of ``type`` are considered (all types when None). Within each run and type, the
    newest ``keep_last`` are kept; of the others, those created before ``now - older_than`` are deleted
    (all of them when ``older_than`` is None). Published checkpoints are spared unless
    ``include_published``. Each list is newest first.

    Raises:
        UsageError: neither ``keep_last`` nor ``older_than`` given (that would delete everything), or a bad value.
    """
    if keep_last is None and older_than is None:
        raise UsageError("give keep_last, older_than or both; pruning with neither would delete every checkpoint")
    if keep_last is not None:
        _paths.check_int(keep_last, "keep_last", minimum=0)
    if older_than is not None and (not isinstance(older_than, datetime.timedelta) or older_than.total_seconds() < 0):
        raise UsageError("older_than must be a non-negative datetime.timedelta, got %r" % (older_than,))
    if type is not None and type not in CHECKPOINT_TYPES:
        raise UsageError("type must be one of %s or None, got %r" % (", ".join(CHECKPOINT_TYPES), type))
    if not isinstance(include_published, bool):
        raise UsageError("include_published must be a bool, got %r" % (include_published,))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    groups: Dict[Tuple[str, str], List[CheckpointInfo]] = {}
    for c in checkpoints:
        if type is None or c.checkpoint_type == type:
            groups.setdefault((c.run_id, c.checkpoint_type), []).append(c)
    kept: List[CheckpointInfo] = []
    doomed: List[CheckpointInfo] = []
    spared: List[CheckpointInfo] = []
    for key in sorted(groups):
        ordered = _newest_first(groups[key])
        head = ordered[:keep_last] if keep_last is not None else []
        rest = ordered[len(head):]
        if older_than is not None:
            cutoff = now - older_than
            head = head + [c for c in rest if c.time >= cutoff]
            rest = [c for c in rest if c.time < cutoff]
        tail = rest
        kept.extend(head)
        for c in tail:
            (doomed if include_published or not c.public else spared).append(c)
    return _newest_first(kept), _newest_first(doomed), _newest_first(spared)


def _prune(
    runner: Runner,
    run_id: Optional[str],
    options: Dict[str, Any],
    dry_run: bool,
    concurrency: int,
) -> PruneReport:
    listed = _list(runner.transport, run_id, None) if run_id is not None else _list(runner.transport, None, None)
    kept, doomed, spared = plan_prune(listed, **options)
    logger.debug("prune(%s): keeping %d, deleting %d, sparing %d published", run_id or "all runs",
                 len(kept), len(doomed), len(spared))
    parsed = [parse_path(c.tinker_path, training=False) for c in doomed]
    report = _delete_all(runner, parsed, dry_run, concurrency, sizes={c.tinker_path: c.size_bytes for c in doomed})
    _raise_for_report(report, "prune(%s)" % (run_id or "all runs"))
    return PruneReport(run_id=run_id, kept=tuple(kept), spared=tuple(spared), deletes=report)


def prune(
    service: ServiceClient,
    *,
    run_id: Optional[str] = None,
    keep_last: Optional[int] = None,
    older_than: Optional[datetime.timedelta] = None,
    type: Optional[str] = None,
    include_published: bool = False,
    dry_run: bool = False,
    max_concurrency: int = DEFAULT_DELETE_CONCURRENCY,
) -> "concurrent.futures.Future[PruneReport]":
    """Delete old checkpoints of one run, or of every run: keep the newest N per run and type, and/or
    delete those older than a duration. Published checkpoints are spared unless ``include_published``.

    The selection is :func:`plan_prune`'s, on one listing (``run_id``) or the user-wide listing (None).

    Args:
        service: the service client to use.
        run_id: one training run; None prunes every run's checkpoints.
        keep_last: keep the newest this many (>= 0) of each run and type.
        older_than: delete only checkpoints created longer ago than this.
        type: ``training``, ``sampler`` or ``external``: only that type is pruned; None: every type.
        include_published: also delete published checkpoints.
        dry_run: only report what would be deleted.
        max_concurrency: deletes in flight at once.

    Returns:
        A Future of :class:`~tinkex_persist.types.PruneReport`.

    Raises:
        UsageError, TypeError: bad arguments (immediately; nothing is sent).
        CheckpointDeleteError: some deletes failed; ``report`` has every outcome (set on the Future).
        APIStatusError, APIConnectionError, DecodeError: the listing failed (set on the Future).
    """
    runner = runner_of(service)
    if run_id is not None:
        _paths.check_run_id(run_id)
    options: Dict[str, Any] = dict(keep_last=keep_last, older_than=older_than, type=type,
                                   include_published=include_published)
    plan_prune([], **options)  # checks the options now, before anything is sent
    if not isinstance(dry_run, bool):
        raise UsageError("dry_run must be a bool, got %r" % (dry_run,))
    _paths.check_int(max_concurrency, "max_concurrency")
    return runner.submit(_prune, runner, run_id, options, dry_run, max_concurrency)
