"""Tests for `download_checkpoint`'s archive route (redirect, 503 wait, Range resume, verification) and the safe extractor.

The archive route serves servers that have no ``save_weights_external``: every server here is one
(``external_weights=False``). The SDK 0.38 export download is tested in ``test_download_external.py``.
"""

import hashlib
import io
import os
import tarfile
from urllib.parse import urlsplit

import pytest
import requests

import tinkex_persist as tp
from conftest import SERVER_KEY
from faultproxy import FaultProxy
from tinkex_persist import download, manage
from tinkex_persist.localserver import LocalServer

ARCHIVE_API = "/api/v1/training_runs/*/archive"
SIGNED = "/local/v1/archives/*"


def _archive(server, service, path):
    """Fetch the archive the way a browser would (API key, redirect followed); return (bytes, sha256 header)."""
    run, kind, name = path[len("tinker://"):].split("/")
    url = "%s/api/v1/training_runs/%s/checkpoints/%s/%s/archive" % (server.url, run, kind, name)
    resp = requests.get(url, headers={"X-API-Key": service.config.api_key}, timeout=10)
    assert 200 == resp.status_code
    return resp.content, resp.headers["X-Checkpoint-SHA256"]


def _target(dest, path):
    run, kind, name = path[len("tinker://"):].split("/")
    return os.path.join(str(dest), run, kind, name)


def _signed_responses(server, status):
    return sum(n for (path, code), n in server.stats.responses.items() if path.startswith("/local/v1/archives/") and code == status)


def _signed_requests(server):
    return sum(n for path, n in server.stats.requests.items() if path.startswith("/local/v1/archives/"))


@pytest.fixture
def keyed_server(tmp_path):
    """An older server: the archive route and no ``save_weights_external``, requiring ``SERVER_KEY``."""
    with LocalServer(tmp_path / "keyed-server", api_key=SERVER_KEY, external_weights=False) as server:
        yield server


@pytest.fixture
def slow_reader(keyed_server, mgmt_service):
    """A ServiceClient whose read timeout is 0.3 s, so a stalled transfer is abandoned quickly."""
    with tp.ServiceClient(base_url=keyed_server.url, api_key=mgmt_service.config.api_key, timeout=(2.0, 0.3),
                          backoff_factor=0, max_retries=1) as service:
        yield service


def _via(proxy, server, service, path):
    """Make the archive API redirect to its signed URL through ``proxy`` (one redirect, via a server fault)."""
    run, kind, name = path[len("tinker://"):].split("/")
    api = "%s/api/v1/training_runs/%s/checkpoints/%s/%s/archive" % (server.url, run, kind, name)
    signed = requests.get(api, headers={"X-API-Key": service.config.api_key}, allow_redirects=False,
                          timeout=10).headers["Location"]
    server.faults.add(ARCHIVE_API, status=302, headers={"Location": proxy.url + urlsplit(signed).path}, body={})


class TestDownloadCheckpoint:
    """Tests for `download_checkpoint` against LocalServer."""

    def test_full_download_is_verified_and_extracted(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """The archive is fetched whole, its sha256 checked, and its files extracted under <dest>/<run>/<kind>/<name>."""
        _, (path,) = seed_run(["a"])
        blob, digest = _archive(keyed_server, mgmt_service, path)
        result = manage.download_checkpoint(mgmt_service, path, tmp_path / "out").result()
        target = _target(tmp_path / "out", path)
        assert (target, len(blob), len(blob), 0, digest, True) == (
            result.directory, result.archive_bytes, result.bytes_fetched, result.resumed_from, result.sha256,
            result.sha256_verified)
        assert ("manifest.json", "optimizer.bin", "weights.bin") == result.files
        info = requests.get(keyed_server.url + "/local/v1/checkpoint", params={"tinker_path": path},
                            headers={"X-API-Key": mgmt_service.config.api_key}, timeout=10).json()
        with open(os.path.join(target, "weights.bin"), "rb") as f:
            assert info["weights_sha256"] == hashlib.sha256(f.read()).hexdigest()
        assert ["a"] == sorted(os.listdir(os.path.dirname(target)))  # no partial file or staging dir left

    def test_waits_while_the_archive_is_built(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """503 answers (with Retry-After) are waited out and reported as 'waiting' progress, then the download runs."""
        _, (path,) = seed_run(["a"])
        keyed_server.faults.add(ARCHIVE_API, status=503, headers={"Retry-After": "0"}, body={"detail": "building"}, count=2)
        phases = []
        result = manage.download_checkpoint(mgmt_service, path, tmp_path, progress=lambda p: phases.append(p.phase)).result()
        assert ["waiting", "waiting"] == [p for p in phases if p == "waiting"]
        assert ["verifying", "extracting", "done"] == phases[-3:]
        assert result.sha256_verified

    def test_wait_budget_is_bounded(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """When the archive is still not ready when the wait budget runs out, the Future fails with APITimeoutError."""
        _, (path,) = seed_run(["a"])
        keyed_server.faults.add(ARCHIVE_API, status=503, headers={"Retry-After": "5"}, count=3)
        with pytest.raises(tp.APITimeoutError, match="not ready"):
            manage.download_checkpoint(mgmt_service, path, tmp_path, wait_timeout=1).result()
        assert 0 == _signed_requests(keyed_server)

    def test_signed_url_never_receives_the_api_key(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """The redirect is followed by a bare request: no X-API-Key (nor any other credential) reaches the signed URL."""
        _, (path,) = seed_run(["a"])
        with FaultProxy(keyed_server.url) as proxy:
            _via(proxy, keyed_server, mgmt_service, path)
            result = manage.download_checkpoint(mgmt_service, path, tmp_path).result()
        (seen,) = proxy.records
        assert set() == set(seen.headers) & {"x-api-key", "authorization", "cookie"}
        assert mgmt_service.config.api_key not in repr(seen)
        assert result.sha256_verified

    def test_connection_cut_mid_download_is_resumed(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """A connection closed mid-body is resumed in the same call with Range from the bytes received; none twice."""
        _, (path,) = seed_run(["big"], rank=64)
        blob, digest = _archive(keyed_server, mgmt_service, path)
        with FaultProxy(keyed_server.url) as proxy:
            _via(proxy, keyed_server, mgmt_service, path)
            proxy.add("truncate", path=SIGNED)  # sends the head and half the body, then closes
            result = manage.download_checkpoint(mgmt_service, path, tmp_path).result()
        first, resumed = proxy.records
        # The client keeps what it received before the cut (all but at most the chunk being read) and asks for the rest.
        kept = int(resumed.headers["range"][len("bytes="):-1])
        assert (None, True) == (first.headers.get("range"), len(blob) // 2 - manage.CHUNK_SIZE < kept <= len(blob) // 2)
        assert (0, 1, len(blob), digest) == (result.resumed_from, result.range_requests, result.bytes_fetched, result.sha256)

    def test_interrupted_download_resumes_on_the_next_call(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """With no resume allowed, a cut fails the call keeping the partial file; the next call fetches only the rest."""
        _, (path,) = seed_run(["big"], rank=64)
        blob, digest = _archive(keyed_server, mgmt_service, path)
        with FaultProxy(keyed_server.url) as proxy:
            _via(proxy, keyed_server, mgmt_service, path)
            proxy.add("truncate", path=SIGNED)
            with pytest.raises(manage.DownloadError, match="call again to resume") as info:
                manage.download_checkpoint(mgmt_service, path, tmp_path, max_resumes=0).result()
        part = info.value.partial_path
        kept = os.path.getsize(part)
        assert (True, False) == (0 < kept <= len(blob) // 2, os.path.exists(_target(tmp_path, path)))
        result = manage.download_checkpoint(mgmt_service, path, tmp_path).result()
        assert (kept, len(blob) - kept, 1, digest) == (result.resumed_from, result.bytes_fetched, result.range_requests,
                                                       result.sha256)
        assert result.bytes_fetched < result.archive_bytes
        assert (True, False) == (os.path.isdir(result.directory), os.path.exists(part))
        assert 1 == _signed_responses(keyed_server, 206)

    def test_stalled_transfer_is_resumed_in_the_same_call(self, slow_reader, keyed_server, seed_run, tmp_path):
        """A transfer that stalls mid-body is abandoned at the read timeout and resumed with Range from the bytes kept."""
        _, (path,) = seed_run(["big"], rank=64)
        blob, digest = _archive(keyed_server, slow_reader, path)
        cut = 2 * manage.CHUNK_SIZE
        assert len(blob) > 3 * manage.CHUNK_SIZE
        # The faulty answer promises the whole archive but sends only `cut` bytes, then stalls.
        keyed_server.faults.add(SIGNED, status=200, body=blob[:cut],
                               headers={"Content-Length": str(len(blob)), "X-Checkpoint-SHA256": digest})
        result = manage.download_checkpoint(slow_reader, path, tmp_path).result()
        # One Range request fetched the rest: no byte was fetched twice.
        assert (0, 1, len(blob)) == (result.resumed_from, result.range_requests, result.bytes_fetched)
        assert (digest, True) == (result.sha256, result.sha256_verified)
        assert 1 == _signed_responses(keyed_server, 206)

    def test_corrupted_archive_is_refused_and_kept(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """A sha256 mismatch fails the Future, extracts nothing and keeps the file; the next call fetches it again."""
        _, (path,) = seed_run(["a"])
        blob, digest = _archive(keyed_server, mgmt_service, path)
        bad = bytearray(blob)
        bad[len(bad) // 2] ^= 0xFF
        keyed_server.faults.add(SIGNED, status=200, body=bytes(bad), headers={"X-Checkpoint-SHA256": digest})
        with pytest.raises(manage.ArchiveChecksumError, match="sha256") as info:
            manage.download_checkpoint(mgmt_service, path, tmp_path).result()
        assert (len(blob), False) == (os.path.getsize(info.value.partial_path), os.path.exists(_target(tmp_path, path)))
        result = manage.download_checkpoint(mgmt_service, path, tmp_path).result()
        assert (digest, len(blob)) == (result.sha256, result.bytes_fetched)

    def test_hostile_archive_from_the_server_is_not_extracted(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """A verified archive holding a path escape is refused; nothing is written outside or inside the target."""
        _, (path,) = seed_run(["a"])
        hostile = _tar([_file("../escaped.txt")])
        digest = hashlib.sha256(hostile).hexdigest()
        keyed_server.faults.add(SIGNED, status=200, body=hostile, headers={"X-Checkpoint-SHA256": digest})
        dest = tmp_path / "dest"
        with pytest.raises(manage.UnsafeArchiveError, match=r"\.\."):
            manage.download_checkpoint(mgmt_service, path, dest).result()
        target = _target(dest, path)
        assert (False, False) == (os.path.exists(target), os.path.exists(os.path.join(os.path.dirname(target), "escaped.txt")))
        assert [] == [n for n in os.listdir(os.path.dirname(target)) if n.endswith(".extract")]

    def test_expired_signed_url_is_refreshed_once(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """A signed URL answered 403 (expired) is replaced by asking the API again, once."""
        _, (path,) = seed_run(["a"])
        keyed_server.faults.add(SIGNED, status=403, body={"detail": "download URL expired"})
        result = manage.download_checkpoint(mgmt_service, path, tmp_path).result()
        archive_requests = sum(n for p, n in keyed_server.stats.requests.items() if p.endswith("/archive"))
        assert (2, True) == (archive_requests, result.sha256_verified)

    def test_url_in_a_json_answer_is_accepted(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """An API that answers 200 with {"url": ...} instead of redirecting is followed the same way."""
        _, (path,) = seed_run(["a"])
        run, kind, name = path[len("tinker://"):].split("/")
        api = "%s/api/v1/training_runs/%s/checkpoints/%s/%s/archive" % (keyed_server.url, run, kind, name)
        signed = requests.get(api, headers={"X-API-Key": mgmt_service.config.api_key}, allow_redirects=False,
                              timeout=10).json()["url"]
        keyed_server.faults.add(ARCHIVE_API, status=200, body={"url": signed})
        assert manage.download_checkpoint(mgmt_service, path, tmp_path).result().sha256_verified

    def test_without_a_server_hash_only_the_size_is_checked(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """When the server sends no sha256 the size is still checked and the result says it was not hash-verified."""
        _, (path,) = seed_run(["a"])
        blob, digest = _archive(keyed_server, mgmt_service, path)
        keyed_server.faults.add(SIGNED, status=200, body=blob)
        result = manage.download_checkpoint(mgmt_service, path, tmp_path).result()
        assert (False, digest) == (result.sha256_verified, result.sha256)

    def test_redirect_without_location_fails(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """A redirect that names no URL fails the Future instead of being guessed at."""
        _, (path,) = seed_run(["a"])
        keyed_server.faults.add(ARCHIVE_API, status=302, body={})
        with pytest.raises(tp.APIConnectionError, match="Location"):
            manage.download_checkpoint(mgmt_service, path, tmp_path).result()

    def test_refuses_to_overwrite_unless_asked(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """An existing target fails the Future with FileExistsError before any download; overwrite=True replaces it."""
        _, (path,) = seed_run(["a"])
        target = _target(tmp_path, path)
        os.makedirs(target)
        with open(os.path.join(target, "old.txt"), "w") as f:
            f.write("old")
        with pytest.raises(FileExistsError):
            manage.download_checkpoint(mgmt_service, path, tmp_path).result()
        assert 0 == _signed_requests(keyed_server)
        result = manage.download_checkpoint(mgmt_service, path, tmp_path, overwrite=True).result()
        assert ["manifest.json", "optimizer.bin", "weights.bin"] == sorted(os.listdir(result.directory))

    def test_keep_archive_keeps_the_verified_tar(self, mgmt_service, seed_run, tmp_path):
        """keep_archive=True leaves <target>.tar whose sha256 is the one verified."""
        _, (path,) = seed_run(["a"])
        result = manage.download_checkpoint(mgmt_service, path, tmp_path, keep_archive=True).result()
        with open(result.archive_path, "rb") as f:
            assert result.sha256 == hashlib.sha256(f.read()).hexdigest()

    def test_missing_checkpoint_fails_the_future(self, mgmt_service, seed_run, tmp_path):
        """Downloading an unknown checkpoint fails the Future at the export's load, naming the checkpoint."""
        run_id, _ = seed_run(["a"])
        with pytest.raises(tp.RequestFailedError, match="nope not found"):
            manage.download_checkpoint(mgmt_service, "tinker://%s/weights/nope" % run_id, tmp_path).result()

    @pytest.mark.parametrize(
        "kwargs",
        [{"dest_dir": ""}, {"max_resumes": -1}, {"wait_timeout": -1}, {"overwrite": "yes"}, {"path": "tinker://r/x/a"}],
    )
    def test_bad_arguments_raise_at_once(self, mgmt_service, kwargs):
        """Bad arguments raise UsageError before anything is sent."""
        args = dict({"path": "tinker://r/weights/a", "dest_dir": "out"}, **kwargs)
        with pytest.raises(tp.UsageError):
            manage.download_checkpoint(mgmt_service, args.pop("path"), args.pop("dest_dir"), **args)


# --------------------------------------------------------------------------- hostile tar files


def _file(name, data=b"x", mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _tar(members, mode="w"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _write(tmp_path, blob):
    path = tmp_path / "a.tar"
    path.write_bytes(blob)
    return str(path)


class TestAnnouncedDigest:
    """Tests for reading the archive's sha256 from response headers."""

    @pytest.mark.parametrize(
        "headers, expected",
        [
            ({"X-Checkpoint-SHA256": "AB" * 32}, "ab" * 32),
            ({"X-Checkpoint-SHA256": "sha256=" + "ab" * 32}, "ab" * 32),
            ({"X-Checkpoint-SHA256": "not-a-digest"}, None),
            ({"Repr-Digest": "sha-256=:" + "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=" + ":"}, "ab" * 32),
            ({"Digest": "SHA-256=q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="}, "ab" * 32),
            ({}, None),
        ],
        ids=["hex", "prefixed", "malformed", "repr-digest", "digest", "absent"],
    )
    def test_header_forms(self, headers, expected):
        """A hex header, RFC 9530 Repr-Digest and RFC 3230 Digest are understood; anything else is ignored."""
        assert expected == download._announced_sha256(requests.structures.CaseInsensitiveDict(headers))


class TestSafeExtract:
    """Tests for `safe_extract`."""

    @pytest.mark.parametrize(
        "members, reason",
        [
            ([_file("/etc/evil")], "absolute"),
            ([_file("../evil")], r"'\.\.'"),
            ([_file("ok/../../evil")], r"'\.\.'"),
            ([_file("a"), _special("link", tarfile.SYMTYPE, "/etc/passwd")], "link"),
            ([_special("rel", tarfile.SYMTYPE, "a")], "link"),
            ([_file("a"), _special("hard", tarfile.LNKTYPE, "a")], "link"),
            ([_special("tty", tarfile.CHRTYPE)], "device"),
            ([_special("disk", tarfile.BLKTYPE)], "device"),
            ([_special("pipe", tarfile.FIFOTYPE)], "FIFO"),
            ([_file("a"), _file("a", b"again")], "collides"),
            ([_file("a"), _file("a/b")], "collides"),
        ],
        ids=["absolute", "dotdot", "nested-dotdot", "symlink-abs", "symlink-rel", "hardlink", "chardev", "blockdev",
             "fifo", "duplicate", "file-as-dir"],
    )
    def test_refuses_unsafe_members_and_writes_nothing(self, tmp_path, members, reason):
        """An archive with any unsafe member is refused before anything is written."""
        archive = _write(tmp_path, _tar(members))
        dest = tmp_path / "dest"
        with pytest.raises(manage.UnsafeArchiveError, match=reason):
            manage.safe_extract(archive, str(dest))
        assert (False, ["a.tar"]) == (dest.exists(), sorted(os.listdir(tmp_path)))

    def test_extracts_files_and_directories_without_special_bits(self, tmp_path):
        """Regular files and directories (any compression) are extracted; set-uid and world-write bits are dropped."""
        dirinfo = tarfile.TarInfo("d")
        dirinfo.type, dirinfo.mode = tarfile.DIRTYPE, 0o755
        blob = _tar([(dirinfo, None), _file("d/w.bin", b"weights", 0o4777), _file("./top.txt", b"t")], mode="w:gz")
        dest = tmp_path / "dest"
        files = manage.safe_extract(_write(tmp_path, blob), str(dest))
        assert ("d/w.bin", "top.txt") == files
        assert b"weights" == (dest / "d" / "w.bin").read_bytes()
        assert 0o755 == os.stat(dest / "d" / "w.bin").st_mode & 0o7777

    def test_not_a_tar_is_a_download_error(self, tmp_path):
        """A file that is not a tar archive raises DownloadError."""
        with pytest.raises(manage.DownloadError):
            manage.safe_extract(_write(tmp_path, b"not a tar" * 100), str(tmp_path / "dest"))

    def test_existing_destination_is_refused(self, tmp_path):
        """safe_extract only creates a new directory."""
        (tmp_path / "dest").mkdir()
        with pytest.raises(FileExistsError):
            manage.safe_extract(_write(tmp_path, _tar([_file("a")])), str(tmp_path / "dest"))
