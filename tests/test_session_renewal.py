"""Tests for an open ``ServiceClient`` whose server restarted: a new session once, and clear errors for lost models."""

import pytest

import tinkex_persist as tp
from tinkex_persist.localserver import LocalServer

KEY = "tml-renewal-test-key-0123"


@pytest.fixture
def restartable(tmp_path):
    """Return ``(server, restart)``: a keyed LocalServer and a function that restarts it on the same root and port."""
    state = {"server": LocalServer(tmp_path / "root", api_key=KEY).start()}

    def restart():
        old = state["server"]
        port = int(old.url.rsplit(":", 1)[1])
        old.stop()
        state["server"] = LocalServer(tmp_path / "root", port=port, api_key=KEY).start()
        return state["server"]

    yield state["server"], restart
    state["server"].stop()


class TestServerRestart:
    """Tests for a client that outlives its server's process."""

    def test_new_models_work_after_a_restart(self, restartable):
        """After a restart, creating a model (session-addressed) creates a new session once and succeeds.

        Failed on the old main: every session-addressed call answered 404 "session ... not found" forever.
        """
        server, restart = restartable
        with tp.ServiceClient(server.url, KEY, heartbeat_interval=None) as service:
            tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
            path = tc.save_state("before").result().path
            old_session = service.session_id
            server = restart()
            fresh = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
            assert old_session != service.session_id
            assert "after" == fresh.save_state("after").result().path.rsplit("/", 1)[1]
            resumed = service.create_training_client_from_state_with_optimizer(path).result()
            assert path != resumed.save_state("resumed").result().path
            assert 1 == server.stats.requests["/api/v1/create_session"]  # the restarted server: once

    def test_resume_from_state_after_a_restart(self, restartable):
        """After a restart, create-from-state (session-addressed load_weights) renews the session and loads."""
        server, restart = restartable
        with tp.ServiceClient(server.url, KEY, heartbeat_interval=None) as service:
            tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
            path = tc.save_state("ckpt").result().path
            restart()
            resumed = service.create_training_client_from_state_with_optimizer(path).result()
            assert resumed.model_id != tc.model_id

    def test_models_of_the_old_session_fail_with_a_clear_error(self, restartable):
        """A model of the lost session fails with NotFoundError saying it belonged to a session the server no longer knows.

        Failed on the old main: a bare "404 model ... not found" with no hint that the session, not the model, was lost.
        """
        server, restart = restartable
        with tp.ServiceClient(server.url, KEY, heartbeat_interval=None) as service:
            tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
            old_session = service.session_id
            restart()
            with pytest.raises(tp.NotFoundError) as info:
                tc.save_state("lost").result()
        message = str(info.value)
        assert "model %s belonged to session %s" % (tc.model_id, old_session) in message
        assert "create it again from a checkpoint" in message
        assert KEY not in message

    def test_heartbeat_renews_the_session(self, restartable):
        """The heartbeat notices the unknown session (404) and creates a new one without any call from the user."""
        import time

        server, restart = restartable
        with tp.ServiceClient(server.url, KEY, heartbeat_interval=0.05) as service:
            service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
            old_session = service.session_id
            restart()
            end = time.monotonic() + 20
            while service.session_id == old_session and time.monotonic() < end:
                time.sleep(0.05)
            assert old_session != service.session_id

    def test_session_is_renewed_once_for_concurrent_calls(self, restartable):
        """Several calls failing on the lost session at once create exactly one new session."""
        server, restart = restartable
        with tp.ServiceClient(server.url, KEY, heartbeat_interval=None, max_workers=4) as service:
            service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
            server = restart()
            futures = [service.create_lora_training_client("Qwen/Qwen3-8B", rank=4) for _ in range(4)]
            models = [f.result() for f in futures]
        assert 4 == len({m.model_id for m in models})
        assert 1 == server.stats.requests["/api/v1/create_session"]
