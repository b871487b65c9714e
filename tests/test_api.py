"""End-to-end tests of the public API against the embedded server over loopback HTTP."""

import concurrent.futures

import pytest

import tinkex_persist as tp
from tinkex_persist.demo import model_state, train_step
from tinkex_persist.localserver import LocalServer

from conftest import TEST_KEY, wait_until


@pytest.fixture
def service_url(local_server, front):
    """Every test here runs against answers as served and against answers carrying unknown keys at every depth."""
    return front(local_server.url)


def _submissions(server):
    return {p: n for p, n in server.stats.requests.items() if p != "/api/v1/retrieve_future"}


class TestSaveState:
    """Tests for ``save_state``."""

    def test_save_returns_committed_tinker_path(self, local_server, training_client):
        """A save resolves to ``tinker://<model_id>/weights/<name>`` and the server lists it."""
        result = tp.save_state(training_client, "ckpt-1").result(timeout=30)
        assert isinstance(result, tp.SaveStateResult)
        assert "tinker://%s/weights/ckpt-1" % training_client.model_id == result.path
        listed = local_server.service.list_run(training_client.model_id)["checkpoints"]
        assert [result.path] == [c["tinker_path"] for c in listed]

    def test_returns_a_plain_future(self, training_client):
        """The return type is exactly ``concurrent.futures.Future``."""
        fut = tp.save_state(training_client, "f")
        assert concurrent.futures.Future is type(fut)
        fut.result(timeout=30)

    def test_existing_name_fails_fast_with_checkpoint_exists(self, local_server, training_client):
        """Saving an existing name without overwrite raises CheckpointExistsError naming the remedy, with one submission."""
        tp.save_state(training_client, "dup").result(timeout=30)
        before = local_server.stats.requests["/api/v1/save_weights"]
        with pytest.raises(tp.CheckpointExistsError) as info:
            tp.save_state(training_client, "dup").result(timeout=30)
        assert "overwrite=True" in str(info.value)
        assert "tinker://%s/weights/dup" % training_client.model_id == info.value.path
        assert before + 1 == local_server.stats.requests["/api/v1/save_weights"]

    def test_overwrite_with_ttl_replaces_and_sets_expiry(self, local_server, training_client):
        """``overwrite=True`` replaces the checkpoint, and ``ttl_seconds`` gives it an expiry."""
        tp.save_state(training_client, "x").result(timeout=30)
        tp.save_state(training_client, "x", overwrite=True, ttl_seconds=7200, user_metadata={"k": "v"}).result(timeout=30)
        (entry,) = local_server.service.list_run(training_client.model_id)["checkpoints"]
        assert entry["expires_at"] is not None
        assert {"k": "v"} == entry["user_metadata"]

    @pytest.mark.parametrize(
        "kwargs, exc",
        [
            ({"name": ""}, tp.UsageError),
            ({"name": "a/b"}, tp.UsageError),
            ({"name": "ok", "ttl_seconds": 10}, tp.UsageError),
            ({"name": "ok", "ttl_seconds": True}, tp.UsageError),
            ({"name": "ok", "overwrite": "yes"}, tp.UsageError),
            ({"name": "ok", "user_metadata": {"k": 1}}, tp.UsageError),
            ({"name": 7}, tp.UsageError),
        ],
    )
    def test_bad_arguments_raise_before_any_request(self, local_server, training_client, kwargs, exc):
        """Invalid arguments raise synchronously and send nothing."""
        before = dict(local_server.stats.requests)
        kwargs = dict(kwargs)
        name = kwargs.pop("name")
        with pytest.raises(exc):
            tp.save_state(training_client, name, **kwargs)
        assert before == dict(local_server.stats.requests)

    def test_wrong_subject_type_raises_type_error(self, service):
        """Passing a ServiceClient where a TrainingClient is expected is a TypeError."""
        with pytest.raises(TypeError):
            tp.save_state(service, "x")

    def test_method_delegates_to_flat_function(self, training_client):
        """``tc.save_state`` behaves like ``tp.save_state``, as in the official SDK."""
        assert training_client.save_state("m").result(timeout=30).path.endswith("/weights/m")


class TestLoadState:
    """Tests for ``load_state`` and ``load_state_with_optimizer``."""

    def _saved(self, service):
        tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=8, seed=5).result(timeout=30)
        for _ in range(3):
            train_step(tc)
        return tc, tp.save_state(tc, "s").result(timeout=30).path

    @pytest.mark.parametrize("with_optimizer", [False, True])
    def test_load_on_fresh_client_restores_state(self, service, with_optimizer):
        """As a model's first request, a load restores weights (and Adam state when asked) bit-exact."""
        src, path = self._saved(service)
        src_state = model_state(service, src.model_id)
        fresh = service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result(timeout=30)
        load = tp.load_state_with_optimizer if with_optimizer else tp.load_state
        result = load(fresh, path).result(timeout=30)
        assert (path, fresh.model_id, with_optimizer) == (result.path, result.model_id, result.optimizer)
        state = model_state(service, fresh.model_id)
        assert src_state["weights_sha256"] == state["weights_sha256"]
        assert with_optimizer == (src_state["optimizer_sha256"] == state["optimizer_sha256"])

    def test_late_load_is_refused_with_create_from_state_remedy(self, service):
        """A load after other requests fails with a message naming create_training_client_from_state."""
        tc, path = self._saved(service)
        with pytest.raises(tp.RequestFailedError) as info:
            tp.load_state_with_optimizer(tc, path).result(timeout=30)
        assert "create_training_client_from_state_with_optimizer" in str(info.value)
        assert "user" == info.value.category

    def test_late_load_works_where_the_server_allows_it(self, tmp_path, front):
        """With a server that accepts late loads, load_state works on a used client."""
        with LocalServer(tmp_path, allow_late_load=True) as server, tp.ServiceClient(
            base_url=front(server.url), api_key=TEST_KEY, heartbeat_interval=None
        ) as service:
            tc, path = self._saved(service)
            assert path == tp.load_state(tc, path).result(timeout=30).path

    def test_unknown_checkpoint_fails_through_the_future(self, training_client):
        """Loading a checkpoint that does not exist fails with a typed error on the Future."""
        fut = tp.load_state(training_client, "tinker://%s/weights/missing" % training_client.model_id)
        with pytest.raises(tp.TinkexPersistError) as info:
            fut.result(timeout=30)
        assert "missing" in str(info.value)

    @pytest.mark.parametrize(
        "path",
        ["ckpt", "tinker://r/sampler_weights/s", "tinker://r/weights/", "tinker://r/weights/a?x=1", None],
    )
    def test_bad_paths_raise_before_any_request(self, local_server, training_client, path):
        """Malformed or sampler paths raise UsageError synchronously and send nothing."""
        before = dict(local_server.stats.requests)
        with pytest.raises(tp.UsageError):
            tp.load_state(training_client, path)
        assert before == dict(local_server.stats.requests)

    def test_bad_access_token_type_raises(self, training_client):
        """A non-str access token is refused synchronously."""
        with pytest.raises(tp.UsageError):
            tp.load_state(training_client, "tinker://r/weights/a", weights_access_token=5)


class TestCreateFromState:
    """Tests for ``create_training_client_from_state`` (and ``_with_optimizer``)."""

    def test_resume_with_optimizer_continues_exactly(self, service):
        """Resuming with optimizer then training gives the same state as an uninterrupted run."""
        tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=8, seed=9).result(timeout=30)
        for _ in range(3):
            train_step(tc)
        path = tp.save_state(tc, "mid").result(timeout=30).path
        for _ in range(3):
            train_step(tc)
        resumed = tp.create_training_client_from_state_with_optimizer(service, path).result(timeout=30)
        plain = tp.create_training_client_from_state(service, path).result(timeout=30)
        for _ in range(3):
            train_step(resumed)
            train_step(plain)
        reference = model_state(service, tc.model_id)
        assert reference["weights_sha256"] == model_state(service, resumed.model_id)["weights_sha256"]
        assert reference["optimizer_sha256"] == model_state(service, resumed.model_id)["optimizer_sha256"]
        assert reference["weights_sha256"] != model_state(service, plain.model_id)["weights_sha256"]

    def test_uses_two_requests_and_session_addressing(self, local_server, service, training_client):
        """Create-from-state is one session-addressed load_weights plus one poll."""
        path = tp.save_state(training_client, "c").result(timeout=30).path
        local_server.stats.reset()
        tc = tp.create_training_client_from_state(service, path).result(timeout=30)
        assert {"/api/v1/load_weights": 1, "/api/v1/retrieve_future": 1} == dict(local_server.stats.requests)
        assert "%s:train:1" % service.session_id == tc.model_id

    def test_new_client_continues_at_seq_id_1(self, local_server, service, training_client):
        """The created model's next request is seq_id 1 and saves work on it."""
        path = tp.save_state(training_client, "c").result(timeout=30).path
        tc = tp.create_training_client_from_state(service, path).result(timeout=30)
        assert 1 == tp.save_state(tc, "next").result(timeout=30).seq_id

    def test_falls_back_on_a_server_without_session_addressing(self, tmp_path, front):
        """A server rejecting session addressing gets weights_info, create_model, then load_weights."""
        with LocalServer(tmp_path, session_load=False) as server, tp.ServiceClient(
            base_url=front(server.url), api_key=TEST_KEY, heartbeat_interval=None
        ) as service:
            tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result(timeout=30)
            train_step(tc)
            path = tp.save_state(tc, "c").result(timeout=30).path
            server.stats.reset()
            resumed = tp.create_training_client_from_state_with_optimizer(service, path).result(timeout=30)
            assert model_state(service, tc.model_id)["optimizer_sha256"] == model_state(service, resumed.model_id)["optimizer_sha256"]
            assert 1 == server.stats.requests["/api/v1/weights_info"]
            assert 1 == server.stats.requests["/api/v1/create_model"]
            assert 2 == server.stats.requests["/api/v1/load_weights"]
            assert 2 == tp.save_state(resumed, "after").result(timeout=30).seq_id

    def test_unknown_checkpoint_fails_typed(self, service):
        """A missing checkpoint fails the Future with a typed error naming it."""
        fut = tp.create_training_client_from_state(service, "tinker://nope:train:0/weights/gone")
        with pytest.raises(tp.TinkexPersistError) as info:
            fut.result(timeout=30)
        assert "gone" in str(info.value)

    def test_bad_path_raises_synchronously(self, local_server, service):
        """A malformed path raises UsageError and sends nothing."""
        before = dict(local_server.stats.requests)
        with pytest.raises(tp.UsageError):
            tp.create_training_client_from_state(service, "tinker://r/sampler_weights/x")
        with pytest.raises(TypeError):
            tp.create_training_client_from_state("not a service", "tinker://r/weights/x")
        assert before == dict(local_server.stats.requests)

    def test_service_methods_delegate(self, service, training_client):
        """The ServiceClient methods named like the official SDK's work the same way."""
        path = tp.save_state(training_client, "m").result(timeout=30).path
        assert service.create_training_client_from_state(path).result(timeout=30).model_id
        assert service.create_training_client_from_state_with_optimizer(path).result(timeout=30).model_id


class TestServiceClient:
    """Tests for ``ServiceClient`` construction and lifecycle."""

    def test_missing_api_key_names_the_variable(self, local_server):
        """Without a key the constructor raises ConfigError naming TINKER_API_KEY."""
        with pytest.raises(tp.ConfigError) as info:
            tp.ServiceClient(base_url=local_server.url)
        assert "TINKER_API_KEY" in str(info.value)

    def test_environment_supplies_url_and_key(self, local_server, monkeypatch):
        """TINKER_BASE_URL and TINKER_API_KEY configure a client built with no arguments."""
        monkeypatch.setenv("TINKER_BASE_URL", local_server.url)
        monkeypatch.setenv("TINKER_API_KEY", TEST_KEY)
        with tp.ServiceClient(heartbeat_interval=None) as svc:
            assert local_server.url == svc.config.base_url
            assert svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30).model_id

    def test_wrong_key_is_an_authentication_error(self, tmp_path):
        """A server with a different key answers 401, raised as AuthenticationError without the key in it."""
        with LocalServer(tmp_path, api_key="tml-right-key") as server, tp.ServiceClient(
            base_url=server.url, api_key="tml-wrong-key", heartbeat_interval=None
        ) as svc:
            with pytest.raises(tp.AuthenticationError) as info:
                svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
            assert 401 == info.value.status_code
            assert "tml-wrong-key" not in str(info.value) and "tml-wrong-key" not in repr(info.value)

    def test_nothing_is_sent_before_first_use_and_close_finishes_session(self, local_server):
        """Constructing sends nothing; close() finishes the session it created."""
        svc = tp.ServiceClient(base_url=local_server.url, api_key=TEST_KEY, heartbeat_interval=None)
        assert 0 == sum(local_server.stats.requests.values())
        svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
        svc.close()
        assert 1 == local_server.stats.requests["/api/v1/sessions/%s/finish" % svc.session_id]
        svc.close()  # idempotent
        with pytest.raises(tp.UsageError):
            svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4)

    def test_heartbeats_are_sent_while_open(self, local_server):
        """An open session sends heartbeats at the configured interval."""
        with tp.ServiceClient(base_url=local_server.url, api_key=TEST_KEY, heartbeat_interval=0.02) as svc:
            svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
            wait_until(lambda: local_server.stats.requests["/api/v1/session_heartbeat"] >= 2)
        assert local_server.stats.requests["/api/v1/session_heartbeat"] >= 2

    def test_heartbeats_stop_when_the_server_ended_the_session(self, local_server):
        """A 410 on a heartbeat (session finished server-side) stops the heartbeat thread."""
        import threading

        def beating():
            return any(t.name == "tinkex_persist-heartbeat" for t in threading.enumerate())

        svc = tp.ServiceClient(base_url=local_server.url, api_key=TEST_KEY, heartbeat_interval=0.02)
        try:
            svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
            assert True is beating()
            local_server.faults.add("/api/v1/session_heartbeat", status=410, body={"detail": "session finished"})
            wait_until(lambda: not beating())
            assert False is beating()
        finally:
            svc.close()

    @pytest.mark.parametrize("kwargs", [{"base_model": ""}, {"base_model": "Q", "rank": 0}, {"base_model": "Q", "rank": True}])
    def test_bad_model_arguments_raise(self, service, kwargs):
        """create_lora_training_client validates its arguments synchronously."""
        with pytest.raises(tp.UsageError):
            service.create_lora_training_client(**kwargs)

    def test_unknown_option_is_a_config_error(self):
        """A misspelled option is reported, not ignored."""
        with pytest.raises(tp.ConfigError):
            tp.ServiceClient(base_url="http://127.0.0.1:9", api_key=TEST_KEY, max_wrokers=2)

    def test_repr_hides_the_key(self, service):
        """Neither the client nor its config shows the API key."""
        assert TEST_KEY not in repr(service) and TEST_KEY not in repr(service.config)
