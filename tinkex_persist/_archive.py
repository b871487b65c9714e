"""Safe extraction of a tar archive: every member is checked before anything is written."""

import os
import re
import shutil
import tarfile
from typing import Tuple

from .exceptions import DownloadError, UnsafeArchiveError

__all__ = ("safe_extract",)

#: Bytes copied per chunk while extracting.
CHUNK_SIZE = 64 * 1024


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
