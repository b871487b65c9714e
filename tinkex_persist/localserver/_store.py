"""Directory-backed checkpoint store of the local server: atomic saves, an index, TTLs and tar archives.

Layout under ``root``: ``index.json`` (a snapshot) plus ``journal.log`` (fsync'd JSON lines appended since
the snapshot) are together the only source of truth for what exists; ``data/<uuid>/`` holds one committed
checkpoint (``weights.bin``, ``optimizer.bin``, ``manifest.json``) and ``tmp/`` saves in progress.
``lock`` is held (an OS file lock, released by the OS when the process dies) by the one store that owns
the root: a second store refuses it with :class:`RootInUseError`, since its start-up clean-up would remove
the first one's newer checkpoints as orphans.
A save appends one journal line, so its cost does not grow with the number of checkpoints. At startup,
and when the journal outgrows the index, the journal is folded into a new snapshot; a torn last line
(a crash mid-append) is ignored, since its save never reported success.
"""

import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tarfile
import threading
import uuid
from datetime import datetime, timezone
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, Union, overload

from .. import _paths, _wire
from ..exceptions import RootInUseError, UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

FILES = ("weights.bin", "optimizer.bin")
MANIFEST = "manifest.json"
#: Name of the lock file in the root; it holds the owner's pid and host name, for the error message.
LOCK_FILE = "lock"


class StoreError(Exception):
    """A checkpoint operation failed for a reason the caller can fix."""


@overload
def iso(ts: float) -> str: ...


@overload
def iso(ts: Optional[float]) -> Optional[str]: ...


def iso(ts: Optional[float]) -> Optional[str]:
    """Format an epoch time as RFC 3339 UTC with a ``Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class RootLock:
    """An exclusive, non-blocking OS lock on ``<root>/lock``, held from construction until :meth:`release`.

    ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows: the OS drops the lock when its process ends,
    even by ``kill -9``, so a crashed server never leaves its root locked. The file itself stays.

    Raises:
        RootInUseError: Another store (in this or another process) holds the lock.
    """

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, LOCK_FILE)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = self._try_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            try:
                owner = os.read(fd, 200).decode("utf-8", "replace").strip()
            except OSError:  # pragma: no cover - Windows: the locked byte cannot be read
                owner = ""
            finally:
                os.close(fd)
            raise RootInUseError(
                "checkpoint root %s is in use by another local server%s; stop it or choose another root"
                % (root, " (%s)" % owner if owner else ""),
                root=root,
            )
        os.ftruncate(fd, 0)
        os.write(fd, ("pid %d on %s\n" % (os.getpid(), socket.gethostname())).encode("utf-8"))
        self._fd: Optional[int] = fd

    def _try_lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        return _try_lock_without_fcntl(fd, self.path)  # pragma: no cover - Windows and others

    def release(self) -> None:
        """Release the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if fcntl is None and msvcrt is not None:  # pragma: no cover - Windows
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
            except OSError:
                pass
        os.close(fd)  # closing drops a flock


def _try_lock_without_fcntl(fd: int, path: str) -> bool:  # pragma: no cover - Windows and others
    if msvcrt is not None:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    # Neither primitive exists (e.g. WASI): serve, but say that the root is unguarded.
    logger.warning("no file locking on this platform: never serve the root of %s from two processes", path)
    return True


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


#: A file's content for :meth:`CheckpointStore.save_files`: its bytes, or ``writer(binary_file)``.
FileSource = Union[bytes, Callable[[BinaryIO], None]]


class _Digesting:
    """A write-only file wrapper that counts and hashes what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.size, self.sha = f, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


def _write_source(path: str, source: FileSource) -> Dict[str, Any]:
    with open(path, "wb") as f:
        out = _Digesting(f)  # type: ignore[arg-type]
        if isinstance(source, bytes):
            out.write(source)
        else:
            source(out)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    return {"size": out.size, "sha256": out.sha.hexdigest()}


class CheckpointStore:
    """Training checkpoints on disk, keyed by ``tinker://<run_id>/weights/<name>``. Thread-safe."""

    def __init__(self, root: str, clock: Callable[[], float]) -> None:
        self.root = os.path.abspath(root)
        self.clock = clock
        self._lock = threading.RLock()
        self._data = os.path.join(self.root, "data")
        self._tmp = os.path.join(self.root, "tmp")
        self._index_path = os.path.join(self.root, "index.json")
        self._journal_path = os.path.join(self.root, "journal.log")
        self._archives: Dict[str, Tuple[bytes, str]] = {}
        self._journal: Optional[int] = None
        self._journal_records = 0
        self._closed = False
        os.makedirs(self.root, exist_ok=True)
        # Nothing is read, written or removed before the lock is held (see the module docstring).
        self._root_lock = RootLock(self.root)
        try:
            for d in (self._data, self._tmp):
                os.makedirs(d, exist_ok=True)
            self._index: Dict[str, Dict[str, Any]] = {}
            if os.path.exists(self._index_path):
                with open(self._index_path, "rb") as f:
                    self._index = json.load(f)["checkpoints"]
            self._replay()
            self._compact()
            self._cleanup()
        except BaseException:
            self._root_lock.release()
            raise

    def _replay(self) -> None:
        if not os.path.exists(self._journal_path):
            return
        with open(self._journal_path, "rb") as f:
            lines = f.read().split(b"\n")
        for n, line in enumerate(lines):
            if not line:
                continue
            try:
                record = json.loads(line)
                op = record["op"]
            except (ValueError, KeyError, TypeError):
                # Only the last line can be torn (appends are sequential and fsync'd): that save never answered.
                logger.debug("ignoring unreadable journal line %d of %d", n + 1, len(lines))
                continue
            if op == "put":
                self._index[record["path"]] = record["entry"]
            elif op == "del":
                for path in record["paths"]:
                    self._index.pop(path, None)

    def _compact(self) -> None:
        """Fold the journal into a new ``index.json`` snapshot, then start an empty journal."""
        self._close_journal()
        tmp = "%s.%s.tmp" % (self._index_path, uuid.uuid4().hex)
        _write_file(tmp, json.dumps({"version": 1, "checkpoints": self._index}, sort_keys=True).encode("utf-8"))
        os.replace(tmp, self._index_path)
        _fsync_dir(self.root)
        # Replaying the old journal onto the new snapshot changes nothing, so a crash here is harmless.
        if os.path.exists(self._journal_path):
            os.unlink(self._journal_path)
            _fsync_dir(self.root)
        self._journal_records = 0

    def _close_journal(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None

    def close(self) -> None:
        """Release the journal's file handle and the root's lock; later changes fail with :class:`StoreError`."""
        with self._lock:
            self._closed = True
            self._close_journal()
            self._root_lock.release()

    def _journal_replaced(self) -> bool:
        assert self._journal is not None
        try:
            on_disk = os.stat(self._journal_path)
        except FileNotFoundError:
            return True
        ours = os.fstat(self._journal)
        return (ours.st_dev, ours.st_ino) != (on_disk.st_dev, on_disk.st_ino)

    def _append(self, record: Dict[str, Any]) -> None:
        """Make one change durable: one fsync'd journal line (O(1) in the number of checkpoints).

        Raises:
            StoreError: The store is closed (the server is stopping): the change is not made.
        """
        if self._closed:
            raise StoreError("the checkpoint store is closed (the server is stopping)")
        if self._journal is not None and self._journal_replaced():
            # Someone removed or replaced our journal: lines appended to it would be lost at the next start,
            # and the checkpoints they acknowledged deleted as orphans. Rewrite the state we hold instead.
            logger.warning("journal %s was removed or replaced behind the server; rewriting the index", self._journal_path)
            self._compact()
        if self._journal is None:
            self._journal = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            _fsync_dir(self.root)
        line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
        written = os.write(self._journal, line)
        if written != len(line):  # pragma: no cover - regular files take the whole write
            raise OSError("short write to %s" % self._journal_path)
        os.fsync(self._journal)
        self._journal_records += 1

    def _maybe_compact(self) -> None:
        """Fold the journal once it outgrows the index (after the change is applied to ``_index``): O(1) amortised."""
        if self._journal_records > max(1000, len(self._index)):
            self._compact()

    def _cleanup(self) -> None:
        # A save killed before its index write leaves a tmp dir or an unreferenced data dir: both are invisible.
        referenced = {e["dir"] for e in self._index.values()}
        for name in os.listdir(self._tmp):
            shutil.rmtree(os.path.join(self._tmp, name), ignore_errors=True)
        for name in os.listdir(self._data):
            if name not in referenced:
                logger.debug("removing orphan checkpoint dir %s", name)
                shutil.rmtree(os.path.join(self._data, name), ignore_errors=True)
        for name in os.listdir(self.root):
            if name.startswith("index.json.") and name.endswith(".tmp"):
                os.unlink(os.path.join(self.root, name))


    def _live(self, entry: Optional[Dict[str, Any]]) -> bool:
        return entry is not None and (entry["expires_at"] is None or entry["expires_at"] > self.clock())

    def _drop(self, paths: List[str]) -> None:
        dirs = [self._index[p]["dir"] for p in paths]
        self._append({"op": "del", "paths": list(paths)})
        for p in paths:
            del self._index[p]
        self._maybe_compact()
        for d in dirs:
            self._archives.pop(d, None)
            shutil.rmtree(os.path.join(self._data, d), ignore_errors=True)

    def _purge_expired(self) -> None:
        expired = [p for p, e in self._index.items() if not self._live(e)]
        if expired:
            logger.debug("removing %d expired checkpoints", len(expired))
            self._drop(expired)

    def get(self, tinker_path: str) -> Optional[Dict[str, Any]]:
        """Return the index entry of a live checkpoint, or None."""
        with self._lock:
            entry = self._index.get(tinker_path)
            return dict(entry) if entry is not None and self._live(entry) else None

    def list(self, run_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Return live entries, newest first, of one run or of all runs."""
        with self._lock:
            self._purge_expired()
            entries = [dict(e) for e in self._index.values() if run_id is None or e["run_id"] == run_id]
        entries.sort(key=lambda e: (-e["time"], e["tinker_path"]))
        return entries

    def run_ids(self) -> List[str]:
        with self._lock:
            return sorted({e["run_id"] for e in self._index.values()})

    def save(
        self,
        run_id: str,
        name: str,
        weights: bytes,
        optimizer: bytes,
        info: Dict[str, Any],
        ttl_seconds: Optional[int],
        overwrite: bool,
        user_metadata: Optional[Dict[str, str]],
        hook: Optional[Callable[[str, str], None]] = None,
        kind: str = "weights",
    ) -> Dict[str, Any]:
        """Write a checkpoint atomically: temp dir, fsync, rename, then the index. Return its entry.

        ``kind`` is the path segment: ``weights`` (training state) or ``sampler_weights`` (weights for
        sampling; its optimizer file is empty).
        """
        try:
            _paths.check_name(name)
            _paths.check_ttl(ttl_seconds)
        except UsageError as exc:
            raise StoreError(exc.message) from None
        path = str(_paths.TinkerPath(run_id, kind, name))
        with self._lock:
            old = self._index.get(path)
            if self._live(old) and not overwrite:
                raise StoreError("checkpoint %s already exists; pass overwrite=True to replace it" % path)
            key = uuid.uuid4().hex
            tmp = os.path.join(self._tmp, key)
            os.mkdir(tmp)
            files = {}
            for fname, data in zip(FILES, (weights, optimizer)):
                _write_file(os.path.join(tmp, fname), data)
                files[fname] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            now = self.clock()
            manifest = dict(info, format=1, tinker_path=path, created=iso(now), files=files)
            manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
            _write_file(os.path.join(tmp, MANIFEST), manifest_bytes)
            _fsync_dir(tmp)
            if hook:
                hook("files_written", path)
            os.rename(tmp, os.path.join(self._data, key))
            _fsync_dir(self._data)
            if hook:
                hook("dir_renamed", path)
            entry = dict(
                info,
                run_id=run_id,
                name=name,
                kind=kind,
                tinker_path=path,
                dir=key,
                time=now,
                expires_at=None if ttl_seconds is None else now + ttl_seconds,
                size_bytes=len(weights) + len(optimizer) + len(manifest_bytes),
                user_metadata=user_metadata,
                public=False,
                weights_sha256=files["weights.bin"]["sha256"],
                optimizer_sha256=files["optimizer.bin"]["sha256"],
            )
            self._append({"op": "put", "path": path, "entry": entry})
            self._index[path] = entry
            self._maybe_compact()
            if hook:
                hook("index_written", path)
            if old is not None:
                self._archives.pop(old["dir"], None)
                shutil.rmtree(os.path.join(self._data, old["dir"]), ignore_errors=True)
            return dict(entry)

    def save_files(
        self,
        run_id: str,
        kind: str,
        name: str,
        files: Dict[str, FileSource],
        info: Dict[str, Any],
        ttl_seconds: Optional[int],
        user_metadata: Optional[Dict[str, str]] = None,
    ) -> Dict[str, Any]:
        """Write a checkpoint of ``kind`` holding ``files`` (bytes, or a writer called with the open file).

        Atomic like :meth:`save`. The entry's ``files`` maps each name to its size and sha256; a name that
        already exists is refused. Return the entry.
        """
        try:
            _paths.check_name(name)
            _paths.check_ttl(ttl_seconds)
        except UsageError as exc:
            raise StoreError(exc.message) from None
        path = str(_paths.TinkerPath(run_id, kind, name))
        with self._lock:
            if self._live(self._index.get(path)):
                raise StoreError("checkpoint %s already exists" % path)
            key = uuid.uuid4().hex
            tmp = os.path.join(self._tmp, key)
            os.mkdir(tmp)
            listed: Dict[str, Dict[str, Any]] = {}
            for fname, source in sorted(files.items()):
                listed[fname] = _write_source(os.path.join(tmp, fname), source)
            now = self.clock()
            manifest = dict(info, format=1, tinker_path=path, created=iso(now), files=listed)
            _write_file(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
            _fsync_dir(tmp)
            os.rename(tmp, os.path.join(self._data, key))
            _fsync_dir(self._data)
            entry = dict(
                info,
                run_id=run_id,
                kind=kind,
                name=name,
                tinker_path=path,
                dir=key,
                time=now,
                expires_at=None if ttl_seconds is None else now + ttl_seconds,
                size_bytes=sum(f["size"] for f in listed.values()),
                user_metadata=user_metadata,
                public=False,
                files=listed,
            )
            self._append({"op": "put", "path": path, "entry": entry})
            self._index[path] = entry
            self._maybe_compact()
            return dict(entry)

    def copy(self, entry: Dict[str, Any], run_id: str, ttl_seconds: Optional[int]) -> Dict[str, Any]:
        """Copy a checkpoint into training run ``run_id`` (same kind and name, files hard-linked when possible)."""
        kind = entry.get("kind", "weights")
        path = str(_paths.TinkerPath(run_id, kind, entry["name"]))
        with self._lock:
            if self._live(self._index.get(path)):
                raise StoreError("checkpoint %s already exists" % path)
            key = uuid.uuid4().hex
            tmp = os.path.join(self._tmp, key)
            src = os.path.join(self._data, entry["dir"])
            os.mkdir(tmp)
            for fname in os.listdir(src):
                try:
                    os.link(os.path.join(src, fname), os.path.join(tmp, fname))
                except OSError:  # pragma: no cover - file systems without hard links
                    shutil.copyfile(os.path.join(src, fname), os.path.join(tmp, fname))
            _fsync_dir(tmp)
            os.rename(tmp, os.path.join(self._data, key))
            _fsync_dir(self._data)
            now = self.clock()
            copied = dict(
                entry,
                run_id=run_id,
                tinker_path=path,
                dir=key,
                time=now,
                expires_at=None if ttl_seconds is None else now + ttl_seconds,
                public=False,
                copied_from=entry["tinker_path"],
            )
            self._append({"op": "put", "path": path, "entry": copied})
            self._index[path] = copied
            self._maybe_compact()
            return dict(copied)

    def file_path(self, entry: Dict[str, Any], fname: str) -> Optional[str]:
        """The on-disk path of one listed file of a checkpoint, or None if it lists no such file."""
        if fname not in (entry.get("files") or {}):
            return None
        return os.path.join(self._data, entry["dir"], fname)

    def read(self, entry: Dict[str, Any]) -> Tuple[bytes, bytes]:
        """Return the weights and optimizer bytes of a checkpoint, checked against its manifest."""
        d = os.path.join(self._data, entry["dir"])
        out = []
        for fname, digest in zip(FILES, (entry["weights_sha256"], entry["optimizer_sha256"])):
            with open(os.path.join(d, fname), "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != digest:
                raise StoreError(
                    "checkpoint %s is corrupt: %s does not match its sha256" % (entry["tinker_path"], fname)
                )
            out.append(data)
        return out[0], out[1]

    def delete(self, tinker_path: str) -> bool:
        with self._lock:
            if not self._live(self._index.get(tinker_path)):
                return False
            self._drop([tinker_path])
            return True

    def update(self, tinker_path: str, **changes: Any) -> bool:
        """Change ``expires_at`` or ``public`` of a live checkpoint; False if there is none."""
        with self._lock:
            entry = self._index.get(tinker_path)
            if entry is None or not self._live(entry):
                return False
            entry = dict(entry, **changes)
            self._append({"op": "put", "path": tinker_path, "entry": entry})
            self._index[tinker_path] = entry
            self._maybe_compact()
            return True

    def archive(self, entry: Dict[str, Any]) -> Tuple[bytes, str]:
        """Return a deterministic tar of the checkpoint's files and its sha256 hex digest."""
        with self._lock:
            cached = self._archives.get(entry["dir"])
            if cached is not None:
                return cached
            buf = io.BytesIO()
            d = os.path.join(self._data, entry["dir"])
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for fname in sorted(tuple(entry.get("files") or FILES) + (MANIFEST,)):
                    with open(os.path.join(d, fname), "rb") as f:
                        data = f.read()
                    ti = tarfile.TarInfo(fname)
                    ti.size, ti.mtime, ti.mode = len(data), int(entry["time"]), 0o644
                    tar.addfile(ti, io.BytesIO(data))
            blob = buf.getvalue()
            self._archives[entry["dir"]] = result = (blob, hashlib.sha256(blob).hexdigest())
            return result


def checkpoint_wire(entry: Dict[str, Any]) -> _wire.Checkpoint:
    """Return the wire object of one checkpoint (``Checkpoint`` in the SDK)."""
    kind = entry.get("kind", "weights")  # entries written before sampler checkpoints have no kind
    return _wire.Checkpoint(
        checkpoint_id="%s/%s" % (kind, entry["name"]),
        checkpoint_type=_paths.KINDS[kind],
        time=iso(entry["time"]),
        tinker_path=entry["tinker_path"],
        size_bytes=entry["size_bytes"],
        public=entry["public"],
        user_metadata=entry["user_metadata"],
        expires_at=iso(entry["expires_at"]),
    )
