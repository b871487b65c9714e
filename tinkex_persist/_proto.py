"""Stdlib protobuf codec for the forward/backward messages of the ``tinker_public`` schema (SDK 0.38).

Two layers. The generic one encodes and decodes messages held as plain dicts against ``SCHEMA``, a
table copied from the SDK's descriptor (``tinker/proto/tinker_public_pb2.py``): field-number order,
map entries in key order (protobuf's deterministic form), default proto3 scalars omitted. Decoding
is strict (an unknown field number is an error naming it; the embedded server's direction) or
tolerant (unknown fields skipped; the client's direction). The typed layer turns ``Datum`` lists
into ``ForwardBackwardRequest`` bytes and ``ForwardBackwardOutput`` bytes into the public type, and
splits a batch into requests the way the SDK does.
"""

import array
import math
import struct
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import attrs

from .exceptions import DecodeError, UsageError
from .training_types import (
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageChunk,
    ModelInput,
    TensorData,
)

__all__ = (
    "CONTENT_TYPE",
    "DEFAULT_MAX_CHUNK_BYTES",
    "DEFAULT_MAX_CHUNK_LEN",
    "LOSS_FNS",
    "ForwardBackwardRequestMessage",
    "combine_forward_backward_outputs",
    "decode",
    "decode_forward_backward_output",
    "decode_forward_backward_request",
    "encode",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "estimate_datum_bytes",
    "split_data",
)

#: Content type of protobuf bodies, both directions.
CONTENT_TYPE = "application/x-protobuf"
#: The SDK's per-request limits (client config ``fwdbwd_max_chunk_len`` / ``fwdbwd_max_chunk_bytes_count``).
DEFAULT_MAX_CHUNK_LEN = 1024
DEFAULT_MAX_CHUNK_BYTES = 5_000_000
#: The loss functions SDK 0.38 names (``tinker.types.LossFnType``).
LOSS_FNS = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce", "custom")

#: DType enum values (``tinker_public.DType``).
DTYPE_UNSPECIFIED, DTYPE_FLOAT32, DTYPE_INT64, DTYPE_INT32, DTYPE_BFLOAT16 = 0, 1, 2, 3, 4

# --------------------------------------------------------------------------- schema

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5

_SCALAR_WIRE = {
    "int32": _VARINT, "int64": _VARINT, "uint32": _VARINT, "bool": _VARINT, "enum": _VARINT,
    "double": _I64, "string": _LEN, "bytes": _LEN, "message": _LEN,
}
_DEFAULTS: Dict[str, Any] = {
    "int32": 0, "int64": 0, "uint32": 0, "bool": False, "enum": 0, "double": 0.0, "string": "", "bytes": b"",
}


@attrs.frozen
class _Field:
    number: int
    name: str
    kind: str
    """Scalar type name, ``"message"`` or ``"map"``."""
    message: Optional[str] = None
    """Message type of a message field, or of a map's values."""
    repeated: bool = False
    presence: bool = False
    """Explicit presence (oneof member, proto3 ``optional``): written even when default."""
    oneof: Optional[str] = None
    map_value: Optional[str] = None
    """Value kind of a map (keys are always strings here)."""


def _f(number: int, name: str, kind: str, message: Optional[str] = None, **kw: Any) -> _Field:
    if kw.get("oneof"):
        kw["presence"] = True
    return _Field(number, name, kind, message, **kw)


#: Messages of ``tinker_public`` used by forward/backward, from the SDK's descriptor.
SCHEMA: Dict[str, Tuple[_Field, ...]] = {
    "ForwardBackwardRequest": (
        _f(1, "model_id", "string"),
        _f(2, "seq_id", "int32"),
        _f(3, "data", "message", "Datum", repeated=True),
        _f(4, "loss_fn", "string"),
        _f(5, "loss_fn_config", "map", map_value="double"),
        _f(6, "forward_only", "bool"),
        _f(7, "loss_fn_config_v2", "map", "LossConfigValue", map_value="message"),
    ),
    "LossConfigValue": (
        _f(1, "number", "double", oneof="value"),
        _f(2, "text", "string", oneof="value"),
    ),
    "Datum": (
        _f(1, "model_input", "message", "Chunk", repeated=True),
        _f(2, "loss_fn_inputs", "map", "Tensor", map_value="message"),
        _f(3, "model_input_spans", "message", "ProvenanceSpan", repeated=True),
        _f(4, "loss_fn_input_spans", "message", "ProvenanceSpan", repeated=True),
    ),
    "ProvenanceSpan": (
        _f(1, "prompt_tokens", "message", "PromptProvenanceSpan", oneof="span"),
        _f(2, "sampled_tokens", "message", "SampledProvenanceSpan", oneof="span"),
    ),
    "PromptProvenanceSpan": (
        _f(1, "sequence_id", "string"), _f(2, "offset", "int64"), _f(3, "length", "int64"),
    ),
    "SampledProvenanceSpan": (
        _f(1, "sequence_id", "string"), _f(2, "offset", "int64"), _f(3, "length", "int64"),
    ),
    "Chunk": (
        _f(1, "encoded_text", "message", "EncodedTextChunk", oneof="chunk"),
        _f(2, "image", "message", "ImageChunk", oneof="chunk"),
        _f(3, "dmel", "message", "DmelChunk", oneof="chunk"),
    ),
    "EncodedTextChunk": (_f(1, "tokens", "bytes"),),
    "ImageChunk": (
        _f(1, "data", "bytes"),
        _f(2, "format", "string"),
        _f(3, "expected_tokens", "int32", presence=True),
        _f(4, "override_dimensions", "message", "ImageDimensions"),
    ),
    "ImageDimensions": (_f(1, "width", "uint32"), _f(2, "height", "uint32")),
    "DmelChunk": (_f(1, "dmel", "bytes"),),
    "Tensor": (
        _f(1, "dense", "bytes", oneof="encoding"),
        _f(2, "sparse_csr", "message", "SparseCsr", oneof="encoding"),
        _f(3, "dtype", "enum"),
        _f(4, "shape", "int64", repeated=True),
    ),
    "SparseCsr": (_f(1, "values", "bytes"), _f(2, "crow_indices", "bytes"), _f(3, "col_indices", "bytes")),
    "ForwardBackwardOutput": (
        _f(1, "loss_fn_output_type", "string"),
        _f(2, "loss_fn_outputs", "message", "ArrayRecord", repeated=True),
        _f(3, "metrics", "map", map_value="double"),
    ),
    "ArrayRecord": (
        _f(1, "type_tag", "string"),
        _f(2, "fields", "map", "BatchedTensor", map_value="message"),
        _f(3, "num_datums", "int64"),
    ),
    "BatchedTensor": (
        _f(1, "data", "bytes"),
        _f(2, "offsets", "bytes"),
        _f(3, "dtype", "enum"),
        _f(4, "trailing_shape", "int64", repeated=True),
    ),
}

_BY_NUMBER: Dict[str, Dict[int, _Field]] = {m: {f.number: f for f in fs} for m, fs in SCHEMA.items()}
_BY_NAME: Dict[str, Dict[str, _Field]] = {m: {f.name: f for f in fs} for m, fs in SCHEMA.items()}

# --------------------------------------------------------------------------- primitives

_DOUBLE = struct.Struct("<d")
_MASK64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    value &= _MASK64  # negative int32/int64 travel as 10-byte two's complement
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _tag(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


class _Malformed(Exception):
    """A decoding failure; turned into ``DecodeError`` with the message path at the top."""


# --------------------------------------------------------------------------- generic encode


def _check_scalar(kind: str, value: Any, where: str) -> None:
    ok: bool
    if kind in ("int32", "int64", "uint32", "enum"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok:
            lo, hi = {
                "int32": (-(2**31), 2**31 - 1), "enum": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1),
                "uint32": (0, 2**32 - 1),
            }[kind]
            ok = lo <= value <= hi
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "double":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "string":
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, (bytes, bytearray))
    if not ok:
        raise UsageError("%s: %s is not a valid %s" % (where, _short(value), kind))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _scalar_bytes(kind: str, value: Any) -> bytes:
    if kind == "string":
        raw = value.encode("utf-8")
        return _varint(len(raw)) + raw
    if kind == "bytes":
        return _varint(len(value)) + bytes(value)
    if kind == "double":
        return _DOUBLE.pack(value)
    return _varint(int(value))


def _encode_message(name: str, msg: Mapping[str, Any], where: str) -> bytes:
    fields = _BY_NAME[name]
    for key in msg:
        if key not in fields:
            raise UsageError("%s: %s has no field %r" % (where, name, key))
    seen_oneofs: Dict[str, str] = {}
    out = bytearray()
    for field in SCHEMA[name]:
        if field.name not in msg:
            continue
        value = msg[field.name]
        here = "%s.%s" % (where, field.name)
        if field.oneof is not None:
            if field.oneof in seen_oneofs:
                raise UsageError("%s: oneof %r has both %r and %r" % (where, field.oneof, seen_oneofs[field.oneof],
                                                                      field.name))
            seen_oneofs[field.oneof] = field.name
        if field.kind == "map":
            for key in value:
                _check_scalar("string", key, here)
            for key, item in sorted(value.items(), key=_map_order):
                entry = _tag(1, _LEN) + _scalar_bytes("string", key)
                if field.map_value == "message":
                    assert field.message is not None
                    sub = _encode_message(field.message, item, "%s[%r]" % (here, key))
                    entry += _tag(2, _LEN) + _varint(len(sub)) + sub
                else:
                    assert field.map_value is not None
                    _check_scalar(field.map_value, item, "%s[%r]" % (here, key))
                    entry += _tag(2, _SCALAR_WIRE[field.map_value]) + _scalar_bytes(field.map_value, item)
                out += _tag(field.number, _LEN) + _varint(len(entry)) + entry
        elif field.kind == "message":
            assert field.message is not None
            items = value if field.repeated else [value]
            for i, item in enumerate(items):
                sub = _encode_message(field.message, item, "%s[%d]" % (here, i) if field.repeated else here)
                out += _tag(field.number, _LEN) + _varint(len(sub)) + sub
        elif field.repeated:  # packed varints (proto3 default; the schema's only repeated scalars are int64)
            if not value:
                continue
            for item in value:
                _check_scalar(field.kind, item, here)
            payload = b"".join(_varint(item) for item in value)
            out += _tag(field.number, _LEN) + _varint(len(payload)) + payload
        else:
            _check_scalar(field.kind, value, here)
            if not field.presence and value == _DEFAULTS[field.kind] and not _is_negative_zero(value):
                continue
            out += _tag(field.number, _SCALAR_WIRE[field.kind]) + _scalar_bytes(field.kind, value)
    return bytes(out)


def _map_order(item: Tuple[str, Any]) -> bytes:
    # protobuf's (upb's) deterministic order: bytewise by UTF-8 key, except that of two keys where one
    # is a prefix of the other the longer comes first ("loss:sum_1" before "loss:sum"). The 0xFF
    # sentinel, which never occurs in UTF-8, gives exactly that.
    return item[0].encode("utf-8") + b"\xff"


def _is_negative_zero(value: Any) -> bool:
    # protobuf writes -0.0 for an implicit-presence double: its default test is bitwise.
    return isinstance(value, float) and value == 0.0 and math.copysign(1.0, value) < 0


def encode(message: str, value: Mapping[str, Any]) -> bytes:
    """Encode a message given as a dict (field name -> value) in deterministic form.

    Args:
        message: Message name in ``SCHEMA``, e.g. ``"ForwardBackwardRequest"``.
        value: Fields to write. Repeated fields are lists, maps are dicts, nested messages are
            dicts, enums are ints, bytes are ``bytes``. Implicit-presence scalars equal to their
            default are omitted; oneof members and proto3 ``optional`` fields present in the dict
            are written even when default.

    Raises:
        UsageError: an unknown field name, a value of the wrong type, two members of one oneof.
    """
    return _encode_message(message, value, message)


# --------------------------------------------------------------------------- generic decode


def _skip(buf: bytes, pos: int, end: int, wire: int, number: int) -> int:
    if wire == _VARINT:
        return _read_varint(buf, pos, end)[1]
    if wire == _I64:
        pos += 8
    elif wire == _I32:
        pos += 4
    elif wire == _LEN:
        length, pos = _read_varint(buf, pos, end)
        pos += length
    elif wire == _SGROUP:
        while True:
            if pos >= end:
                raise _Malformed("unterminated group %d" % number)
            key, pos = _read_varint(buf, pos, end)
            if key & 7 == _EGROUP:
                if key >> 3 != number:
                    raise _Malformed("mismatched end of group %d" % number)
                return pos
            pos = _skip(buf, pos, end, key & 7, key >> 3)
    else:
        raise _Malformed("invalid wire type %d for field %d" % (wire, number))
    if pos > end:
        raise _Malformed("truncated field %d" % number)
    return pos


def _scalar_from(kind: str, buf: bytes, pos: int, end: int, wire: int) -> Tuple[Any, int]:
    if kind == "double":
        if pos + 8 > end:
            raise _Malformed("truncated double")
        return _DOUBLE.unpack_from(buf, pos)[0], pos + 8
    if kind in ("string", "bytes"):
        length, pos = _read_varint(buf, pos, end)
        if pos + length > end:
            raise _Malformed("truncated %s" % kind)
        raw = bytes(buf[pos : pos + length])
        if kind == "string":
            try:
                return raw.decode("utf-8"), pos + length
            except UnicodeDecodeError:
                raise _Malformed("invalid UTF-8 in string") from None
        return raw, pos + length
    raw_int, pos = _read_varint(buf, pos, end)
    if kind == "bool":
        return raw_int != 0, pos
    if kind in ("int32", "enum"):
        return _signed(raw_int, 32), pos
    if kind == "int64":
        return _signed(raw_int, 64), pos
    return raw_int & 0xFFFFFFFF, pos  # uint32


def _merge(name: str, into: Dict[str, Any], update: Dict[str, Any]) -> None:
    # A singular message field seen twice merges, as protobuf parsers do.
    fields = _BY_NAME[name]
    for key, value in update.items():
        field = fields[key]
        if field.oneof is not None:
            for other in SCHEMA[name]:
                if other.oneof == field.oneof and other.name != key and other.name in into:
                    del into[other.name]
        if field.kind == "map":
            into.setdefault(key, {}).update(value)
        elif field.repeated:
            into.setdefault(key, []).extend(value)
        elif field.kind == "message" and key in into:
            assert field.message is not None
            _merge(field.message, into[key], value)
        else:
            into[key] = value


def _decode_message(name: str, buf: bytes, pos: int, end: int, strict: bool, path: List[str]) -> Dict[str, Any]:
    fields = _BY_NUMBER[name]
    msg: Dict[str, Any] = {}
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire > _I32:
            raise _Malformed("invalid wire type %d for field %d" % (wire, number))
        if number == 0:
            raise _Malformed("field number 0")
        field = fields.get(number)
        expected = None if field is None else (_LEN if field.kind == "map" else _SCALAR_WIRE[field.kind])
        packed = field is not None and field.repeated and field.kind not in ("message", "string", "bytes")
        if field is None or (wire != expected and not (packed and wire in (_LEN, _SCALAR_WIRE[field.kind]))):
            if strict:
                if field is None:
                    raise _Malformed("unknown field number %d in %s" % (number, name))
                raise _Malformed("wire type %d for field %d (%s.%s)" % (wire, number, name, field.name))
            pos = _skip(buf, pos, end, wire, number)
            continue
        path.append(field.name)
        if field.kind == "map":
            length, pos = _read_varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed("truncated map entry")
            k, v = _decode_map_entry(field, buf, pos, pos + length, strict, path)
            pos += length
            update: Dict[str, Any] = {field.name: {k: v}}
        elif field.kind == "message":
            assert field.message is not None
            length, pos = _read_varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed("truncated message")
            if field.repeated:
                path[-1] = "%s[%d]" % (field.name, len(msg.get(field.name, ())))
            sub = _decode_message(field.message, buf, pos, pos + length, strict, path)
            pos += length
            update = {field.name: [sub] if field.repeated else sub}
        elif field.repeated:
            if wire == _LEN:
                length, pos = _read_varint(buf, pos, end)
                stop = pos + length
                if stop > end:
                    raise _Malformed("truncated packed field")
                items = []
                while pos < stop:
                    item, pos = _scalar_from(field.kind, buf, pos, stop, _SCALAR_WIRE[field.kind])
                    items.append(item)
                if pos != stop:
                    raise _Malformed("packed field overruns its length")
            else:
                item, pos = _scalar_from(field.kind, buf, pos, end, wire)
                items = [item]
            update = {field.name: items}
        else:
            value, pos = _scalar_from(field.kind, buf, pos, end, wire)
            update = {field.name: value}
        path.pop()
        _merge(name, msg, update)
    if pos != end:
        raise _Malformed("field overruns its message")
    # Implicit-presence scalars equal to their default read as absent, so decoding is canonical.
    for field in SCHEMA[name]:
        if (
            field.name in msg and not field.presence and not field.repeated and field.kind not in ("message", "map")
            and msg[field.name] == _DEFAULTS[field.kind] and not _is_negative_zero(msg[field.name])
        ):
            del msg[field.name]
    return msg


def _decode_map_entry(
    field: _Field, buf: bytes, pos: int, end: int, strict: bool, path: List[str]
) -> Tuple[str, Any]:
    key: str = ""
    value: Any = {} if field.map_value == "message" else _DEFAULTS[field.map_value or "double"]
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 1 and wire == _LEN:
            key, pos = _scalar_from("string", buf, pos, end, wire)
        elif number == 2 and field.map_value == "message" and wire == _LEN:
            assert field.message is not None
            length, pos = _read_varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed("truncated map value")
            path.append(repr(key))
            value = _decode_message(field.message, buf, pos, pos + length, strict, path)
            path.pop()
            pos += length
        elif number == 2 and field.map_value != "message" and wire == _SCALAR_WIRE[field.map_value or "double"]:
            value, pos = _scalar_from(field.map_value or "double", buf, pos, end, wire)
        elif strict:
            raise _Malformed("unknown field number %d in map entry %s" % (number, field.name))
        else:
            pos = _skip(buf, pos, end, wire, number)
    if pos != end:
        raise _Malformed("field overruns its map entry")
    return key, value


def decode(message: str, data: bytes, *, strict: bool) -> Dict[str, Any]:
    """Decode protobuf bytes into a dict (field name -> value), the inverse of ``encode``.

    Absent fields are absent from the dict; implicit-presence scalars equal to their default read
    as absent. Repeated numeric fields are accepted packed and unpacked.

    Args:
        message: Message name in ``SCHEMA``.
        data: The serialized message.
        strict: If true, an unknown field number (or a known one with the wrong wire type) is an
            error naming it; if false, such fields are skipped as protobuf parsers do.

    Raises:
        DecodeError: malformed bytes, invalid UTF-8, or (strict) an unknown field; the message
            names the field path, e.g. ``ForwardBackwardRequest.data[0]: unknown field number 9``.
    """
    path: List[str] = []
    try:
        return _decode_message(message, bytes(data), 0, len(data), strict, path)
    except _Malformed as exc:
        where = message + "".join(("[%s]" % p) if p.startswith("'") else "." + p for p in path)
        raise DecodeError("%s: %s" % (where, exc), errors=["%s: %s" % (where, exc)]) from None


# --------------------------------------------------------------------------- typed layer: requests

_LITTLE = sys.byteorder == "little"


def _le_bytes(values: "array.array[Any]") -> bytes:
    if _LITTLE:
        return values.tobytes()
    swapped = array.array(values.typecode, values)  # pragma: no cover - big-endian hosts only
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


def _from_le_bytes(typecode: str, raw: bytes) -> "array.array[Any]":
    values = array.array(typecode)
    values.frombytes(raw)
    if not _LITTLE:  # pragma: no cover - big-endian hosts only
        values.byteswap()
    return values


_DTYPE_TO_ENUM = {"float32": DTYPE_FLOAT32, "int64": DTYPE_INT64}


def _tensor_message(td: TensorData) -> Dict[str, Any]:
    msg: Dict[str, Any] = {"dtype": _DTYPE_TO_ENUM[td.dtype]}
    if td.shape is not None:
        msg["shape"] = list(td.shape)
    if td.sparse_crow_indices is not None:
        assert td.sparse_col_indices is not None
        msg["sparse_csr"] = {
            "values": td.tobytes(),
            "crow_indices": _le_bytes(array.array("q", td.sparse_crow_indices)),
            "col_indices": _le_bytes(array.array("q", td.sparse_col_indices)),
        }
    else:
        msg["dense"] = td.tobytes()
    return msg


def _chunk_message(chunk: Union[EncodedTextChunk, ImageChunk]) -> Dict[str, Any]:
    if isinstance(chunk, EncodedTextChunk):
        return {"encoded_text": {"tokens": _le_bytes(array.array("i", chunk.tokens))}}
    image: Dict[str, Any] = {"data": chunk.data, "format": chunk.format}
    if chunk.expected_tokens is not None:
        image["expected_tokens"] = chunk.expected_tokens
    return {"image": image}


def _check_loss_fn(loss_fn: Any, loss_fn_config: Any) -> None:
    if loss_fn not in LOSS_FNS:
        raise UsageError("unknown loss_fn %r; expected one of %s" % (loss_fn, ", ".join(LOSS_FNS)))
    if loss_fn_config is None:
        return
    if not isinstance(loss_fn_config, Mapping):
        raise UsageError("loss_fn_config must be a dict of str -> float or str, got %s" % type(loss_fn_config).__name__)
    for key, value in loss_fn_config.items():
        if not isinstance(key, str):
            raise UsageError("loss_fn_config keys must be strings, got %r" % (key,))
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UsageError("loss_fn_config[%r] must be a number or a string, got %s" % (key, _short(value)))


def _check_data(data: Any) -> List[Datum]:
    if not isinstance(data, (list, tuple)):
        raise UsageError("data must be a list of Datum, got %s" % type(data).__name__)
    if not data:
        raise UsageError("data must hold at least one Datum")
    for i, datum in enumerate(data):
        if not isinstance(datum, Datum):
            raise UsageError("data[%d] is %s, not a Datum" % (i, type(datum).__name__))
    return list(data)


def encode_forward_backward_request(
    *,
    model_id: str,
    seq_id: int,
    data: Sequence[Datum],
    loss_fn: str,
    loss_fn_config: Optional[Mapping[str, Union[float, str]]] = None,
    forward_only: bool = False,
) -> bytes:
    """Return the body of ``POST /api/v1/forward_backward`` exactly as SDK 0.38 builds it, in canonical form.

    ``loss_fn_config`` is dual-written like the SDK: numbers into ``loss_fn_config`` and
    ``loss_fn_config_v2``, strings into ``loss_fn_config_v2`` only. Chunking is the caller's
    (``split_data``): this encodes one request.

    Args:
        model_id: The training model, ``<session>:train:<n>``.
        seq_id: The request's position in the model's order (>= 1).
        data: The datums of this request.
        loss_fn: One of ``LOSS_FNS``.
        loss_fn_config: Optional loss-function parameters.
        forward_only: True for ``forward`` (no gradients).

    Raises:
        UsageError: an unknown loss_fn, a bad config value, empty data, or a non-``Datum`` entry.
    """
    _check_loss_fn(loss_fn, loss_fn_config)
    datums = _check_data(data)
    msg: Dict[str, Any] = {
        "model_id": model_id,
        "seq_id": seq_id,
        "data": [
            {
                "model_input": [_chunk_message(c) for c in d.model_input.chunks],
                "loss_fn_inputs": {name: _tensor_message(td) for name, td in d.loss_fn_inputs.items()},
            }
            for d in datums
        ],
        "loss_fn": loss_fn,
        "forward_only": bool(forward_only),
    }
    if loss_fn_config is not None:
        legacy: Dict[str, float] = {}
        v2: Dict[str, Dict[str, Any]] = {}
        for key, value in loss_fn_config.items():
            if isinstance(value, str):
                v2[key] = {"text": value}
            else:
                legacy[key] = float(value)
                v2[key] = {"number": float(value)}
        msg["loss_fn_config"] = legacy
        msg["loss_fn_config_v2"] = v2
    return encode("ForwardBackwardRequest", msg)


@attrs.frozen(kw_only=True)
class ForwardBackwardRequestMessage:
    """A decoded ``forward_backward`` request, as the embedded server sees it."""

    model_id: str
    seq_id: int
    data: List[Datum]
    loss_fn: str
    loss_fn_config: Optional[Dict[str, Union[float, str]]]
    """``loss_fn_config_v2`` when sent (numbers and strings), else the legacy number map; ``None`` if neither."""
    forward_only: bool


_ENUM_TO_TYPECODE = {DTYPE_FLOAT32: ("float32", "f"), DTYPE_INT64: ("int64", "q"), DTYPE_INT32: ("int64", "i")}


def _typed_tensor(msg: Mapping[str, Any], where: str) -> TensorData:
    dtype = msg.get("dtype", DTYPE_UNSPECIFIED)
    if dtype not in _ENUM_TO_TYPECODE:
        raise _Malformed("%s: unsupported dtype %d" % (where, dtype))
    public, code = _ENUM_TO_TYPECODE[dtype]
    shape = msg.get("shape")
    size = array.array(code).itemsize
    if "sparse_csr" in msg:
        csr = msg["sparse_csr"]
        raws = (csr.get("values", b""), csr.get("crow_indices", b""), csr.get("col_indices", b""))
        if len(raws[0]) % size or len(raws[1]) % 8 or len(raws[2]) % 8:
            raise _Malformed("%s: sparse byte lengths do not fit their dtypes" % where)
        values = _from_le_bytes(code, raws[0])
        return TensorData(
            data=values if code != "i" else array.array("q", values), dtype=public, shape=shape,
            sparse_crow_indices=_from_le_bytes("q", raws[1]).tolist(),
            sparse_col_indices=_from_le_bytes("q", raws[2]).tolist(),
        )
    raw = msg.get("dense", b"")
    if len(raw) % size:
        raise _Malformed("%s: %d bytes are not a whole number of %s values" % (where, len(raw), public))
    values = _from_le_bytes(code, raw)
    return TensorData(data=values if code != "i" else array.array("q", values), dtype=public, shape=shape)


def _typed_chunk(msg: Mapping[str, Any], where: str) -> Union[EncodedTextChunk, ImageChunk]:
    if "encoded_text" in msg:
        raw = msg["encoded_text"].get("tokens", b"")
        if len(raw) % 4:
            raise _Malformed("%s: token bytes are not a whole number of int32 values" % where)
        return EncodedTextChunk(tokens=_from_le_bytes("i", raw).tolist())
    if "image" in msg:
        image = msg["image"]
        return ImageChunk(data=image.get("data", b""), format=image.get("format", ""),
                          expected_tokens=image.get("expected_tokens"))
    if "dmel" in msg:
        raise _Malformed("%s: dmel (audio) chunks are not supported" % where)
    raise _Malformed("%s: empty chunk" % where)


def decode_forward_backward_request(body: bytes) -> ForwardBackwardRequestMessage:
    """Decode a ``forward_backward`` body strictly, as the embedded server does.

    Provenance spans, if sent, are accepted and dropped (they carry no training data).

    Raises:
        DecodeError: malformed bytes, an unknown field number (named), an unsupported chunk kind
            or dtype, or a datum that fails ``Datum`` validation (named by index).
    """
    msg = decode("ForwardBackwardRequest", body, strict=True)
    data: List[Datum] = []
    for i, d in enumerate(msg.get("data", [])):
        where = "data[%d]" % i
        try:
            chunks = [_typed_chunk(c, "%s.model_input[%d]" % (where, j)) for j, c in enumerate(d.get("model_input", []))]
            inputs = {k: _typed_tensor(t, "%s.loss_fn_inputs[%r]" % (where, k)) for k, t in d.get("loss_fn_inputs", {}).items()}
            data.append(Datum(ModelInput(chunks=chunks), inputs))
        except _Malformed as exc:
            raise DecodeError("ForwardBackwardRequest.%s" % exc, errors=[str(exc)]) from None
        except UsageError as exc:
            raise DecodeError("ForwardBackwardRequest.%s: %s" % (where, exc), errors=[str(exc)]) from None
    config: Optional[Dict[str, Union[float, str]]] = None
    if msg.get("loss_fn_config_v2"):
        config = {k: v.get("text", v.get("number", 0.0)) for k, v in msg["loss_fn_config_v2"].items()}
    elif msg.get("loss_fn_config"):
        config = dict(msg["loss_fn_config"])
    return ForwardBackwardRequestMessage(
        model_id=msg.get("model_id", ""), seq_id=msg.get("seq_id", 0), data=data, loss_fn=msg.get("loss_fn", ""),
        loss_fn_config=config, forward_only=msg.get("forward_only", False),
    )


# --------------------------------------------------------------------------- typed layer: results


def encode_forward_backward_output(output: ForwardBackwardOutput) -> bytes:
    """Encode a result as the service sends it: one ``ArrayRecord`` per run of datums with equal layouts.

    Each output name becomes a ``BatchedTensor``: the datums' values concatenated, ``offsets`` the
    int64 byte offsets of each datum (``num_datums + 1`` of them), ``trailing_shape`` the shape after
    the first dimension. Consecutive datums whose fields, dtypes and trailing shapes agree share one
    record (the SDK's decoder concatenates records in order).

    Raises:
        UsageError: a datum output that is not a ``TensorData``, or a sparse one.
    """
    records: List[Dict[str, Any]] = []
    run: List[Mapping[str, TensorData]] = []
    run_layout: Any = None

    def flush() -> None:
        if not run:
            return
        fields: Dict[str, Any] = {}
        for name in run[0]:
            first = run[0][name]
            offsets = [0]
            parts = []
            for datum in run:
                raw = datum[name].tobytes()
                parts.append(raw)
                offsets.append(offsets[-1] + len(raw))
            bt: Dict[str, Any] = {
                "data": b"".join(parts),
                "offsets": _le_bytes(array.array("q", offsets)),
                "dtype": _DTYPE_TO_ENUM[first.dtype],
            }
            if first.shape and len(first.shape) > 1:
                bt["trailing_shape"] = list(first.shape[1:])
            fields[name] = bt
        records.append({"fields": fields, "num_datums": len(run)})
        run.clear()

    names = set(output.loss_fn_outputs[0]) if output.loss_fn_outputs else set()
    for i, datum in enumerate(output.loss_fn_outputs):
        if set(datum) != names:
            # The SDK's decoder indexes every field by datum: all datums must carry the same names.
            raise UsageError("loss_fn_outputs[%d] has fields %s, datum 0 has %s" % (i, sorted(datum), sorted(names)))
        for name, td in datum.items():
            if not isinstance(td, TensorData) or td.sparse_crow_indices is not None:
                raise UsageError("loss_fn_outputs[%d][%r] must be a dense TensorData" % (i, name))
        layout = tuple(sorted((n, td.dtype, tuple((td.shape or [0])[1:])) for n, td in datum.items()))
        if run and layout != run_layout:
            flush()
        run_layout = layout
        run.append(datum)
    flush()
    return encode(
        "ForwardBackwardOutput",
        {"loss_fn_output_type": output.loss_fn_output_type, "loss_fn_outputs": records, "metrics": dict(output.metrics)},
    )


def _per_datum(bt: Mapping[str, Any], where: str) -> Tuple[str, List["array.array[Any]"]]:
    dtype = bt.get("dtype", DTYPE_UNSPECIFIED)
    raw = bt.get("data", b"")
    if dtype == DTYPE_BFLOAT16:
        halves = _from_le_bytes("H", raw[: len(raw) - len(raw) % 2])
        buf = array.array("f")
        buf.frombytes(array.array("I", [h << 16 for h in halves]).tobytes())  # bf16 is a float32's top half
        public, size = "float32", 2
    elif dtype in _ENUM_TO_TYPECODE:
        public, code = _ENUM_TO_TYPECODE[dtype]
        size = array.array(code).itemsize
        buf = _from_le_bytes(code, raw[: len(raw) - len(raw) % size])
        if code == "i":
            buf = array.array("q", buf)
    else:
        raise _Malformed("%s: unsupported dtype %d" % (where, dtype))
    offsets = _from_le_bytes("q", bt.get("offsets", b"")[: len(bt.get("offsets", b"")) // 8 * 8]).tolist()
    parts = []
    for start, stop in zip(offsets, offsets[1:]):
        if not 0 <= start <= stop <= len(raw):
            raise _Malformed("%s: offsets %d..%d fall outside %d data bytes" % (where, start, stop, len(raw)))
        parts.append(buf[start // size : stop // size])
    return public, parts


def decode_forward_backward_output(body: bytes) -> ForwardBackwardOutput:
    """Decode a ``retrieve_future`` protobuf result tolerantly, as the SDK's ``response_conv`` does.

    Records are concatenated in order; each datum's tensor gets shape ``[n, *trailing_shape]``.
    ``int32`` widens to ``int64`` and ``bfloat16`` to ``float32``, as in the SDK.

    Raises:
        DecodeError: malformed bytes, an unsupported dtype, or offsets outside the data.
    """
    msg = decode("ForwardBackwardOutput", body, strict=False)
    metrics = {k: float(v) for k, v in msg.get("metrics", {}).items()}
    records = msg.get("loss_fn_outputs", [])
    if not records:
        return ForwardBackwardOutput(
            loss_fn_output_type=msg.get("loss_fn_output_type") or "ArrayRecord", loss_fn_outputs=[], metrics=metrics
        )
    per_field: Dict[str, List[Tuple[str, List[int], "array.array[Any]"]]] = {}
    try:
        for r, record in enumerate(records):
            for name, bt in record.get("fields", {}).items():
                public, parts = _per_datum(bt, "loss_fn_outputs[%d].fields[%r]" % (r, name))
                trailing = list(bt.get("trailing_shape", []))
                per_field.setdefault(name, []).extend((public, trailing, p) for p in parts)
    except _Malformed as exc:
        raise DecodeError("ForwardBackwardOutput.%s" % exc, errors=[str(exc)]) from None
    num_datums = sum(r.get("num_datums", 0) for r in records)
    if num_datums == 0 and per_field:
        num_datums = len(next(iter(per_field.values())))
    outputs: List[Dict[str, TensorData]] = []
    for i in range(num_datums):
        datum: Dict[str, TensorData] = {}
        for name, items in per_field.items():
            if i >= len(items):
                raise DecodeError(
                    "ForwardBackwardOutput: field %r has %d datums, expected %d" % (name, len(items), num_datums)
                )
            public, trailing, values = items[i]
            inner = 1
            for s in trailing:
                inner *= s
            leading = len(values) // inner if inner else 0
            if leading * inner != len(values):
                raise DecodeError("ForwardBackwardOutput: field %r of datum %d does not fit trailing shape %r"
                                  % (name, i, trailing))
            datum[name] = TensorData(data=values, dtype=public, shape=[leading] + trailing)
        outputs.append(datum)
    return ForwardBackwardOutput(
        loss_fn_output_type=msg.get("loss_fn_output_type", "").rsplit(":", 1)[-1],
        loss_fn_outputs=outputs,
        metrics=metrics,
    )


# --------------------------------------------------------------------------- chunking


def estimate_datum_bytes(datum: Datum) -> int:
    """The SDK's size estimate of one datum in a request (``_estimate_datum_bytes_count_proto``).

    4 bytes per token, an image's byte length, and each tensor's values (8 per int64, 4 per float32)
    plus 8 per sparse index.
    """
    total = 0
    for chunk in datum.model_input.chunks:
        total += len(chunk.data) if isinstance(chunk, ImageChunk) else 4 * chunk.length
    for td in datum.loss_fn_inputs.values():
        total += td.nbytes
        for indices in (td.sparse_crow_indices, td.sparse_col_indices):
            if indices is not None:
                total += 8 * len(indices)
    return total


def split_data(
    data: Sequence[Datum],
    *,
    max_len: int = DEFAULT_MAX_CHUNK_LEN,
    max_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> List[List[Datum]]:
    """Split a batch into per-request lists exactly as SDK 0.38's ``_chunked_requests_generator``.

    A new request starts when the current one holds ``max_len`` datums, or when adding the next
    datum would take its estimated size (``estimate_datum_bytes``) past ``max_bytes``. Unlike the
    SDK, a single datum larger than ``max_bytes`` is refused rather than sent alone.

    Raises:
        UsageError: empty data, a non-``Datum`` entry, or a datum larger than one request may carry.
    """
    datums = _check_data(data)
    chunks: List[List[Datum]] = []
    current: List[Datum] = []
    current_bytes = 0
    for i, datum in enumerate(datums):
        size = estimate_datum_bytes(datum)
        if size > max_bytes:
            raise UsageError(
                "data[%d] is %d bytes, more than one request may carry (%d bytes)" % (i, size, max_bytes)
            )
        if (current and current_bytes + size > max_bytes) or len(current) == max_len:
            chunks.append(current)
            current, current_bytes = [], 0
        current.append(datum)
        current_bytes += size
    chunks.append(current)
    return chunks


def _reduce(reduction: str, values: List[float], weights: List[int]) -> Optional[float]:
    # Plain left-to-right sums: numpy's pairwise sum equals them for the few values one call has.
    if reduction == "sum":
        return float(sum(values))
    if reduction == "min":
        return float(min(values))
    if reduction == "max":
        return float(max(values))
    if reduction in ("mean", "slack"):
        total = sum(weights)
        mean = sum(v * w for v, w in zip(values, weights)) / total if total else sum(values) / len(values)
        return float(max(values) - mean) if reduction == "slack" else float(mean)
    if reduction == "hash2":
        return float(sum(int(v) & 0xFFFFFFFFFFFFFFFF for v in values) & 0xFFFFFFFFFFFFFFFF)
    return None


def combine_forward_backward_outputs(results: Sequence[ForwardBackwardOutput]) -> ForwardBackwardOutput:
    """Combine the results of one call's requests as SDK 0.38's ``combine_fwd_bwd_output_results``.

    Outputs are concatenated in order. Each metric ``<name>:<reduction>`` present in every result is
    reduced: ``sum``, ``min``, ``max``; ``mean``/``slack`` weighted by each result's datum count;
    ``unique`` keeps the first value and adds ``<key>_1``, ``<key>_2``, ... for the others; ``hash2``
    sums modulo 2**64. Metrics with another reduction are dropped, as in the SDK.
    """
    if not results:
        return ForwardBackwardOutput(loss_fn_output_type="", loss_fn_outputs=[], metrics={})
    weights = [len(r.loss_fn_outputs) for r in results]
    metrics: Dict[str, float] = {}
    for key in results[0].metrics:
        if not all(key in r.metrics for r in results):
            continue
        values = [r.metrics[key] for r in results]
        reduction = key.split(":")[-1] if ":" in key else ""
        if reduction == "unique":
            metrics[key] = values[0]
            metrics.update({"%s_%d" % (key, i + 1): v for i, v in enumerate(values[1:])})
            continue
        reduced = _reduce(reduction, values, weights)
        if reduced is not None:
            metrics[key] = reduced
    return ForwardBackwardOutput(
        loss_fn_output_type=results[0].loss_fn_output_type,
        loss_fn_outputs=[o for r in results for o in r.loss_fn_outputs],
        metrics=metrics,
    )

