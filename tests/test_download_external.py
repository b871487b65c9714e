"""Tests for the SDK 0.38 download: export, signed per-file URLs, Range resume, verification, export lifecycle."""

import glob
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import tinkex_persist as tp
from conftest import SERVER_KEY
from faultproxy import FaultProxy
from tinkex_persist import _external
from tinkex_persist.localserver import LocalServer

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
SIGNED_WEIGHTS = "/signed/*/" + WEIGHTS
EXPORT_SIZE = 3 * 1024 * 1024 + 123  # three 1 MiB chunks and a bit


class _Clock:
    """A server clock that runs with real time plus an offset a test can move forward."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.time() + self.offset


@pytest.fixture
def clock():
    return _Clock()


@pytest.fixture
def server(tmp_path, clock):
    """A 0.38-era server with no archive route, exports of EXPORT_SIZE bytes, 60 s URLs and a movable clock."""
    with LocalServer(tmp_path / "srv", api_key=SERVER_KEY, archive_route=False, export_size=EXPORT_SIZE,
                     external_url_ttl=60, clock=clock) as srv:
        yield srv


@pytest.fixture
def proxy(server):
    with FaultProxy(server.url) as p:
        yield p


@pytest.fixture
def service(proxy):
    """A client that reaches the server (and, through the Host it uses, the signed URLs) via the fault proxy."""
    with tp.ServiceClient(base_url=proxy.url, api_key=SERVER_KEY, backoff_factor=0, max_retries=2) as svc:
        yield svc


@pytest.fixture
def saved(service):
    """The path of a training checkpoint of a new run."""
    tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
    return tp.save_state(tc, "ckpt").result().path


def _count(server, suffix):
    return sum(n for path, n in server.stats.requests.items() if path.endswith(suffix))


def _externals(service):
    return [c.tinker_path for c in tp.list_checkpoints(service).result() if "/external_weights/" in c.tinker_path]


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TestExportDownload:
    """Tests for downloading a training checkpoint through a temporary export."""

    def test_server_without_archive_route(self, server, service, saved, proxy, tmp_path):
        """With no archive route the download exports, fetches both files without the API key, verifies, deletes the export."""
        phases = []
        result = tp.download_checkpoint(service, saved, str(tmp_path), progress=lambda p: phases.append(p.phase)).result()
        assert ("external_weights", True, True, False) == (
            result.method, result.sha256_verified, result.export_deleted, result.export_reused)
        assert [CONFIG, WEIGHTS] == sorted(os.listdir(result.directory))
        assert EXPORT_SIZE == os.path.getsize(os.path.join(result.directory, WEIGHTS))
        assert {n: _sha(os.path.join(result.directory, n)) for n in (CONFIG, WEIGHTS)} == result.file_sha256
        assert [] == _externals(service)
        assert (1, 0) == (_count(server, "/save_weights_external"), _count(server, "/archive"))
        signed = [r for r in proxy.records if r.path.startswith("/signed/")]
        assert 2 == len(signed)
        for r in signed:
            assert [] == [h for h in r.headers if h.lower() == "x-api-key" or h.lower().startswith("x-tinker")]
        assert "exporting" == phases[0] and "done" == phases[-1]
        assert [] == glob.glob(result.directory + ".*")  # no partial directory, no state file left

    def test_server_with_only_the_archive_route_falls_back(self, tmp_path):
        """A server without save_weights_external (404 on it) gets the archive route, extracted as before."""
        with LocalServer(tmp_path / "old", api_key=SERVER_KEY, external_weights=False) as old:
            with tp.ServiceClient(base_url=old.url, api_key=SERVER_KEY) as svc:
                tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
                path = tp.save_state(tc, "ckpt").result().path
                result = tp.download_checkpoint(svc, path, str(tmp_path / "out")).result()
        assert ("archive", None, True) == (result.method, result.export_path, result.sha256_verified)
        assert ["manifest.json", "optimizer.bin", "weights.bin"] == sorted(result.files)

    def test_cut_mid_file_is_resumed_in_the_same_call(self, server, service, saved, proxy, tmp_path):
        """A transfer cut half way resumes with a Range request in the same call; the file verifies."""
        proxy.add("truncate", SIGNED_WEIGHTS)
        result = tp.download_checkpoint(service, saved, str(tmp_path)).result()
        assert (1, True, EXPORT_SIZE) == (
            result.range_requests, result.sha256_verified, os.path.getsize(os.path.join(result.directory, WEIGHTS)))
        ranged = [r for r in proxy.records if r.path.endswith(WEIGHTS) and "range" in [h.lower() for h in r.headers]]
        assert 1 == len(ranged)
        assert [] == _externals(service)

    def test_failure_keeps_the_export_and_a_second_process_resumes_it(self, server, service, saved, proxy, tmp_path):
        """A cut with no resume left keeps the export and the partial file (the message says so); another process
        reuses both: no second export, the rest fetched with Range, then the export is deleted."""
        proxy.add("truncate", SIGNED_WEIGHTS)
        with pytest.raises(tp.DownloadError) as info:
            tp.download_checkpoint(service, saved, str(tmp_path), max_resumes=0).result()
        message = str(info.value)
        assert "the export tinker://" in message and "is kept until about" in message and "resumes from it" in message
        assert 1 == len(_externals(service))
        state = json.load(open(glob.glob(str(tmp_path / "*" / "weights" / "ckpt.download.json"))[0]))
        partial = glob.glob(str(tmp_path / "*" / "weights" / "ckpt.part"))[0]
        weights_had = os.path.getsize(os.path.join(partial, WEIGHTS))
        assert 0 < weights_had < EXPORT_SIZE
        had = sum(os.path.getsize(os.path.join(partial, n)) for n in os.listdir(partial))
        child = (
            "import json, sys, tinkex_persist as tp\n"
            "with tp.ServiceClient(base_url=sys.argv[1], api_key=sys.argv[2]) as s:\n"
            "    r = tp.download_checkpoint(s, sys.argv[3], sys.argv[4]).result()\n"
            "print(json.dumps(r.to_json()))\n"
        )
        proc = subprocess.run([sys.executable, "-c", child, proxy.url, SERVER_KEY, saved, str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        assert 0 == proc.returncode, proc.stderr[-2000:]
        data = json.loads(proc.stdout)
        assert (True, state["export"], had, True, 1) == (
            data["export_reused"], data["export_path"], data["resumed_from"], data["export_deleted"],
            _count(server, "/save_weights_external"))
        weights_bytes = os.path.getsize(os.path.join(data["directory"], WEIGHTS))
        assert EXPORT_SIZE == weights_bytes
        assert [] == _externals(service)

    def test_urls_expiring_mid_download_are_signed_again(self, server, service, saved, clock, tmp_path):
        """URLs that expire between two files (the server clock jumps) are signed again, renewing the export's TTL."""

        def jump(p):
            if p.phase == "downloading":
                clock.offset = 120  # the URLs (60 s) are stale, the export (1 h) still lives

        result = tp.download_checkpoint(service, saved, str(tmp_path / "out"), progress=jump, max_concurrency=1).result()
        assert (2, True) == (result.url_signings, result.sha256_verified)
        assert 2 == _count(server, "/external_weights_urls")
        assert 2 == _count(server, "/download/ttl")

    def test_corrupted_file_is_caught_and_nothing_is_kept(self, server, service, proxy, tmp_path):
        """An export whose stored file no longer matches its announced sha256 fails; no target, no bad partial file."""
        tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
        export = tc.save_weights_external("exp").result().path
        (stored,) = glob.glob(str(server.root) + "/**/" + WEIGHTS, recursive=True)
        with open(stored, "r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(tp.ArchiveChecksumError, match="has sha256 .* the server announced"):
            tp.download_checkpoint(service, export, str(tmp_path)).result()
        target = os.path.join(str(tmp_path), tc.model_id, "external_weights", "exp")
        assert (False, False) == (os.path.exists(target), os.path.exists(os.path.join(target + ".part", WEIGHTS)))

    def test_external_path_is_fetched_as_it_is(self, server, service, tmp_path):
        """An external_weights path is fetched directly: no export, no TTL change, and it is not deleted."""
        tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
        export = tc.save_weights_external("exp").result().path
        result = tp.download_checkpoint(service, export, str(tmp_path)).result()
        assert (None, False, [export]) == (result.export_path, result.export_deleted, _externals(service))
        assert (1, 0) == (_count(server, "/save_weights_external"), _count(server, "/ttl"))

    def test_partial_directory_through_a_symlink_is_refused(self, server, service, tmp_path):
        """A partial directory that is a symbolic link (planted elsewhere) is never written through."""
        tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
        export = tc.save_weights_external("exp").result().path
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        target = os.path.join(str(tmp_path / "out"), tc.model_id, "external_weights", "exp")
        os.makedirs(os.path.dirname(target))
        os.symlink(str(elsewhere), target + ".part")
        with pytest.raises(tp.UnsafeArchiveError, match="symbolic link"):
            tp.download_checkpoint(service, export, str(tmp_path / "out")).result()
        assert [] == os.listdir(str(elsewhere))

    def test_two_downloads_into_one_destination_export_once(self, server, proxy, saved, tmp_path):
        """Two concurrent downloads into one destination take turns under its lock: one export, one transfer."""
        with tp.ServiceClient(base_url=proxy.url, api_key=SERVER_KEY, max_workers=2) as svc:
            futures = [tp.download_checkpoint(svc, saved, str(tmp_path)) for _ in range(2)]
            results = [f.result() for f in futures]
        assert (1, [0]) == (_count(server, "/save_weights_external"), [r.bytes_fetched for r in results if not r.bytes_fetched])
        assert ("external_weights", "external_weights") == (results[0].method, results[1].method)
        assert results[0].file_sha256 == results[1].file_sha256

    def test_sampler_path_is_refused_with_a_hint(self, service):
        """A sampler checkpoint cannot be downloaded: UsageError at once, naming the training path to use."""
        with pytest.raises(tp.UsageError, match="sampler checkpoint.*tinker://run-1/weights/<name>"):
            tp.download_checkpoint(service, "tinker://run-1/sampler_weights/s", "out")


class TestSafeNames:
    """Tests for the file names a server hands out, which are untrusted."""

    @pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "C:x", "a\\b", "a\x00b", "", 7])
    def test_unsafe_names_are_refused(self, name):
        """Absolute paths, '..', empty or '.' components, backslashes and control characters are refused."""
        with pytest.raises(tp.UnsafeArchiveError):
            _external.safe_relpath(name)

    def test_nested_names_are_kept(self):
        """A plain nested relative name is accepted as it is."""
        assert "sub/dir/file.bin" == _external.safe_relpath("sub/dir/file.bin")
