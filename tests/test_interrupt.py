"""Tests for Ctrl-C: real subprocesses get a real SIGINT while the library or the CLI waits on the server."""

import json
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import requests

import tinkex_persist as tp
from conftest import wait_until
from faultproxy import FaultProxy
from tinkex_persist import download

KEY = "tml-interrupt-test-key-0123"
#: How long an interrupted process may take to end before the test calls it stuck. Without the fix the
#: processes below run for the poll timeout (an hour), the archive wait or the retry deadline.
EXIT_BOUND = 30

SAVE_SCRIPT = """
import sys
import tinkex_persist as tp
url, outcome = sys.argv[1], sys.argv[2]
service = tp.ServiceClient(url, %r, heartbeat_interval=None)
tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
print(tc.model_id, flush=True)
sys.stdin.readline()
future = tc.save_state("pending")

def record(f):
    exc = f.exception()
    with open(outcome, "w") as out:
        out.write(type(exc).__name__ if exc is not None else "done: " + f.result().path)

future.add_done_callback(record)
print("waiting", flush=True)
future.result()
print("returned", flush=True)
""" % KEY

DOWNLOAD_SCRIPT = """
import sys
import tinkex_persist as tp
url, path, dest, outcome = sys.argv[1:5]
service = tp.ServiceClient(url, %r, heartbeat_interval=None)
future = tp.download_checkpoint(service, path, dest)

def record(f):
    exc = f.exception()
    with open(outcome, "w") as out:
        out.write(type(exc).__name__ if exc is not None else "done")

future.add_done_callback(record)
print("waiting", flush=True)
future.result()
print("returned", flush=True)
""" % KEY


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_PERSIST_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _interrupt(proc):
    """Send one SIGINT and return the exit status, killing the process if it does not end in EXIT_BOUND."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=EXIT_BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the process was still running %d s after one SIGINT" % EXIT_BOUND) from None


@pytest.fixture
def keyed_server(tmp_path):
    from tinkex_persist.localserver import LocalServer

    with LocalServer(tmp_path / "root", api_key=KEY) as server:
        yield server


class TestInterruptedSave:
    """Tests for Ctrl-C while ``save_state(...).result()`` waits for a save the server has not finished."""

    def test_first_sigint_ends_the_process_and_the_save_is_not_reported_done(self, keyed_server, tmp_path):
        """One SIGINT ends the process; the Future fails with OperationCancelledError; the server still commits the save.

        Failed on the old main: the worker kept polling (every answer ``408``) until the poll timeout,
        and interpreter exit waited for it, so the process did not end.
        """
        outcome = tmp_path / "outcome"
        proc = subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, keyed_server.url, str(outcome)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env())
        try:
            model_id = proc.stdout.readline().strip()
            keyed_server.faults.add("/api/v1/retrieve_future", status=408, body={"type": "try_again"}, count=100000)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert "waiting" == proc.stdout.readline().strip()
            polls = keyed_server.stats.requests["/api/v1/retrieve_future"]
            assert wait_until(lambda: keyed_server.stats.requests["/api/v1/retrieve_future"] > polls + 2, timeout=30), "the save's polls"
            status = _interrupt(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        stdout, stderr = proc.stdout.read(), proc.stderr.read()
        keyed_server.faults.clear()
        assert -signal.SIGINT == status
        assert "" == stdout  # "returned" was never printed: result() did not report success
        assert "OperationCancelledError" == outcome.read_text()
        assert "KeyboardInterrupt" in stderr
        assert KEY not in stdout + stderr
        listed = requests.get(keyed_server.url + "/api/v1/training_runs/%s/checkpoints" % model_id,
                              headers={"X-API-Key": KEY}, timeout=10).json()["checkpoints"]
        assert ["weights/pending"] == [c["checkpoint_id"] for c in listed]


    def test_sigint_during_a_held_request_cuts_it(self, tmp_path):
        """A SIGINT while the server holds the save's request open (it is still writing) ends the process within the bound.

        The read blocked in the socket is cut, not waited out; once the server finishes, the save is committed.
        Failed on the old main: the process waited for the server's answer, then polled on.
        """
        import threading

        from tinkex_persist.localserver import LocalServer

        release = threading.Event()
        held = threading.Event()

        def hook(stage, path):
            if stage == "files_written" and path.endswith("/pending"):
                held.set()
                release.wait(60)

        outcome = tmp_path / "outcome"
        with LocalServer(tmp_path / "root", api_key=KEY, save_hook=hook) as server:
            proc = subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, server.url, str(outcome)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=_env())
            try:
                model_id = proc.stdout.readline().strip()
                proc.stdin.write("go\n")
                proc.stdin.flush()
                assert "waiting" == proc.stdout.readline().strip()
                assert held.wait(30)
                status = _interrupt(proc)
            finally:
                release.set()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            assert -signal.SIGINT == status
            assert "OperationCancelledError" == outcome.read_text()
            url = server.url + "/api/v1/training_runs/%s/checkpoints" % model_id
            listed = wait_until(lambda: requests.get(url, headers={"X-API-Key": KEY}, timeout=10).json()["checkpoints"],
                                timeout=30)
        assert ["weights/pending"] == [c["checkpoint_id"] for c in listed]


class TestInterruptedDownload:
    """Tests for Ctrl-C while ``download_checkpoint(...).result()`` waits."""

    @pytest.fixture
    def keyed_server(self, tmp_path):
        """An older server (archive route, no ``save_weights_external``): these tests interrupt the archive route."""
        from tinkex_persist.localserver import LocalServer

        with LocalServer(tmp_path / "root", api_key=KEY, external_weights=False) as server:
            yield server

    def _saved(self, server):
        with tp.ServiceClient(server.url, KEY, heartbeat_interval=None) as service:
            tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=32).result()
            return tc.save_state("big").result().path

    def _start(self, url, path, dest, outcome):
        return subprocess.Popen([sys.executable, "-c", DOWNLOAD_SCRIPT, url, path, str(dest), str(outcome)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())

    def test_sigint_mid_transfer_keeps_the_partial_file_for_a_resume(self, keyed_server, tmp_path):
        """A SIGINT during a slow transfer ends the process at once, keeps ``.tar.part``, and the next call resumes it.

        Failed on the old main: the whole transfer (a trickle of 16 bytes every 10 ms) and the
        extraction ran before the process could end.
        """
        path = self._saved(keyed_server)
        run, kind, name = path[len("tinker://"):].split("/")
        api = "%s/api/v1/training_runs/%s/checkpoints/%s/%s/archive" % (keyed_server.url, run, kind, name)
        signed = requests.get(api, headers={"X-API-Key": KEY}, allow_redirects=False, timeout=10).headers["Location"]
        part = tmp_path / "dest" / run / kind / (name + ".tar.part")
        outcome = tmp_path / "outcome"
        with FaultProxy(keyed_server.url) as proxy:
            proxy.add("trickle", "/local/v1/archives/*", seconds=0.01)
            keyed_server.faults.add("/api/v1/training_runs/*/archive", status=302,
                                    headers={"Location": proxy.url + urlsplit(signed).path}, body={})
            proc = self._start(keyed_server.url, path, tmp_path / "dest", outcome)
            try:
                assert "waiting" == proc.stdout.readline().strip()
                assert wait_until(lambda: part.exists() and part.stat().st_size > 0, timeout=30), "the first bytes of the archive"
                status = _interrupt(proc)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        stderr = proc.stderr.read()
        assert -signal.SIGINT == status
        assert "OperationCancelledError" == outcome.read_text()
        assert KEY not in stderr
        kept = part.stat().st_size
        assert 0 < kept
        with tp.ServiceClient(keyed_server.url, KEY, heartbeat_interval=None) as service:
            result = download.download_checkpoint(service, path, tmp_path / "dest").result()
        assert kept == result.resumed_from
        assert False == part.exists()

    def test_sigint_while_the_archive_is_built(self, keyed_server, tmp_path):
        """A SIGINT while the server answers 503 (archive being built) ends the process within the bound.

        Failed on the old main: the wait went on for up to ``wait_timeout`` (600 s).
        """
        path = self._saved(keyed_server)
        keyed_server.faults.add("/api/v1/training_runs/*/archive", status=503, headers={"Retry-After": "2"},
                                count=100000)
        outcome = tmp_path / "outcome"
        proc = self._start(keyed_server.url, path, tmp_path / "dest", outcome)
        try:
            assert "waiting" == proc.stdout.readline().strip()
            assert wait_until(lambda: len(keyed_server.faults) < 100000, timeout=30), "the first archive check"
            status = _interrupt(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        keyed_server.faults.clear()
        assert -signal.SIGINT == status
        assert "OperationCancelledError" == outcome.read_text()


class TestInterruptedCli:
    """Tests for Ctrl-C in the command line."""

    def test_list_against_a_failing_server_stops_at_once_with_130_and_one_json_object(self, keyed_server, tmp_path):
        """``list --json`` retrying 503 answers ends on the first SIGINT with exit code 130 and one JSON error object.

        Failed on the old main: it printed "interrupted" and kept retrying until the retry deadline.
        """
        keyed_server.faults.add("/api/v1/checkpoints", status=503, headers={"Retry-After": "10"}, count=100000)
        env = dict(_env(), TINKER_API_KEY=KEY, TINKER_BASE_URL=keyed_server.url,
                   TINKEX_PERSIST_RETRY_DEADLINE="600")
        proc = subprocess.Popen([sys.executable, "-m", "tinkex_persist", "--json", "list"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
        try:
            assert wait_until(lambda: keyed_server.stats.requests["/api/v1/checkpoints"] > 0, timeout=30), "the first listing request"
            status = _interrupt(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        stdout, stderr = proc.stdout.read(), proc.stderr.read()
        keyed_server.faults.clear()
        assert 130 == status
        assert {"error": {"type": "KeyboardInterrupt", "message": "interrupted"}} == json.loads(stdout)
        assert "interrupted" in stderr
        assert KEY not in stdout + stderr


class TestInterruptedExportDownload:
    """Tests for Ctrl-C during the SDK 0.38 download (an export fetched from signed URLs)."""

    def test_sigint_mid_file_keeps_the_export_and_the_next_call_reuses_it(self, tmp_path):
        """A SIGINT while a signed file trickles in ends the process at once; the export and the partial files
        stay, and the next call reuses the export (no second export) and finishes."""
        from tinkex_persist.localserver import LocalServer

        with LocalServer(tmp_path / "root", api_key=KEY, export_size=2 * 1024 * 1024) as server:
            with tp.ServiceClient(server.url, KEY, heartbeat_interval=None) as service:
                tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
                path = tc.save_state("big").result().path
            outcome = tmp_path / "outcome"
            dest = tmp_path / "dest"
            with FaultProxy(server.url) as proxy:
                proxy.add("trickle", "/signed/*/adapter_model.safetensors", seconds=0.01)
                proc = subprocess.Popen([sys.executable, "-c", DOWNLOAD_SCRIPT, proxy.url, path, str(dest), str(outcome)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
                partial = dest / tc.model_id / "weights" / "big.part" / "adapter_model.safetensors"
                try:
                    assert "waiting" == proc.stdout.readline().strip()
                    assert wait_until(partial.exists, timeout=30), "the transfer of the weights file started"
                    status = _interrupt(proc)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()
            stderr = proc.stderr.read()
            assert (-signal.SIGINT, "OperationCancelledError") == (status, outcome.read_text())
            assert KEY not in stderr
            assert 1 == server.stats.requests["/api/v1/save_weights_external"]
            with tp.ServiceClient(server.url, KEY, heartbeat_interval=None) as service:
                result = download.download_checkpoint(service, path, dest).result()
            assert (True, True, 1) == (result.export_reused, result.export_deleted,
                                       server.stats.requests["/api/v1/save_weights_external"])
