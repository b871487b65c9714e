"""Tests for several processes downloading one checkpoint into one destination (the ranks of a job)."""

import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
import requests

from faultproxy import FaultProxy
from tinkex_persist import ServiceClient

from conftest import SERVER_KEY

#: Waits for "go" on stdin, then downloads; prints one JSON line: the result, or the error's type and message.
RANK_SCRIPT = """
import json, sys
import tinkex_persist as tp
url, path, dest = sys.argv[1:4]
service = tp.ServiceClient(url, %r, heartbeat_interval=None)
print("ready", flush=True)
sys.stdin.readline()
try:
    result = tp.download_checkpoint(service, path, dest).result()
    print(json.dumps({"ok": result.to_json()}), flush=True)
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
finally:
    service.close()
""" % SERVER_KEY

RANKS = 4


@pytest.fixture
def keyed_server(tmp_path):
    """An older server (archive route, no ``save_weights_external``): the lock is watched on the archive route,
    whose signed requests these tests count and slow down."""
    from tinkex_persist.localserver import LocalServer

    with LocalServer(tmp_path / "keyed-server", api_key=SERVER_KEY, external_weights=False) as server:
        yield server


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_PERSIST_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _signed_requests(server):
    return sum(n for path, n in server.stats.requests.items() if path.startswith("/local/v1/archives/"))


def _slow_signed_url(server, proxy, path):
    """Send the archive's signed URL through ``proxy``, which trickles it (so the first download takes seconds)."""
    run, kind, name = path[len("tinker://"):].split("/")
    api = "%s/api/v1/training_runs/%s/checkpoints/%s/%s/archive" % (server.url, run, kind, name)
    signed = requests.get(api, headers={"X-API-Key": SERVER_KEY}, allow_redirects=False, timeout=10).headers["Location"]
    server.faults.add("/api/v1/training_runs/*/archive", status=302,
                      headers={"Location": proxy.url + urlsplit(signed).path}, body={}, count=100)
    proxy.add("trickle", "/local/v1/archives/*", seconds=0.001)


def _start(server, path, dest):
    proc = subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, server.url, path, str(dest)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert "ready" == proc.stdout.readline().strip()
    return proc


def _finish(proc):
    out, err = proc.communicate(timeout=120)
    assert 0 == proc.returncode, err
    return json.loads(out.strip().splitlines()[-1])


class TestOneDestinationManyProcesses:
    """Tests for concurrent `download_checkpoint` calls into the same destination."""

    def test_one_downloads_the_others_wait_and_find_the_copy(self, keyed_server, seed_run, tmp_path):
        """Four processes started together: one fetches the archive (once), the others wait and return its copy.

        Failed on the old main: all four wrote one ``.tar.part`` at once, failing with ArchiveChecksumError,
        FileNotFoundError or tarfile.ReadError, and fetched the archive several times.
        """
        _, (path,) = seed_run(["shared"], rank=1)
        dest = tmp_path / "dest"
        with FaultProxy(keyed_server.url) as proxy:
            _slow_signed_url(keyed_server, proxy, path)
            procs = [_start(keyed_server, path, dest) for _ in range(RANKS)]
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            outcomes = [_finish(proc) for proc in procs]
        assert [] == [o for o in outcomes if "ok" not in o]
        results = [o["ok"] for o in outcomes]
        assert 1 == sum(1 for r in results if r["bytes_fetched"] > 0)
        assert 1 == len({(r["directory"], r["sha256"], tuple(r["files"])) for r in results})
        assert 1 == _signed_requests(keyed_server)
        target = results[0]["directory"]
        assert sorted(results[0]["files"]) == sorted(os.listdir(target))
        assert False == os.path.exists(target + ".tar.part")

    def test_killed_downloader_is_resumed_by_the_next(self, keyed_server, seed_run, tmp_path):
        """When the process holding the destination is killed mid-transfer, the next one resumes its partial file."""
        _, (path,) = seed_run(["shared"], rank=1)
        dest = tmp_path / "dest"
        run, kind, name = path[len("tinker://"):].split("/")
        part = dest / run / kind / (name + ".tar.part")
        with FaultProxy(keyed_server.url) as proxy:
            _slow_signed_url(keyed_server, proxy, path)
            first = _start(keyed_server, path, dest)
            first.stdin.write("go\n")
            first.stdin.flush()
            end = time.monotonic() + 60
            while not (part.exists() and part.stat().st_size > 0) and time.monotonic() < end:
                time.sleep(0.02)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            second = _start(keyed_server, path, dest)
            second.stdin.write("go\n")
            second.stdin.flush()
            outcome = _finish(second)
        assert "ok" in outcome, outcome
        assert 0 < outcome["ok"]["resumed_from"]

    def test_threads_of_one_process_share_the_lock_too(self, keyed_server, mgmt_service, seed_run, tmp_path):
        """Two download calls into one destination from one process: one fetches, the other returns the same copy."""
        from tinkex_persist import download

        _, (path,) = seed_run(["shared"], rank=1)
        with FaultProxy(keyed_server.url) as proxy:
            _slow_signed_url(keyed_server, proxy, path)
            with ServiceClient(keyed_server.url, SERVER_KEY, heartbeat_interval=None, max_workers=2) as service:
                futures = [download.download_checkpoint(service, path, tmp_path / "dest") for _ in range(2)]
                results = [f.result() for f in futures]
        assert [0] == [r.bytes_fetched for r in results if r.bytes_fetched == 0]
        assert results[0].directory == results[1].directory
        assert 1 == _signed_requests(keyed_server)
