"""The two cattrs Converters, one per direction, built from ``_wire.KEYS``; strict primitives; encode/decode.

Strictness belongs to the direction, not to the class (the SDK's pydantic ``extra="ignore"`` is recursive):

* requests (what a client sends, what the local server reads) reject unknown keys at every depth and omit
  None-valued fields, except those in ``_wire.SEND_NULL``;
* responses (what the server answers, what a client reads) ignore unknown keys at every depth, logged once
  per class at DEBUG, and carry every field, None as ``null``.

Known keys keep their strict primitive types in both. An open object (an attribute mapped to
``_wire.OTHER_KEYS``, e.g. ``OptimizerConfig.extra``) keeps its unknown keys in both directions. No hook
factory is used: a class absent from ``KEYS`` cannot be encoded or decoded.
"""

import json
import logging
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Set, Type, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from . import _wire
from .exceptions import DecodeError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The two directions a converter is built for.
REQUEST = "request"
RESPONSE = "response"

_PRIMITIVES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


def _strict_hook(kind: type) -> Callable[[Any, Any], Any]:
    expected = _PRIMITIVES[kind]

    def structure(value: Any, _type: Any) -> Any:
        # cattrs coerces by default: structure("false", bool) is True. Refuse any coercion;
        # a bool is never accepted as a number, and an int is accepted as a float.
        if type(value) is kind:
            return value
        if kind is float and type(value) is int:
            return float(value)
        raise TypeError("expected %s, got %s %r" % (expected, type(value).__name__, value))

    return structure


def _check_wire_class(cls: type) -> None:
    if cls not in _wire.KEYS:
        raise TypeError("%s is not a wire class" % cls.__name__)


def make_converter(direction: str) -> cattrs.Converter:
    """Return a fresh converter for ``direction`` (:data:`REQUEST` or :data:`RESPONSE`), every hook registered."""
    if direction not in (REQUEST, RESPONSE):
        raise ValueError("direction must be %r or %r, got %r" % (REQUEST, RESPONSE, direction))
    strict = direction == REQUEST
    c = cattrs.Converter()
    # Simpler types first: cattrs dispatches to the most recently registered matching hook.
    for kind in (str, int, float, bool):
        c.register_structure_hook(kind, _strict_hook(kind))
    for cls, keys in _wire.KEYS.items():
        other = [attr for attr, key in keys.items() if key == _wire.OTHER_KEYS]
        named = {attr: key for attr, key in keys.items() if key != _wire.OTHER_KEYS}
        # Typed Any: cattrs' stubs cannot tell these per-attribute overrides from its keyword flags.
        overrides: Dict[str, Any] = {attr: override(rename=key) for attr, key in named.items() if key != attr}
        overrides.update((attr, override(omit=True)) for attr in other)
        unstructure: Callable[[Any], Dict[str, Any]] = make_dict_unstructure_fn(cls, c, **overrides)
        known = frozenset(named.values())
        # An open object never forbids: its unknown keys are data (the SDK's extra="allow").
        forbid = strict and not other
        structure: Callable[[Any, Any], Any] = make_dict_structure_fn(
            cls, c, _cattrs_forbid_extra_keys=forbid, **overrides
        )
        if other:
            c.register_unstructure_hook(cls, _open_unstructure(unstructure, cls, other[0], known, strict))
            c.register_structure_hook(cls, _open_structure(structure, other[0], known))
        elif strict:
            c.register_unstructure_hook(cls, _omit_none(unstructure, _wire.SEND_NULL.get(cls, ())))
            c.register_structure_hook(cls, structure)
        else:
            c.register_unstructure_hook(cls, unstructure)
            c.register_structure_hook(cls, _tolerant(structure, cls, known))
    return c


def _omit_none(fn: Callable[[Any], Dict[str, Any]], keep: Any) -> Callable[[Any], Dict[str, Any]]:
    # The official SDK omits None-valued request fields but sends false booleans (shared/wire vectors).
    def unstructure(obj: Any) -> Dict[str, Any]:
        return {k: v for k, v in fn(obj).items() if v is not None or k in keep}

    return unstructure


def _open_unstructure(
    fn: Callable[[Any], Dict[str, Any]], cls: type, attr: str, known: frozenset, omit_none: bool
) -> Callable[[Any], Dict[str, Any]]:
    def unstructure(obj: Any) -> Dict[str, Any]:
        out = fn(obj)
        if omit_none:
            out = {k: v for k, v in out.items() if v is not None}
        extra = getattr(obj, attr)
        clash = known.intersection(extra)
        if clash:
            raise ValueError("%s.%s repeats a named key: %s" % (cls.__name__, attr, ", ".join(sorted(clash))))
        out.update(extra)
        return out

    return unstructure


def _open_structure(fn: Callable[[Any, Any], Any], attr: str, known: frozenset) -> Callable[[Any, Any], Any]:
    def structure(data: Any, t: Any) -> Any:
        obj = fn(data, t)
        extra = {k: v for k, v in data.items() if k not in known}
        return attrs.evolve(obj, **{attr: extra}) if extra else obj

    return structure


_logged_extra: Set[type] = set()
_logged_lock = threading.Lock()


def _tolerant(fn: Callable[[Any, Any], Any], cls: type, known: frozenset) -> Callable[[Any, Any], Any]:
    def structure(data: Any, t: Any) -> Any:
        if isinstance(data, Mapping) and cls not in _logged_extra:
            extra = set(data) - known
            if extra:
                with _logged_lock:
                    if cls not in _logged_extra:
                        _logged_extra.add(cls)
                        logger.debug("ignoring unknown keys in %s: %s", cls.__name__, ", ".join(sorted(extra)))
        return fn(data, t)

    return structure


_shared: Dict[str, cattrs.Converter] = {}
_shared_lock = threading.Lock()


def shared_converter(direction: str) -> cattrs.Converter:
    """Return the process-wide converter of ``direction``, built completely on first use (keeps import fast).

    It is fully configured before anyone can see it; no hook is registered on it afterwards.
    """
    conv = _shared.get(direction)
    if conv is None:
        with _shared_lock:
            conv = _shared.get(direction)
            if conv is None:
                conv = _shared[direction] = make_converter(direction)
    return conv


def _unstructure(obj: Any, direction: str) -> Dict[str, Any]:
    _check_wire_class(type(obj))
    return shared_converter(direction).unstructure(obj)


def _structure(data: Any, cls: Type[T], direction: str) -> T:
    _check_wire_class(cls)
    if not isinstance(data, dict):
        raise DecodeError(
            "expected a JSON object for %s, got %s" % (cls.__name__, type(data).__name__),
            errors=["$: expected an object, got %s" % type(data).__name__],
        )
    try:
        return shared_converter(direction).structure(data, cls)
    except (cattrs.BaseValidationError, cattrs.ForbiddenExtraKeysError) as exc:
        errors = cattrs.transform_error(exc, path="$")
        raise DecodeError("invalid %s: %s" % (cls.__name__, "; ".join(errors)), errors=errors) from exc


def _json_bytes(data: Any) -> bytes:
    # The official SDK's HTTP client serialises with exactly these options.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


# --------------------------------------------------------------------------- the client's side


def encode(obj: Any) -> Dict[str, Any]:
    """Return the wire dict of a request: strict keys, None-valued fields omitted (``SEND_NULL`` aside)."""
    return _unstructure(obj, REQUEST)


def dumps(obj: Any) -> bytes:
    """Serialise a request exactly as the official SDK's HTTP client does."""
    return _json_bytes(encode(obj))


def decode(data: Any, cls: Type[T]) -> T:
    """Build ``cls`` from a decoded JSON answer (unknown keys ignored at every depth), or raise :class:`DecodeError`."""
    return _structure(data, cls, RESPONSE)


def loads(body: bytes, cls: Type[T]) -> T:
    """Parse a JSON answer and decode it as ``cls``."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise DecodeError(
            "response is not JSON (%d bytes) for %s" % (len(body), cls.__name__),
            errors=["$: not JSON: %s" % exc],
            body=body[:2000].decode("utf-8", "replace"),
        ) from exc
    return decode(data, cls)


# --------------------------------------------------------------------------- the server's side


def decode_request(data: Any, cls: Type[T]) -> T:
    """Build ``cls`` from a decoded request body, rejecting unknown keys at every depth, or raise :class:`DecodeError`."""
    return _structure(data, cls, REQUEST)


def encode_response(obj: Any) -> Dict[str, Any]:
    """Return the wire dict of an answer: every field, None as ``null``; open objects keep their extra keys."""
    return _unstructure(obj, RESPONSE)
