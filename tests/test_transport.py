"""Tests for the HTTP transport: status mapping, retries, idempotency keys, timeouts, proxies, redirects."""

import logging
import socket
import time

import pytest
import requests

import tinkex_persist as tp
from tinkex_persist._transport import USER_AGENT, _redacted, Transport
from tinkex_persist.config import Config

from conftest import TEST_KEY

HEALTH = "/api/v1/healthz"


def _transport(url, **kw):
    kw.setdefault("backoff_factor", 0)
    return Transport(Config(base_url=url, api_key=TEST_KEY, **kw))


class TestStatusMapping:
    """Tests for turning error statuses into exceptions."""

    @pytest.mark.parametrize(
        "status, cls",
        [(400, tp.BadRequestError), (401, tp.AuthenticationError), (403, tp.PermissionDeniedError),
         (404, tp.NotFoundError), (409, tp.ConflictError), (422, tp.UnprocessableEntityError),
         (429, tp.RateLimitError), (500, tp.InternalServerError), (503, tp.InternalServerError),
         (302, tp.APIStatusError)],
    )
    def test_final_status_raises_mapped_class(self, proxy, status, cls):
        """Each final error status raises its class with status, method, path and the server's detail."""
        proxy.add("status", HEALTH, status=status, body=b'{"detail": "because"}', headers=(("X-Request-ID", "r-9"),))
        with pytest.raises(cls) as info:
            _transport(proxy.url, max_retries=0).request("GET", HEALTH)
        exc = info.value
        assert (status, "GET", HEALTH, "r-9") == (exc.status_code, exc.method, exc.url, exc.request_id)
        assert str(exc).startswith("GET %s -> %d" % (HEALTH, status))
        assert "because" in str(exc) and "(request_id=r-9)" in str(exc)

    def test_redirect_is_not_followed(self, proxy):
        """A redirect is an error; the client never requests the Location, so the key cannot leak there."""
        proxy.add("status", HEALTH, status=302, headers=(("Location", "http://127.0.0.1:9/steal"),))
        with pytest.raises(tp.APIStatusError):
            _transport(proxy.url, max_retries=0).request("GET", HEALTH)
        assert [HEALTH] == proxy.paths()


class TestRetries:
    """Tests for the retry loop."""

    def test_429_with_retry_after_is_honoured_then_succeeds(self, proxy):
        """429 with Retry-After waits that long, then the retry succeeds."""
        proxy.add("status", HEALTH, status=429, headers=(("Retry-After", "0.1"),))
        t0 = time.monotonic()
        resp = _transport(proxy.url).request("GET", HEALTH)
        assert 200 == resp.status
        assert time.monotonic() - t0 >= 0.1
        assert [HEALTH, HEALTH] == proxy.paths()

    @pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
    def test_transient_statuses_are_retried(self, proxy, status):
        """Transient statuses are retried until the server answers 200."""
        proxy.add("status", HEALTH, status=status, count=2)
        assert 200 == _transport(proxy.url).request("GET", HEALTH).status
        assert 3 == len(proxy.records)

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
    def test_client_errors_are_not_retried(self, proxy, status):
        """A 4xx other than 408/429 fails at once, after one request."""
        proxy.add("status", HEALTH, status=status)
        with pytest.raises(tp.APIStatusError):
            _transport(proxy.url).request("GET", HEALTH)
        assert 1 == len(proxy.records)

    def test_idempotency_key_is_constant_across_retries_and_new_per_call(self, proxy, training_client, local_server):
        """Every attempt of one save carries the same X-Idempotency-Key and body; another call gets another key."""
        svc = training_client.service
        tc = tp.TrainingClient(svc, training_client.model_id, next_seq_id=1)
        svc._transport = _transport(proxy.url)
        proxy.add("status", "/api/v1/save_weights", status=503, count=2)
        tp.save_state(tc, "k1").result(timeout=30)
        tp.save_state(tc, "k2").result(timeout=30)
        saves = [r for r in proxy.records if r.path == "/api/v1/save_weights"]
        keys = [r.headers["x-idempotency-key"] for r in saves]
        assert 4 == len(saves)
        assert 1 == len(set(keys[:3])) and keys[3] != keys[0]
        assert 1 == len({r.body for r in saves[:3]})

    def test_lost_answer_is_retried_without_duplicating_the_checkpoint(self, proxy, training_client, local_server):
        """If the answer to a committed save is lost, the retry returns the original result: one checkpoint, one seq_id."""
        svc = training_client.service
        svc._transport = _transport(proxy.url)
        proxy.add("lost_ack", "/api/v1/save_weights")
        result = tp.save_state(training_client, "once").result(timeout=30)
        assert 1 == result.seq_id
        assert [1] == [s for s in local_server.seq_log[training_client.model_id] if s is not None]
        assert 1 == len(local_server.service.list_run(training_client.model_id)["checkpoints"])

    def test_exists_after_a_lost_answer_counts_as_this_save(self, proxy, training_client, local_server):
        """A server without replay protection reports "already exists" on the retry of a committed save: that is success."""
        svc = training_client.service
        svc._transport = _transport(proxy.url)
        proxy.add("lost_ack", "/api/v1/save_weights")
        # What a server that re-ran the retried request would answer for the name it had just written.
        proxy.add("status", "/api/v1/retrieve_future", status=200, body=b'{"error": "checkpoint already exists", "category": "user"}')
        result = tp.save_state(training_client, "lost").result(timeout=30)
        assert "tinker://%s/weights/lost" % training_client.model_id == result.path
        assert 1 == len(local_server.service.list_run(training_client.model_id)["checkpoints"])

    def test_exists_without_a_lost_answer_is_checkpoint_exists_error(self, proxy, training_client, local_server):
        """The same "already exists" after a clean first attempt fails fast with CheckpointExistsError."""
        svc = training_client.service
        svc._transport = _transport(proxy.url)
        proxy.add("status", "/api/v1/retrieve_future", status=200, body=b'{"error": "checkpoint already exists", "category": "user"}')
        with pytest.raises(tp.CheckpointExistsError):
            tp.save_state(training_client, "clean").result(timeout=30)
        assert 1 == len([r for r in proxy.records if r.path == "/api/v1/save_weights"])

    def test_retries_stop_at_the_deadline(self, proxy):
        """With a deadline shorter than the back-off, the last error is raised without waiting."""
        proxy.add("status", HEALTH, status=503, count=5)
        t0 = time.monotonic()
        with pytest.raises(tp.InternalServerError):
            _transport(proxy.url, backoff_factor=10, retry_deadline=0.05).request("GET", HEALTH)
        assert time.monotonic() - t0 < 1


class TestConnections:
    """Tests for connection failures, timeouts and proxies."""

    def test_connection_refused_is_api_connection_error_with_cause(self):
        """A closed port raises APIConnectionError whose cause is the requests error."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(tp.APIConnectionError) as info:
            _transport("http://127.0.0.1:%d" % port, max_retries=1).request("GET", HEALTH)
        assert isinstance(info.value.__cause__, requests.RequestException)
        assert not isinstance(info.value, tp.APITimeoutError)

    def test_read_timeout_is_api_timeout_error(self, proxy):
        """An answer stalled past the read timeout raises APITimeoutError."""
        proxy.add("stall", HEALTH, seconds=2)
        with pytest.raises(tp.APITimeoutError):
            _transport(proxy.url, max_retries=0, timeout=(1.0, 0.2)).request("GET", HEALTH)

    def test_loopback_ignores_proxy_environment(self, local_server, monkeypatch):
        """A cluster HTTP_PROXY cannot capture a loopback base URL."""
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
        t = _transport(local_server.url, max_retries=0)
        assert 200 == t.request("GET", HEALTH).status
        assert {} == t._proxies

    def test_remote_base_url_uses_proxy_environment(self, monkeypatch):
        """For a remote base URL the environment's proxy is resolved once and used."""
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
        monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
        t = _transport("https://api.example.invalid")
        assert "http://127.0.0.1:3128" == t._proxies.get("https")

    def test_headers_carry_key_and_user_agent(self, proxy):
        """Requests carry X-API-Key and our User-Agent naming the wire version."""
        _transport(proxy.url).request("GET", HEALTH)
        headers = proxy.records[0].headers
        assert (TEST_KEY, USER_AGENT) == (headers["x-api-key"], headers["user-agent"])
        assert "tinker-wire/0.38.0" in USER_AGENT

    def test_closed_transport_refuses_new_sessions(self, local_server):
        """After close(), a thread without a session cannot open a new one."""
        t = _transport(local_server.url)
        t.close()
        with pytest.raises(tp.APIConnectionError):
            t.request("GET", HEALTH)


class TestSecrets:
    """Tests that keys and tokens stay out of logs and errors."""

    def test_redacted_hides_secret_headers(self):
        """The log helper hides the key and authorization headers."""
        assert {"X-API-Key": "<redacted>", "Authorization": "<redacted>", "Accept": "a"} == _redacted(
            {"X-API-Key": TEST_KEY, "Authorization": "Bearer x", "Accept": "a"}
        )

    def test_debug_logs_and_errors_never_contain_key_or_token(self, caplog, local_server, training_client):
        """A DEBUG-logged session with failures never shows the API key or the access token."""
        token = "weights-token-SECRET-123"
        with caplog.at_level(logging.DEBUG):
            path = tp.save_state(training_client, "s").result(timeout=30).path
            errors = []
            for fut in (
                tp.load_state(training_client, path, weights_access_token=token),
                tp.create_training_client_from_state(training_client.service, path + "x", weights_access_token=token),
            ):
                try:
                    fut.result(timeout=30)
                except tp.TinkexPersistError as exc:
                    errors.append(exc)
        assert 2 == len(errors)
        texts = [caplog.text] + [repr(e) + str(e) + str(e.__cause__) + str(vars(e)) for e in errors]
        assert not any(TEST_KEY in t or token in t for t in texts)
