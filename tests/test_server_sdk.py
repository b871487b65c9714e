"""Tests running the official SDK (``tinker==0.38.0``) against ``LocalServer`` on loopback."""

import warnings

import pytest

from conftest import SERVER_KEY as API_KEY, sdk_train_step

tinker = pytest.importorskip("tinker")

pytestmark = pytest.mark.interop

BASE = "Qwen/Qwen3-8B"


@pytest.fixture
def server(sdk_server):
    """A LocalServer with an API key, and the SDK's environment pointed at it (telemetry off)."""
    return sdk_server


@pytest.fixture
def service(sdk_service):
    """An official ServiceClient on the local server, closed at teardown."""
    return sdk_service


@pytest.fixture
def rest(server):
    """An official RestClient; explicit arguments, because ``RestClient()`` caches one holder per process."""
    return tinker.RestClient(base_url=server.url, api_key=API_KEY)


@pytest.fixture
def training(service):
    """A LoRA training client of rank 8."""
    return service.create_lora_training_client(BASE, rank=8).result()


def _deprecated(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args)


class TestTrainingClient:
    """Tests for the SDK's training-client persistence calls."""

    def test_create_lora_training_client(self, server, training):
        """create_lora_training_client creates a rank-8 model named <session>:train:0."""
        assert (True, 8, BASE) == (
            training.model_id.endswith(":train:0"),
            server.model_info(training.model_id)["lora_rank"],
            training.get_info().model_data.model_name,
        )

    def test_save_state(self, server, rest, training):
        """save_state works plain and with ttl_seconds + overwrite; seq_ids arrive in order."""
        first = training.save_state("a").result()
        second = training.save_state("a", ttl_seconds=7200, overwrite=True).result()
        assert "tinker://%s/weights/a" % training.model_id == first.path == second.path
        listed = rest.list_checkpoints(training.model_id).result().checkpoints
        assert (1, True) == (len(listed), listed[0].expires_at is not None)
        assert [1, 2] == server.seq_log[training.model_id]

    def test_name_exists(self, training):
        """Saving an existing name without overwrite raises RequestFailedError (category user)."""
        training.save_state("a").result()
        with pytest.raises(tinker.RequestFailedError) as info:
            training.save_state("a").result()
        assert (tinker.types.RequestErrorCategory.User, True) == (
            info.value.category,
            "already exists" in str(info.value),
        )

    def test_optim_step(self, server, training):
        """optim_step alone advances the server-side model one AdamW step (on a zero gradient)."""
        out = training.optim_step(tinker.types.AdamParams(learning_rate=1e-3)).result()
        assert (1.0, 1) == (out.metrics["step"], server.model_info(training.model_id)["step"])

    @pytest.mark.parametrize("optimizer", [False, True])
    def test_load_state(self, server, service, training, optimizer):
        """load_state(_with_optimizer) as a model's first request restores the checkpoint."""
        sdk_train_step(training)
        path = training.save_state("a").result().path
        saved = server.model_info(training.model_id)
        fresh = service.create_lora_training_client(BASE, rank=8).result()
        load = fresh.load_state_with_optimizer if optimizer else fresh.load_state
        assert path == _deprecated(load, path).result().path
        loaded = server.model_info(fresh.model_id)
        assert (saved["weights_sha256"], optimizer) == (
            loaded["weights_sha256"],
            loaded["optimizer_sha256"] == saved["optimizer_sha256"],
        )

    def test_late_load_state_fails(self, training):
        """load_state after other requests fails, pointing to create_training_client_from_state."""
        path = training.save_state("a").result().path
        with pytest.raises(tinker.RequestFailedError) as info:
            _deprecated(training.load_state, path).result()
        assert "create_training_client_from_state" in str(info.value)


class TestServiceClient:
    """Tests for creating training clients from checkpoints."""

    @pytest.mark.parametrize("optimizer", [False, True])
    def test_create_from_state(self, server, service, training, optimizer):
        """create_training_client_from_state(_with_optimizer) restores weights (and moments) bit-exact."""
        sdk_train_step(training)
        path = training.save_state("a").result().path
        saved = server.model_info(training.model_id)
        create = (
            service.create_training_client_from_state_with_optimizer
            if optimizer
            else service.create_training_client_from_state
        )
        restored = create(path).result()
        loaded = server.model_info(restored.model_id)
        assert restored.model_id.endswith(":train:1")
        assert (saved["weights_sha256"], optimizer, 1 if optimizer else 0) == (
            loaded["weights_sha256"],
            loaded["optimizer_sha256"] == saved["optimizer_sha256"],
            loaded["step"],
        )

    def test_unknown_checkpoint(self, service):
        """Loading an unknown checkpoint raises RequestFailedError (category user)."""
        with pytest.raises(tinker.RequestFailedError) as info:
            service.create_training_client_from_state("tinker://nope:train:0/weights/x").result()
        assert tinker.types.RequestErrorCategory.User == info.value.category

    def test_wrong_api_key(self, server):
        """A wrong API key raises AuthenticationError."""
        client = tinker.ServiceClient(api_key="tml-wrong-key")
        with pytest.raises(tinker.AuthenticationError):
            client.create_lora_training_client(BASE, rank=8).result()


class TestRestClient:
    """Tests for the SDK's RestClient against the local server."""

    def test_weights_info_list_delete(self, rest, training):
        """weights info, run and user listings, and delete (then NotFoundError) all work."""
        path = training.save_state("a").result().path
        info = rest.get_weights_info_by_tinker_path(path).result()
        assert (BASE, True, 8) == (info.base_model, info.is_lora, info.lora_rank)
        assert ["weights/a"] == [c.checkpoint_id for c in rest.list_checkpoints(training.model_id).result().checkpoints]
        page = rest.list_user_checkpoints(limit=1, offset=0).result()
        assert (1, 1) == (page.cursor.total_count, len(page.checkpoints))
        rest.set_checkpoint_ttl_from_tinker_path(path, 3600).result()
        rest.delete_checkpoint(training.model_id, "weights/a").result()
        with pytest.raises(tinker.NotFoundError):
            rest.delete_checkpoint_from_tinker_path(path).result()
