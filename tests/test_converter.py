"""Tests for the converter's strictness and its error reports."""

import logging

import pytest

from tinkex_persist import _converter, _wire
from tinkex_persist.exceptions import DecodeError

SAVE = {"model_id": "m", "path": "a", "seq_id": 1, "overwrite": False, "type": "save_weights"}


class TestStrictPrimitives:
    """Tests for refusing cattrs' default coercions."""

    @pytest.mark.parametrize(
        "field, value",
        [
            ("overwrite", "false"),  # cattrs would make this True
            ("overwrite", 0),
            ("seq_id", "7"),  # cattrs would make this 7
            ("seq_id", True),  # a bool is not an int
            ("seq_id", 1.0),
            ("model_id", 5),
            ("type", "load_weights"),
        ],
    )
    def test_wrong_primitive_type_is_rejected(self, field, value):
        """A value of the wrong JSON type is refused with the field's path in the message."""
        with pytest.raises(DecodeError) as info:
            _converter.decode_request(dict(SAVE, **{field: value}), _wire.SaveWeightsRequest)
        assert "$.%s" % field in str(info.value)
        assert 1 == len(info.value.errors)

    def test_int_is_accepted_as_float(self):
        """JSON integers are valid numbers for float fields."""
        params = _converter.decode({"learning_rate": 1}, _wire.AdamParams)
        assert 1.0 == params.learning_rate
        assert float is type(params.learning_rate)

    def test_missing_required_key_is_named(self):
        """A missing required key is reported by its path."""
        with pytest.raises(DecodeError) as info:
            _converter.decode_request({"model_id": "m", "path": "tinker://m/weights/a"}, _wire.LoadWeightsRequest)
        assert ["required field missing @ $.optimizer"] == info.value.errors

    def test_non_object_is_rejected(self):
        """A JSON list where an object is expected raises DecodeError."""
        with pytest.raises(DecodeError) as info:
            _converter.decode([1, 2], _wire.SaveWeightsResponse)
        assert ["$: expected an object, got list"] == info.value.errors

    def test_loads_rejects_non_json(self):
        """Bytes that are not JSON raise DecodeError carrying an excerpt of the body."""
        with pytest.raises(DecodeError) as info:
            _converter.loads(b"<html>oops</html>", _wire.SaveWeightsResponse)
        assert "<html>oops</html>" == info.value.body

    def test_loads_decodes_json(self):
        """Valid JSON bytes decode into the class."""
        assert _wire.SaveWeightsResponse(path="p") == _converter.loads(b'{"path":"p"}', _wire.SaveWeightsResponse)

    def test_nested_errors_are_all_listed(self):
        """Every problem in a nested body is listed, not just the first."""
        body = {"session_id": "s", "model_seq_id": "0", "base_model": "b", "lora_config": {"rank": "8"}}
        with pytest.raises(DecodeError) as info:
            _converter.decode_request(body, _wire.CreateModelRequest)
        assert 2 == len(info.value.errors)
        assert any("$.lora_config.rank" in e for e in info.value.errors)


class TestConverterInstances:
    """Tests for converter construction."""

    @pytest.mark.parametrize("direction", [_converter.REQUEST, _converter.RESPONSE])
    def test_make_converter_returns_fresh_independent_instances(self, direction):
        """Each call builds a new converter of its direction, and it encodes like the shared one."""
        c1, c2 = _converter.make_converter(direction), _converter.make_converter(direction)
        assert c1 is not c2
        req = _wire.GetInfoRequest(model_id="m")
        assert _converter.shared_converter(direction).unstructure(req) == c1.unstructure(req)

    def test_the_shared_converters_are_built_once(self):
        """Each direction has one process-wide converter, distinct from the other direction's."""
        request = _converter.shared_converter(_converter.REQUEST)
        assert request is _converter.shared_converter(_converter.REQUEST)
        assert request is not _converter.shared_converter(_converter.RESPONSE)

    def test_unknown_direction_is_refused(self):
        """Only the two directions exist."""
        with pytest.raises(ValueError) as info:
            _converter.make_converter("both")
        assert "'both'" in str(info.value)

    def test_unknown_response_keys_are_logged_once_at_debug(self, caplog):
        """Dropped response keys are logged at DEBUG, once per class."""
        _converter._logged_extra.discard(_wire.Cursor)
        with caplog.at_level(logging.DEBUG, logger="tinkex_persist._converter"):
            for _ in range(3):
                _converter.decode({"offset": 0, "limit": 1, "total_count": 1, "new_field": 1}, _wire.Cursor)
        messages = [r.getMessage() for r in caplog.records if "new_field" in r.getMessage()]
        assert 1 == len(messages)
