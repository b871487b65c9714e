"""The one cattrs Converter: hooks built from ``_wire.KEYS``, strict primitives, ``encode``/``decode``.

Requests reject unknown keys and omit None-valued fields; responses tolerate unknown keys (logged once
per class at DEBUG). No hook factory is used: a class absent from ``KEYS`` cannot be encoded or decoded.
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


def _key_list(cls: type) -> Mapping[str, str]:
    try:
        return _wire.KEYS[cls]
    except KeyError:  # pragma: no cover - guarded by test_wire_golden's table check
        raise TypeError("%s is not a wire class" % cls.__name__) from None


def make_converter() -> cattrs.Converter:
    """Return a fresh converter with every wire hook registered."""
    c = cattrs.Converter()
    # Simpler types first: cattrs dispatches to the most recently registered matching hook.
    for kind in (str, int, float, bool):
        c.register_structure_hook(kind, _strict_hook(kind))
    for cls, keys in _wire.KEYS.items():
        overrides = {attr: override(rename=key) for attr, key in keys.items() if key != attr}
        unstructure = make_dict_unstructure_fn(cls, c, **overrides)
        strict = cls in _wire.STRICT
        structure = make_dict_structure_fn(cls, c, _cattrs_forbid_extra_keys=strict, **overrides)
        if strict:
            c.register_unstructure_hook(cls, _omit_none(unstructure, _wire.SEND_NULL.get(cls, ())))
            c.register_structure_hook(cls, structure)
        else:
            c.register_unstructure_hook(cls, unstructure)
            c.register_structure_hook(cls, _tolerant(structure, cls, frozenset(keys.values())))
    return c


def _omit_none(fn: Callable[[Any], Dict[str, Any]], keep: Any) -> Callable[[Any], Dict[str, Any]]:
    # The official SDK omits None-valued request fields but sends false booleans (shared/wire vectors).
    def unstructure(obj: Any) -> Dict[str, Any]:
        return {k: v for k, v in fn(obj).items() if v is not None or k in keep}

    return unstructure


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


_shared: Optional[cattrs.Converter] = None
_shared_lock = threading.Lock()


def shared_converter() -> cattrs.Converter:
    """Return the process-wide converter, built completely on first use (keeps import fast).

    It is fully configured before anyone can see it; no hook is registered on it afterwards.
    """
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = make_converter()
    return _shared


def encode(obj: Any) -> Dict[str, Any]:
    """Return the wire dict of a wire object."""
    if not attrs.has(type(obj)) or type(obj) not in _wire.KEYS:
        raise TypeError("%s is not a wire class" % type(obj).__name__)
    return shared_converter().unstructure(obj)


def dumps(obj: Any) -> bytes:
    """Serialise a wire object exactly as the official SDK's HTTP client does."""
    return json.dumps(encode(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode(data: Any, cls: Type[T]) -> T:
    """Build ``cls`` from a decoded JSON value, or raise :class:`DecodeError` listing every problem."""
    _key_list(cls)
    if not isinstance(data, dict):
        raise DecodeError(
            "expected a JSON object for %s, got %s" % (cls.__name__, type(data).__name__),
            errors=["$: expected an object, got %s" % type(data).__name__],
        )
    try:
        return shared_converter().structure(data, cls)
    except (cattrs.BaseValidationError, cattrs.ForbiddenExtraKeysError) as exc:
        errors = cattrs.transform_error(exc, path="$")
        raise DecodeError("invalid %s: %s" % (cls.__name__, "; ".join(errors)), errors=errors) from exc


def loads(body: bytes, cls: Type[T]) -> T:
    """Parse JSON bytes and decode them as ``cls``."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise DecodeError(
            "response is not JSON (%d bytes) for %s" % (len(body), cls.__name__),
            errors=["$: not JSON: %s" % exc],
            body=body[:2000].decode("utf-8", "replace"),
        ) from exc
    return decode(data, cls)
