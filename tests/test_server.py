"""Tests for ``tinkex_persist.localserver`` over real loopback HTTP."""

import hashlib
import http.client
import io
import json
import logging
import pathlib
import socket
import tarfile
import threading
import time

import pytest
import requests

from conftest import wait_until
from tinkex_persist.localserver import LocalServer

BASE = "Qwen/Qwen3-8B"


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def make_server(tmp_path, api_for):
    """Start LocalServers with custom options; each yields (server, api) and is stopped at teardown."""
    servers = []

    def make(**options):
        server = LocalServer(tmp_path / "root", **options).start()
        servers.append(server)
        return server, api_for(server.url, options.get("api_key"))

    yield make
    for server in servers:
        server.stop()


def tinker_path(model_id, name):
    return "tinker://%s/weights/%s" % (model_id, name)


class TestServiceEndpoints:
    """Tests for the session and configuration endpoints."""

    @pytest.mark.parametrize(
        "method, path, body, expected",
        [
            ("POST", "/api/v1/client/config", {"sdk_version": "0.38.0"}, {"use_pyqwest_transport": False}),
            ("POST", "/api/v1/client/dynamic_config", {"sdk_version": "0.38.0"}, {}),
            (
                "POST",
                "/api/v1/telemetry",
                {"events": [{"event": "SESSION_START"}], "anything": 1},
                {"status": "accepted"},
            ),
            ("GET", "/api/v1/healthz", None, {"status": "ok"}),
        ],
    )
    def test_fixed_answers(self, api, method, path, body, expected):
        """Configuration, telemetry and health endpoints answer what the SDK validates."""
        resp = api.http.request(method, api.url + path, json=body)
        assert (200, expected) == (resp.status_code, resp.json())

    def test_server_capabilities(self, api):
        """get_server_capabilities lists supported models."""
        assert "supported_models" in api.get("/api/v1/get_server_capabilities").json()

    def test_session_lifecycle(self, api):
        """A session heartbeats until finished; then heartbeats get 410."""
        sid = api.session()
        beat = {"session_id": sid, "type": "session_heartbeat"}
        assert {"type": "session_heartbeat"} == api.post("/api/v1/session_heartbeat", beat).json()
        finish = api.post("/api/v1/sessions/%s/finish" % sid, {"reason": {"type": "success"}, "detail": None})
        assert (200, {}) == (finish.status_code, finish.json())
        assert 410 == api.post("/api/v1/session_heartbeat", beat).status_code

    def test_unknown_session(self, api):
        """Heartbeats and create_model on an unknown session get 404."""
        assert (
            404
            == api.post("/api/v1/session_heartbeat", {"session_id": "nope", "type": "session_heartbeat"}).status_code
        )
        body = {
            "session_id": "nope",
            "model_seq_id": 0,
            "base_model": BASE,
            "lora_config": {"rank": 4},
            "type": "create_model",
        }
        assert 404 == api.post("/api/v1/create_model", body).status_code

    def test_get_info(self, api):
        """get_info describes the LoRA model."""
        mid = api.model(rank=4)
        info = api.post("/api/v1/get_info", {"model_id": mid, "type": "get_info"}).json()
        assert (mid, True, 4, BASE, "qwen3") == (
            info["model_id"],
            info["is_lora"],
            info["lora_rank"],
            info["model_name"],
            info["model_data"]["arch"],
        )


class TestStrictDecoding:
    """Tests for strict request decoding: a mis-keyed client is rejected with the key named."""

    @pytest.mark.parametrize(
        "body, key",
        [
            (
                {"model_id": "m", "seq_id": 1, "path": "tinker://m/weights/a", "load_optimizer_state": True},
                "load_optimizer_state",
            ),
            ({"model_id": "m", "seq_id": 1, "path": "tinker://m/weights/a", "optimizer": "false"}, "optimizer"),
            ({"model_id": "m", "seq_id": 1, "optimizer": True}, "path"),
            ({"model_id": "m", "seq_id": True, "path": "tinker://m/weights/a", "optimizer": True}, "seq_id"),
        ],
    )
    def test_load_weights_rejects(self, api, body, key):
        """Unknown keys, wrong types and missing keys get 400 and a message naming the key."""
        resp = api.post("/api/v1/load_weights", dict(body, type="load_weights"))
        assert 400 == resp.status_code
        assert key in resp.json()["detail"]

    def test_wrong_discriminator(self, api):
        """A body with another request's ``type`` is rejected."""
        body = {"model_id": "m", "path": "a", "seq_id": 1, "overwrite": False, "type": "load_weights"}
        resp = api.post("/api/v1/save_weights", body)
        assert (400, True) == (resp.status_code, "type" in resp.json()["detail"])

    def test_not_json(self, api):
        """A body that is not JSON gets 400."""
        resp = api.http.post(api.url + "/api/v1/get_info", data=b"{nope", headers={"Content-Type": "application/json"})
        assert 400 == resp.status_code

    def test_optim_step_shape(self, api):
        """optim_step accepts the SDK's ``adam_params`` and rejects other keys."""
        mid = api.model()
        assert 1.0 == api.step(mid, 1)["metrics"]["step"]
        bad = {"model_id": mid, "seq_id": 2, "type": "optim_step", "optim_params": {"learning_rate": 0.1}}
        resp = api.post("/api/v1/optim_step", bad)
        assert (400, True) == (resp.status_code, "optim_params" in resp.json()["detail"])


class TestModelState:
    """Tests for LoRA weights, AdamW state and their save/load round trips."""

    def test_deterministic_init(self, api):
        """Weights depend only on base model, rank and seed; size is rank * 256."""
        sid = api.session()
        a, b, c = (api.info(api.model(sid, n, rank=4, seed=s)) for n, s in ((0, 1), (1, 1), (2, 2)))
        assert a["weights_sha256"] == b["weights_sha256"] != c["weights_sha256"]
        assert (1024, 0) == (a["num_values"], a["step"])

    def test_optim_step_advances(self, api):
        """forward_backward then optim_step changes weights, moments and step, identically for identical models."""
        sid = api.session()
        m1, m2 = api.model(sid, 0), api.model(sid, 1)
        before = api.info(m1)
        api.train(m1, 1)
        api.train(m2, 1)
        after1, after2 = api.info(m1), api.info(m2)
        assert 1 == after1["step"]
        assert before["weights_sha256"] != after1["weights_sha256"]
        assert before["optimizer_sha256"] != after1["optimizer_sha256"]
        assert (after1["weights_sha256"], after1["optimizer_sha256"]) == (
            after2["weights_sha256"],
            after2["optimizer_sha256"],
        )

    def _trained_checkpoint(self, api):
        sid = api.session()
        mid = api.model(sid, 0)
        api.train(mid, 1)
        api.train(mid, 3)
        path = api.save(mid, 5, "ckpt")["path"]
        return sid, api.info(mid), path

    def test_load_weights_only(self, api):
        """optimizer=false restores weights bit-exact and resets the optimizer."""
        sid, saved, path = self._trained_checkpoint(api)
        fresh = api.info(api.model(sid, 1))
        out = api.load(path, False, session_id=sid, model_seq_id=2)
        loaded = api.info(out["model_id"])
        assert ("%s:train:2" % sid, path) == (out["model_id"], out["path"])
        assert (saved["weights_sha256"], fresh["optimizer_sha256"], 0) == (
            loaded["weights_sha256"],
            loaded["optimizer_sha256"],
            loaded["step"],
        )

    def test_load_with_optimizer(self, api):
        """optimizer=true restores weights and optimizer state bit-exact."""
        sid, saved, path = self._trained_checkpoint(api)
        mid = api.model(sid, 1)
        api.load(path, True, model_id=mid, seq_id=1)
        loaded = api.info(mid)
        assert (saved["weights_sha256"], saved["optimizer_sha256"], 2) == (
            loaded["weights_sha256"],
            loaded["optimizer_sha256"],
            loaded["step"],
        )

    def test_optimizer_state_matters(self, api):
        """The same training step from the same weights differs with and without restored moments."""
        sid, _, path = self._trained_checkpoint(api)
        with_opt = api.load(path, True, session_id=sid, model_seq_id=1)["model_id"]
        without = api.load(path, False, session_id=sid, model_seq_id=2)["model_id"]
        api.train(with_opt, 1)
        api.train(without, 1)
        assert api.info(with_opt)["weights_sha256"] != api.info(without)["weights_sha256"]


class TestCheckpoints:
    """Tests for saving, listing, TTLs and deleting checkpoints."""

    def test_save_layout(self, api, local_server):
        """A save commits files with a manifest of sizes and sha256, referenced by one line of the index journal."""
        mid = api.model()
        path = api.save(mid, 1, "a")["path"]
        root = pathlib.Path(local_server.root)
        records = [json.loads(line) for line in (root / "journal.log").read_text().splitlines()]
        assert [("put", path)] == [(r["op"], r["path"]) for r in records]
        entry = records[0]["entry"]
        manifest = json.loads((root / "data" / entry["dir"] / "manifest.json").read_text())
        for name, meta in manifest["files"].items():
            data = (root / "data" / entry["dir"] / name).read_bytes()
            assert (meta["size"], meta["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert [] == list((root / "tmp").iterdir())

    @pytest.mark.parametrize("name", ["", "a/b", "..", "x..y", "bad\x01name", "n" * 129, " lead"])
    def test_invalid_names(self, api, name):
        """Invalid checkpoint names fail the future as a user error."""
        out = api.save(api.model(), 1, name)
        assert "user" == out["category"]

    def test_exists_without_overwrite(self, api):
        """Saving an existing name fails unless overwrite is set."""
        mid = api.model()
        api.save(mid, 1, "a")
        failed = api.save(mid, 2, "a")
        assert ("user", True) == (failed["category"], "already exists" in failed["error"])
        assert tinker_path(mid, "a") == api.save(mid, 3, "a", overwrite=True)["path"]

    def test_ttl_too_short(self, api):
        """ttl_seconds below 3600 is a user error."""
        out = api.save(api.model(), 1, "a", ttl_seconds=60)
        assert ("user", True) == (out["category"], "ttl_seconds" in out["error"])

    def test_expiry(self, make_server):
        """Expired checkpoints leave listings and cannot be loaded."""
        clock = FakeClock()
        server, api = make_server(clock=clock)
        sid = api.session()
        mid = api.model(sid)
        path = api.save(mid, 1, "a", ttl_seconds=3600)["path"]
        listed = api.get("/api/v1/training_runs/%s/checkpoints" % mid).json()["checkpoints"]
        assert "2023-11-14T23:13:20Z" == listed[0]["expires_at"]
        clock.now += 3601
        assert [] == api.get("/api/v1/checkpoints").json()["checkpoints"]
        assert "user" == api.load(path, False, session_id=sid, model_seq_id=1)["category"]
        assert 404 == api.post("/api/v1/weights_info", {"tinker_path": path}).status_code

    def test_set_ttl(self, make_server):
        """PUT .../ttl sets or removes the expiry, validates it, and 404s on unknown checkpoints."""
        clock = FakeClock()
        server, api = make_server(clock=clock)
        mid = api.model()
        api.save(mid, 1, "a")
        url = api.url + "/api/v1/training_runs/%s/checkpoints/weights/%%s/ttl" % mid
        assert 204 == api.http.put(url % "a", json={"ttl_seconds": 7200}).status_code
        assert "2023-11-15T00:13:20Z" == api.get("/api/v1/checkpoints").json()["checkpoints"][0]["expires_at"]
        assert 204 == api.http.put(url % "a", json={"ttl_seconds": None}).status_code
        assert None is api.get("/api/v1/checkpoints").json()["checkpoints"][0]["expires_at"]
        assert 400 == api.http.put(url % "a", json={"ttl_seconds": 10}).status_code
        assert 400 == api.http.put(url % "a", json={"ttl": 7200}).status_code
        assert 404 == api.http.put(url % "b", json={"ttl_seconds": 7200}).status_code

    def test_user_listing_pages(self, api):
        """GET /api/v1/checkpoints pages with limit/offset and reports total_count."""
        mid = api.model()
        for seq, name in enumerate("abc", 1):
            api.save(mid, seq, name)
        first = api.get("/api/v1/checkpoints", params={"limit": 2, "offset": 0}).json()
        rest = api.get("/api/v1/checkpoints", params={"limit": 2, "offset": 2}).json()
        assert ({"offset": 0, "limit": 2, "total_count": 3}, 2, 1) == (
            first["cursor"],
            len(first["checkpoints"]),
            len(rest["checkpoints"]),
        )
        names = {c["checkpoint_id"] for c in first["checkpoints"] + rest["checkpoints"]}
        assert {"weights/a", "weights/b", "weights/c"} == names
        assert 400 == api.get("/api/v1/checkpoints", params={"limit": 0}).status_code

    def test_delete(self, api):
        """DELETE removes a checkpoint (204); again is 404; unknown runs list as 404."""
        mid = api.model()
        api.save(mid, 1, "a")
        url = api.url + "/api/v1/training_runs/%s/checkpoints/weights/a" % mid
        assert (204, 404) == (api.http.delete(url).status_code, api.http.delete(url).status_code)
        assert [] == api.get("/api/v1/training_runs/%s/checkpoints" % mid).json()["checkpoints"]
        assert 404 == api.get("/api/v1/training_runs/nope/checkpoints").status_code

    def test_weights_info(self, api):
        """weights_info describes a checkpoint's base model and LoRA settings."""
        mid = api.model(rank=16)
        path = api.save(mid, 1, "a")["path"]
        info = api.post("/api/v1/weights_info", {"tinker_path": path}).json()
        assert (BASE, 16, True, {"type": "adamw"}) == (
            info["base_model"],
            info["lora_rank"],
            info["is_lora"],
            info["optimizer_config"],
        )


class TestSeqOrdering:
    """Tests for per-model seq_id ordering, replays and the load-first rule."""

    def test_identical_replay(self, api, local_server):
        """The same seq_id and body returns the original request_id."""
        mid = api.model()
        body = {"model_id": mid, "path": "a", "seq_id": 1, "overwrite": False, "type": "save_weights"}
        assert api.submit("/api/v1/save_weights", body) == api.submit("/api/v1/save_weights", body)
        assert [1, 1] == local_server.seq_log[mid]

    def test_different_body_same_seq(self, api):
        """A different body with a used seq_id gets 400."""
        mid = api.model()
        api.save(mid, 1, "a")
        body = {"model_id": mid, "path": "b", "seq_id": 1, "overwrite": False, "type": "save_weights"}
        resp = api.post("/api/v1/save_weights", body)
        assert (400, True) == (resp.status_code, "seq_id 1" in resp.json()["detail"])

    def test_idempotency_key(self, api):
        """A repeated X-Idempotency-Key returns the first answer."""
        mid = api.model()
        body = {"model_id": mid, "path": "a", "seq_id": 1, "overwrite": False, "type": "save_weights"}
        first = api.submit("/api/v1/save_weights", body, **{"X-Idempotency-Key": "k-1"})
        assert first == api.submit("/api/v1/save_weights", body, **{"X-Idempotency-Key": "k-1"})

    def test_gap_fills(self, make_server):
        """A seq_id ahead of the expected one waits for the gap, then runs in order."""
        server, api = make_server(seq_wait=5.0)
        mid = api.model()
        results = {}
        body = {"model_id": mid, "path": "after", "seq_id": 2, "overwrite": False, "type": "save_weights"}
        waiter = threading.Thread(
            target=lambda: results.update(save=api.__class__(api.url).call("/api/v1/save_weights", body))
        )
        waiter.start()
        wait_until(lambda: server.seq_log.get(mid) == [2])
        api.step(mid, 1)
        waiter.join(5)
        entry = api.get("/local/v1/checkpoint", params={"tinker_path": results["save"]["path"]}).json()
        assert ([2, 1], 1) == (server.seq_log[mid], entry["step"])

    def test_gap_not_filled(self, make_server):
        """A gap that is not filled within seq_wait gets 400."""
        server, api = make_server(seq_wait=0.05)
        mid = api.model()
        resp = api.post(
            "/api/v1/save_weights",
            {"model_id": mid, "path": "a", "seq_id": 3, "overwrite": False, "type": "save_weights"},
        )
        assert (400, True) == (resp.status_code, "ahead" in resp.json()["detail"])

    def test_late_load_rejected(self, api):
        """load_weights after a model's first request fails, pointing to create_training_client_from_state."""
        mid = api.model()
        path = api.save(mid, 1, "a")["path"]
        out = api.load(path, False, model_id=mid, seq_id=2)
        assert ("user", True) == (out["category"], "create_training_client_from_state" in out["error"])

    def test_late_load_allowed(self, make_server):
        """allow_late_load=True accepts load_weights at any point."""
        server, api = make_server(allow_late_load=True)
        mid = api.model()
        path = api.save(mid, 1, "a")["path"]
        assert {"path": path, "model_id": mid, "type": "load_weights"} == api.load(path, True, model_id=mid, seq_id=2)

    def test_both_addressings_rejected(self, api):
        """load_weights with model_id and session_id together gets 400."""
        body = {
            "model_id": "m",
            "seq_id": 1,
            "session_id": "s",
            "model_seq_id": 1,
            "path": "tinker://m/weights/a",
            "optimizer": False,
            "type": "load_weights",
        }
        assert 400 == api.post("/api/v1/load_weights", body).status_code

    def test_model_seq_id_reuse(self, api):
        """A model_seq_id already used in the session gets 400 for a different body."""
        sid = api.session()
        api.model(sid, 0)
        body = {
            "session_id": sid,
            "model_seq_id": 0,
            "base_model": BASE,
            "lora_config": {"rank": 2},
            "type": "create_model",
        }
        assert 400 == api.post("/api/v1/create_model", body).status_code


class TestFutures:
    """Tests for retrieve_future: long-poll, try_again, 408 and 410."""

    def test_long_poll_wakes_on_completion(self, make_server):
        """A pending poll is held and answered when the future completes: one poll, answered with the result."""
        server, api = make_server(complete_delay=0.05)
        model_id = api.model()
        assert (1, model_id) == (server.stats.requests["/api/v1/retrieve_future"], api.info(model_id)["model_id"])

    @pytest.mark.parametrize("status", [200, 408])
    def test_pending_without_long_poll(self, make_server, status):
        """long_poll=False answers try_again at once with the configured status."""
        server, api = make_server(complete_delay=5.0, long_poll=False, pending_status=status)
        sid = api.session()
        rid = api.submit(
            "/api/v1/create_model",
            {
                "session_id": sid,
                "model_seq_id": 0,
                "base_model": BASE,
                "lora_config": {"rank": 2},
                "type": "create_model",
            },
        )
        resp = api.post("/api/v1/retrieve_future", {"request_id": rid, "allow_metadata_only": True})
        assert (status, {"type": "try_again", "request_id": rid, "queue_state": "active"}) == (
            resp.status_code,
            resp.json(),
        )

    def test_hold_times_out(self, make_server):
        """A long-poll that outlives long_poll_timeout answers try_again."""
        server, api = make_server(complete_delay=5.0, long_poll_timeout=0.05)
        sid = api.session()
        rid = api.submit(
            "/api/v1/create_model",
            {
                "session_id": sid,
                "model_seq_id": 0,
                "base_model": BASE,
                "lora_config": {"rank": 2},
                "type": "create_model",
            },
        )
        assert "try_again" == api.result(rid)["type"]

    def test_unknown_and_expired(self, make_server):
        """Unknown request ids and expired futures get 410."""
        clock = FakeClock()
        server, api = make_server(clock=clock, future_ttl=60)
        sid = api.session()
        rid = api.submit(
            "/api/v1/create_model",
            {
                "session_id": sid,
                "model_seq_id": 0,
                "base_model": BASE,
                "lora_config": {"rank": 2},
                "type": "create_model",
            },
        )
        clock.now += 61
        for request_id in ("nope", rid):
            assert 410 == api.post("/api/v1/retrieve_future", {"request_id": request_id}).status_code


class TestArchive:
    """Tests for the archive URL and its signed, ranged download."""

    def _url(self, api):
        mid = api.model()
        api.save(mid, 1, "a")
        resp = api.get("/api/v1/training_runs/%s/checkpoints/weights/a/archive" % mid, allow_redirects=False)
        assert (302, resp.headers["Location"]) == (resp.status_code, resp.json()["url"])
        assert "Expires" in resp.headers
        return resp.headers["Location"]

    def test_download(self, make_server):
        """The signed URL needs no API key and serves a tar whose sha256 is in a header."""
        server, api = make_server(api_key="tml-secret")
        resp = requests.get(self._url(api), timeout=10)
        names = tarfile.open(fileobj=io.BytesIO(resp.content)).getnames()
        assert (200, hashlib.sha256(resp.content).hexdigest()) == (
            resp.status_code,
            resp.headers["X-Checkpoint-SHA256"],
        )
        assert ["manifest.json", "optimizer.bin", "weights.bin"] == names

    @pytest.mark.parametrize(
        "header, status, span",
        [
            ("bytes=0-99", 206, (0, 100)),
            ("bytes=100-", 206, (100, None)),
            ("bytes=-10", 206, (-10, None)),
            ("bytes=99999999-", 416, None),
        ],
    )
    def test_range(self, api, header, status, span):
        """Single byte ranges get 206 with Content-Range; unsatisfiable ones 416."""
        url = self._url(api)
        full = requests.get(url, timeout=10).content
        resp = requests.get(url, headers={"Range": header}, timeout=10)
        assert status == resp.status_code
        if span:
            assert full[span[0] : span[1]] == resp.content
        else:
            assert "bytes */%d" % len(full) == resp.headers["Content-Range"]

    def test_bad_signature(self, api):
        """A tampered or expired token gets 403."""
        url = self._url(api)
        assert 403 == requests.get(url[:-1] + ("0" if url[-1] != "0" else "1"), timeout=10).status_code

    def test_expired_url(self, make_server):
        """A signed URL stops working after archive_url_ttl."""
        clock = FakeClock()
        server, api = make_server(clock=clock, archive_url_ttl=60)
        url = self._url(api)
        clock.now += 61
        assert 403 == requests.get(url, timeout=10).status_code


class TestHTTP:
    """Tests for authentication, limits, speed, faults and HTTPS."""

    @pytest.mark.parametrize("key, status", [(None, 401), ("tml-wrong", 401), ("tml-secret", 200)])
    def test_api_key(self, make_server, key, status):
        """With api_key set, requests need the right X-API-Key."""
        server, _ = make_server(api_key="tml-secret")
        headers = {"X-API-Key": key} if key else {}
        assert status == requests.get(server.url + "/api/v1/healthz", headers=headers, timeout=10).status_code

    def test_body_cap(self, make_server):
        """A body over max_body gets 413."""
        server, api = make_server(max_body=100)
        assert 413 == api.post("/api/v1/telemetry", {"events": ["x" * 200]}).status_code

    def test_silent_client_is_dropped(self, make_server):
        """A connection that sends nothing is closed after socket_timeout."""
        server, api = make_server(socket_timeout=0.1)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            assert b"" == sock.recv(1)

    def test_routes(self, api):
        """Unknown paths get 404, known paths with another method 405."""
        assert (404, 405) == (api.get("/api/v1/nope").status_code, api.get("/api/v1/save_weights").status_code)

    def test_status_fault(self, api, local_server):
        """A status fault answers once without processing; the next request is normal."""
        local_server.faults.add("/api/v1/healthz", status=503, body={"detail": "down"})
        assert (503, 200) == (api.get("/api/v1/healthz").status_code, api.get("/api/v1/healthz").status_code)
        assert (2, 0) == (local_server.stats.requests["/api/v1/healthz"], len(local_server.faults))

    def test_drop_fault_commits(self, api, local_server):
        """A drop fault commits the save and closes the connection without answering."""
        mid = api.model()
        local_server.faults.add("/api/v1/save_weights", drop=True)
        body = {"model_id": mid, "path": "a", "seq_id": 1, "overwrite": False, "type": "save_weights"}
        with pytest.raises(requests.ConnectionError):
            api.post("/api/v1/save_weights", body)
        assert ["weights/a"] == [c["checkpoint_id"] for c in api.get("/api/v1/checkpoints").json()["checkpoints"]]

    def test_delay_fault(self, api, local_server):
        """A delay fault holds the answer."""
        local_server.faults.add("/api/v1/healthz", delay=0.05)
        start = time.monotonic()
        api.get("/api/v1/healthz")
        assert time.monotonic() - start >= 0.05

    def test_logs_at_debug(self, api, caplog):
        """Request lines go to logging at DEBUG, not to stderr."""
        with caplog.at_level(logging.DEBUG, logger="tinkex_persist.localserver"):
            api.get("/api/v1/healthz")
        assert any("/api/v1/healthz" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)

    def test_https(self, tmp_path):
        """With certfile and keyfile the server speaks HTTPS."""
        trustme = pytest.importorskip("trustme")
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
        cert.cert_chain_pems[0].write_to_path(str(certfile))
        cert.private_key_pem.write_to_path(str(keyfile))
        ca.cert_pem.write_to_path(str(cafile))
        with LocalServer(tmp_path / "root", certfile=str(certfile), keyfile=str(keyfile)) as server:
            assert server.url.startswith("https://")
            assert 200 == requests.get(server.url + "/api/v1/healthz", verify=str(cafile), timeout=10).status_code
            with pytest.raises(requests.exceptions.SSLError):
                requests.get(server.url + "/api/v1/healthz", timeout=10)
