"""Golden-vector tests: our encoder reproduces the official SDK's request bodies byte for byte."""

import json
import pathlib

import attrs
import pytest

from tinkex_persist import _converter, _wire
from tinkex_persist.exceptions import DecodeError

GOLDEN = pathlib.Path(__file__).parent / "golden"
REQUESTS = sorted((GOLDEN / "requests").glob("*.json"))
RESPONSES = sorted((GOLDEN / "responses").glob("*.json"))


def _cls(path: pathlib.Path) -> type:
    return getattr(_wire, path.name.split("-", 1)[0])


def _sdk_bytes(body: object) -> bytes:
    # The official SDK's HTTP client serialises with these exact options.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


class TestRequestVectors:
    """Tests for request encoding against captured official-SDK bodies."""

    def test_every_captured_request_kind_has_a_vector(self):
        """The golden set covers every request the persistence calls send."""
        names = {p.name.split("-", 1)[0] for p in REQUESTS}
        expected = {
            "CreateSessionRequest", "CreateModelRequest", "GetInfoRequest", "SaveWeightsRequest",
            "LoadWeightsRequest", "RetrieveFutureRequest", "WeightsInfoRequest", "FinishSessionRequest",
            "OptimStepRequest", "SessionHeartbeatRequest", "ClientConfigRequest", "SetTtlRequest",
            "SaveWeightsForSamplerRequest",
        }
        assert expected == names

    @pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
    def test_decode_then_encode_is_byte_identical(self, path):
        """Decoding a captured body and encoding it again gives the SDK's exact bytes, key order included."""
        body = json.loads(path.read_text())["body"]
        obj = _converter.decode_request(body, _cls(path))
        assert _sdk_bytes(body) == _converter.dumps(obj)

    @pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
    def test_requests_reject_an_unknown_key(self, path):
        """A request with one extra key is refused, naming the key."""
        body = dict(json.loads(path.read_text())["body"], surplus_key=1)
        with pytest.raises(DecodeError) as info:
            _converter.decode_request(body, _cls(path))
        assert "surplus_key" in str(info.value)

    def test_load_optimizer_state_is_rejected(self):
        """The mis-keyed ``load_optimizer_state`` body is refused; ``optimizer`` is the only accepted key."""
        body = {"model_id": "m", "seq_id": 1, "path": "tinker://m/weights/a", "load_optimizer_state": True, "type": "load_weights"}
        with pytest.raises(DecodeError) as info:
            _converter.decode_request(body, _wire.LoadWeightsRequest)
        assert "load_optimizer_state" in str(info.value)

    @pytest.mark.parametrize("optimizer", [False, True])
    def test_load_request_sends_optimizer_key(self, optimizer):
        """``optimizer`` is always sent, false included, and no other spelling ever appears."""
        req = _wire.LoadWeightsRequest(model_id="m", seq_id=2, path="tinker://m/weights/a", optimizer=optimizer)
        encoded = _converter.encode(req)
        assert optimizer is encoded["optimizer"]
        assert not any("load_optimizer" in key for key in encoded)

    def test_none_fields_are_omitted_and_false_is_sent(self):
        """None-valued request fields are left out while ``overwrite: false`` is kept."""
        encoded = _converter.encode(_wire.SaveWeightsRequest(model_id="m", path="a", seq_id=1))
        assert {"model_id": "m", "path": "a", "seq_id": 1, "overwrite": False, "type": "save_weights"} == encoded

    def test_finish_session_sends_null_detail(self):
        """``detail`` of the finish request is sent as null, as the official SDK does."""
        assert {"reason": {"type": "success"}, "detail": None} == _converter.encode(_wire.FinishSessionRequest())

    def test_secret_token_is_not_in_repr(self):
        """The weights access token of a load request never appears in its repr."""
        req = _wire.LoadWeightsRequest(path="tinker://m/weights/a", optimizer=True, weights_access_token="tok-SECRET")
        assert "tok-SECRET" not in repr(req)


class TestKeyTable:
    """Tests for the pinned attribute -> JSON key table."""

    @pytest.mark.parametrize("cls", list(_wire.KEYS), ids=lambda c: c.__name__)
    def test_table_lists_every_field(self, cls):
        """Every field of every wire class is pinned in ``KEYS``: a renamed attribute fails here."""
        assert set(attrs.fields_dict(cls)) == set(_wire.KEYS[cls])

    def test_every_wire_class_is_in_the_table(self):
        """No attrs class in ``_wire`` escapes the table."""
        classes = {v for v in vars(_wire).values() if isinstance(v, type) and attrs.has(v)}
        assert classes == set(_wire.KEYS)

    def test_load_weights_optimizer_key_is_pinned(self):
        """The load request's optimizer flag travels as ``optimizer``."""
        assert "optimizer" == _wire.KEYS[_wire.LoadWeightsRequest]["optimizer"]

    def test_a_class_outside_the_table_cannot_be_encoded(self):
        """Encoding an unreviewed attrs class raises instead of deriving keys."""

        @attrs.frozen
        class Stray:
            x: int = 1

        with pytest.raises(TypeError):
            _converter.encode(Stray())


class TestResponseVectors:
    """Tests for decoding the response shapes the official SDK accepts."""

    @pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.stem)
    def test_example_response_decodes(self, path):
        """Every example response decodes into its class."""
        body = json.loads(path.read_text())["body"]
        obj = _converter.decode(body, _cls(path))
        assert isinstance(obj, _cls(path))

    @pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.stem)
    def test_responses_tolerate_unknown_keys(self, path):
        """A newer server's extra key is ignored, not an error."""
        body = dict(json.loads(path.read_text())["body"], added_by_newer_server={"x": 1})
        assert _converter.decode(body, _cls(path)) == _converter.decode(json.loads(path.read_text())["body"], _cls(path))

    def test_list_response_keeps_every_checkpoint_field(self):
        """The listing decodes ids, paths, sizes and expiry."""
        body = json.loads((GOLDEN / "responses" / "CheckpointsListResponse-accept-list_checkpoints.json").read_text())["body"]
        resp = _converter.decode(body, _wire.CheckpointsListResponse)
        assert ["weights/ckpt-1", "weights/ckpt-to-delete"] == [c.checkpoint_id for c in resp.checkpoints]
        assert [16777216, 16777216] == [c.size_bytes for c in resp.checkpoints]
        assert None is resp.checkpoints[1].expires_at
