"""Strictness by direction: requests strict at every depth, answers tolerant at every depth, one key table."""

import contextlib
import json
import logging
import pathlib

import attrs
import pytest

from faultproxy import EXTRA_KEY, EXTRA_VALUE, FaultProxy, add_unknown_keys
from tinkex_persist import _converter, _wire
from tinkex_persist.exceptions import DecodeError

RESPONSES = sorted((pathlib.Path(__file__).parent / "golden" / "responses").glob("*.json"))
DIMUON = {"type": "dimuon", "version": 1}
CREATE_MODEL = {
    "session_id": "s",
    "model_seq_id": 0,
    "base_model": "Qwen/Qwen3-8B",
    "lora_config": {"rank": 8, "train_unembed": True, "train_mlp": True, "train_attn": True},
    "optimizer_config": {"type": "adamw"},
    "type": "create_model",
}


def _cls(path):
    return getattr(_wire, path.name.split("-", 1)[0])


def _body(path):
    return json.loads(path.read_text())["body"]


class TestRequestsAreStrictAtEveryDepth:
    """Tests for decoding requests (what the local server reads): unknown keys are refused at any depth."""

    @pytest.mark.parametrize(
        "cls, body, where",
        [
            (_wire.CreateModelRequest, dict(CREATE_MODEL, lora_config=dict(CREATE_MODEL["lora_config"], x=1)), "$.lora_config"),
            (_wire.FinishSessionRequest, {"reason": {"type": "success", "x": 1}, "detail": None}, "$.reason"),
            (_wire.OptimStepRequest, {"model_id": "m", "type": "optim_step", "adam_params": {"x": 1}}, "$.adam_params"),
        ],
    )
    def test_nested_unknown_key_is_refused(self, cls, body, where):
        """A request with an unknown key inside a nested object is refused, naming the key and its place."""
        with pytest.raises(DecodeError) as info:
            _converter.decode_request(body, cls)
        assert ["extra fields found (x) @ %s" % where] == info.value.errors

    def test_the_server_answers_400_for_a_nested_unknown_key(self, api):
        """The embedded server refuses a create_model whose lora_config carries an unknown key."""
        body = dict(CREATE_MODEL, session_id=api.session())
        body["lora_config"] = dict(body["lora_config"], rnak=8)
        resp = api.post("/api/v1/create_model", body)
        assert 400 == resp.status_code
        assert ["extra fields found (rnak) @ $.lora_config"] == resp.json()["errors"]

    def test_a_nested_class_is_strict_in_a_request_and_tolerant_in_an_answer(self):
        """The same class (ModelData, here nested) follows the direction, not a per-class setting."""
        data = {"arch": "qwen3", "model_name": "m", "tokenizer_id": "t", "x": 1}
        assert _wire.ModelData(arch="qwen3", model_name="m", tokenizer_id="t") == _converter.decode(data, _wire.ModelData)
        with pytest.raises(DecodeError):
            _converter.decode_request(data, _wire.ModelData)


class TestAnswersAreTolerantAtEveryDepth:
    """Tests for decoding answers (what a client reads): unknown keys are ignored at any depth."""

    def test_the_reported_weights_info_decodes(self):
        """The body that used to raise decodes; the optimizer config keeps its extra key."""
        resp = _converter.decode({"base_model": "x", "optimizer_config": {"type": "adamw", "lr": 1}}, _wire.WeightsInfoResponse)
        assert _wire.OptimizerConfig(type="adamw", extra={"lr": 1}) == resp.optimizer_config

    @pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.stem)
    def test_golden_answer_with_unknown_keys_everywhere_decodes(self, path):
        """An unknown key in every object at every depth changes nothing but an optimizer config's extras."""
        expected = _converter.decode(_body(path), _cls(path))
        if getattr(expected, "optimizer_config", None) is not None:
            config = attrs.evolve(expected.optimizer_config, extra={EXTRA_KEY: EXTRA_VALUE})
            expected = attrs.evolve(expected, optimizer_config=config)
        assert expected == _converter.decode(add_unknown_keys(_body(path)), _cls(path))

    @pytest.mark.parametrize(
        "cls, body, error",
        [
            (_wire.Cursor, {"offset": "7", "limit": 1, "total_count": 1}, "invalid value for type, expected int @ $.offset"),
            (_wire.WeightsInfoResponse, {"base_model": "b", "is_lora": 1}, "invalid value for type, expected bool @ $.is_lora"),
            (
                _wire.CheckpointsListResponse,
                {"checkpoints": [], "cursor": {"offset": True, "limit": 1, "total_count": 1, "x": 1}},
                "invalid value for type, expected int @ $.cursor.offset",
            ),
            (_wire.GetInfoResponse, {"model_id": "m", "optimizer_config": {"type": 5}}, "invalid value for type, expected str @ $.optimizer_config.type"),
        ],
    )
    def test_known_keys_keep_strict_types(self, cls, body, error):
        """Tolerance is for unknown keys only: a known key of the wrong JSON type is still an error."""
        with pytest.raises(DecodeError) as info:
            _converter.decode(body, cls)
        assert [error] == info.value.errors

    def test_unknown_keys_are_logged_once_per_class_at_debug(self, caplog):
        """Each class whose answer dropped keys is named once at DEBUG, however deep and however often."""
        for cls in (_wire.GetInfoResponse, _wire.ModelData):
            _converter._logged_extra.discard(cls)
        body = {"model_id": "m", "new_top": 1, "model_data": {"arch": "q", "new_inner": 2}}
        with caplog.at_level(logging.DEBUG, logger="tinkex_persist._converter"):
            for _ in range(3):
                _converter.decode(body, _wire.GetInfoResponse)
        messages = [r.getMessage() for r in caplog.records if r.name == "tinkex_persist._converter"]
        expected = ["ignoring unknown keys in GetInfoResponse: new_top", "ignoring unknown keys in ModelData: new_inner"]
        assert expected == messages
        assert {logging.DEBUG} == {r.levelno for r in caplog.records if r.name == "tinkex_persist._converter"}


class TestOptimizerConfigIsOpen:
    """Tests for ``OptimizerConfig``: families carry more keys, kept as given in both directions."""

    def test_dimuon_answer_keeps_its_config(self):
        """A dimuon config in a weights_info answer decodes with its version and encodes back unchanged."""
        body = {"base_model": "b", "optimizer_config": DIMUON, "is_lora": True, "lora_rank": 8}
        resp = _converter.decode(body, _wire.WeightsInfoResponse)
        assert _wire.OptimizerConfig(type="dimuon", extra={"version": 1}) == resp.optimizer_config
        assert DIMUON == _converter.encode_response(resp)["optimizer_config"]

    def test_dimuon_request_is_sent_as_the_sdk_sends_it(self):
        """A create_model with a dimuon config encodes ``type`` first, then the family's keys, and reads back."""
        req = _converter.decode_request(dict(CREATE_MODEL, optimizer_config=DIMUON), _wire.CreateModelRequest)
        assert _wire.OptimizerConfig(type="dimuon", extra={"version": 1}) == req.optimizer_config
        assert b'"optimizer_config":{"type":"dimuon","version":1}' in _converter.dumps(req)

    def test_adamw_has_no_extra_keys(self):
        """The default family encodes as ``{"type": "adamw"}`` in both directions."""
        config = _wire.OptimizerConfig()
        assert ({"type": "adamw"}, {"type": "adamw"}) == (_converter.encode(config), _converter.encode_response(config))

    def test_an_extra_key_may_not_repeat_a_named_key(self):
        """``extra`` cannot smuggle a second ``type``: encoding refuses it."""
        with pytest.raises(ValueError) as info:
            _converter.encode(_wire.OptimizerConfig(type="adamw", extra={"type": "dimuon"}))
        assert "OptimizerConfig.extra repeats a named key: type" == str(info.value)


class TestKeyTablePinsBothDirections:
    """Tests for the one key table: the converters accept nothing outside it, and the server answers through it."""

    def test_a_class_outside_the_table_cannot_be_decoded(self):
        """Decoding into an unreviewed attrs class raises instead of deriving keys."""

        @attrs.frozen
        class Stray:
            x: int = 1

        for decode in (_converter.decode, _converter.decode_request):
            with pytest.raises(TypeError) as info:
                decode({"x": 1}, Stray)
            assert "Stray is not a wire class" == str(info.value)

    def test_answers_carry_every_field_and_none_as_null(self):
        """An answer is encoded with all its fields, None included, in the class's order."""
        expected = {"request_id": "r", "model_id": None}
        assert expected == _converter.encode_response(_wire.UntypedAPIFuture(request_id="r"))

    def test_server_answers_have_exactly_the_tables_keys(self, api):
        """Each JSON answer of the embedded server has the keys ``KEYS`` pins for its class, no more, no less."""
        model_id = api.model()
        save = api.save(model_id, 1, "c")
        path = save["path"]
        answers = [
            (_wire.SaveWeightsResponse, save),
            (_wire.CreateSessionResponse, api.post("/api/v1/create_session", {"tags": [], "sdk_version": "0.38.0", "type": "create_session"}).json()),
            (_wire.UntypedAPIFuture, api.post("/api/v1/save_weights", {"model_id": model_id, "path": "d", "seq_id": 2, "overwrite": False, "type": "save_weights"}).json()),
            (_wire.GetInfoResponse, api.post("/api/v1/get_info", {"model_id": model_id, "type": "get_info"}).json()),
            (_wire.WeightsInfoResponse, api.post("/api/v1/weights_info", {"tinker_path": path}).json()),
            (_wire.CheckpointsListResponse, api.get("/api/v1/checkpoints").json()),
            (_wire.CheckpointsListResponse, api.get("/api/v1/training_runs/%s/checkpoints" % model_id).json()),
            (_wire.LoadWeightsResponse, api.load(path, False, session_id=api.session(), model_seq_id=0)),
            (_wire.OptimStepResponse, api.step(model_id, 3)),
            (_wire.RequestFailedResponse, api.save(model_id, 4, "c")),
            (_wire.SessionHeartbeatResponse, api.post("/api/v1/session_heartbeat", {"session_id": api.session(), "type": "session_heartbeat"}).json()),
            (_wire.GetServerCapabilitiesResponse, api.get("/api/v1/get_server_capabilities").json()),
            (_wire.TelemetryResponse, api.post("/api/v1/telemetry", {"events": []}).json()),
        ]
        for cls, answer in answers:
            assert set(_wire.KEYS[cls].values()) == set(answer), cls.__name__
        listing = api.get("/api/v1/checkpoints").json()
        assert set(_wire.KEYS[_wire.Checkpoint].values()) == set(listing["checkpoints"][0])
        assert set(_wire.KEYS[_wire.Cursor].values()) == set(listing["cursor"])
        (model,) = api.get("/api/v1/get_server_capabilities").json()["supported_models"]
        assert set(_wire.KEYS[_wire.SupportedModel].values()) == set(model)


class TestExtraKeysProxy:
    """Tests for the fault proxy's ``extra_keys`` mode, which the end-to-end suites run under."""

    def test_every_object_of_an_answer_gets_the_unknown_key(self, local_server, api_for):
        """Through the proxy, every object of a listing carries the key; caller data maps are left alone."""
        direct = api_for(local_server.url)
        model_id = direct.model()
        direct.save(model_id, 1, "c", user_metadata={"k": "v"})
        with FaultProxy(local_server.url, extra_keys=True) as proxy:
            listing = api_for(proxy.url).get("/api/v1/checkpoints").json()
        (entry,) = listing["checkpoints"]
        assert (EXTRA_VALUE, EXTRA_VALUE, EXTRA_VALUE) == (listing[EXTRA_KEY], entry[EXTRA_KEY], listing["cursor"][EXTRA_KEY])
        assert {"k": "v"} == entry["user_metadata"]

    def test_add_unknown_keys_reaches_into_lists(self):
        """Objects inside lists inside objects get the key too."""
        expected = {"a": [{"b": {EXTRA_KEY: EXTRA_VALUE}, EXTRA_KEY: EXTRA_VALUE}, 1], EXTRA_KEY: EXTRA_VALUE}
        assert expected == add_unknown_keys({"a": [{"b": {}}, 1]})


class TestExtendedOptimizerEndToEnd:
    """Tests for checkpoints whose optimizer config carries more than ``type``, over HTTP."""

    def _config_answer(self, server_url, path, api_for, config):
        answer = api_for(server_url).post("/api/v1/weights_info", {"tinker_path": path}).json()
        return json.dumps(dict(answer, optimizer_config=config)).encode()

    @contextlib.contextmanager
    def _older_server(self, tmp_path, api_for, config):
        """A server without session addressing, whose ``weights_info`` answers ``config`` for a trained checkpoint.

        Yield ``(proxy, service, path)``; the client talks to the server through the proxy."""
        import tinkex_persist as tp
        from tinkex_persist.localserver import LocalServer

        from conftest import TEST_KEY

        with LocalServer(tmp_path, session_load=False) as server:
            direct = api_for(server.url)
            model_id = direct.model()
            direct.train(model_id, 1)
            path = direct.save(model_id, 3, "c")["path"]
            with FaultProxy(server.url) as proxy, tp.ServiceClient(
                base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None
            ) as service:
                proxy.add("status", "/api/v1/weights_info", status=200, body=self._config_answer(server.url, path, api_for, config))
                yield proxy, service, path

    @staticmethod
    def _created_with(proxy):
        """The ``optimizer_config`` of every ``create_model`` the client sent."""
        return [json.loads(r.body)["optimizer_config"] for r in proxy.records if r.path == "/api/v1/create_model"]

    def test_weights_info_of_a_dimuon_checkpoint(self, local_server, api_for):
        """``get_weights_info`` succeeds on a dimuon checkpoint: it reports the family and the whole config as given
        (and None for both when the server does not say)."""
        import tinkex_persist as tp

        from conftest import TEST_KEY

        config = {"type": "dimuon", "version": 1, "schedule": {"warmup": [10, 20]}}
        direct = api_for(local_server.url)
        path = direct.save(direct.model(), 1, "c")["path"]
        with FaultProxy(local_server.url) as proxy, tp.ServiceClient(
            base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None
        ) as service:
            proxy.add("status", "/api/v1/weights_info", status=200, body=self._config_answer(local_server.url, path, api_for, config))
            info = tp.get_weights_info(service, path).result(timeout=30)
            plain = tp.get_weights_info(service, path).result(timeout=30)
            proxy.add("status", "/api/v1/weights_info", status=200, body=self._config_answer(local_server.url, path, api_for, None))
            unsaid = tp.get_weights_info(service, path).result(timeout=30)
        assert ("dimuon", config, 8, "Qwen/Qwen3-8B") == (info.optimizer, info.optimizer_config, info.lora_rank, info.base_model)
        assert ["type", "version", "schedule"] == list(info.optimizer_config)
        assert ("adamw", {"type": "adamw"}) == (plain.optimizer, plain.optimizer_config)
        assert (None, None) == (unsaid.optimizer, unsaid.optimizer_config)

    @pytest.mark.parametrize("with_optimizer", [False, True])
    def test_create_from_state_fallback_keeps_a_dimuon_family(self, tmp_path, api_for, with_optimizer):
        """On a server without session addressing, the fallback creates the model with the checkpoint's dimuon
        config as given (not the default adamw); this server trains adamw only and refuses it with a 400 naming it."""
        import tinkex_persist as tp

        with self._older_server(tmp_path, api_for, DIMUON) as (proxy, service, path):
            create = tp.create_training_client_from_state_with_optimizer if with_optimizer else tp.create_training_client_from_state
            with pytest.raises(tp.BadRequestError) as info:
                create(service, path).result(timeout=30)
            assert [DIMUON] == self._created_with(proxy)
            assert ["status"] == [r.fault for r in proxy.records if r.path == "/api/v1/weights_info"]
        assert "dimuon" in str(info.value)

    @pytest.mark.parametrize("with_optimizer", [False, True])
    def test_create_from_state_fallback_passes_extra_keys_through(self, tmp_path, api_for, with_optimizer):
        """A checkpoint's adamw config with extra keys reaches create_model as given, and the resumed client goes on."""
        import tinkex_persist as tp

        config = {"type": "adamw", "version": 2}
        with self._older_server(tmp_path, api_for, config) as (proxy, service, path):
            create = tp.create_training_client_from_state_with_optimizer if with_optimizer else tp.create_training_client_from_state
            resumed = create(service, path).result(timeout=30)
            assert 2 == tp.save_state(resumed, "after").result(timeout=30).seq_id
            assert [config] == self._created_with(proxy)

    def test_an_explicit_optimizer_wins_over_the_checkpoints(self, tmp_path, api_for):
        """``optimizer=`` on create_training_client_from_state is what the fallback's create_model sends."""
        import tinkex_persist as tp

        with self._older_server(tmp_path, api_for, DIMUON) as (proxy, service, path):
            resumed = tp.create_training_client_from_state(service, path, optimizer={"type": "adamw"}).result(timeout=30)
            assert 2 == tp.save_state(resumed, "after").result(timeout=30).seq_id
            assert [{"type": "adamw"}] == self._created_with(proxy)
