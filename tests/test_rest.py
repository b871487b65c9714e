"""Tests for the SDK 0.38 checkpoint REST surface: exports and signed URLs, publish, listing by type, usage, copies.

Library calls, their exact requests (SDK vectors), the embedded server's routes, and the official SDK and
``tinker`` CLI against that server.
"""

import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys

import pytest
import requests

import tinkex_persist as tp
from tinkex_persist import _converter, _wire
from tinkex_persist.exceptions import DecodeError
from tinkex_persist.localserver import LocalServer

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "rest_targets.json").read_text())
VECTORS = {v["name"]: v for v in GOLDEN["vectors"]}
TINKER_CLI = pathlib.Path(sys.executable).with_name("tinker")
KEY = "tml-rest-test-key"


def _vector(name, run_id=None):
    v = VECTORS[name]
    target = v["target"] if run_id is None else v["target"].replace("<session-1>:train:0", run_id)
    return v["method"], target


@pytest.fixture
def server(tmp_path):
    """A LocalServer requiring KEY, exports padded to 100,000 bytes."""
    with LocalServer(tmp_path / "root", api_key=KEY, export_size=100_000) as srv:
        yield srv


@pytest.fixture
def service(server):
    """A ServiceClient on ``server``."""
    with tp.ServiceClient(base_url=server.url, api_key=KEY, backoff_factor=0, heartbeat_interval=None) as svc:
        yield svc


@pytest.fixture
def tc(service):
    """A LoRA training client with one saved training checkpoint, ``tc.saved``."""
    client = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4, seed=1).result()
    client.saved = tp.save_state(client, "ckpt-g").result().path
    return client


class Recorder:
    """Records raw requests (method, target with query, headers, body) through a stdlib HTTP proxy."""

    def __init__(self, upstream):
        import http.server
        import threading
        import urllib.request

        self.seen = []
        recorder = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                recorder.seen.append((self.command, self.path, dict(self.headers), body))
                req = urllib.request.Request(upstream + self.path, data=body if self.command != "GET" else None,
                                             method=self.command, headers=dict(self.headers))
                try:
                    resp = urllib.request.urlopen(req, timeout=30)
                    status, data, hdrs = resp.status, resp.read(), resp.headers
                except urllib.error.HTTPError as exc:
                    status, data, hdrs = exc.code, exc.read(), exc.headers
                self.send_response(status)
                for k in ("Content-Type",):
                    if hdrs.get(k):
                        self.send_header(k, hdrs[k])
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorded(server):
    """A ServiceClient that reaches ``server`` through a :class:`Recorder`; yields (service, recorder)."""
    rec = Recorder(server.url)
    with tp.ServiceClient(base_url=rec.url, api_key=KEY, backoff_factor=0, heartbeat_interval=None) as svc:
        yield svc, rec
    rec.close()


class TestWireVectors:
    """Each new request equals the official SDK's, body bytes and target (query included)."""

    def test_save_weights_external_body(self):
        """The export request encodes to the SDK's bytes, key order included; ``age_encryption_recipients`` omitted."""
        v = VECTORS["save_weights_external"]
        req = _wire.SaveWeightsExternalRequest(model_id="<session-1>:train:0", path="export-1", seq_id=7, ttl_seconds=7200)
        assert v["body_raw"].encode() == _converter.dumps(req)

    def test_copy_weights_body(self):
        """The copy request encodes to the SDK's bytes: no session fields, no token, no ``type``."""
        v = VECTORS["copy_weights"]
        req = _wire.CopyWeightsRequest(
            destination_project_id="proj-archive", source_path="tinker://<session-1>:train:0/weights/ckpt-g", ttl_seconds=7200
        )
        assert v["body_raw"].encode() == _converter.dumps(req)

    @pytest.mark.parametrize("name, ttl", [("set_checkpoint_ttl", 86400), ("set_checkpoint_ttl_remove", None)])
    def test_ttl_body_sends_null(self, name, ttl):
        """A TTL of None travels as ``null``, as the SDK sends it."""
        assert VECTORS[name]["body_raw"].encode() == _converter.dumps(_wire.SetTtlRequest(ttl_seconds=ttl))

    def test_requests_are_strict(self):
        """The server refuses an export or copy request with an unknown key, naming it."""
        for cls, body in ((_wire.SaveWeightsExternalRequest, dict(json.loads(VECTORS["save_weights_external"]["body_raw"]), x=1)),
                          (_wire.CopyWeightsRequest, dict(json.loads(VECTORS["copy_weights"]["body_raw"]), x=1))):
            with pytest.raises(DecodeError) as info:
                _converter.decode_request(body, cls)
            assert "x" in str(info.value)

    def test_library_requests_match_the_vectors(self, recorded, server):
        """publish, unpublish, ttl, list, usage, copy and the URL request go out exactly as the SDK sends them."""
        service, rec = recorded
        client = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
        path = tp.save_state(client, "ckpt-g").result().path
        export = tp.save_weights_external(client, "export-1", ttl_seconds=7200).result()
        run = client.model_id
        rec.seen.clear()
        tp.publish_checkpoint(service, path).result()
        tp.unpublish_checkpoint(service, path).result()
        tp.set_checkpoint_ttl(service, path, 86400).result()
        tp.set_checkpoint_ttl(service, path, None).result()
        tp.get_external_weights_urls(service, export.path).result()
        tp.list_user_checkpoints(service, page_size=5).result()
        tp.get_checkpoint_storage_usage(service).result()
        tp.get_checkpoint_storage_usage(service, project_id="proj-1").result()
        tp.copy_weights(service, path, "proj-archive", ttl_seconds=7200).result()
        sent = [(m, t) for m, t, _, _ in rec.seen]
        expected = [_vector(n, run) for n in ("publish_checkpoint", "unpublish_checkpoint", "set_checkpoint_ttl",
                                              "set_checkpoint_ttl_remove", "get_external_weights_urls",
                                              "list_user_checkpoints", "checkpoint_storage_usage",
                                              "checkpoint_storage_usage_project")] + [("POST", "/api/v1/copy_weights")]
        assert expected == sent
        bodies = {t: b for m, t, _, b in rec.seen}
        assert b"" == bodies[_vector("publish_checkpoint", run)[1]]
        copy = [s for s in rec.seen if s[1] == "/api/v1/copy_weights"][0]
        assert VECTORS["copy_weights"]["body_raw"].replace("<session-1>:train:0", run).encode() == copy[3]
        headers = {k.lower(): v for k, v in copy[2].items()}
        assert 36 == len(headers["x-idempotency-key"])  # a bare UUID, as the SDK sends for copies

    def test_export_request_matches_the_vector(self, recorded):
        """``save_weights_external`` sends the SDK's body, with the model's next seq_id."""
        service, rec = recorded
        client = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
        tp.save_weights_external(client, "export-1", ttl_seconds=7200).result()
        body = [b for m, t, _, b in rec.seen if t == "/api/v1/save_weights_external"]
        expected = VECTORS["save_weights_external"]["body_raw"].replace("<session-1>:train:0", client.model_id)
        assert [expected.replace('"seq_id":7', '"seq_id":1').encode()] == body


class TestExport:
    """Tests for ``save_weights_external`` and ``get_external_weights_urls`` against the embedded server."""

    def test_export_writes_real_adapter_files_served_by_signed_urls(self, service, tc, server):
        """The export holds a safetensors weights file of the configured size and a PEFT config; URLs serve them."""
        export = tc.save_weights_external("exp").result()
        assert "tinker://%s/external_weights/exp" % tc.model_id == export.path
        urls = tp.get_external_weights_urls(service, export.path).result()
        assert ["adapter_config.json", "adapter_model.safetensors"] == urls.files
        weights = requests.get(urls.urls["adapter_model.safetensors"], timeout=10)
        config = requests.get(urls.urls["adapter_config.json"], timeout=10).json()
        assert (200, 100_000) == (weights.status_code, len(weights.content))
        (n,) = struct.unpack("<Q", weights.content[:8])
        header = json.loads(weights.content[8 : 8 + n])
        assert ["F64", [4 * 256]] == [header["base_model.model.lora.weight"]["dtype"],
                                      header["base_model.model.lora.weight"]["shape"]]
        assert ("Qwen/Qwen3-8B", 4, "LORA") == (config["base_model_name_or_path"], config["r"], config["peft_type"])
        assert export.size_bytes == len(weights.content) + len(json.dumps(config, indent=2, sort_keys=True)) + 1
        assert urls.expires > tp.get_training_run(service, tc.model_id).result().last_request_time

    def test_signed_urls_serve_ranges_and_need_no_key(self, service, tc):
        """A Range request gets 206 with Content-Range and Content-Length; no API key is needed; 416 past the end."""
        export = tc.save_weights_external("exp").result()
        url = tp.get_external_weights_urls(service, export.path).result().urls["adapter_model.safetensors"]
        whole = requests.get(url, timeout=10).content
        part = requests.get(url, headers={"Range": "bytes=1000-1999"}, timeout=10)
        assert (206, "bytes 1000-1999/100000", "1000", whole[1000:2000]) == (
            part.status_code, part.headers["Content-Range"], part.headers["Content-Length"], part.content)
        head = requests.head(url, timeout=10)
        assert (200, "100000", "bytes") == (head.status_code, head.headers["Content-Length"], head.headers["Accept-Ranges"])
        assert 416 == requests.get(url, headers={"Range": "bytes=100000-"}, timeout=10).status_code

    def test_a_tampered_expired_or_deleted_url_is_refused(self, tmp_path):
        """A changed token or expiry gets 403; after the expiry, or once the export is deleted, 403 too."""
        now = [1_800_000_000.0]
        with LocalServer(tmp_path / "r", clock=lambda: now[0], external_url_ttl=600) as srv:
            with tp.ServiceClient(base_url=srv.url, api_key=KEY) as service:
                client = service.create_lora_training_client("Qwen/Qwen3-8B", rank=2).result()
                export = client.save_weights_external("exp").result()
                url = tp.get_external_weights_urls(service, export.path).result().urls["adapter_config.json"]
                assert 200 == requests.get(url, timeout=10).status_code
                assert 403 == requests.get(url[:-1] + ("0" if url[-1] != "0" else "1"), timeout=10).status_code
                assert 403 == requests.get(url.replace("expires=", "expires=9"), timeout=10).status_code
                now[0] += 601
                assert 403 == requests.get(url, timeout=10).status_code
                fresh = tp.get_external_weights_urls(service, export.path).result().urls["adapter_config.json"]
                assert 200 == requests.get(fresh, timeout=10).status_code
                tp.delete_checkpoints(service, [export.path]).result()
                assert 403 == requests.get(fresh, timeout=10).status_code

    def test_ttl_and_delete_of_an_export(self, service, tc):
        """An export's TTL can be set and removed, and it can be deleted like any checkpoint."""
        export = tc.save_weights_external("exp", ttl_seconds=3600).result()
        listed = {c.tinker_path: c for c in tp.list_user_checkpoints(service, type="external").result()}
        assert listed[export.path].expires_at is not None
        tp.set_checkpoint_ttl(service, export.path, None).result()
        assert None is tp.list_user_checkpoints(service, type="external").result()[0].expires_at
        tp.delete_checkpoints(service, [export.path]).result()
        assert [] == tp.list_user_checkpoints(service, type="external").result()

    def test_a_second_export_of_the_same_name_fails(self, service, tc):
        """An export name is used once per run; the second fails the Future with RequestFailedError."""
        tc.save_weights_external("exp").result()
        with pytest.raises(tp.RequestFailedError) as info:
            tp.save_weights_external(tc, "exp").result()
        assert "already exists" in str(info.value)

    def test_exports_are_ordered_with_the_models_requests(self, server, service, tc):
        """An export takes the model's next seq_id, after the save queued before it."""
        tp.save_state(tc, "after").result()
        tc.save_weights_external("exp").result()
        assert [1, 2, 3] == server.seq_log[tc.model_id]

    def test_urls_of_another_kind_are_refused_before_sending(self, service, tc):
        """Only external_weights paths have URLs: a training path is a UsageError that names the remedy."""
        with pytest.raises(tp.UsageError) as info:
            tp.get_external_weights_urls(service, tc.saved)
        assert "save_weights_external" in str(info.value)

    def test_server_refuses_urls_of_a_training_checkpoint(self, server, tc):
        """Asked directly, the server answers 400 for a checkpoint that is not an export."""
        run = tc.model_id
        resp = requests.get(server.url + "/api/v1/training_runs/%s/checkpoints/weights/ckpt-g/external_weights_urls" % run,
                            headers={"X-API-Key": KEY}, timeout=10)
        assert 400 == resp.status_code

    @pytest.mark.parametrize("name, ttl", [("", None), ("a/b", None), ("ok", 10), ("ok", "3600")])
    def test_bad_export_arguments_are_refused(self, tc, name, ttl):
        """A bad name or TTL raises UsageError before anything is sent."""
        with pytest.raises(tp.UsageError):
            tp.save_weights_external(tc, name, ttl_seconds=ttl)

    def test_encrypted_exports_are_refused_by_the_server(self, server, tc):
        """The local server refuses age encryption: the future fails with a user error."""
        api = requests.Session()
        api.headers["X-API-Key"] = KEY
        body = {"model_id": tc.model_id, "path": "enc", "seq_id": 2, "age_encryption_recipients": ["age1x"],
                "type": "save_weights_external"}
        rid = api.post(server.url + "/api/v1/save_weights_external", json=body, timeout=10).json()["request_id"]
        out = api.post(server.url + "/api/v1/retrieve_future", json={"request_id": rid, "allow_metadata_only": True},
                       timeout=10).json()
        assert ("user", True) == (out["category"], "age" in out["error"])


class TestPublish:
    """Tests for ``publish_checkpoint`` and ``unpublish_checkpoint``."""

    def test_publish_then_unpublish(self, service, tc):
        """Publishing shows in the listing; unpublishing reverts it."""
        tp.publish_checkpoint(service, tc.saved).result()
        assert [True] == [c.public for c in tp.list_checkpoints(service, tc.model_id).result()]
        tp.unpublish_checkpoint(service, tc.saved).result()
        assert [False] == [c.public for c in tp.list_checkpoints(service, tc.model_id).result()]

    def test_same_state_twice_is_a_conflict(self, service, tc):
        """Publishing a public checkpoint, or unpublishing a private one, fails with ConflictError (409)."""
        with pytest.raises(tp.ConflictError):
            tp.unpublish_checkpoint(service, tc.saved).result()
        tp.publish_checkpoint(service, tc.saved).result()
        with pytest.raises(tp.ConflictError):
            tp.publish_checkpoint(service, tc.saved).result()

    def test_missing_checkpoint_is_not_found(self, service, tc):
        """Publishing a checkpoint that does not exist fails with NotFoundError."""
        with pytest.raises(tp.NotFoundError):
            tp.publish_checkpoint(service, tc.saved + "-nope").result()

    @pytest.mark.parametrize("fn", [tp.publish_checkpoint, tp.unpublish_checkpoint])
    def test_bad_path_is_refused(self, service, fn):
        """A malformed path raises UsageError at once."""
        with pytest.raises(tp.UsageError):
            fn(service, "s3://bucket/x")


class TestListUserCheckpoints:
    """Tests for ``list_user_checkpoints``."""

    def test_all_runs_every_page_and_type_filter(self, service, tc):
        """All of the user's checkpoints across runs, over several pages; ``type`` keeps one type; ``limit`` cuts."""
        other = service.create_lora_training_client("Qwen/Qwen3-8B", rank=2).result()
        saved = [tp.save_state(other, "o%d" % i).result().path for i in range(3)]
        export = tc.save_weights_external("exp").result().path
        everything = tp.list_user_checkpoints(service, page_size=2).result()
        assert sorted(saved + [tc.saved, export]) == sorted(c.tinker_path for c in everything)
        assert [export] == [c.tinker_path for c in tp.list_user_checkpoints(service, type="external").result()]
        training = tp.list_user_checkpoints(service, type="training", limit=2, page_size=1).result()
        assert (2, {"training"}) == (len(training), {c.checkpoint_type for c in training})
        assert [] == tp.list_user_checkpoints(service, type="sampler").result()

    @pytest.mark.parametrize("kw", [{"type": "weights"}, {"limit": 0}, {"page_size": -1}])
    def test_bad_arguments(self, service, kw):
        """An unknown type or a bad count raises UsageError."""
        with pytest.raises(tp.UsageError):
            tp.list_user_checkpoints(service, **kw)


class TestUsageAndCopy:
    """Tests for ``get_checkpoint_storage_usage`` and ``copy_weights``."""

    def test_usage_counts_live_checkpoints(self, service, tc):
        """Usage counts every live checkpoint and its bytes."""
        export = tc.save_weights_external("exp").result()
        usage = tp.get_checkpoint_storage_usage(service).result()
        sizes = [c.size_bytes for c in tp.list_user_checkpoints(service).result()]
        assert (2, sum(sizes)) == (usage.checkpoint_count, usage.size_bytes)
        assert export.size_bytes in sizes
        assert usage.to_json()["data"][0]["checkpoint_count"] == 2

    def test_copy_is_a_new_run_holding_the_same_weights(self, service, tc):
        """The copy lives in a new training run, its weights equal to the source's; it can be resumed."""
        copied = tp.copy_weights(service, tc.saved, "proj-archive", ttl_seconds=7200).result()
        run = tp.get_training_run(service, copied).result()
        assert run.training_run_id != tc.model_id
        assert copied == run.last_checkpoint.tinker_path
        assert run.last_checkpoint.expires_at is not None
        assert tp.get_weights_info(service, copied).result() == tp.get_weights_info(service, tc.saved).result()
        resumed = tp.create_training_client_from_state_with_optimizer(service, copied).result()
        assert resumed.model_id != tc.model_id

    def test_copy_needs_a_project(self, service, tc):
        """Without a destination project (none given, none configured) the copy is refused before sending."""
        with pytest.raises(tp.UsageError):
            tp.copy_weights(service, tc.saved, None)

    def test_copy_of_a_missing_checkpoint_is_not_found(self, service, tc):
        """Copying a path that does not exist fails with NotFoundError."""
        with pytest.raises(tp.NotFoundError):
            tp.copy_weights(service, tc.saved + "x", "p").result()

    @pytest.mark.parametrize("kw", [{"ttl_seconds": 5}, {"weights_access_token": ""}])
    def test_copy_bad_arguments(self, service, tc, kw):
        """A bad TTL or token raises UsageError at once."""
        with pytest.raises(tp.UsageError):
            tp.copy_weights(service, tc.saved, "p", **kw)

    def test_usage_project_must_be_a_string(self, service):
        """An empty project id is refused."""
        with pytest.raises(tp.UsageError):
            tp.get_checkpoint_storage_usage(service, project_id="")


class TestServerRoutes:
    """Tests for the embedded server's answers to malformed REST requests."""

    def test_copy_needs_project_or_session(self, server, tc):
        """A copy with neither a project nor a session slot, or with half a slot, is a 400."""
        s = requests.Session()
        s.headers["X-API-Key"] = KEY
        for body in ({"source_path": tc.saved}, {"source_path": tc.saved, "session_id": "x"},
                     {"source_path": "bad", "destination_project_id": "p"}):
            assert 400 == s.post(server.url + "/api/v1/copy_weights", json=body, timeout=10).status_code
        unknown_session = {"source_path": tc.saved, "session_id": "nope", "model_seq_id": 3}
        assert 404 == s.post(server.url + "/api/v1/copy_weights", json=unknown_session, timeout=10).status_code

    def test_copy_into_a_session_slot(self, server, service, tc):
        """A copy addressed to a session slot becomes run ``<session>:train:<slot>``."""
        s = requests.Session()
        s.headers["X-API-Key"] = KEY
        sid = service.session_id
        resp = s.post(server.url + "/api/v1/copy_weights", json={"session_id": sid, "model_seq_id": 9, "source_path": tc.saved},
                      timeout=10)
        assert "tinker://%s:train:9/weights/ckpt-g" % sid == resp.json()["tinker_path"]
        again = s.post(server.url + "/api/v1/copy_weights", json={"session_id": sid, "model_seq_id": 9, "source_path": tc.saved},
                       timeout=10)
        assert 409 == again.status_code

    def test_user_listing_query_is_strict(self, server):
        """``GET /api/v1/checkpoints`` takes limit and offset only: another parameter is a 400 naming it."""
        resp = requests.get(server.url + "/api/v1/checkpoints?limit=5&offset=0&type=external", headers={"X-API-Key": KEY},
                            timeout=10)
        assert (400, True) == (resp.status_code, "type" in resp.json()["detail"])
        ok = requests.get(server.url + "/api/v1/checkpoints?limit=5&offset=0", headers={"X-API-Key": KEY}, timeout=10)
        assert {"offset": 0, "limit": 5, "total_count": 0} == ok.json()["cursor"]

    def test_unknown_usage_query_is_refused(self, server):
        """The usage route decodes its query strictly."""
        resp = requests.get(server.url + "/api/v1/billing/usage/checkpoints/current?projects=1", headers={"X-API-Key": KEY},
                            timeout=10)
        assert (400, True) == (resp.status_code, "projects" in resp.json()["detail"])

    def test_unknown_kind_is_not_found(self, server, tc):
        """A checkpoint route with an unknown kind is a 404."""
        resp = requests.delete(server.url + "/api/v1/training_runs/%s/checkpoints/bogus/x" % tc.model_id,
                               headers={"X-API-Key": KEY}, timeout=10)
        assert 404 == resp.status_code

    def test_signed_tokens_are_not_logged(self, service, tc, caplog):
        """The request log shows signed file URLs without their token."""
        import logging

        export = tc.save_weights_external("exp").result()
        url = tp.get_external_weights_urls(service, export.path).result().urls["adapter_config.json"]
        token = url.rsplit("token=", 1)[1]
        with caplog.at_level(logging.DEBUG, logger="tinkex_persist.localserver"):
            requests.get(url, timeout=10)
        assert "token=<signed>" in caplog.text
        assert token not in caplog.text


class TestOfficialSdkAndCli:
    """The official SDK and ``tinker`` CLI, unchanged, against the embedded server."""

    @pytest.fixture
    def env(self, server, tmp_path):
        return dict(os.environ, TINKER_BASE_URL=server.url, TINKER_API_KEY=KEY, TINKER_TELEMETRY="0",
                    HOME=str(tmp_path / "home"))

    def _tinker(self, env, *argv):
        if not TINKER_CLI.exists():
            pytest.skip("the official tinker CLI is not installed")
        return subprocess.run([str(TINKER_CLI), "--format", "json"] + list(argv), env=env, capture_output=True,
                              text=True, timeout=180)

    def test_rest_client(self, server, service, tc, monkeypatch):
        """RestClient: user checkpoints, publish, copy_weights and external URLs work against the server."""
        tinker = pytest.importorskip("tinker")
        for k, v in (("TINKER_BASE_URL", server.url), ("TINKER_API_KEY", KEY), ("TINKER_TELEMETRY", "0")):
            monkeypatch.setenv(k, v)
        rest = tinker.RestClient(base_url=server.url, api_key=KEY)  # RestClient() caches one holder per process
        export = tc.save_weights_external("exp").result()
        listed = rest.list_user_checkpoints().result()
        assert {tc.saved, export.path} == {c.tinker_path for c in listed.checkpoints}
        rest.publish_checkpoint_from_tinker_path(tc.saved).result()
        assert True is {c.tinker_path: c.public for c in tp.list_checkpoints(service, tc.model_id).result()}[tc.saved]
        rest.unpublish_checkpoint_from_tinker_path(tc.saved).result()
        copied = rest.copy_weights(tc.saved, "proj-x").result()
        assert copied in {c.tinker_path for c in tp.list_user_checkpoints(service).result()}
        urls = rest.get_external_weights_urls(export.path).result()
        assert ["adapter_config.json", "adapter_model.safetensors"] == sorted(urls.urls)

    def test_cli_checkpoint_commands(self, env, service, tc):
        """``tinker checkpoint list/info/set-ttl/publish/unpublish/delete`` exit 0 and name what the server holds."""
        listed = self._tinker(env, "checkpoint", "list")
        assert 0 == listed.returncode, listed.stderr
        assert [tc.saved] == [c["tinker_path"] for c in json.loads(listed.stdout)["checkpoints"]]
        info = self._tinker(env, "checkpoint", "info", tc.saved)
        assert (0, tc.saved, 4) == (info.returncode, json.loads(info.stdout)["tinker_path"], json.loads(info.stdout)["lora_rank"])
        assert 0 == self._tinker(env, "checkpoint", "set-ttl", tc.saved, "--ttl", "7200").returncode
        assert tp.list_checkpoints(service, tc.model_id).result()[0].expires_at is not None
        assert 0 == self._tinker(env, "checkpoint", "publish", tc.saved).returncode
        assert True is tp.list_checkpoints(service, tc.model_id).result()[0].public
        assert 0 == self._tinker(env, "checkpoint", "unpublish", tc.saved).returncode
        assert False is tp.list_checkpoints(service, tc.model_id).result()[0].public
        deleted = self._tinker(env, "checkpoint", "delete", tc.saved, "--yes")
        assert 0 == deleted.returncode, deleted.stderr
        assert [] == tp.list_checkpoints(service, tc.model_id).result()

    @pytest.mark.parametrize("kind", ["external", "training"])
    def test_cli_download(self, env, service, tc, tmp_path, kind):
        """``tinker checkpoint download`` of an export and of a training checkpoint fetches both adapter files."""
        path = tc.save_weights_external("exp").result().path if kind == "external" else tc.saved
        out = tmp_path / "out"
        done = self._tinker(env, "checkpoint", "download", path, "--output", str(out))
        assert 0 == done.returncode, done.stderr
        files = {p.name: p for p in pathlib.Path(json.loads(done.stdout)["destination"]).iterdir()}
        assert ["adapter_config.json", "adapter_model.safetensors"] == sorted(files)
        assert 100_000 == files["adapter_model.safetensors"].stat().st_size
        # The temporary export of a training checkpoint is deleted after the download.
        assert (1 if kind == "external" else 0) == len(tp.list_user_checkpoints(service, type="external").result())
        digest = hashlib.sha256(files["adapter_model.safetensors"].read_bytes()).hexdigest()
        assert 64 == len(digest)
