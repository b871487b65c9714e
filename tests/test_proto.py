"""Tests for the stdlib protobuf codec of forward/backward: golden SDK bytes, the real protobuf package, the SDK's converters."""

import base64
import json
import pathlib
import random
import struct
import types as pytypes

import pytest

from tinkex_persist import _proto
from tinkex_persist.exceptions import DecodeError, UsageError
from tinkex_persist.training_types import (
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageChunk,
    ModelInput,
    TensorData,
)

GOLDEN = pathlib.Path(__file__).parent / "golden" / "protobuf"
REQUEST_VECTORS = sorted(GOLDEN.glob("ForwardBackwardRequest-*.json"))
RESULT_VECTOR = GOLDEN / "ForwardBackwardOutput-accept-retrieve_future_forward_backward.json"
DTYPE_NAMES = {1: "DTYPE_FLOAT32", 2: "DTYPE_INT64", 3: "DTYPE_INT32", 4: "DTYPE_BFLOAT16"}
DTYPE_FORMATS = {1: "f", 2: "q", 3: "i"}


def _load(path):
    return json.loads(path.read_text())


def _values(raw, code):
    return list(struct.unpack("<%d%s" % (len(raw) // struct.calcsize(code), code), raw))


def _readable_request(msg):
    """The decoded dict in the vector's readable ``body`` form (tokens and tensors as numbers)."""
    out = {k: v for k, v in msg.items() if k != "data"}
    out["data"] = []
    for datum in msg.get("data", []):
        inputs = {}
        for name, tensor in datum.get("loss_fn_inputs", {}).items():
            inputs[name] = {
                "dense": _values(tensor["dense"], DTYPE_FORMATS[tensor["dtype"]]),
                "dtype": DTYPE_NAMES[tensor["dtype"]],
                "shape": tensor["shape"],
            }
        chunks = [{"encoded_text": {"tokens": _values(c["encoded_text"]["tokens"], "i")}} for c in datum["model_input"]]
        out["data"].append({"model_input": chunks, "loss_fn_inputs": inputs})
    return out


def _datums_from_body(body):
    """Public Datums built from a vector's readable body, the way the SDK call built them."""
    data = []
    for datum in body["data"]:
        tokens = [t for c in datum["model_input"] for t in c["encoded_text"]["tokens"]]
        inputs = {name: t["dense"] for name, t in datum["loss_fn_inputs"].items()}
        data.append(Datum(ModelInput.from_ints(tokens), inputs))
    return data


class TestGoldenRequestVectors:
    """Tests for request encoding and decoding against the bytes SDK 0.38 sent."""

    def test_the_vectors_are_present(self):
        """Both protobuf request vectors (forward_backward and forward) are copied into the golden set."""
        assert ["forward", "forward_backward"] == [_load(p)["name"] for p in REQUEST_VECTORS]

    @pytest.mark.parametrize("path", REQUEST_VECTORS, ids=lambda p: p.stem)
    def test_encoding_equals_the_canonical_bytes(self, path):
        """Datums built like the SDK call encode to the vector's canonical (key-ordered) bytes."""
        vector = _load(path)
        body = vector["body"]
        ours = _proto.encode_forward_backward_request(
            model_id=body["model_id"],
            seq_id=body["seq_id"],
            data=_datums_from_body(body),
            loss_fn=body["loss_fn"],
            forward_only=body.get("forward_only", False),
        )
        assert base64.b64decode(vector["body_base64_canonical"]) == ours

    @pytest.mark.parametrize("path", REQUEST_VECTORS, ids=lambda p: p.stem)
    def test_the_sdk_bytes_decode_to_the_recorded_message(self, path):
        """The SDK's bytes (hash-ordered map entries) decode strictly to the message the vector records."""
        vector = _load(path)
        decoded = _proto.decode("ForwardBackwardRequest", base64.b64decode(vector["body_base64"]), strict=True)
        assert vector["body"] == _readable_request(decoded)

    @pytest.mark.parametrize("path", REQUEST_VECTORS, ids=lambda p: p.stem)
    def test_raw_and_canonical_bytes_are_the_same_message(self, path):
        """Raw and canonical bytes differ only in map order: both decode to one message, which re-encodes canonically."""
        vector = _load(path)
        raw = base64.b64decode(vector["body_base64"])
        canonical = base64.b64decode(vector["body_base64_canonical"])
        decoded = _proto.decode("ForwardBackwardRequest", raw, strict=True)
        assert decoded == _proto.decode("ForwardBackwardRequest", canonical, strict=True)
        assert canonical == _proto.encode("ForwardBackwardRequest", decoded)

    @pytest.mark.parametrize("path", REQUEST_VECTORS, ids=lambda p: p.stem)
    def test_typed_decoding_gives_the_datums(self, path):
        """The server-side decoder returns the model id, seq id, loss fn, flags and the very Datums sent."""
        vector = _load(path)
        body = vector["body"]
        message = _proto.decode_forward_backward_request(base64.b64decode(vector["body_base64"]))
        expected = _proto.ForwardBackwardRequestMessage(
            model_id=body["model_id"], seq_id=body["seq_id"], data=_datums_from_body(body), loss_fn=body["loss_fn"],
            loss_fn_config=None, forward_only=body.get("forward_only", False),
        )
        assert expected == message


class TestGoldenResultVector:
    """Tests for decoding the ForwardBackwardOutput the SDK accepted."""

    def test_decodes_to_per_datum_tensors_and_metrics(self):
        """The result decodes to one datum with logprobs and elementwise_loss, and ``loss:sum``."""
        example = _load(RESULT_VECTOR)["example_response"]
        out = _proto.decode_forward_backward_output(base64.b64decode(example["_base64"]))
        fields = example["_decoded"]["loss_fn_outputs"][0]["fields"]
        expected = ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=[
                {name: TensorData(data=f["data"], dtype="float32", shape=[len(f["data"])]) for name, f in fields.items()}
            ],
            metrics={"loss:sum": 4.625},
        )
        assert expected == out

    def test_reencoding_gives_the_same_message(self):
        """Encoding the decoded result gives bytes that decode (generically) to the message that was sent."""
        raw = base64.b64decode(_load(RESULT_VECTOR)["example_response"]["_base64"])
        ours = _proto.encode_forward_backward_output(_proto.decode_forward_backward_output(raw))
        assert _proto.decode("ForwardBackwardOutput", raw, strict=True) == _proto.decode(
            "ForwardBackwardOutput", ours, strict=True
        )


class TestPrimitives:
    """Tests for varints, scalars and the generic encoder's checks."""

    @pytest.mark.parametrize(
        "field,value,expected",
        [
            ("seq_id", 1, b"\x10\x01"),
            ("seq_id", 300, b"\x10\xac\x02"),
            ("seq_id", -1, b"\x10" + b"\xff" * 9 + b"\x01"),
            ("seq_id", -(2**31), b"\x10\x80\x80\x80\x80\xf8\xff\xff\xff\xff\x01"),
            ("seq_id", 0, b""),
            ("forward_only", True, b"\x30\x01"),
            ("forward_only", False, b""),
            ("model_id", "", b""),
            ("model_id", "é", b"\x0a\x02\xc3\xa9"),
        ],
    )
    def test_scalar_encoding(self, field, value, expected):
        """Scalars encode as protobuf does: negative ints as 10-byte varints, defaults omitted."""
        assert expected == _proto.encode("ForwardBackwardRequest", {field: value})

    def test_negative_int64_round_trips(self):
        """A negative packed int64 (a shape entry) takes 10 bytes and decodes back."""
        raw = _proto.encode("Tensor", {"shape": [-(2**63), -1, 2**63 - 1]})
        assert {"shape": [-(2**63), -1, 2**63 - 1]} == _proto.decode("Tensor", raw, strict=True)

    def test_oneof_members_are_written_even_when_default(self):
        """An empty ``dense`` and a zero ``number`` are present (explicit presence), unlike plain scalars."""
        assert b"\x0a\x00" == _proto.encode("Tensor", {"dense": b""})
        assert b"\x09" + b"\x00" * 8 == _proto.encode("LossConfigValue", {"number": 0.0})
        assert {"dense": b""} == _proto.decode("Tensor", b"\x0a\x00", strict=True)

    def test_map_entries_are_sorted_by_key(self):
        """Map entries come out in key order whatever the dict order."""
        a = _proto.encode("ForwardBackwardOutput", {"metrics": {"b:sum": 1.0, "a:sum": 2.0}})
        b = _proto.encode("ForwardBackwardOutput", {"metrics": {"a:sum": 2.0, "b:sum": 1.0}})
        assert a == b
        assert a.index(b"a:sum") < a.index(b"b:sum")

    def test_a_key_that_prefixes_another_comes_after_it(self):
        """protobuf's deterministic order puts ``loss:sum_1`` before ``loss:sum`` and the empty key last."""
        raw = _proto.encode("ForwardBackwardOutput", {"metrics": {"": 1.0, "loss:sum": 1.0, "loss:sum_1": 2.0, "a": 0.5}})
        assert ["a", "loss:sum_1", "loss:sum", ""] == list(_proto.decode("ForwardBackwardOutput", raw, strict=True)["metrics"])

    @pytest.mark.parametrize(
        "message,value,needle",
        [
            ("ForwardBackwardRequest", {"seq_id": "1"}, "seq_id"),
            ("ForwardBackwardRequest", {"seq_id": 2**31}, "seq_id"),
            ("ForwardBackwardRequest", {"forward_only": 1}, "forward_only"),
            ("ForwardBackwardRequest", {"model_id": b"m"}, "model_id"),
            ("ForwardBackwardRequest", {"surplus": 1}, "surplus"),
            ("Tensor", {"dense": "x"}, "dense"),
            ("Tensor", {"dense": b"", "sparse_csr": {}}, "oneof"),
            ("Tensor", {"shape": [1.5]}, "shape"),
            ("ForwardBackwardOutput", {"metrics": {"a": "x"}}, "metrics"),
            ("ForwardBackwardOutput", {"metrics": {1: 1.0}}, "metrics"),
        ],
    )
    def test_encoder_refuses_bad_values(self, message, value, needle):
        """A wrong type, an out-of-range int, an unknown field or two oneof members is a UsageError naming it."""
        with pytest.raises(UsageError) as info:
            _proto.encode(message, value)
        assert needle in str(info.value)


def _unknown(number, wire, payload):
    return _proto._tag(number, wire) + payload


class TestDecoding:
    """Tests for strict (server) and tolerant (client) decoding."""

    def test_strict_decoding_names_an_unknown_top_level_field(self):
        """An unknown field number in a request is an error naming the number and the message."""
        body = _proto.encode("ForwardBackwardRequest", {"model_id": "m"}) + _unknown(9, 0, b"\x01")
        with pytest.raises(DecodeError) as info:
            _proto.decode_forward_backward_request(body)
        assert "ForwardBackwardRequest: unknown field number 9 in ForwardBackwardRequest" == str(info.value)

    def test_strict_decoding_names_the_path_of_a_nested_unknown_field(self):
        """An unknown field inside the second datum's tensor is reported with its path."""
        tensor = _proto.encode("Tensor", {"dense": b"\x00" * 4, "dtype": 1}) + _unknown(7, 5, b"\x00" * 4)
        datum = _proto.encode("Datum", {}) + _proto._tag(2, 2) + _proto._varint(len(tensor) + 6 + 2) + b"\x0a\x04wxyz\x12" + _proto._varint(len(tensor)) + tensor
        body = _proto.encode("ForwardBackwardRequest", {"data": [{}]}) + _proto._tag(3, 2) + _proto._varint(len(datum)) + datum
        with pytest.raises(DecodeError) as info:
            _proto.decode("ForwardBackwardRequest", body, strict=True)
        assert "ForwardBackwardRequest.data[1].loss_fn_inputs['wxyz']: unknown field number 7 in Tensor" == str(info.value)

    @pytest.mark.parametrize(
        "extra",
        [
            _unknown(20, 0, b"\x96\x01"),
            _unknown(21, 1, b"\x00" * 8),
            _unknown(22, 2, b"\x03abc"),
            _unknown(23, 5, b"\x00" * 4),
            _unknown(24, 3, _unknown(1, 0, b"\x01") + _unknown(2, 2, b"\x00")) + _proto._tag(24, 4),
            _unknown(1, 0, b"\x05"),  # a known number with the wrong wire type
        ],
        ids=["varint", "fixed64", "bytes", "fixed32", "group", "wrong-wire-type"],
    )
    def test_tolerant_decoding_skips_unknown_fields(self, extra):
        """The client skips unknown fields of every wire type in a result, and a known field sent with the wrong type."""
        base = _proto.encode("ForwardBackwardOutput", {"loss_fn_output_type": "ArrayRecord", "metrics": {"loss:sum": 1.5}})
        assert {"loss_fn_output_type": "ArrayRecord", "metrics": {"loss:sum": 1.5}} == _proto.decode(
            "ForwardBackwardOutput", extra + base + extra, strict=False
        )

    def test_strict_decoding_refuses_a_wrong_wire_type(self):
        """A known field with the wrong wire type is an error in strict mode."""
        with pytest.raises(DecodeError) as info:
            _proto.decode("ForwardBackwardRequest", _unknown(1, 0, b"\x05"), strict=True)
        assert "wire type 0 for field 1 (ForwardBackwardRequest.model_id)" in str(info.value)

    @pytest.mark.parametrize(
        "body,needle",
        [
            (b"\x0a\x05ab", "truncated string"),
            (b"\x10", "truncated varint"),
            (b"\x10" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
            (b"\x0a\x02\xff\xfe", "invalid UTF-8"),
            (b"\x07", "invalid wire type 7"),
            (b"\x00", "field number 0"),
            (b"\x1a\x05\x0a\x00", "truncated message"),
            (b"\x2a\x05\x0a\x01a\x11", "truncated map entry"),
            (b"\xa3\x01", "unterminated group"),
            (b"\xa3\x01\xac\x01", "mismatched end of group"),
            (b"\xa1\x01\x00", "truncated field"),
        ],
    )
    def test_malformed_bytes_are_refused(self, body, needle):
        """Truncated or invalid bytes raise DecodeError in both modes."""
        for strict in (False, True):
            with pytest.raises(DecodeError) as info:
                _proto.decode("ForwardBackwardRequest", body, strict=strict)
            if needle in ("unterminated group", "mismatched end of group", "truncated field") and strict:
                assert "unknown field number 20" in str(info.value)
            else:
                assert needle in str(info.value)

    def test_packed_and_unpacked_repeated_scalars_are_both_accepted(self):
        """``shape`` sent unpacked (one varint per entry) decodes like the packed form."""
        unpacked = b"\x20\x02\x20\x03"
        assert {"shape": [2, 3]} == _proto.decode("Tensor", unpacked, strict=True)
        assert {"shape": [2, 3]} == _proto.decode("Tensor", b"\x22\x02\x02\x03", strict=True)

    def test_a_packed_field_overrunning_its_length_is_refused(self):
        """A packed run whose last varint crosses its declared length is malformed."""
        with pytest.raises(DecodeError):
            _proto.decode("Tensor", b"\x22\x01\x96\x01", strict=True)

    def test_a_repeated_singular_message_merges_and_the_last_oneof_member_wins(self):
        """Two copies of a singular message merge; of two oneof members the last one stays."""
        first = _proto.encode("Chunk", {"image": {"data": b"x", "format": "png"}})
        second = _proto.encode("Chunk", {"image": {"expected_tokens": 3}})
        assert {"image": {"data": b"x", "format": "png", "expected_tokens": 3}} == _proto.decode(
            "Chunk", first + second, strict=True
        )
        text = _proto.encode("Chunk", {"encoded_text": {"tokens": b"\x01\x00\x00\x00"}})
        assert {"encoded_text": {"tokens": b"\x01\x00\x00\x00"}} == _proto.decode("Chunk", first + text, strict=True)

    def test_explicit_default_scalars_read_as_absent(self):
        """A non-canonical encoder writing ``seq_id: 0`` decodes like one that omits it."""
        assert {"model_id": "m"} == _proto.decode("ForwardBackwardRequest", b"\x10\x00\x0a\x01m", strict=True)

    def test_map_entry_defaults_and_unknown_entry_fields(self):
        """A map entry with no key or value reads as the defaults; an unknown entry field is strict-only."""
        assert {"metrics": {"": 0.0}} == _proto.decode("ForwardBackwardOutput", b"\x1a\x00", strict=True)
        entry = b"\x1a\x04\x18\x01\x0a\x00"
        assert {"metrics": {"": 0.0}} == _proto.decode("ForwardBackwardOutput", entry, strict=False)
        with pytest.raises(DecodeError) as info:
            _proto.decode("ForwardBackwardOutput", entry, strict=True)
        assert "unknown field number 3 in map entry metrics" in str(info.value)

    @pytest.mark.parametrize(
        "chunk,needle",
        [
            ({"dmel": {"dmel": b"x"}}, "dmel"),
            ({}, "empty chunk"),
            ({"encoded_text": {"tokens": b"\x01\x02\x03"}}, "int32"),
        ],
    )
    def test_unusable_chunks_are_decode_errors(self, chunk, needle):
        """Chunks the server cannot train on are refused, naming the datum and chunk."""
        body = _proto.encode("ForwardBackwardRequest", {"data": [{"model_input": [chunk]}]})
        with pytest.raises(DecodeError) as info:
            _proto.decode_forward_backward_request(body)
        assert "data[0].model_input[0]" in str(info.value) and needle in str(info.value)

    @pytest.mark.parametrize(
        "tensor,needle",
        [
            ({"dense": b"\x00" * 4, "dtype": 0}, "unsupported dtype 0"),
            ({"dense": b"\x00" * 3, "dtype": 1}, "whole number"),
            ({"sparse_csr": {"values": b"\x00" * 3}, "dtype": 1, "shape": [1, 1]}, "sparse byte lengths"),
            ({"dense": b"\x00" * 8, "dtype": 1, "shape": [3]}, "shape [3] needs 3 values"),
        ],
    )
    def test_unusable_tensors_are_decode_errors(self, tensor, needle):
        """A tensor with no dtype, ragged bytes or a wrong shape is refused, naming the datum."""
        body = _proto.encode(
            "ForwardBackwardRequest",
            {"data": [{"model_input": [{"encoded_text": {"tokens": b"\x01\x00\x00\x00"}}], "loss_fn_inputs": {"x": tensor}}]},
        )
        with pytest.raises(DecodeError) as info:
            _proto.decode_forward_backward_request(body)
        assert "data[0]" in str(info.value) and needle in str(info.value)

    def test_a_datum_failing_validation_is_a_decode_error(self):
        """A datum whose target_tokens do not match its input length is refused by the server-side decoder."""
        body = _proto.encode(
            "ForwardBackwardRequest",
            {"data": [{"model_input": [{"encoded_text": {"tokens": b"\x01\x00\x00\x00"}}],
                       "loss_fn_inputs": {"target_tokens": {"dense": b"\x00" * 16, "dtype": 2, "shape": [2]}}}]},
        )
        with pytest.raises(DecodeError) as info:
            _proto.decode_forward_backward_request(body)
        assert "data[0]" in str(info.value) and "target_tokens" in str(info.value)

    def test_loss_fn_config_prefers_v2_and_falls_back_to_the_legacy_map(self):
        """The server reads strings and numbers from ``loss_fn_config_v2``, or numbers from the legacy map alone."""
        v2 = _proto.encode(
            "ForwardBackwardRequest",
            {"loss_fn_config": {"a": 1.0}, "loss_fn_config_v2": {"a": {"number": 1.0}, "b": {"text": "x"}}},
        )
        legacy = _proto.encode("ForwardBackwardRequest", {"loss_fn_config": {"a": 2.0}})
        assert {"a": 1.0, "b": "x"} == _proto.decode_forward_backward_request(v2).loss_fn_config
        assert {"a": 2.0} == _proto.decode_forward_backward_request(legacy).loss_fn_config


def _tokens_datum(n, extra=None):
    return Datum(ModelInput.from_ints(list(range(n))), dict({"target_tokens": list(range(n)), "weights": [1.0] * n}, **(extra or {})))


class TestTypedRequests:
    """Tests for ``encode_forward_backward_request`` argument checks and chunk kinds."""

    @pytest.mark.parametrize(
        "kwargs,needle",
        [
            ({"loss_fn": "mse"}, "unknown loss_fn 'mse'"),
            ({"loss_fn_config": [("a", 1.0)]}, "loss_fn_config must be a dict"),
            ({"loss_fn_config": {1: 1.0}}, "keys must be strings"),
            ({"loss_fn_config": {"a": True}}, "loss_fn_config['a']"),
            ({"loss_fn_config": {"a": None}}, "loss_fn_config['a']"),
            ({"data": []}, "at least one Datum"),
            ({"data": "abc"}, "must be a list of Datum"),
            ({"data": [{"model_input": []}]}, "data[0] is dict"),
        ],
    )
    def test_bad_arguments_raise_usage_error(self, kwargs, needle):
        """An unknown loss_fn, a bad config or bad data is refused before anything is encoded."""
        args = dict(model_id="m", seq_id=1, data=[_tokens_datum(2)], loss_fn="cross_entropy")
        args.update(kwargs)
        with pytest.raises(UsageError) as info:
            _proto.encode_forward_backward_request(**args)
        assert needle in str(info.value)

    def test_images_sparse_tensors_and_config_round_trip(self):
        """Image chunks, sparse tensors, 2-D shapes and a mixed config decode back to what was encoded."""
        image = ImageChunk(data=b"\x89PNG", format="png", expected_tokens=2)
        sparse = TensorData(data=[5, 6], dtype="int64", shape=[4, 3], sparse_crow_indices=[0, 1, 1, 2, 2],
                            sparse_col_indices=[2, 0])
        datum = Datum(
            ModelInput(chunks=[EncodedTextChunk(tokens=[-5, 2**31 - 1]), image]),
            {"target_tokens": sparse, "advantages": TensorData(data=[[0.5, 1.0]] * 4, dtype="float32")},
        )
        body = _proto.encode_forward_backward_request(
            model_id="m", seq_id=7, data=[datum, _tokens_datum(3)], loss_fn="ppo",
            loss_fn_config={"clip": 0.2, "mode": "token", "n": 3}, forward_only=True,
        )
        message = _proto.decode_forward_backward_request(body)
        assert _proto.ForwardBackwardRequestMessage(
            model_id="m", seq_id=7, data=[datum, _tokens_datum(3)], loss_fn="ppo",
            loss_fn_config={"clip": 0.2, "mode": "token", "n": 3.0}, forward_only=True,
        ) == message


class TestResults:
    """Tests for ``encode_forward_backward_output`` / ``decode_forward_backward_output``."""

    def test_round_trip_with_trailing_shapes_and_layout_changes(self):
        """Datums with 2-D outputs, int64 outputs and a change of layout round-trip in order."""
        outputs = [
            {"logprobs": TensorData(data=[-1.0, -2.0], dtype="float32", shape=[2])},
            {"logprobs": TensorData(data=[-0.5], dtype="float32", shape=[1])},
            {"logprobs": TensorData(data=[[1, 2], [3, 4], [5, 6]], dtype="int64")},
            {"logprobs": TensorData(data=[], dtype="float32", shape=[0])},
        ]
        out = ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={"loss:sum": 3.5})
        body = _proto.encode_forward_backward_output(out)
        assert out == _proto.decode_forward_backward_output(body)
        assert 3 == len(_proto.decode("ForwardBackwardOutput", body, strict=True)["loss_fn_outputs"])

    def test_empty_result(self):
        """A result with no records decodes to no outputs and the default output type."""
        body = _proto.encode("ForwardBackwardOutput", {"metrics": {"loss:sum": 0.0}})
        assert ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=[], metrics={"loss:sum": 0.0}) == (
            _proto.decode_forward_backward_output(body)
        )

    def test_qualified_output_type_is_shortened_and_missing_num_datums_inferred(self):
        """``module:Class`` becomes ``Class``; without ``num_datums`` the datum count comes from the offsets."""
        bt = {"data": b"\x00\x00\x80\x3f", "offsets": struct.pack("<2q", 0, 4), "dtype": 1}
        body = _proto.encode("ForwardBackwardOutput", {"loss_fn_output_type": "pkg.mod:TorchLossReturn",
                                                       "loss_fn_outputs": [{"fields": {"x": bt}}]})
        out = _proto.decode_forward_backward_output(body)
        assert ("TorchLossReturn", [{"x": TensorData(data=[1.0], dtype="float32", shape=[1])}]) == (
            out.loss_fn_output_type, out.loss_fn_outputs
        )

    @pytest.mark.parametrize(
        "record,needle",
        [
            ({"fields": {"x": {"data": b"", "offsets": struct.pack("<2q", 0, 8), "dtype": 1}}, "num_datums": 1}, "outside"),
            ({"fields": {"x": {"data": b"\x00" * 4, "offsets": struct.pack("<2q", 0, 4), "dtype": 9}}}, "unsupported dtype 9"),
            ({"fields": {"x": {"data": b"\x00" * 4, "offsets": struct.pack("<2q", 0, 4), "dtype": 1}}, "num_datums": 2},
             "has 1 datums, expected 2"),
            ({"fields": {"x": {"data": b"\x00" * 12, "offsets": struct.pack("<2q", 0, 12), "dtype": 1,
                               "trailing_shape": [2]}}, "num_datums": 1}, "trailing shape"),
        ],
    )
    def test_inconsistent_results_are_decode_errors(self, record, needle):
        """Offsets outside the data, unknown dtypes, too few datums or a bad trailing shape raise DecodeError."""
        body = _proto.encode("ForwardBackwardOutput", {"loss_fn_outputs": [record]})
        with pytest.raises(DecodeError) as info:
            _proto.decode_forward_backward_output(body)
        assert needle in str(info.value)

    def test_int32_and_bfloat16_widen(self):
        """int32 outputs read as int64 and bfloat16 as float32, as in the SDK."""
        fields = {
            "ids": {"data": struct.pack("<3i", 1, -2, 3), "offsets": struct.pack("<2q", 0, 12), "dtype": 3},
            "lp": {"data": struct.pack("<3H", 0x3F80, 0xC000, 0x0000), "offsets": struct.pack("<2q", 0, 6), "dtype": 4},
        }
        body = _proto.encode("ForwardBackwardOutput", {"loss_fn_outputs": [{"fields": fields, "num_datums": 1}]})
        out = _proto.decode_forward_backward_output(body)
        assert {"ids": TensorData(data=[1, -2, 3], dtype="int64", shape=[3]),
                "lp": TensorData(data=[1.0, -2.0, 0.0], dtype="float32", shape=[3])} == out.loss_fn_outputs[0]

    def test_sparse_outputs_are_refused(self):
        """The server-side encoder writes dense outputs only."""
        sparse = TensorData(data=[1], dtype="int64", shape=[1, 1], sparse_crow_indices=[0, 1], sparse_col_indices=[0])
        with pytest.raises(UsageError):
            _proto.encode_forward_backward_output(
                ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=[{"x": sparse}])
            )


class TestChunking:
    """Tests for ``split_data`` and ``estimate_datum_bytes``."""

    def test_splits_by_count(self):
        """2,500 small datums go out as 1,024 + 1,024 + 452."""
        data = [_tokens_datum(1)] * 2500
        assert [1024, 1024, 452] == [len(c) for c in _proto.split_data(data)]

    def test_splits_by_bytes(self):
        """Each datum of 100 tokens is 1,600 bytes; a 5,000-byte limit puts three in each request."""
        data = [_tokens_datum(100)] * 7
        assert 1600 == _proto.estimate_datum_bytes(data[0])
        assert [3, 3, 1] == [len(c) for c in _proto.split_data(data, max_bytes=5000)]

    def test_a_datum_larger_than_a_request_is_refused(self):
        """One datum over the byte limit is a UsageError naming it, before anything is sent."""
        data = [_tokens_datum(1), _tokens_datum(400)]
        with pytest.raises(UsageError) as info:
            _proto.split_data(data, max_bytes=5000)
        assert "data[1] is 6400 bytes, more than one request may carry (5000 bytes)" == str(info.value)

    def test_estimate_counts_images_and_sparse_indices(self):
        """An image counts its bytes; a sparse tensor its values plus 8 bytes per index."""
        sparse = TensorData(data=[5], dtype="int64", shape=[1, 3], sparse_crow_indices=[0, 1], sparse_col_indices=[2])
        datum = Datum(ModelInput(chunks=[ImageChunk(data=b"x" * 10, format="jpeg")]), {"target_tokens": sparse})
        assert 10 + 8 + 8 * 3 == _proto.estimate_datum_bytes(datum)

    def test_empty_data_is_refused(self):
        """An empty batch is a UsageError."""
        with pytest.raises(UsageError):
            _proto.split_data([])


def _metric_outputs(metrics_list, counts):
    return [
        ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=[{"x": TensorData(data=[float(i)], dtype="float32")} for i in range(n)],
            metrics=m,
        )
        for m, n in zip(metrics_list, counts)
    ]


class TestCombine:
    """Tests for ``combine_forward_backward_outputs``."""

    def test_outputs_concatenate_and_metrics_reduce(self):
        """Outputs keep request order; sum/min/max/mean/slack/hash2/unique reduce as named; others drop."""
        metrics = [
            {"loss:sum": 1.0, "a:min": 3.0, "a:max": 3.0, "m:mean": 1.0, "s:slack": 2.0, "h:hash2": 5.0,
             "u:unique": 1.0, "z:weird": 1.0, "only:sum": 1.0},
            {"loss:sum": 2.5, "a:min": 1.0, "a:max": 1.0, "m:mean": 4.0, "s:slack": 5.0, "h:hash2": 7.0,
             "u:unique": 2.0, "z:weird": 2.0},
        ]
        out = _proto.combine_forward_backward_outputs(_metric_outputs(metrics, [1, 2]))
        assert {"loss:sum": 3.5, "a:min": 1.0, "a:max": 3.0, "m:mean": 3.0, "s:slack": 5.0 - 4.0, "h:hash2": 12.0,
                "u:unique": 1.0, "u:unique_1": 2.0} == out.metrics
        assert [0.0, 0.0, 1.0] == [d["x"].data[0] for d in out.loss_fn_outputs]

    def test_no_results(self):
        """Combining nothing gives an empty output, as the SDK does."""
        assert ForwardBackwardOutput(loss_fn_output_type="", loss_fn_outputs=[], metrics={}) == (
            _proto.combine_forward_backward_outputs([])
        )


# --------------------------------------------------------------------------- cross-checks with the real protobuf


pb = pytest.importorskip("tinker.proto.tinker_public_pb2")
json_format = pytest.importorskip("google.protobuf.json_format")


def _random_string(rng):
    return "".join(rng.choice(["a", "b", "é", "∑", "0", ":", "_", "😀"]) for _ in range(rng.randint(0, 6)))


def _random_double(rng):
    return rng.choice([0.0, -0.0, 1.5, -2.25, 1e300, -1e-300, rng.uniform(-1e6, 1e6)])


def _random_tensor(rng):
    t = {"dtype": rng.randint(0, 4)}
    if rng.random() < 0.5:
        t["shape"] = [rng.choice([0, 1, 7, 2**40, -3]) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.3:
        t["sparse_csr"] = {k: rng.randbytes(rng.randint(0, 9)) for k in ("values", "crow_indices", "col_indices")
                           if rng.random() < 0.7}
    elif rng.random() < 0.8:
        t["dense"] = rng.randbytes(rng.randint(0, 12))
    return t


def _random_chunk(rng):
    kind = rng.randint(0, 2)
    if kind == 0:
        return {"encoded_text": {"tokens": rng.randbytes(4 * rng.randint(0, 4))} if rng.random() < 0.8 else {}}
    if kind == 1:
        image = {"data": rng.randbytes(rng.randint(0, 5)), "format": rng.choice(["png", "jpeg", ""])}
        if rng.random() < 0.5:
            image["expected_tokens"] = rng.choice([0, 5, -1])
        if rng.random() < 0.3:
            image["override_dimensions"] = {"width": rng.choice([0, 640]), "height": rng.choice([0, 2**32 - 1])}
        return {"image": image}
    return {"dmel": {"dmel": rng.randbytes(rng.randint(1, 5))}}


def _random_span(rng):
    inner = {"sequence_id": _random_string(rng) or "s", "offset": rng.choice([0, 5, -(2**63)]), "length": rng.randint(1, 9)}
    return {rng.choice(["prompt_tokens", "sampled_tokens"]): inner}


def _random_request(rng):
    msg = {}
    if rng.random() < 0.9:
        msg["model_id"] = _random_string(rng) or "m"
    if rng.random() < 0.9:
        msg["seq_id"] = rng.choice([1, 2, 300, -1, 2**31 - 1, -(2**31)])
    data = []
    for _ in range(rng.randint(0, 3)):
        datum = {}
        if rng.random() < 0.9:
            datum["model_input"] = [_random_chunk(rng) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.9:
            datum["loss_fn_inputs"] = {_random_string(rng): _random_tensor(rng) for _ in range(rng.randint(1, 4))}
        if rng.random() < 0.3:
            datum["model_input_spans"] = [_random_span(rng) for _ in range(rng.randint(1, 2))]
            datum["loss_fn_input_spans"] = [_random_span(rng)]
        data.append(datum)
    if data:
        msg["data"] = data
    if rng.random() < 0.9:
        msg["loss_fn"] = rng.choice(["cross_entropy", "ppo"])
    if rng.random() < 0.5:
        msg["loss_fn_config"] = {_random_string(rng): _random_double(rng) for _ in range(rng.randint(1, 4))}
    if rng.random() < 0.5:
        msg["forward_only"] = True
    if rng.random() < 0.5:
        msg["loss_fn_config_v2"] = {
            _random_string(rng): rng.choice([{"number": _random_double(rng)}, {"text": _random_string(rng)}, {}])
            for _ in range(rng.randint(1, 4))
        }
    return msg


def _random_output(rng):
    msg = {}
    if rng.random() < 0.8:
        msg["loss_fn_output_type"] = rng.choice(["ArrayRecord", "x:TorchLossReturn"])
    records = []
    for _ in range(rng.randint(0, 3)):
        record = {}
        if rng.random() < 0.3:
            record["type_tag"] = _random_string(rng) or "t"
        if rng.random() < 0.9:
            record["fields"] = {
                _random_string(rng): {
                    k: v for k, v in {
                        "data": rng.randbytes(rng.randint(0, 16)),
                        "offsets": rng.randbytes(8 * rng.randint(0, 3)),
                        "dtype": rng.randint(0, 4),
                        "trailing_shape": [rng.randint(1, 4) for _ in range(rng.randint(0, 2))],
                    }.items() if v not in (b"", 0, []) and rng.random() < 0.9
                }
                for _ in range(rng.randint(1, 3))
            }
        if rng.random() < 0.8:
            record["num_datums"] = rng.choice([1, 3, 2**40])
        records.append(record)
    if records:
        msg["loss_fn_outputs"] = records
    if rng.random() < 0.8:
        msg["metrics"] = {_random_string(rng): _random_double(rng) for _ in range(rng.randint(1, 4))}
    return msg


def _normalized(message, value):
    """The form ``decode`` returns: implicit-presence scalars at their default and empty containers are absent."""
    out = {}
    for field in _proto.SCHEMA[message]:
        if field.name not in value:
            continue
        v = value[field.name]
        if field.kind == "map":
            if field.map_value == "message":
                v = {k: _normalized(field.message, item) for k, item in v.items()}
            if v:
                out[field.name] = v
        elif field.kind == "message":
            if field.repeated:
                if v:
                    out[field.name] = [_normalized(field.message, item) for item in v]
            else:
                out[field.name] = _normalized(field.message, v)
        elif field.repeated:
            if v:
                out[field.name] = list(v)
        elif field.presence or v != _proto._DEFAULTS[field.kind] or _proto._is_negative_zero(v):
            out[field.name] = v
    return out


def _to_json(message, value):
    """Our dict as protobuf's JSON mapping (bytes as base64), for ``json_format.ParseDict``."""
    out = {}
    for field in _proto.SCHEMA[message]:
        if field.name not in value:
            continue
        v = value[field.name]
        if field.kind == "map":
            out[field.name] = {k: _to_json(field.message, item) if field.map_value == "message" else item
                               for k, item in v.items()}
        elif field.kind == "message":
            out[field.name] = [_to_json(field.message, i) for i in v] if field.repeated else _to_json(field.message, v)
        elif field.kind == "bytes":
            out[field.name] = base64.b64encode(v).decode()
        else:
            out[field.name] = v
    return out


PB_CLASSES = {"ForwardBackwardRequest": "ForwardBackwardRequest", "ForwardBackwardOutput": "ForwardBackwardOutput"}


class TestAgainstProtobuf:
    """Cross-checks with the real ``protobuf`` package and the SDK's own converters (test extra only)."""

    def test_the_schema_matches_the_sdk_descriptor(self):
        """Every message, field number, name, type and label in SCHEMA is the SDK descriptor's."""
        from google.protobuf import descriptor

        kinds = {
            descriptor.FieldDescriptor.TYPE_INT32: "int32", descriptor.FieldDescriptor.TYPE_INT64: "int64",
            descriptor.FieldDescriptor.TYPE_UINT32: "uint32", descriptor.FieldDescriptor.TYPE_BOOL: "bool",
            descriptor.FieldDescriptor.TYPE_ENUM: "enum", descriptor.FieldDescriptor.TYPE_DOUBLE: "double",
            descriptor.FieldDescriptor.TYPE_STRING: "string", descriptor.FieldDescriptor.TYPE_BYTES: "bytes",
            descriptor.FieldDescriptor.TYPE_MESSAGE: "message",
        }
        for name, fields in _proto.SCHEMA.items():
            desc = pb.DESCRIPTOR.message_types_by_name[name]
            theirs = []
            for f in desc.fields:
                entry = f.message_type if f.message_type is not None and f.message_type.GetOptions().map_entry else None
                if entry is not None:
                    value = entry.fields_by_name["value"]
                    kind, message = "map", value.message_type.name if value.message_type else None
                    repeated = False
                else:
                    kind, message = kinds[f.type], f.message_type.name if f.message_type else None
                    repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
                oneof = f.containing_oneof.name if f.containing_oneof and not f.containing_oneof.name.startswith("_") else None
                theirs.append((f.number, f.name, kind, message, repeated, oneof, bool(f.has_presence) and kind != "message"))
            ours = [(f.number, f.name, f.kind, f.message, f.repeated, f.oneof, f.presence and f.kind != "message")
                    for f in fields]
            assert theirs == ours, name
        assert {"DTYPE_UNSPECIFIED": 0, "DTYPE_FLOAT32": 1, "DTYPE_INT64": 2, "DTYPE_INT32": 3, "DTYPE_BFLOAT16": 4} == {
            v.name: v.number for v in pb.DType.DESCRIPTOR.values
        }

    @pytest.mark.parametrize("message,make", [("ForwardBackwardRequest", _random_request),
                                              ("ForwardBackwardOutput", _random_output)])
    def test_random_messages_round_trip_through_both_codecs(self, message, make):
        """300 random messages: protobuf's deterministic bytes equal ours, and we decode protobuf's own bytes."""
        rng = random.Random(20261130)
        cls = getattr(pb, PB_CLASSES[message])
        for _ in range(300):
            value = make(rng)
            ours = _proto.encode(message, value)
            theirs = json_format.ParseDict(_to_json(message, value), cls())
            assert theirs.SerializeToString(deterministic=True) == ours
            parsed = cls()
            parsed.ParseFromString(ours)
            assert parsed == theirs
            assert _normalized(message, value) == _proto.decode(message, theirs.SerializeToString(), strict=True)

    def test_requests_built_by_the_sdk_decode_to_our_datums(self):
        """The SDK's request_conv output (hash-ordered) decodes to our Datums; its deterministic bytes equal ours."""
        from tinker import types as sdk
        from tinker.proto.request_conv import forward_backward_request_to_proto

        rng = random.Random(7)
        for _ in range(20):
            rows = []
            for _ in range(rng.randint(1, 4)):
                n = rng.randint(1, 30)
                tokens = [rng.randrange(0, 151936) for _ in range(n)]
                rows.append((tokens, [rng.randrange(0, 151936) for _ in range(n)], [rng.choice([0.0, 1.0, 0.5]) for _ in range(n)]))
            config = rng.choice([None, {"clip_low": 0.8, "clip_high": 1.2}, {"kl": 0.1, "mode": "seq"}])
            loss_fn = rng.choice(["cross_entropy", "ppo"])
            sdk_data = [sdk.Datum(model_input=sdk.ModelInput.from_ints(t), loss_fn_inputs={"target_tokens": y, "weights": w})
                        for t, y, w in rows]
            request = sdk.ForwardBackwardRequest(
                forward_backward_input=sdk.ForwardBackwardInput(data=sdk_data, loss_fn=loss_fn, loss_fn_config=config),
                model_id="s:train:0", seq_id=5,
            )
            proto_msg = forward_backward_request_to_proto(request)
            ours_data = [Datum(ModelInput.from_ints(t), {"target_tokens": y, "weights": w}) for t, y, w in rows]
            ours = _proto.encode_forward_backward_request(
                model_id="s:train:0", seq_id=5, data=ours_data, loss_fn=loss_fn, loss_fn_config=config
            )
            assert proto_msg.SerializeToString(deterministic=True) == ours
            decoded = _proto.decode_forward_backward_request(proto_msg.SerializeToString())
            assert (ours_data, config) == (decoded.data, decoded.loss_fn_config)

    def test_results_built_with_protobuf_decode_like_the_sdk(self):
        """ForwardBackwardOutputs built with protobuf (several records, int32, bf16, 2-D) decode as the SDK decodes them."""
        from tinker.proto.response_conv import deserialize_forward_backward_output

        rng = random.Random(11)
        for _ in range(30):
            msg = pb.ForwardBackwardOutput(loss_fn_output_type=rng.choice(["ArrayRecord", "m:TorchLossReturn"]))
            names = rng.sample(["logprobs", "elementwise_loss", "topk"], rng.randint(1, 3))
            for _ in range(rng.randint(1, 3)):
                record = msg.loss_fn_outputs.add()
                n = rng.randint(1, 4)
                record.num_datums = n
                for name in names:
                    dtype = rng.choice([1, 2, 3, 4])
                    trailing = rng.choice([[], [2], [2, 3]])
                    inner = 1
                    for s in trailing:
                        inner *= s
                    fmt = {1: "f", 2: "q", 3: "i", 4: "H"}[dtype]
                    size = struct.calcsize(fmt)
                    offsets, parts = [0], []
                    for _ in range(n):
                        count = inner * rng.randint(0, 4)
                        if fmt == "f":
                            vals = [rng.choice([-1.5, 0.25, 3.0]) for _ in range(count)]
                        elif fmt == "H":
                            vals = [rng.choice([0x3F80, 0xBFC0, 0x4049]) for _ in range(count)]
                        else:
                            vals = [rng.randint(-(2**31), 2**31 - 1) for _ in range(count)]
                        parts.append(struct.pack("<%d%s" % (count, fmt), *vals))
                        offsets.append(offsets[-1] + count * size)
                    record.fields[name].data = b"".join(parts)
                    record.fields[name].offsets = struct.pack("<%dq" % len(offsets), *offsets)
                    record.fields[name].dtype = dtype
                    record.fields[name].trailing_shape.extend(trailing)
            for key in rng.sample(["loss:sum", "lr:mean", "x:max"], 2):
                msg.metrics[key] = rng.uniform(-5, 5)
            raw = msg.SerializeToString()
            theirs = deserialize_forward_backward_output(raw)
            ours = _proto.decode_forward_backward_output(raw)
            assert (theirs.loss_fn_output_type, theirs.metrics) == (ours.loss_fn_output_type, ours.metrics)
            assert [{k: (td.dtype, td.shape, td.data) for k, td in d.items()} for d in theirs.loss_fn_outputs] == (
                [{k: (td.dtype, td.shape, td.data) for k, td in d.items()} for d in ours.loss_fn_outputs]
            )

    def test_the_sdk_decodes_our_results(self):
        """What the embedded server will send decodes in the SDK to the same outputs and metrics."""
        from tinker.proto.response_conv import deserialize_forward_backward_output

        outputs = [
            {"logprobs": TensorData(data=[-1.25, -0.5, -3.0], dtype="float32", shape=[3]),
             "elementwise_loss": TensorData(data=[0.0, 0.5, 3.0], dtype="float32", shape=[3])},
            {"logprobs": TensorData(data=[-2.0], dtype="float32", shape=[1]),
             "elementwise_loss": TensorData(data=[2.0], dtype="float32", shape=[1])},
        ]
        body = _proto.encode_forward_backward_output(
            ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={"loss:sum": 5.5})
        )
        theirs = deserialize_forward_backward_output(body)
        assert ("ArrayRecord", {"loss:sum": 5.5}) == (theirs.loss_fn_output_type, theirs.metrics)
        assert [{k: (td.dtype, td.shape, td.data) for k, td in d.items()} for d in outputs] == (
            [{k: (td.dtype, td.shape, td.data) for k, td in d.items()} for d in theirs.loss_fn_outputs]
        )

    def test_the_sdk_chunking_and_size_estimate_agree(self):
        """Our split and size estimate equal the SDK's ``_chunked_requests_generator`` on the same data."""
        from tinker import types as sdk
        from tinker.lib.public_interfaces import training_client as sdk_tc

        rng = random.Random(3)
        sizes = [rng.choice([1, 50, 400, 1000]) for _ in range(300)]
        sdk_data = [sdk.Datum(model_input=sdk.ModelInput.from_ints([1] * n), loss_fn_inputs={"target_tokens": [1] * n, "weights": [1.0] * n})
                    for n in sizes]
        ours_data = [_tokens_datum(n) for n in sizes]
        assert [sdk_tc._estimate_datum_bytes_count_proto(d) for d in sdk_data] == [_proto.estimate_datum_bytes(d) for d in ours_data]
        for max_len, max_bytes in ((1024, 5_000_000), (16, 40_000), (5, 17_000)):
            holder = pytypes.SimpleNamespace(
                _client_config=pytypes.SimpleNamespace(fwdbwd_max_chunk_len=max_len, fwdbwd_max_chunk_bytes_count=max_bytes)
            )
            theirs = [len(c.data) for c in sdk_tc.TrainingClient._chunked_requests_generator(
                pytypes.SimpleNamespace(holder=holder), sdk_data)]
            assert theirs == [len(c) for c in _proto.split_data(ours_data, max_len=max_len, max_bytes=max_bytes)]

    def test_metrics_combine_like_the_sdk(self):
        """Combined metrics equal the SDK's ``combine_fwd_bwd_output_results`` on the same results."""
        from tinker import types as sdk
        from tinker.lib.chunked_fwdbwd_helpers import combine_fwd_bwd_output_results

        metrics = [{"loss:sum": 1.25, "m:mean": 2.0, "s:slack": 1.0, "a:min": 4.0, "u:unique": 9.0, "h:hash2": 3.0},
                   {"loss:sum": 0.5, "m:mean": 5.0, "s:slack": 6.0, "a:min": -1.0, "u:unique": 8.0, "h:hash2": 2.0},
                   {"loss:sum": 4.0, "m:mean": 1.0, "s:slack": 2.0, "a:min": 0.0, "u:unique": 7.0, "h:hash2": 1.0}]
        counts = [2, 3, 1]
        theirs = combine_fwd_bwd_output_results(
            [sdk.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=[{}] * n, metrics=m)
             for m, n in zip(metrics, counts)]
        )
        ours = _proto.combine_forward_backward_outputs(_metric_outputs(metrics, counts))
        assert theirs.metrics == ours.metrics
