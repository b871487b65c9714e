"""Tests for waiting on server-side futures through ``retrieve_future``."""

import json

import pytest

import tinkex_persist as tp
from tinkex_persist._transport import Transport
from tinkex_persist.config import Config
from tinkex_persist.localserver import LocalServer

from conftest import TEST_KEY

POLL = "/api/v1/retrieve_future"


def _service(url, **kw):
    kw.setdefault("heartbeat_interval", None)
    return tp.ServiceClient(base_url=url, api_key=TEST_KEY, backoff_factor=0, **kw)


class TestPending:
    """Tests for pending futures on servers that do and do not long-poll."""

    @pytest.mark.parametrize("pending_status", [200, 408])
    def test_no_long_poll_backs_off_instead_of_hot_looping(self, tmp_path, pending_status):
        """A server answering try_again (200 or 408) at once for 0.5 s gets a handful of polls, not hundreds."""
        with LocalServer(tmp_path, complete_delay=0.5, long_poll=False, pending_status=pending_status) as server:
            with _service(server.url) as svc:
                tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
                server.stats.reset()
                tp.save_state(tc, "slow").result(timeout=30)
                polls = server.stats.requests[POLL]
        assert 3 <= polls <= 10

    def test_long_poll_needs_one_poll(self, tmp_path):
        """A long-polling server answers the first poll when the work completes."""
        with LocalServer(tmp_path, complete_delay=0.3) as server, _service(server.url) as svc:
            tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
            server.stats.reset()
            tp.save_state(tc, "lp").result(timeout=30)
            assert 1 == server.stats.requests[POLL]

    def test_poll_timeout_raises_api_timeout_error(self, tmp_path):
        """A future pending past ``poll_timeout`` fails with APITimeoutError naming the request."""
        with LocalServer(tmp_path, complete_delay=5, long_poll=False) as server:
            with _service(server.url, poll_timeout=0.3) as svc:
                with pytest.raises(tp.APITimeoutError) as info:
                    svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
        assert "poll_timeout" in str(info.value)

    def test_queue_state_changes_reach_the_callback(self, proxy, local_server):
        """Each change of queue_state is reported to ``on_queue_state`` once."""
        seen = []
        body = lambda state: json.dumps({"type": "try_again", "request_id": "r", "queue_state": state}).encode()
        for state in ("paused_capacity", "paused_capacity", "active"):
            proxy.add("status", POLL, status=200, body=body(state))
        with tp.ServiceClient(base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None,
                              on_queue_state=lambda rid, s: seen.append(s)) as svc:
            svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
        assert ["paused_capacity", "active"] == seen


class TestAnswers:
    """Tests for the kinds of answer a poll can get."""

    def test_complete_metadata_repolls_for_the_full_result(self, proxy, local_server):
        """After ``complete_metadata`` the next poll asks with allow_metadata_only false."""
        proxy.add("status", POLL, status=200, body=b'{"status": "complete_metadata", "response_payload_size": 9}')
        with tp.ServiceClient(base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None) as svc:
            svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
        polls = [json.loads(r.body) for r in proxy.records if r.path == POLL]
        assert [True, False] == [p["allow_metadata_only"] for p in polls]
        assert ["0", "1"] == [r.headers["x-tinker-request-iteration"] for r in proxy.records if r.path == POLL]

    def test_failed_request_raises_with_category(self, proxy, local_server):
        """``{error, category}`` becomes RequestFailedError with that category."""
        proxy.add("status", POLL, status=200, body=b'{"error": "out of capacity", "category": "server"}')
        with tp.ServiceClient(base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None) as svc:
            with pytest.raises(tp.RequestFailedError) as info:
                svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
        assert ("server", True) == (info.value.category, "out of capacity" in str(info.value))

    def test_410_is_promise_expired(self, proxy, local_server):
        """410 on a poll raises PromiseExpiredError saying the outcome is unknown."""
        proxy.add("status", POLL, status=410, body=b'{"detail": "gone"}')
        with tp.ServiceClient(base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None) as svc:
            with pytest.raises(tp.PromiseExpiredError) as info:
                svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
        assert "promise expired" in str(info.value) and "may or may not" in str(info.value)

    @pytest.mark.parametrize("body, count", [(b"[1, 2]", 1), (b'{"unexpected": true}', 1), (b"not json", 3)])
    def test_malformed_result_is_decode_error(self, proxy, local_server, body, count):
        """A result that is not the expected shape raises DecodeError (a body that is not JSON at all is
        re-polled first, like a lost answer, and raises once the retries run out)."""
        proxy.add("status", POLL, status=200, body=body, count=count)
        with tp.ServiceClient(base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None, max_retries=2,
                              backoff_factor=0) as svc:
            with pytest.raises(tp.DecodeError):
                svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)

    def test_poll_request_type_header(self, proxy, local_server):
        """Polls name the operation in X-Tinker-Request-Type, as the official SDK does."""
        with tp.ServiceClient(base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None) as svc:
            tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
            tp.save_state(tc, "h").result(timeout=30)
        kinds = [r.headers["x-tinker-request-type"] for r in proxy.records if r.path == POLL]
        assert ["CreateModel", "SaveWeights"] == kinds


class TestSessionHelpers:
    """Tests for session-level calls outside the pool."""

    def test_create_session_error_message_is_raised(self, proxy, local_server):
        """A create_session answer carrying error_message fails the first operation."""
        proxy.add("status", "/api/v1/create_session", status=200, body=b'{"session_id": "s", "error_message": "suspended"}')
        with tp.ServiceClient(base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None) as svc:
            with pytest.raises(tp.TinkexPersistError) as info:
                svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
        assert "suspended" in str(info.value)

    def test_weights_info_and_get_info(self, local_server, training_client):
        """weights_info describes a checkpoint and get_info the model."""
        from tinkex_persist import _ops

        path = tp.save_state(training_client, "i").result(timeout=30).path
        t = Transport(Config(base_url=local_server.url, api_key=TEST_KEY))
        info = _ops.weights_info(t, path)
        assert ("Qwen/Qwen3-8B", True, 8) == (info.base_model, info.is_lora, info.lora_rank)
        assert training_client.model_id == _ops.get_info(t, training_client.model_id).model_id
