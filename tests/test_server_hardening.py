"""Hardening of ``LocalServer``: authentication on every route, traversal-proof names and run ids, body caps,
silent or slow clients, and crash consistency of the index journal under load (``kill -9``)."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from conftest import SERVER_KEY, Api, wait_until
from tinkex_persist.localserver import LocalServer

KEY = SERVER_KEY

ROUTES = [
    ("POST", "/api/v1/create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0", "type": "create_session"}),
    ("POST", "/api/v1/save_weights", {"model_id": "m", "path": "a", "seq_id": 1, "overwrite": False, "type": "save_weights"}),
    ("POST", "/api/v1/load_weights", {"model_id": "m", "seq_id": 1, "path": "tinker://m/weights/a", "optimizer": False,
                                      "type": "load_weights"}),
    ("POST", "/api/v1/retrieve_future", {"request_id": "r", "allow_metadata_only": True}),
    ("GET", "/api/v1/checkpoints", None),
    ("GET", "/api/v1/training_runs/{run}/checkpoints", None),
    ("DELETE", "/api/v1/training_runs/{run}/checkpoints/weights/a", None),
    ("PUT", "/api/v1/training_runs/{run}/checkpoints/weights/a/ttl", {"ttl_seconds": 7200}),
    ("GET", "/api/v1/training_runs/{run}/checkpoints/weights/a/archive", None),
    ("GET", "/local/v1/models/{run}", None),
    ("GET", "/local/v1/checkpoint?tinker_path=tinker://{run}/weights/a", None),
    ("GET", "/api/v1/no/such/route", None),
]


@pytest.fixture
def keyed(keyed_server):
    """``keyed_server`` with one saved checkpoint ``a``; returns (server, Api with the key, run_id)."""
    api = Api(keyed_server.url, api_key=KEY)
    run = api.model()
    api.save(run, 1, "a")
    return keyed_server, api, run


class TestAuthentication:
    """Tests for the API key check."""

    @pytest.mark.parametrize("key", [None, "", "tml-wrong", KEY + "x", KEY[:-1]])
    @pytest.mark.parametrize("method, path, body", ROUTES, ids=["%s %s" % (m, p) for m, p, _ in ROUTES])
    def test_every_route_needs_the_key_and_changes_nothing(self, keyed, key, method, path, body):
        """Without the right X-API-Key every route answers 401 and nothing is created, changed or deleted."""
        server, api, run = keyed
        before = api.get("/api/v1/checkpoints").json()
        headers = {"X-API-Key": key} if key is not None else {}
        resp = requests.request(method, server.url + path.format(run=run), json=body, headers=headers, timeout=5,
                                allow_redirects=False)
        assert (401, "missing or wrong X-API-Key") == (resp.status_code, resp.json()["detail"])
        assert before == api.get("/api/v1/checkpoints").json()


class TestTraversal:
    """Tests for names and run ids that try to leave the root."""

    @pytest.mark.parametrize(
        "name", ["../escape", "..", "a/../../b", "..\\..\\b", "/etc/passwd", "%2e%2e", "a\x00b", "./a"]
    )
    def test_save_name_cannot_leave_the_root(self, tmp_path, name):
        """A save named with a traversal fails as a user error and writes nothing outside ``data/``."""
        with LocalServer(tmp_path / "root") as server:
            api = Api(server.url)
            result = api.save(api.model(), 1, name)
            assert "user" == result.get("category"), result
        assert ["root"] == sorted(os.listdir(tmp_path))
        assert [] == os.listdir(tmp_path / "root" / "data")

    # Literal ".." segments are removed by the HTTP client itself; percent-encoded ones reach the server.
    @pytest.mark.parametrize("run", ["%2E%2E", "%2e%2e", "..%2F..", "%2e%2e%2fetc", "%2E", "a%00b", "a%5C..%5Cb"])
    def test_run_id_in_a_url_cannot_leave_the_root(self, keyed, tmp_path, run):
        """Run ids with traversal in listing, delete, ttl and archive URLs get 4xx and touch nothing."""
        server, api, real = keyed
        sentinel = tmp_path / "sentinel"
        sentinel.write_text("x")
        before = sorted(os.listdir(server.root)), api.get("/api/v1/checkpoints").json()
        for method, path in [
            ("GET", "/api/v1/training_runs/%s/checkpoints" % run),
            ("DELETE", "/api/v1/training_runs/%s/checkpoints/weights/a" % run),
            ("DELETE", "/api/v1/training_runs/%s/checkpoints/weights/%s" % (real, run)),
            ("GET", "/api/v1/training_runs/%s/checkpoints/weights/a/archive" % run),
            ("PUT", "/api/v1/training_runs/%s/checkpoints/weights/a/ttl" % run),
        ]:
            resp = api.http.request(method, server.url + path, json={"ttl_seconds": None}, timeout=5,
                                    allow_redirects=False)
            assert 400 <= resp.status_code < 500, (method, path, resp.status_code)
        assert before == (sorted(os.listdir(server.root)), api.get("/api/v1/checkpoints").json())
        assert "x" == sentinel.read_text()

    def test_load_path_with_traversal_is_refused(self, tmp_path):
        """A session-addressed load of ``tinker://../weights/a`` fails as a user error."""
        with LocalServer(tmp_path / "root") as server:
            api = Api(server.url)
            out = api.load("tinker://../weights/a", False, session_id=api.session(), model_seq_id=0)
        assert ("user", True) == (out["category"], ".." in out["error"])


class TestLimits:
    """Tests for body caps and clients that send too little, too slowly."""

    def test_oversized_submit_is_413_without_reading_the_body(self, tmp_path):
        """A declared body over ``max_body`` gets 413 at once, before any of it is sent, and the connection closes."""
        with LocalServer(tmp_path / "root", max_body=1000) as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"POST /api/v1/save_weights HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
                answer = _read_all(sock)
            assert answer.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in answer
            assert 0 == server.stats.requests["/api/v1/create_model"]

    @pytest.mark.parametrize(
        "prefix",
        [b"", b"POST /api/v1/save_weights HTTP/1.1\r\nHost:", b"POST /api/v1/save_weights HTTP/1.1\r\nContent-Length: 50\r\n\r\n{"],
        ids=["nothing", "half a header", "half a body"],
    )
    def test_silent_clients_are_dropped_and_do_not_block_others(self, tmp_path, prefix):
        """20 connections that stop sending are closed after ``socket_timeout``; a normal request is served meanwhile."""
        with LocalServer(tmp_path / "root", socket_timeout=0.2) as server:
            silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(20)]
            try:
                for s in silent:
                    s.sendall(prefix) if prefix else None
                assert 200 == requests.get(server.url + "/api/v1/healthz", timeout=2).status_code
                t0 = time.monotonic()
                for s in silent:
                    _read_all(s)
                assert time.monotonic() - t0 < 3
            finally:
                for s in silent:
                    s.close()
            wait_until(lambda: server.open_connections == 0, timeout=3)
            assert 0 == server.open_connections


def _read_all(sock):
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


# --------------------------------------------------------------------------- kill -9 under load

LOAD_SCRIPT = """
import sys, time
from tinkex_persist.localserver import LocalServer
server = LocalServer(sys.argv[1]).start()
print(server.url, flush=True)
time.sleep(120)
"""


def _saver(url, acked, stop, worker):
    """Create models and save checkpoints until the server dies; record each acknowledged save."""
    api = Api(url)
    try:
        sid = api.session()
        for m in range(1000):
            mid = api.model(sid, model_seq_id=m)
            for seq in range(1, 6):
                if stop.is_set():
                    return
                out = api.save(mid, seq, "w%d-m%d-s%d" % (worker, m, seq))
                acked.append(out["path"])
    except (requests.RequestException, AssertionError, ValueError, KeyError):
        return


class TestCrashUnderLoad:
    """Tests for ``kill -9`` while 8 threads save."""

    @pytest.mark.parametrize("after", [20, 80])
    def test_index_and_files_agree_after_restart(self, tmp_path, after):
        """After kill -9 mid-load: every acknowledged save is listed, every listed checkpoint's files match its
        sha256 and load, no orphan directory or temp file is left, and saves work again."""
        root = tmp_path / "root"
        proc = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, str(root)], stdout=subprocess.PIPE, text=True)
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        acked, stop = [], threading.Event()
        try:
            url = proc.stdout.readline().strip()
            threads = [threading.Thread(target=_saver, args=(url, acked, stop, w), daemon=True) for w in range(8)]
            for t in threads:
                t.start()
            wait_until(lambda: len(acked) >= after, timeout=30)
            proc.kill()
            proc.wait(10)
            stop.set()
            for t in threads:
                t.join(10)
        finally:
            watchdog.cancel()
            proc.kill()
            proc.stdout.close()
        assert len(acked) >= after
        with LocalServer(root) as server:
            api = Api(server.url)
            listed = api.get("/api/v1/checkpoints", params={"limit": 10000}).json()["checkpoints"]
            paths = {c["tinker_path"] for c in listed}
            assert set(acked) <= paths
            entries = [server.service.store.get(p) for p in sorted(paths)]
            assert sorted(e["dir"] for e in entries) == sorted(os.listdir(root / "data"))
            assert [] == os.listdir(root / "tmp")
            for e in entries:
                d = root / "data" / e["dir"]
                digests = [hashlib.sha256((d / f).read_bytes()).hexdigest() for f in ("weights.bin", "optimizer.bin")]
                assert [e["weights_sha256"], e["optimizer_sha256"]] == digests
                manifest = json.loads((d / "manifest.json").read_text())
                assert e["tinker_path"] == manifest["tinker_path"]
            sid = api.session()
            for i, p in enumerate(sorted(paths)[:10]):
                loaded = api.info(api.load(p, True, session_id=sid, model_seq_id=i)["model_id"])
                assert server.service.store.get(p)["weights_sha256"] == loaded["weights_sha256"]
            assert "save_weights" == api.save(api.model(), 1, "after-restart")["type"]

    def test_torn_last_journal_line_is_ignored(self, tmp_path):
        """A journal whose last line was cut by a crash loads every complete line and drops the torn one."""
        root = tmp_path / "root"
        server = LocalServer(root).start()
        try:
            api = Api(server.url)
            mid = api.model()
            kept = [api.save(mid, i, "c%d" % i)["path"] for i in (1, 2)]
        finally:
            server.stop()
        with open(root / "journal.log", "rb") as f:
            lines = f.read().splitlines(keepends=True)
        assert 2 == len(lines)
        with open(root / "journal.log", "ab") as f:
            f.write(lines[-1][: len(lines[-1]) // 2].replace(b"c2", b"c3"))
        with LocalServer(root) as server:
            api = Api(server.url)
            assert sorted(kept) == sorted(c["tinker_path"] for c in api.get("/api/v1/checkpoints").json()["checkpoints"])
        assert not os.path.exists(root / "journal.log")


class TestBurst:
    """Tests for many clients connecting at once."""

    def test_a_burst_of_connections_is_served_without_syn_retries(self, local_server):
        """100 simultaneous connections all get an answer (how fast is measured by ``tools/bench.py``)."""
        socks = [socket.create_connection(("127.0.0.1", local_server.port), timeout=5) for _ in range(100)]
        try:
            for s in socks:
                s.sendall(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answers = [_read_all(s) for s in socks]
        finally:
            for s in socks:
                s.close()
        assert 100 == sum(a.startswith(b"HTTP/1.1 200 ") for a in answers)
