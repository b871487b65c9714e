"""Public training data types, named and defaulted as in the official SDK 0.38 (``tinker.types``).

Plain Python lists are accepted everywhere. numpy arrays (and other array objects with ``tolist``,
``shape`` and ``dtype``) are accepted too, but numpy is never imported here and never required.
Every class is a frozen attrs class validated at construction: bad input raises ``UsageError``.
"""

import array
import importlib
import math
import operator
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import attrs

from .exceptions import UsageError

__all__ = (
    "AdamParams",
    "Datum",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "ImageChunk",
    "LossFnOutput",
    "ModelInput",
    "ModelInputChunk",
    "OptimStepResponse",
    "TensorData",
    "TensorDtype",
)

#: The two element types a ``TensorData`` may hold, as in the SDK's ``TensorDtype``.
TENSOR_DTYPES = ("int64", "float32")
TensorDtype = str

#: ``array`` type codes holding each dtype's wire representation (little-endian on the wire).
_TYPECODE = {"int64": "q", "float32": "f"}
_LITTLE = sys.byteorder == "little"

#: dtype of a loss_fn_inputs value given as a plain list, as the SDK's ``Datum`` decides it.
_KEY_TO_DTYPE = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
    "sequence_ratio_mask": "float32",
}

#: loss_fn_inputs whose first dimension is one entry per model-input position.
_PER_TOKEN_KEYS = ("target_tokens", "weights", "logprobs", "advantages")

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _describe(value: Any) -> str:
    text = repr(value)
    return "%s %s" % (type(value).__name__, text if len(text) <= 40 else text[:40] + "...")


def _is_array_like(value: Any) -> bool:
    """An ndarray-like object (numpy, torch): has ``tolist``, ``shape`` and ``dtype``; not a list."""
    return not isinstance(value, (list, tuple)) and all(hasattr(value, a) for a in ("tolist", "shape", "dtype"))


def _array_dtype(value: Any) -> Optional[str]:
    """The TensorDtype matching an array object's element type, or None if it has none."""
    dtype = value.dtype
    kind = getattr(dtype, "kind", None)
    if kind is not None:  # numpy
        return {"i": "int64", "u": "int64", "f": "float32"}.get(kind)
    if getattr(dtype, "is_floating_point", False):  # torch
        return "float32"
    if str(dtype).startswith(("torch.int", "torch.uint")):
        return "int64"
    return None


def _flatten(values: Sequence[Any], where: str) -> Tuple[List[Any], List[int]]:
    """Flatten a (possibly nested, rectangular) list; return the flat values and the shape."""
    if not values or not isinstance(values[0], (list, tuple)):
        kinds = set(map(type, values))  # one C-level pass; the common case is a flat list of numbers
        if any(issubclass(k, (list, tuple)) for k in kinds):
            raise UsageError("%s must be a rectangular array; ragged nested lists are not supported" % where)
        return list(values), [len(values)]
    flat: List[Any] = []
    inner: Optional[List[int]] = None
    for row in values:
        if not isinstance(row, (list, tuple)):
            raise UsageError("%s must be a rectangular array; ragged nested lists are not supported" % where)
        row_flat, row_shape = _flatten(row, where)
        if inner is None:
            inner = row_shape
        elif row_shape != inner:
            raise UsageError("%s must be a rectangular array; ragged nested lists are not supported" % where)
        flat.extend(row_flat)
    return flat, [len(values)] + (inner or [])


def _product(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _check_int_list(values: Sequence[Any], what: str) -> List[int]:
    out: List[int] = []
    for i, v in enumerate(values):
        if isinstance(v, bool):
            raise UsageError("%s[%d] is %s, not an int" % (what, i, _describe(v)))
        try:
            out.append(operator.index(v))
        except TypeError:
            raise UsageError("%s[%d] is %s, not an int" % (what, i, _describe(v))) from None
    return out


def _pack(dtype: str, values: Sequence[Any], where: str) -> "array.array[Any]":
    """Values as an ``array`` of the dtype's type code; UsageError naming the first bad element."""
    code = _TYPECODE[dtype]
    try:
        return array.array(code, values)
    except (TypeError, OverflowError):
        pass
    for i, v in enumerate(values):
        try:
            array.array(code, [v])
        except TypeError:
            raise UsageError(
                "%s[%d] is %s, which does not fit dtype %r" % (where, i, _describe(v), dtype)
            ) from None
        except OverflowError:
            raise UsageError("%s[%d] = %r is out of range for dtype %r" % (where, i, v, dtype)) from None
    raise UsageError("%s does not fit dtype %r" % (where, dtype))  # pragma: no cover - element loop finds it


# --------------------------------------------------------------------------- tensors


@attrs.frozen(init=False, eq=False, repr=False)
class TensorData:
    """A dense (or CSR-sparse) tensor of ``int64`` or ``float32`` values.

    Args:
        data: The values: a flat or nested list, or an ndarray-like object (numpy, torch). Nested
            lists and arrays give their shape unless ``shape`` is passed.
        dtype: ``"int64"`` or ``"float32"``. Float values are rounded to float32, as the SDK does.
        shape: The tensor's shape; ``None`` leaves it unset (a flat list, sent without a shape).
        sparse_crow_indices: CSR row pointers (length rows + 1); makes the tensor sparse.
        sparse_col_indices: CSR column indices, one per value; required with ``sparse_crow_indices``.

    Raises:
        UsageError: an unknown dtype, a value of the wrong type (a float for ``int64``, a string),
            a ragged nested list, or a shape that does not match the number of values.
    """

    dtype: str
    """``"int64"`` or ``"float32"``."""
    shape: Optional[List[int]]
    """The tensor's shape, or ``None`` when not given (a flat tensor)."""
    sparse_crow_indices: Optional[List[int]]
    """CSR row pointers when the tensor is sparse, else ``None``."""
    sparse_col_indices: Optional[List[int]]
    """CSR column indices when the tensor is sparse, else ``None``."""
    _values: "array.array[Any]"

    def __init__(
        self,
        data: Any = None,
        dtype: Optional[str] = None,
        shape: Optional[Sequence[int]] = None,
        sparse_crow_indices: Optional[Sequence[int]] = None,
        sparse_col_indices: Optional[Sequence[int]] = None,
    ) -> None:
        if dtype not in TENSOR_DTYPES:
            raise UsageError("TensorData dtype must be 'int64' or 'float32', got %r" % (dtype,))
        assert dtype is not None
        inferred: Optional[List[int]] = None
        if data is None:
            flat: Sequence[Any] = []
        elif isinstance(data, array.array) and data.typecode == _TYPECODE[dtype]:
            flat = data
        elif _is_array_like(data):
            kind = _array_dtype(data)
            if kind is None or (dtype == "int64" and kind != "int64"):
                raise UsageError("TensorData of dtype %r cannot hold an array of %s" % (dtype, data.dtype))
            inferred = [int(s) for s in data.shape]
            flat = data.reshape(-1).tolist() if hasattr(data, "reshape") else _flatten(data.tolist(), "data")[0]
        elif isinstance(data, (list, tuple)):
            flat, nested_shape = _flatten(data, "TensorData data")
            if len(nested_shape) > 1:
                inferred = nested_shape
        else:
            raise UsageError("TensorData data must be a list or an array, got %s" % type(data).__name__)
        values = _pack(dtype, flat, "TensorData data")
        if shape is not None:
            shape = _check_int_list(list(shape), "TensorData shape")
            if any(s < 0 for s in shape):
                raise UsageError("TensorData shape %r has a negative dimension" % (shape,))
        elif inferred is not None:
            shape = inferred
        sparse = sparse_crow_indices is not None or sparse_col_indices is not None
        crow = col = None
        if sparse:
            if sparse_crow_indices is None or sparse_col_indices is None:
                raise UsageError("sparse_crow_indices and sparse_col_indices must be given together")
            if shape is None or len(shape) != 2:
                raise UsageError("a sparse TensorData needs a 2-D shape")
            crow = _check_int_list(list(sparse_crow_indices), "sparse_crow_indices")
            col = _check_int_list(list(sparse_col_indices), "sparse_col_indices")
            if len(col) != len(values) or len(crow) != shape[0] + 1:
                raise UsageError(
                    "sparse TensorData: %d values, %d column indices and %d row pointers do not fit shape %r"
                    % (len(values), len(col), len(crow), shape)
                )
        elif shape is not None and _product(shape) != len(values):
            raise UsageError("TensorData shape %r needs %d values, got %d" % (shape, _product(shape), len(values)))
        self.__attrs_init__(dtype, shape, crow, col, values)  # type: ignore[attr-defined]

    @property
    def data(self) -> List[Any]:
        """The stored values, flattened, as a new list."""
        return self._values.tolist()

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorData):
            return NotImplemented
        return (self.dtype, self.shape, self.sparse_crow_indices, self.sparse_col_indices, self._values) == (
            other.dtype, other.shape, other.sparse_crow_indices, other.sparse_col_indices, other._values
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        values = self._values.tolist()
        shown = repr(values) if len(values) <= 8 else "[%s, ...] (%d values)" % (
            ", ".join(repr(v) for v in values[:8]), len(values)
        )
        sparse = ", sparse" if self.sparse_crow_indices is not None else ""
        return "TensorData(data=%s, dtype=%r, shape=%r%s)" % (shown, self.dtype, self.shape, sparse)

    @classmethod
    def from_numpy(cls, array_: Any) -> "TensorData":
        """Build from an ndarray-like object, taking dtype and shape from it.

        Raises:
            UsageError: the array's element type is neither integer nor floating point.
        """
        dtype = _array_dtype(array_) if _is_array_like(array_) else None
        if dtype is None:
            raise UsageError("TensorData.from_numpy needs an integer or floating-point array")
        return cls(data=array_, dtype=dtype, shape=list(array_.shape))

    def tolist(self, pad_value: int = 0) -> List[Any]:
        """Return the values nested by ``shape``; a sparse tensor is densified with ``pad_value``."""
        values = self._values.tolist()
        if self.sparse_crow_indices is not None:
            assert self.shape is not None and self.sparse_col_indices is not None
            rows, cols = self.shape
            dense: List[List[Any]] = []
            for r in range(rows):
                row = [pad_value] * cols
                for k in range(self.sparse_crow_indices[r], self.sparse_crow_indices[r + 1]):
                    row[self.sparse_col_indices[k]] = values[k]
                dense.append(row)
            return dense
        shape = self.shape
        if shape is None or len(shape) <= 1:
            return values
        for size in reversed(shape[1:]):
            values = [values[i : i + size] for i in range(0, len(values), size)] if size else []
        return values

    def to_numpy(self, pad_value: int = 0) -> Any:
        """Return a numpy array (numpy must be installed; it is imported only here)."""
        numpy = importlib.import_module("numpy")  # optional: imported on use only, never at module level
        return numpy.asarray(self.tolist(pad_value), dtype=numpy.int64 if self.dtype == "int64" else numpy.float32)

    def tobytes(self) -> bytes:
        """Return the values as little-endian bytes of the dtype (8 per int64, 4 per float32), as sent on the wire."""
        return _le_bytes(self._values)

    @property
    def _first_dim(self) -> int:
        return self.shape[0] if self.shape else len(self._values)

    @property
    def nbytes(self) -> int:
        """Size of the values in bytes (8 per int64, 4 per float32), as numpy's ``nbytes``."""
        return len(self._values) * self._values.itemsize


def _le_bytes(values: "array.array[Any]") -> bytes:
    if _LITTLE:
        return values.tobytes()
    swapped = array.array(values.typecode, values)  # pragma: no cover - big-endian hosts only
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


# --------------------------------------------------------------------------- model input


def _tokens(value: Any) -> List[int]:
    if _is_array_like(value):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise UsageError("tokens must be a list of ints, got %s" % type(value).__name__)
    if bool not in set(map(type, value)):
        try:
            return array.array("i", value).tolist()  # fast path: C checks int-ness and the int32 range
        except (TypeError, OverflowError):
            pass
    tokens = _check_int_list(value, "tokens")
    for i, t in enumerate(tokens):
        if not _INT32_MIN <= t <= _INT32_MAX:
            raise UsageError("tokens[%d] = %d does not fit in 32 bits" % (i, t))
    raise UsageError("tokens are not int32 values")  # pragma: no cover - the loops above name the culprit


@attrs.frozen(kw_only=True)
class EncodedTextChunk:
    """A run of token ids inside a ``ModelInput``.

    Raises:
        UsageError: a token that is not an int, or does not fit in 32 bits (the wire's ``int32``).
    """

    tokens: List[int] = attrs.field(converter=_tokens)
    """The token ids."""
    type: str = attrs.field(default="encoded_text", validator=attrs.validators.in_(("encoded_text",)))
    """Discriminator, always ``"encoded_text"``."""

    @property
    def length(self) -> int:
        """Number of model-input positions: one per token."""
        return len(self.tokens)


def _image_bytes(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise UsageError("ImageChunk data must be bytes, got %s" % type(value).__name__)
    return bytes(value)


def _optional_int(value: Any) -> Optional[int]:
    if value is None:
        return None
    return _check_int_list([value], "expected_tokens")[0]


@attrs.frozen(kw_only=True)
class ImageChunk:
    """An image inside a ``ModelInput``; the server turns it into tokens.

    Raises:
        UsageError: data that is not bytes, a format other than png/jpeg, a non-int ``expected_tokens``.
    """

    data: bytes = attrs.field(converter=_image_bytes, repr=lambda d: "<%d bytes>" % len(d))
    """The encoded image."""
    format: str = attrs.field()
    """``"png"`` or ``"jpeg"``."""
    expected_tokens: Optional[int] = attrs.field(default=None, converter=_optional_int)
    """Number of tokens the image should become; ``None`` if unknown (the length is then unknown)."""
    type: str = attrs.field(default="image", validator=attrs.validators.in_(("image",)))
    """Discriminator, always ``"image"``."""

    @format.validator
    def _check_format(self, _attribute: Any, value: Any) -> None:
        if value not in ("png", "jpeg"):
            raise UsageError("ImageChunk format must be 'png' or 'jpeg', got %r" % (value,))

    @property
    def length(self) -> int:
        """Number of model-input positions (``expected_tokens``).

        Raises:
            UsageError: ``expected_tokens`` is not set.
        """
        if self.expected_tokens is None:
            raise UsageError("ImageChunk expected_tokens needs to be set in order to compute the length")
        return self.expected_tokens


ModelInputChunk = Union[EncodedTextChunk, ImageChunk]


def _chunks(value: Any) -> List[ModelInputChunk]:
    if not isinstance(value, (list, tuple)):
        raise UsageError("ModelInput chunks must be a list, got %s" % type(value).__name__)
    for i, chunk in enumerate(value):
        if not isinstance(chunk, (EncodedTextChunk, ImageChunk)):
            raise UsageError("ModelInput chunks[%d] is %s, not a chunk" % (i, type(chunk).__name__))
    return list(value)


@attrs.frozen(kw_only=True)
class ModelInput:
    """The input sequence of one datum: a list of chunks (token runs, images).

    Raises:
        UsageError: an entry that is not an ``EncodedTextChunk`` or ``ImageChunk``.
    """

    chunks: List[ModelInputChunk] = attrs.field(converter=_chunks)
    """The chunks, in order."""

    @classmethod
    def from_ints(cls, tokens: Sequence[int]) -> "ModelInput":
        """Build a model input of one token chunk.

        Raises:
            UsageError: a token that is not an int.
        """
        return cls(chunks=[EncodedTextChunk(tokens=tokens)])

    @classmethod
    def empty(cls) -> "ModelInput":
        """Return a model input with no chunks."""
        return cls(chunks=[])

    def to_ints(self) -> List[int]:
        """Return all tokens.

        Raises:
            UsageError: a chunk is not a token chunk.
        """
        if not all(isinstance(c, EncodedTextChunk) for c in self.chunks):
            raise UsageError("to_ints only supported for ModelInput with EncodedTextChunks")
        return [t for c in self.chunks for t in c.tokens]  # type: ignore[union-attr]

    @property
    def length(self) -> int:
        """Total number of model-input positions."""
        return sum(c.length for c in self.chunks)

    def append(self, chunk: ModelInputChunk) -> "ModelInput":
        """Return a new model input with ``chunk`` added at the end."""
        return ModelInput(chunks=self.chunks + [chunk])

    def append_int(self, token: int) -> "ModelInput":
        """Return a new model input with one token added at the end."""
        return self.append(EncodedTextChunk(tokens=[token]))


# --------------------------------------------------------------------------- datum


def _loss_fn_input(key: Any, value: Any) -> "TensorData":
    if not isinstance(key, str):
        raise UsageError("loss_fn_inputs keys must be strings, got %s" % _describe(key))
    if isinstance(value, TensorData):
        return value
    where = "loss_fn_inputs[%r]" % key
    if _is_array_like(value):
        kind = _array_dtype(value)
        if kind is None:
            raise UsageError("%s is an array of %s, not numbers" % (where, value.dtype))
        wanted = _KEY_TO_DTYPE.get(key, kind)
        if wanted == "int64" and kind != "int64":
            raise UsageError("%s must hold integers (dtype int64), got an array of %s" % (where, value.dtype))
        return TensorData(data=value, dtype=wanted, shape=list(value.shape))
    if isinstance(value, (list, tuple)):
        if key not in _KEY_TO_DTYPE:
            raise UsageError(
                "%s: cannot tell the dtype of a plain list for this key; pass a TensorData" % where
            )
        flat, shape = _flatten(value, where)
        try:
            return TensorData(data=flat, dtype=_KEY_TO_DTYPE[key], shape=shape)
        except UsageError as exc:
            raise UsageError("%s: %s" % (where, exc.message.replace("TensorData data", "value"))) from None
    raise UsageError("%s must be a TensorData, a list or an array, got %s" % (where, type(value).__name__))


def _loss_fn_inputs(value: Any) -> Dict[str, "TensorData"]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError("loss_fn_inputs must be a dict, got %s" % type(value).__name__)
    return {key: _loss_fn_input(key, v) for key, v in value.items()}


def _model_input(value: Any) -> "ModelInput":
    if not isinstance(value, ModelInput):
        raise UsageError("Datum model_input must be a ModelInput (e.g. ModelInput.from_ints(tokens)), got %s"
                         % type(value).__name__)
    return value


@attrs.frozen
class Datum:
    """One training example: the model input and the loss function's inputs.

    Plain lists in ``loss_fn_inputs`` get the SDK's dtype for their key (``target_tokens``: int64;
    ``weights``, ``advantages``, ``logprobs``: float32); numpy arrays keep their own.

    Args:
        model_input: The input sequence.
        loss_fn_inputs: Name -> tensor (``TensorData``, list or array), e.g. ``target_tokens``, ``weights``.

    Raises:
        UsageError: a model input that is not a ``ModelInput``, a value of the wrong dtype, or a
            per-token input (``target_tokens``, ``weights``, ``logprobs``, ``advantages``) whose length
            differs from the model input's.
    """

    model_input: ModelInput = attrs.field(converter=_model_input)
    """The input sequence."""
    loss_fn_inputs: Dict[str, TensorData] = attrs.field(factory=dict, converter=_loss_fn_inputs)
    """Inputs of the loss function, by name."""

    def __attrs_post_init__(self) -> None:
        try:
            length = self.model_input.length
        except UsageError:
            return  # an image without expected_tokens: the length is the server's to decide
        for key in _PER_TOKEN_KEYS:
            td = self.loss_fn_inputs.get(key)
            if td is not None and td._first_dim != length:
                raise UsageError(
                    "Datum loss_fn_inputs[%r] has %d entries but the model input has %d tokens"
                    % (key, td._first_dim, length)
                )


# --------------------------------------------------------------------------- optimizer


def _hyper(name: str, value: Any, low: float, high: float = math.inf, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError("AdamParams %s must be a number, got %s" % (name, _describe(value)))
    value = float(value)
    if not math.isfinite(value) or value < low or value > high or (high_open and value == high):
        raise UsageError(
            "AdamParams %s must be in [%g, %g%s, got %r" % (name, low, high, ")" if high_open else "]", value)
        )
    return value


def _learning_rate(value: Any) -> float:
    return _hyper("learning_rate", value, 0.0)


def _beta1(value: Any) -> float:
    return _hyper("beta1", value, 0.0, 1.0, high_open=True)


def _beta2(value: Any) -> float:
    return _hyper("beta2", value, 0.0, 1.0, high_open=True)


def _eps(value: Any) -> float:
    return _hyper("eps", value, 0.0)


def _weight_decay(value: Any) -> float:
    return _hyper("weight_decay", value, 0.0)


def _grad_clip_norm(value: Any) -> float:
    return _hyper("grad_clip_norm", value, 0.0)


@attrs.frozen(kw_only=True)
class AdamParams:
    """AdamW hyper-parameters of one ``optim_step``, with the SDK's defaults.

    Raises:
        UsageError: a value that is not a finite number, a negative learning rate, weight decay,
            epsilon or clip norm, or a beta outside ``[0, 1)``.
    """

    learning_rate: float = attrs.field(default=0.0001, converter=_learning_rate)
    """Step size."""
    beta1: float = attrs.field(default=0.9, converter=_beta1)
    """Decay of the first-moment average."""
    beta2: float = attrs.field(default=0.95, converter=_beta2)
    """Decay of the second-moment average."""
    eps: float = attrs.field(default=1e-12, converter=_eps)
    """Added to the denominator for stability."""
    weight_decay: float = attrs.field(default=0.0, converter=_weight_decay)
    """Decoupled weight decay; 0 disables it."""
    grad_clip_norm: float = attrs.field(default=0.0, converter=_grad_clip_norm)
    """Maximum global gradient norm; 0 disables clipping."""


# --------------------------------------------------------------------------- results


LossFnOutput = Dict[str, TensorData]


@attrs.frozen(kw_only=True)
class ForwardBackwardOutput:
    """Result of ``forward_backward`` or ``forward``."""

    loss_fn_output_type: str
    """Class name of the per-datum output records, e.g. ``"ArrayRecord"``."""
    loss_fn_outputs: List[LossFnOutput]
    """One dict per datum, in request order: output name (e.g. ``"logprobs"``) -> ``TensorData``."""
    metrics: Dict[str, float] = attrs.field(factory=dict)
    """Metrics named ``<name>:<reduction>``, e.g. ``metrics["loss:sum"]``."""


@attrs.frozen(kw_only=True)
class OptimStepResponse:
    """Result of ``optim_step``."""

    metrics: Optional[Dict[str, float]] = None
    """Step metrics, e.g. ``{"learning_rate:mean": 0.0001}``; ``None`` if the server sent none."""
