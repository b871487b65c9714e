"""Download of external weights per SDK 0.38: signed per-file URLs, fetched concurrently with Range resume.

A training checkpoint is first exported (``Runner.export_external``: a new run loaded from it, then
``save_weights_external`` with a short TTL); an ``external_weights`` checkpoint is fetched as it is.
Files land in ``<target>.part/`` (kept between calls) and move to ``<target>`` only once every file has
its announced size and sha256. ``<target>.download.json`` records the export so that a later call
reuses it (and the partial files) while it lives. Every wait and resume goes through ``_retry.Retry``.
"""

import base64
import binascii
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

import requests

from . import _ops, _wire
from ._converter import dumps
from ._paths import TinkerPath, parse_path
from ._retry import Retry, attach
from ._time import parse_time
from ._transport import PERMANENT, UNREACHABLE, USER_AGENT, Transport, describe_failure, read_some
from .client import Runner
from .config import is_loopback_host
from .exceptions import (
    APIStatusError,
    ArchiveChecksumError,
    DownloadError,
    NotFoundError,
    OperationCancelledError,
    TinkexPersistError,
    UnsafeArchiveError,
)
from .types import DownloadProgress, DownloadResult

logger = logging.getLogger(__name__)

#: Name of the temporary export of a training checkpoint (as the official CLI names it).
EXPORT_NAME = "download"
#: TTL in seconds of that export; renewed each time its URLs are signed, so it outlives them.
EXPORT_TTL = 3600
#: Bytes read from a signed URL per read (and the most a cut can lose that was not yet written).
CHUNK_SIZE = 1 << 20
#: Files fetched at once by default.
DEFAULT_CONCURRENCY = 4
#: Re-sign URLs this long before they expire (at most; a quarter of their lifetime when that is shorter).
RESIGN_MARGIN = 300.0
#: Metadata of the run the export creates on the service.
EXPORT_METADATA = {"created_by": "tinkex-persist download"}

SHA256_HEADERS = ("X-Checkpoint-Sha256", "X-Content-Sha256", "X-Checksum-Sha256", "X-Goog-Meta-Sha256", "X-Amz-Meta-Sha256")
_EXPIRED = (401, 403, 410)
_STATE_FORMAT = 1

ProgressCallback = Callable[[DownloadProgress], None]


class NoExport(Exception):
    """The server has no ``save_weights_external`` (404/405): the caller falls back to the archive route."""


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return "%s://%s/<signed>" % (parts.scheme, parts.netloc.rsplit("@", 1)[-1])


def safe_relpath(name: Any) -> str:
    """``name`` (a file path from the server, untrusted) as a safe relative path, or raise UnsafeArchiveError."""
    if not isinstance(name, str) or not name:
        raise UnsafeArchiveError("the server named a file %r: not a file name" % (name,))
    if "\\" in name or "\x00" in name or any(ord(c) < 32 for c in name):
        raise UnsafeArchiveError("the server named a file %r: backslash or control character" % (name,))
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise UnsafeArchiveError("the server named a file %r: an absolute path" % (name,))
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeArchiveError("the server named a file %r: empty, '.' or '..' component" % (name,))
    return "/".join(parts)


def _announced_sha256(headers: Any) -> Optional[str]:
    for name in SHA256_HEADERS:
        value = (headers.get(name) or "").strip().lower()
        if value.startswith("sha256="):
            value = value[len("sha256="):]
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    digest = headers.get("Repr-Digest") or headers.get("Digest")
    if digest:  # RFC 9530 "sha-256=:<base64>:" or RFC 3230 "SHA-256=<base64>"
        m = re.search(r"sha-256=:?([A-Za-z0-9+/=]+):?", digest, re.IGNORECASE)
        if m:
            try:
                raw = base64.b64decode(m.group(1), validate=True)
            except (binascii.Error, ValueError):
                return None
            if len(raw) == 32:
                return raw.hex()
    return None


class _Urls:
    """The export's current signed URLs; re-signed (and the export's TTL renewed) near expiry or on 401/403."""

    def __init__(self, transport: Transport, tp: TinkerPath, renew_ttl: Optional[int]) -> None:
        self.transport, self.tp, self.renew_ttl = transport, tp, renew_ttl
        self.lock = threading.Lock()
        self.urls: Dict[str, str] = {}
        self.expires = 0.0
        self.margin = 0.0
        self.generation = 0
        self.signings = 0
        self.sign()

    def sign(self) -> None:
        resp = _ops.call(
            self.transport, "GET", self.tp.api_path + "/external_weights_urls", None, _wire.ExternalWeightsUrlsResponse
        )
        if self.renew_ttl is not None:
            body = dumps(_wire.SetTtlRequest(ttl_seconds=self.renew_ttl))
            self.transport.request("PUT", _ops.API + self.tp.api_path + "/ttl", body)
        now = time.time()
        expires = parse_time(resp.expires)
        self.expires = expires.timestamp() if expires is not None else now + 3600.0
        self.margin = min(RESIGN_MARGIN, max(0.0, self.expires - now) / 4)
        self.urls = dict(resp.urls)
        self.generation += 1
        self.signings += 1
        logger.debug("signed %d URLs of %s, valid for %.0f s", len(self.urls), self.tp, self.expires - now)

    def get(self, name: str, stale: int = 0) -> Tuple[str, int]:
        """The URL of ``name`` and its generation; re-sign first if it is near expiry or generation ``stale`` failed."""
        with self.lock:
            if time.time() >= self.expires - self.margin or (stale and stale == self.generation):
                self.sign()
            if name not in self.urls:
                raise DownloadError("the server no longer lists file %s of %s" % (name, self.tp))
            return self.urls[name], self.generation


class _Progress:
    def __init__(self, callback: Optional[ProgressCallback], total: Optional[int], done: int) -> None:
        self.callback, self.total, self.done = callback, total, done
        self.started = time.monotonic()
        self.sizes: Dict[str, int] = {}
        self.lock = threading.Lock()
        self.resumed_from = done

    def size(self, name: str, size: int, count: int) -> None:
        """Note a file's size; once every file's is known, ``total`` is their sum."""
        with self.lock:
            self.sizes[name] = size
            if len(self.sizes) == count:
                self.total = sum(self.sizes.values())

    def add(self, n: int) -> None:
        """Count ``n`` bytes written; report at every chunk (the caller's callback decides how often to show it)."""
        if self.callback is None:
            with self.lock:
                self.done += n
            return
        with self.lock:
            self.done += n
            self.callback(DownloadProgress(phase="downloading", bytes_done=self.done, bytes_total=self.total,
                                           resumed_from=self.resumed_from, elapsed=time.monotonic() - self.started))

    def phase(self, phase: str) -> None:
        if self.callback is not None:
            with self.lock:
                self.callback(DownloadProgress(phase=phase, bytes_done=self.done, bytes_total=self.total,
                                               resumed_from=self.resumed_from, elapsed=time.monotonic() - self.started))


class _File:
    """One file of the export: where its partial copy is, what the server announced, what this call fetched."""

    def __init__(self, name: str, local: str) -> None:
        self.name, self.local = name, local
        self.size: Optional[int] = None
        self.sha256: Optional[str] = None
        self.digest = ""
        self.fetched = 0
        self.ranged = 0
        self.resumed_from = 0


class _Hasher:
    """sha256 on a thread of its own, fed the chunks as they are written: hashing overlaps the network reads
    (hashlib releases the GIL). At most ``depth`` chunks wait, so memory stays bounded."""

    def __init__(self, h: Any, depth: int = 8) -> None:
        self.h = h
        self.queue: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, name="tinkex_persist-sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            self.h.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.queue.put(chunk)

    def close(self) -> None:
        """Wait for the queued chunks to be hashed and end the thread."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def hexdigest(self) -> str:
        self.close()
        return str(self.h.hexdigest())


def _open_partial(path: str, offset: int) -> Any:
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o644)
    f = os.fdopen(fd, "wb", buffering=0)
    f.seek(offset)
    f.truncate()
    return f


def _prefix_hash(path: str, length: int) -> Any:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left > 0:
            block = f.read(min(CHUNK_SIZE, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


def _total(resp: requests.Response, offset: int, name: str) -> Optional[int]:
    if resp.status_code == 206:
        m = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != offset:
            raise DownloadError("server answered a Range request for %s from byte %d with Content-Range %r"
                                % (name, offset, resp.headers.get("Content-Range")))
        return None if m.group(3) == "*" else int(m.group(3))
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _fetch_file(
    session: requests.Session,
    urls: _Urls,
    f: _File,
    timeout: Tuple[float, float],
    resumes: int,
    progress: _Progress,
    stopping: threading.Event,
    count: int,
) -> None:
    """Fetch one file into its partial copy, resuming with Range after a cut, hashing while writing."""
    retry = Retry(total=resumes, backoff_factor=0, interrupt=stopping)
    stale = 0
    while True:
        if stopping.is_set():
            raise urls.transport.stopped_error("GET", f.name, f.local if os.path.exists(f.local) else None)
        url, generation = urls.get(f.name, stale)
        offset = os.path.getsize(f.local) if os.path.lexists(f.local) else 0
        if os.path.islink(f.local):
            raise UnsafeArchiveError("partial file %s is a symbolic link; refusing to write through it" % f.local)
        if f.size is not None and offset > f.size:
            os.remove(f.local)
            offset = 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = "bytes=%d-" % offset
        try:
            with session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=False) as resp:
                status = resp.status_code
                logger.debug("GET %s (%s from byte %d) -> %d", _safe_url(url), f.name, offset, status)
                if status in _EXPIRED and stale != generation:
                    stale = generation  # the URL expired or was revoked: sign again, once per generation
                    continue
                if status == 416 and offset:
                    m = re.match(r"\s*bytes\s+\*/(\d+)", resp.headers.get("Content-Range", ""))
                    if m and int(m.group(1)) == offset:
                        f.size = offset
                        f.sha256 = _announced_sha256(resp.headers) or f.sha256
                        f.resumed_from = offset
                        f.digest = _prefix_hash(f.local, offset).hexdigest()
                        return
                    os.remove(f.local)  # the partial file is longer than the file: start again
                    continue
                if status not in (200, 206):
                    raise DownloadError("GET %s -> %d: file %s not downloaded" % (_safe_url(url), status, f.name),
                                        partial_path=f.local if os.path.exists(f.local) else None)
                if status == 200:
                    offset = 0
                else:
                    f.ranged += 1
                total = _total(resp, offset, f.name)
                if f.size is not None and total is not None and total != f.size:
                    raise DownloadError("file %s changed size during the download (%d, then %d bytes)"
                                        % (f.name, f.size, total), partial_path=f.local)
                f.size = total if total is not None else f.size
                if f.size is not None:
                    progress.size(f.name, f.size, count)
                f.sha256 = _announced_sha256(resp.headers) or f.sha256
                if not f.fetched and not f.ranged or offset and not f.resumed_from:
                    f.resumed_from = offset
                h = _Hasher(_prefix_hash(f.local, offset) if offset else hashlib.sha256())
                raw = resp.raw
                with _open_partial(f.local, offset) as out, contextlib.closing(h):
                    while True:
                        if stopping.is_set():
                            raise urls.transport.stopped_error("GET", _safe_url(url), f.local)
                        chunk = read_some(raw, CHUNK_SIZE, None)
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        f.fetched += len(chunk)
                        progress.add(len(chunk))
                have = os.path.getsize(f.local)
                if f.size is None or have >= f.size:
                    f.digest = h.hexdigest()
                    if f.size is None:
                        f.size = have
                    return
                cause = "answer ended at byte %d of %d" % (have, f.size)
        except (requests.RequestException, ConnectionError) as exc:
            if stopping.is_set():  # abort() cut the connection
                raise urls.transport.stopped_error("GET", _safe_url(url), f.local) from exc
            parts = urlsplit(url)
            kind, cause = describe_failure(exc, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            if kind in PERMANENT:
                raise DownloadError("download of %s failed (%s)" % (f.name, cause), partial_path=f.local) from exc
            retry = retry.increment("GET", _safe_url(url), error=cause, unreachable=kind in UNREACHABLE)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "urllib3":
                raise
            if stopping.is_set():  # abort() cut the connection
                raise urls.transport.stopped_error("GET", _safe_url(url), f.local) from exc
            cause = "%s: %s" % (type(exc).__name__, exc)
            retry = retry.increment("GET", _safe_url(url), error=cause)
        else:
            retry = retry.increment("GET", _safe_url(url), error=cause)
        have = os.path.getsize(f.local) if os.path.exists(f.local) else 0
        if stopping.is_set():
            raise urls.transport.stopped_error("GET", _safe_url(url), f.local)
        if retry.is_exhausted() or not retry.sleep():
            raise attach(
                DownloadError(
                    "download of %s broke off at byte %d of %s (%s); %d resume(s) tried"
                    % (f.name, have, f.size if f.size is not None else "?", cause, retry.failures - 1),
                    partial_path=f.local,
                ),
                retry,
            )
        logger.debug("download of %s broke off at byte %d (%s); resuming", f.name, have, cause)


def _session(url: str, verify: Any) -> requests.Session:
    # A bare session: a signed URL carries its own authorization and never sees the API key or SDK headers.
    session = requests.Session()
    session.headers.clear()
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "*/*"})
    session.trust_env = not is_loopback_host(urlsplit(url).hostname)
    session.verify = verify
    return session


def _read_state(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _STATE_FORMAT else None


def _write_state(path: str, data: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(dict(data, format=_STATE_FORMAT), f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _export_expiry(state: Dict[str, Any]) -> str:
    when = state.get("renewed_at", 0) + state.get("ttl", EXPORT_TTL)
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def download(
    runner: Runner,
    tp: TinkerPath,
    target: str,
    overwrite: bool,
    resumes: int,
    concurrency: int,
    progress_cb: Optional[ProgressCallback],
) -> DownloadResult:
    """Export (for a training path) and fetch every file into ``target``; raise NoExport to fall back."""
    transport = runner.transport
    cfg = transport.config
    part_dir = target + ".part"
    state_file = target + ".download.json"
    state = _read_state(state_file) if tp.kind == "weights" else None
    if state is not None and state.get("source") != str(tp):
        state = None
    export: Optional[TinkerPath] = None
    reused = False
    urls: Optional[_Urls] = None
    if tp.kind == "external_weights":
        export_tp = tp
        urls = _Urls(transport, tp, None)
    else:
        if state is not None:
            try:
                export = parse_path(state["export"], training=False)
                state["renewed_at"] = time.time()
                urls = _Urls(transport, export, state.get("ttl", EXPORT_TTL))
                reused = True
                logger.debug("reusing export %s of %s", export, tp)
            except (NotFoundError, KeyError, TinkexPersistError) as exc:
                logger.debug("recorded export of %s unusable (%s); exporting again", tp, exc)
                state, export, urls = None, None, None
        if urls is None:
            shutil.rmtree(part_dir, ignore_errors=True)  # partial files of another export
            if progress_cb is not None:
                progress_cb(DownloadProgress(phase="exporting"))
            try:
                exported = runner.export_external(str(tp), EXPORT_NAME, EXPORT_TTL, EXPORT_METADATA)
            except APIStatusError as exc:
                if exc.status_code in (404, 405) and "save_weights_external" in (exc.url or ""):
                    raise NoExport(str(exc)) from exc
                raise
            export = parse_path(exported, training=False)
            state = {"source": str(tp), "export": str(export), "ttl": EXPORT_TTL, "renewed_at": time.time()}
            os.makedirs(os.path.dirname(state_file) or ".", exist_ok=True)
            _write_state(state_file, state)
            urls = _Urls(transport, export, EXPORT_TTL)
        else:
            _write_state(state_file, state)  # type: ignore[arg-type]
        assert export is not None
        export_tp = export
    names = sorted(urls.urls)
    if not names:
        raise DownloadError("checkpoint %s has no files to download" % (export_tp,))
    files: List[_File] = []
    os.makedirs(part_dir, exist_ok=True)
    if os.path.islink(part_dir):
        raise UnsafeArchiveError("%s is a symbolic link; refusing to download into it" % part_dir)
    for name in names:
        rel = safe_relpath(name)
        local = os.path.join(part_dir, *rel.split("/"))
        parent = os.path.dirname(local)
        probe = parent
        while len(probe) > len(part_dir):
            if os.path.islink(probe):
                raise UnsafeArchiveError("%s is a symbolic link; refusing to write through it" % probe)
            probe = os.path.dirname(probe)
        os.makedirs(parent, exist_ok=True)
        files.append(_File(rel, local))
    already = sum(os.path.getsize(f.local) for f in files if os.path.isfile(f.local))
    progress = _Progress(progress_cb, None, already)
    sessions: List[requests.Session] = []
    sessions_lock = threading.Lock()
    local_state = threading.local()

    def fetch(f: _File) -> None:
        session = getattr(local_state, "session", None)
        if session is None:
            session = _session(urls.urls[f.name] if urls is not None else "", cfg.verify)  # type: ignore[union-attr]
            transport.track(session)  # Ctrl-C (abort) cuts its reads too
            local_state.session = session
            with sessions_lock:
                sessions.append(session)
        _fetch_file(session, urls, f, cfg.timeout, resumes, progress, transport.stopping, len(files))  # type: ignore[arg-type]

    def kept(exc: Union[DownloadError, OperationCancelledError]) -> TinkexPersistError:
        """``exc`` with the message saying the export is kept for the next call."""
        assert state is not None
        message = "%s; the export %s is kept until about %s (TTL %d s) and the next call resumes from it" % (
            exc.message, export_tp, _export_expiry(state), state.get("ttl", EXPORT_TTL))
        new: TinkexPersistError
        if isinstance(exc, OperationCancelledError):
            new = OperationCancelledError(message, method=exc.method, url=exc.url,
                                          partial_path=exc.partial_path or part_dir)
        else:
            new = type(exc)(message, partial_path=exc.partial_path or part_dir)
        retries = getattr(exc, "retries", None)
        return attach(new, retries) if retries is not None else new

    try:
        try:
            workers = max(1, min(concurrency, len(files)))
            with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tinkex_persist-download") as pool:
                futures = [pool.submit(fetch, f) for f in files]
                errors = [e for e in (fut.exception() for fut in futures) if e is not None]
                if errors:
                    raise errors[0]
        finally:
            for s in sessions:
                s.close()
        progress.total = sum(f.size or 0 for f in files)
        progress.phase("verifying")
        bad = []
        for f in files:
            have = os.path.getsize(f.local)
            if f.size is not None and have != f.size:
                bad.append("%s is %d bytes, the server announced %d" % (f.name, have, f.size))
            elif f.sha256 is not None and f.digest != f.sha256:
                bad.append("%s has sha256 %s, the server announced %s" % (f.name, f.digest, f.sha256))
            else:
                continue
            os.remove(f.local)  # resuming cannot repair it: the next call fetches it again
        if bad:
            raise ArchiveChecksumError(
                "download of %s failed verification: %s; nothing moved into %s (the bad files were removed)"
                % (tp, "; ".join(bad), target),
                partial_path=part_dir,
            )
    except (DownloadError, OperationCancelledError) as exc:
        if tp.kind != "weights" or state is None:
            raise
        raise kept(exc) from exc
    if os.path.lexists(target):
        if not overwrite:
            raise FileExistsError("%s already exists; pass overwrite=True (--overwrite) to replace it" % target)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            os.remove(target)
    os.rename(part_dir, target)
    export_deleted = False
    if tp.kind == "weights":
        try:
            transport.request("DELETE", _ops.API + export_tp.api_path)
            export_deleted = True
        except NotFoundError:
            export_deleted = True
        except TinkexPersistError as exc:
            logger.warning("could not delete the temporary export %s (%s); it expires within %d s",
                           export_tp, exc, EXPORT_TTL)
        try:
            os.remove(state_file)
        except OSError:
            pass
    total = sum(f.size or 0 for f in files)
    progress.total = total
    progress.done = total
    progress.phase("done")
    verified = all(f.sha256 is not None for f in files)
    return DownloadResult(
        tinker_path=str(tp),
        directory=target,
        archive_bytes=total,
        bytes_fetched=sum(f.fetched for f in files),
        resumed_from=progress.resumed_from,
        range_requests=sum(f.ranged for f in files),
        sha256=None,
        sha256_verified=verified,
        files=tuple(f.name for f in files),
        method="external_weights",
        export_path=None if tp.kind == "external_weights" else str(export_tp),
        export_reused=reused,
        export_deleted=export_deleted,
        url_signings=urls.signings,
        file_sha256={f.name: f.digest for f in files},
    )
