"""Tests for ``LocalServer`` restarts: checkpoints persist, sessions do not, and a killed save leaves no trace."""

import os
import signal
import subprocess
import sys
import threading

import pytest
import requests

from tinkex_persist.localserver import LocalServer

#: Runs a LocalServer whose argv[3]-th save hangs at stage argv[2], so the test can kill -9 it there.
CRASH_SCRIPT = """
import sys, time
from tinkex_persist.localserver import LocalServer
seen = []

def hook(stage, path):
    seen.append(stage)
    if stage == sys.argv[2] and seen.count(stage) == int(sys.argv[3]):
        print("HOOK " + stage, flush=True)
        time.sleep(60)

server = LocalServer(sys.argv[1], save_hook=hook).start()
print(server.url, flush=True)
time.sleep(60)
"""

SERVE_SCRIPT = """
import sys
from tinkex_persist.localserver import serve_forever
serve_forever(sys.argv[1])
"""


def _spawn(script, *args):
    proc = subprocess.Popen([sys.executable, "-c", script] + [str(a) for a in args], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    return proc, watchdog


class TestRestart:
    """Tests for stopping and starting on the same root."""

    def test_checkpoints_survive(self, tmp_path, api_for):
        """After a restart sessions are gone, checkpoints are listed and load with equal digests."""
        with LocalServer(tmp_path) as server:
            api = api_for(server.url)
            sid = api.session()
            mid = api.model(sid)
            api.train(mid, 1)
            path = api.save(mid, 3, "a", ttl_seconds=7200)["path"]
            before = api.info(mid)
        with LocalServer(tmp_path) as server:
            api = api_for(server.url)
            assert (
                404
                == api.post("/api/v1/session_heartbeat", {"session_id": sid, "type": "session_heartbeat"}).status_code
            )
            assert [path] == [
                c["tinker_path"] for c in api.get("/api/v1/training_runs/%s/checkpoints" % mid).json()["checkpoints"]
            ]
            sid2 = api.session()
            loaded = api.info(api.load(path, True, session_id=sid2, model_seq_id=0)["model_id"])
        keys = ("weights_sha256", "optimizer_sha256", "step")
        assert [before[k] for k in keys] == [loaded[k] for k in keys]

    def test_same_object_restarts(self, tmp_path, api_for):
        """stop() then start() on one LocalServer serves the same checkpoints with fresh sessions."""
        server = LocalServer(tmp_path).start()
        try:
            api = api_for(server.url)
            path = api.save(api.model(), 1, "a")["path"]
            server.stop()
            server.start()
            api = api_for(server.url)
            assert {} == dict(server.seq_log)
            assert 200 == api.post("/api/v1/weights_info", {"tinker_path": path}).status_code
        finally:
            server.stop()


class TestKilledSave:
    """Tests for ``kill -9`` in the middle of a save."""

    def _kill_during_save(self, root, stage, api_for, name="a", **fields):
        proc, watchdog = _spawn(CRASH_SCRIPT, root, stage, 2 if fields.get("overwrite") else 1)
        try:
            url = proc.stdout.readline().strip()
            api = api_for(url)
            mid = api.model()
            before = None
            if fields.get("overwrite"):
                api.save(mid, 1, name)
                before = api.get(
                    "/local/v1/checkpoint", params={"tinker_path": "tinker://%s/weights/%s" % (mid, name)}
                ).json()
            body = dict({"model_id": mid, "path": name, "seq_id": 2 if before else 1, "overwrite": False}, **fields)
            body["type"] = "save_weights"
            sender = threading.Thread(target=lambda: _ignore_errors(api.post, "/api/v1/save_weights", body))
            sender.daemon = True
            sender.start()
            assert "HOOK " + stage == proc.stdout.readline().strip()
            proc.kill()
            proc.wait(10)
            return mid, before
        finally:
            watchdog.cancel()
            proc.kill()
            proc.stdout.close()

    @pytest.mark.parametrize("stage", ["files_written", "dir_renamed"])
    def test_no_partial_checkpoint(self, tmp_path, api_for, stage):
        """A save killed before its index write is invisible after restart, and its files are removed."""
        mid, _ = self._kill_during_save(tmp_path, stage, api_for)
        assert 1 == len(os.listdir(tmp_path / "tmp")) + len(os.listdir(tmp_path / "data"))
        with LocalServer(tmp_path) as server:
            api = api_for(server.url)
            assert [] == api.get("/api/v1/checkpoints").json()["checkpoints"]
            assert ([], []) == (os.listdir(tmp_path / "tmp"), os.listdir(tmp_path / "data"))
            assert "save_weights" == api.save(api.model(), 1, "a")["type"]

    def test_overwrite_keeps_old(self, tmp_path, api_for):
        """An overwrite killed before its index write leaves the previous checkpoint intact."""
        mid, before = self._kill_during_save(tmp_path, "dir_renamed", api_for, overwrite=True)
        with LocalServer(tmp_path) as server:
            api = api_for(server.url)
            after = api.get("/local/v1/checkpoint", params={"tinker_path": before["tinker_path"]}).json()
            assert before == after
            assert 1 == len(os.listdir(tmp_path / "data"))


class TestServeForever:
    """Tests for the foreground ``serve_forever``."""

    def test_sigterm_stops_cleanly(self, tmp_path):
        """serve_forever prints its URL, serves, and exits 0 on SIGTERM."""
        proc, watchdog = _spawn(SERVE_SCRIPT, tmp_path)
        try:
            url = proc.stdout.readline().strip()
            assert 200 == requests.get(url + "/api/v1/healthz", timeout=10).status_code
            proc.send_signal(signal.SIGTERM)
            assert 0 == proc.wait(10)
        finally:
            watchdog.cancel()
            proc.kill()
            proc.stdout.close()


def _ignore_errors(fn, *args):
    try:
        fn(*args)
    except requests.RequestException:
        pass
