"""Download of a checkpoint: the SDK 0.38 export with signed per-file URLs (``_external``), or the archive.

The archive route (wait for the archive URL, resumable ranged transfer, verification, extraction with
:func:`tinkex_persist._archive.safe_extract`) is used only when the server has no ``save_weights_external``.
"""

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple
from urllib.parse import urljoin, urlsplit

import requests

from . import _external, _ops, _paths
from ._archive import safe_extract
from ._paths import TinkerPath, parse_path
from ._retry import Deadline, Retry, attach
from ._transport import PERMANENT, UNREACHABLE, USER_AGENT, Transport, describe_failure, read_pieces, status_error
from .client import Runner, ServiceClient, runner_of
from .config import is_loopback_host
from .exceptions import (
    APIConnectionError,
    APITimeoutError,
    ArchiveChecksumError,
    DownloadError,
    OperationCancelledError,
    TinkexPersistError,
    UsageError,
)
from .types import DownloadProgress, DownloadResult

try:  # POSIX; elsewhere concurrent downloads into one destination are not coordinated
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = ("DownloadProgress", "DownloadResult", "download_checkpoint")

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


ProgressCallback = Callable[[DownloadProgress], None]


def _safe_url(url: str) -> str:
    """The URL's origin only: a signed URL carries its credential in the path or the query."""
    parts = urlsplit(url)
    return "%s://%s/<signed>" % (parts.scheme, parts.hostname if parts.port is None else "%s:%d" % (parts.hostname, parts.port))


def _archive_url(
    transport: Transport, tp: TinkerPath, wait: float, progress: Optional[ProgressCallback]
) -> str:
    """Ask the API for the archive and return the signed URL it redirects to, waiting while it is built."""
    cfg = transport.config
    api_path = _ops.API + tp.api_path + "/archive"
    start = time.monotonic()
    retry = Retry(
        total=None,
        backoff_factor=cfg.backoff_factor,
        backoff_max=min(cfg.backoff_max, ARCHIVE_POLL_MAX),
        jitter=False,
        status_forcelist=frozenset(_NOT_READY),
        patience=cfg.connect_patience,
        deadline=Deadline(wait),
        interrupt=transport.stopping,
    )
    while True:
        if transport.stopping.is_set():
            raise transport.stopped_error("GET", api_path)
        try:
            resp = transport.send("GET", api_path)
        except APIConnectionError as exc:
            failure: TinkexPersistError = exc
            retry = transport.note_failure(retry, "GET", api_path, exc)
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
            retry = retry.increment("GET", api_path, status=resp.status, headers=resp.headers)
            if not retry.is_retry(resp.status):
                raise attach(failure, retry)
        delay = min(retry.next_wait(), ARCHIVE_POLL_MAX)
        waited = time.monotonic() - start
        if retry.is_exhausted() or delay > retry.time_left():
            raise attach(
                APITimeoutError(
                    "archive of %s not ready after %.0f s (%d checks; last: %s)" % (tp, waited, retry.failures, failure),
                    method="GET",
                    url=api_path,
                ),
                retry,
            ) from failure
        logger.debug("archive of %s not ready (%s); checking again in %.2fs", tp, failure, delay)
        if progress is not None:
            progress(DownloadProgress(phase="waiting", elapsed=waited, waited=waited))
        if not retry.sleep(delay):  # only when the client is stopping: the deadline was checked above
            raise transport.stopped_error("GET", api_path)


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


def _pieces(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, one receive at a time, so a cancel is seen between receives.

    ``iter_content`` waits to fill each chunk, which on a slow link holds the whole transfer.
    """
    return read_pieces(resp, CHUNK_SIZE)


def _fetch_once(
    session: requests.Session,
    url: str,
    state: _Fetch,
    timeout: Tuple[float, float],
    progress: Optional[ProgressCallback],
    started: float,
    stopping: threading.Event,
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
            for chunk in _pieces(resp):
                if stopping.is_set():
                    raise OperationCancelledError(
                        "download of the archive stopped at byte %d: the client is stopping; the partial file is "
                        "kept at %s and the next call resumes it" % (done, state.part),
                        method="GET",
                        url=_safe_url(url),
                        partial_path=state.part,
                    )
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
    transport: Transport,
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
    # Resumes follow the one policy: at once (the server answered a moment ago), at most ``resumes`` times.
    retry = Retry(total=resumes, backoff_factor=0, patience=cfg.connect_patience, interrupt=transport.stopping)
    transport.track(session)
    refreshed = False
    try:
        while True:
            try:
                if transport.stopping.is_set():
                    raise transport.stopped_error("GET", _safe_url(url), part if os.path.exists(part) else None)
                status = _fetch_once(session, url, state, cfg.timeout, progress, started, transport.stopping)
            except (requests.RequestException, ConnectionError) as exc:
                if transport.stopping.is_set():  # abort() cut the connection
                    raise transport.stopped_error("GET", _safe_url(url), part if os.path.exists(part) else None) from exc
                have = os.path.getsize(part) if os.path.exists(part) else 0
                parts = urlsplit(url)
                kind, cause = describe_failure(exc, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
                retry = retry.increment("GET", _safe_url(url), error=cause, unreachable=kind in UNREACHABLE)
                if kind in PERMANENT or retry.is_exhausted() or not retry.sleep():
                    raise attach(
                        DownloadError(
                            "download of %s broke off at byte %d of %s (%s); %d resume(s) tried; call again to resume"
                            % (tp, have, state.total if state.total is not None else "?", cause, retry.failures - 1),
                            partial_path=part,
                        ),
                        retry,
                    ) from exc
                logger.debug("download of %s broke off at byte %d (%s); resuming", tp, have, cause)
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
            retry = retry.increment("GET", _safe_url(url), error="answer ended at byte %d of %d" % (have, state.total))
            if retry.is_exhausted() or not retry.sleep():
                raise attach(
                    DownloadError(
                        "download of %s stopped at byte %d of %d; call again to resume" % (tp, have, state.total),
                        partial_path=part,
                    ),
                    retry,
                )
    finally:
        session.close()



#: Seconds between two tries to take the lock of a destination another process is downloading into.
LOCK_POLL = 0.1


class _DestinationLock:
    """An OS lock (``flock``) on ``<target>.tar.lock``, so that one process at a time downloads into a target.

    The others wait for it (a client that is stopping stops the wait). The winner writes its result
    into the lock file and removes the file before releasing the lock: a waiter then holds the lock of
    a file no longer in the directory, reads the result from it and returns the finished copy. The OS
    releases the lock when its holder dies; the next holder resumes the partial file.
    """

    def __init__(self, target: str, stopping: threading.Event) -> None:
        self.path = target + ".tar.lock"
        self.stopping = stopping
        self.fd = -1

    def acquire(self) -> bool:
        """Take the lock; return False if the file was removed meanwhile (its holder finished)."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            return True
        waited = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    logger.debug("another download into %s is running; waiting for it", self.path[: -len(".tar.lock")])
                    waited = True
                if self.stopping.wait(LOCK_POLL):
                    self.release()
                    raise OperationCancelledError(
                        "stopped waiting for another download into %s: the client is stopping"
                        % self.path[: -len(".tar.lock")]
                    ) from None
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self.fd)
        return (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the flock
            self.fd = -1

    def finished(self, tp: TinkerPath, target: str) -> Optional[DownloadResult]:
        """The result the previous holder recorded for ``target``, or None if there is no usable record."""
        try:
            data = json.loads(os.pread(self.fd, 1 << 20, 0).decode("utf-8"))
            if data.get("tinker_path") != str(tp) or data.get("directory") != target:
                return None
            archive_path = data.get("archive_path")
            sha256 = data.get("sha256")
            return DownloadResult(
                tinker_path=str(tp),
                directory=target,
                archive_bytes=int(data["archive_bytes"]),
                bytes_fetched=0,
                resumed_from=0,
                range_requests=0,
                sha256=sha256 if isinstance(sha256, str) else None,
                sha256_verified=bool(data["sha256_verified"]),
                files=tuple(str(f) for f in data["files"]),
                archive_path=archive_path if isinstance(archive_path, str) and os.path.exists(archive_path) else None,
                method=str(data.get("method", "archive")),
                export_path=data.get("export_path") if isinstance(data.get("export_path"), str) else None,
                export_deleted=bool(data.get("export_deleted", False)),
                file_sha256={str(k): str(v) for k, v in (data.get("file_sha256") or {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def finish(self, result: DownloadResult) -> None:
        """Record ``result`` for the waiters and remove the lock file (still holding the lock)."""
        data = json.dumps(result.to_json(), sort_keys=True).encode("utf-8")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.unlink(self.path)


def _download(
    runner: Runner,
    tp: TinkerPath,
    dest_dir: str,
    overwrite: bool,
    keep_archive: bool,
    wait: float,
    resumes: int,
    progress: Optional[ProgressCallback],
    concurrency: int = _external.DEFAULT_CONCURRENCY,
) -> DownloadResult:
    target = os.path.join(dest_dir, tp.run_id, tp.kind, tp.name)
    existed = os.path.lexists(target)
    if existed and not overwrite:
        raise FileExistsError("%s already exists; pass overwrite=True (--overwrite) to replace it" % target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    lock = _DestinationLock(target, runner.transport.stopping)
    while True:
        try:
            current = lock.acquire()
            if not existed and os.path.lexists(target):
                # Another process finished this download while we waited for the lock: use its copy.
                found = lock.finished(tp, target)
                if found is None:
                    raise FileExistsError("%s appeared while waiting for another download into it, without a "
                                          "record of that download; pass overwrite=True (--overwrite) to replace it"
                                          % target)
                logger.debug("%s was downloaded by another process while this one waited", target)
                if progress is not None:
                    progress(DownloadProgress(phase="done", bytes_done=found.archive_bytes,
                                              bytes_total=found.archive_bytes, resumed_from=0, elapsed=0.0))
                return found
            if not current:
                continue  # the file we locked was removed by a holder that finished: lock the new one
            result = _download_locked(runner, tp, target, overwrite, keep_archive, wait, resumes, progress, concurrency)
            lock.finish(result)
            return result
        finally:
            lock.release()


def _download_locked(
    runner: Runner,
    tp: TinkerPath,
    target: str,
    overwrite: bool,
    keep_archive: bool,
    wait: float,
    resumes: int,
    progress: Optional[ProgressCallback],
    concurrency: int,
) -> DownloadResult:
    """Under the destination's lock: the 0.38 export download, or the archive when the server has no export."""
    try:
        return _external.download(runner, tp, target, overwrite, resumes, concurrency, progress)
    except _external.NoExport as exc:
        logger.info("the server has no save_weights_external (%s); downloading the archive of %s instead", exc, tp)
    return _download_archive_into(runner.transport, tp, target, keep_archive, wait, resumes, progress)


def _download_archive_into(
    transport: Transport,
    tp: TinkerPath,
    target: str,
    keep_archive: bool,
    wait: float,
    resumes: int,
    progress: Optional[ProgressCallback],
) -> DownloadResult:
    parent = os.path.dirname(target)
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
    max_concurrency: int = _external.DEFAULT_CONCURRENCY,
) -> "concurrent.futures.Future[DownloadResult]":
    """Download a checkpoint's files, verified, into ``<dest_dir>/<run_id>/<kind>/<name>``, as SDK 0.38 does.

    A training checkpoint (``tinker://<run>/weights/<name>``) is exported first: a new run is loaded from
    it and ``save_weights_external`` writes its weights as adapter files
    (``tinker://<new run>/external_weights/download``, TTL 1 hour). An ``external_weights`` checkpoint is
    fetched as it is. Each file comes from its own signed URL (a plain GET: never the API key or the
    client's headers), at most ``max_concurrency`` at a time, streamed in 1 MiB chunks and hashed while
    written. URLs are signed again before they expire (or after a 401/403), and each signing renews the
    export's TTL. A transfer that breaks off resumes with HTTP Range, up to ``max_resumes`` times per file
    in this call; the partial files (``<target>.part/``) and the export (recorded in
    ``<target>.download.json``) are kept for the next call, which resumes them while the export lives.
    Sizes and, where the server announces them, sha256 digests are checked before anything is moved to
    the target; file names from the server are refused if absolute, with ``..`` or through a symbolic
    link. After success the export is deleted.

    A server without ``save_weights_external`` (404/405 on it) gets the older archive route: ``GET
    .../archive`` (waiting up to ``wait_timeout`` while it is built), a ranged, resumable transfer to
    ``<target>.tar.part``, verification and a safe extraction.

    Calls into the same target, from any processes, take turns under an OS lock on
    ``<target>.tar.lock``: one downloads, the others wait and then return its copy.

    Args:
        service: the service client to use.
        path: ``tinker://<run_id>/weights/<name>`` or ``tinker://<run_id>/external_weights/<name>``.
        dest_dir: directory under which the files are placed (created if needed).
        overwrite: replace an existing download; otherwise its presence is an error.
        keep_archive: with the archive route, keep the verified archive as ``<target>.tar``.
        wait_timeout: longest wait in seconds for an archive to be built.
        max_resumes: Range resumes tried per file in this call after a transfer breaks off.
        progress: called with :class:`DownloadProgress` from worker threads (one at a time); an exception
            it raises aborts the download.
        max_concurrency: files fetched at once.

    Returns:
        A Future of :class:`DownloadResult`.

    Raises:
        UsageError, TypeError: bad arguments, or a sampler checkpoint (immediately; nothing is sent).
        FileExistsError: the target exists and ``overwrite`` is False (set on the Future).
        ArchiveChecksumError: size or sha256 mismatch; nothing moved to the target (set on the Future).
        UnsafeArchiveError: an unsafe file name or archive member; nothing written there (set on the Future).
        DownloadError: the transfer failed; partial files and the export are kept for a resume (set on the Future).
        APITimeoutError: an archive was not ready within ``wait_timeout`` (set on the Future).
        NotFoundError, APIStatusError, APIConnectionError: other failures (set on the Future).
    """
    runner = runner_of(service)
    tp = parse_path(path, training=False)
    if not isinstance(dest_dir, (str, os.PathLike)) or not os.fspath(dest_dir):
        raise UsageError("dest_dir must be a non-empty path, got %r" % (dest_dir,))
    for flag, value in (("overwrite", overwrite), ("keep_archive", keep_archive)):
        if not isinstance(value, bool):
            raise UsageError("%s must be a bool, got %r" % (flag, value))
    if isinstance(wait_timeout, bool) or not isinstance(wait_timeout, (int, float)) or wait_timeout < 0:
        raise UsageError("wait_timeout must be a number of seconds >= 0, got %r" % (wait_timeout,))
    _paths.check_int(max_resumes, "max_resumes", minimum=0)
    _paths.check_int(max_concurrency, "max_concurrency", minimum=1)
    if progress is not None and not callable(progress):
        raise TypeError("progress must be callable or None")
    if tp.kind == "sampler_weights":
        raise UsageError(
            "%s is a sampler checkpoint, which cannot be downloaded; download the training checkpoint "
            "tinker://%s/weights/<name> saved with it, or an external_weights export" % (path, tp.run_id)
        )
    return runner.submit(
        _download,
        runner,
        tp,
        os.fspath(dest_dir),
        overwrite,
        keep_archive,
        float(wait_timeout),
        max_resumes,
        progress,
        max_concurrency,
    )
