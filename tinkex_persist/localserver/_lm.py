"""The tiny language model the local server trains: forward pass, losses and LoRA gradients, pure stdlib.

A bigram model over hashed token ids. Every token id of the base model's vocabulary is hashed into one of
:data:`ROWS` rows of a fixed embedding table ``E`` (``ROWS x HIDDEN``) and, as a target, into one of
:data:`OUTPUTS` output buckets of a fixed projection ``W`` (``OUTPUTS x HIDDEN``); both are seeded from the
base model name. The LoRA adapter is on the embedding: ``h = E[row] + s * (B @ a[row])``, with ``a`` one
``rank``-vector per table row (zero at init) and ``B`` a ``HIDDEN x rank`` matrix, so the logits
``W @ h`` are LoRA-adapted and only ``a`` and ``B`` are trained. The trained values are the model's
``rank * (ROWS + HIDDEN) = rank * 256`` weights: a ``256 x rank`` row-major matrix whose first ``ROWS`` rows
are ``a`` and last ``HIDDEN`` rows are ``B``.

Interface (plain lists in, plain lists out):

- ``check(base_model, data, loss_fn, loss_fn_config)`` validates a batch and raises :class:`LossFnError`
  or :class:`DatumError` (both :class:`LMError`, a ``ValueError``): answer those with 400.
- ``forward_backward(state, data, loss_fn, loss_fn_config=None, forward_only=False)`` returns a
  :class:`ForwardBackwardResult` and, unless ``forward_only``, adds the gradient to ``state.grad``, which
  ``ModelState.adamw_step`` consumes.

``data`` is a sequence of ``(tokens, loss_fn_inputs)`` pairs: ``tokens`` the model input ids, and
``loss_fn_inputs`` a mapping of names to lists as large as ``tokens`` (``target_tokens`` ints, the others
floats). Sums, never means: ``loss:sum`` and the gradient add over every position of every datum.
"""

import functools
import hashlib
import math
import random
from itertools import repeat
from operator import add, mul
from array import array
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Protocol, Sequence, Tuple

#: Width of the hidden state.
HIDDEN = 8
#: Rows of the hashed input embedding table; with ``HIDDEN`` they make the 256 weights per LoRA rank.
ROWS = 248
#: Output buckets target ids are hashed into; the softmax runs over these.
OUTPUTS = 64
#: Vocabulary size assumed for a base model not in :data:`VOCAB_SIZES`.
DEFAULT_VOCAB_SIZE = 151936
#: (name prefix, vocabulary size of its tokenizer's embedding) for known base model families.
VOCAB_SIZES: Tuple[Tuple[str, int], ...] = (
    ("Qwen/Qwen3", 151936),
    ("meta-llama/Llama-3", 128256),
    ("openai/gpt-oss", 201088),
    ("deepseek-ai/DeepSeek-V3", 129280),
    ("moonshotai/Kimi-K2", 163840),
)
#: Loss functions this model computes.
LOSS_FNS = ("cross_entropy", "importance_sampling", "ppo", "cispo")
#: Loss function names of SDK 0.38 (``tinker.types.LossFnType``) that the local server does not compute.
UNSUPPORTED_LOSS_FNS = ("dro", "gspo", "stable_reinforce", "custom")
#: ``loss_fn_config`` keys each loss accepts, with their defaults (importance-ratio clip bounds).
LOSS_FN_CONFIG: Dict[str, Dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
}
#: ``loss_fn_inputs`` each loss requires besides ``target_tokens``.
REQUIRED_INPUTS: Dict[str, Tuple[str, ...]] = {
    "cross_entropy": ("weights",),
    "importance_sampling": ("logprobs", "advantages"),
    "ppo": ("logprobs", "advantages"),
    "cispo": ("logprobs", "advantages"),
}
#: Every ``loss_fn_inputs`` name SDK 0.38 knows; others are rejected, known ones a loss does not use ignored.
KNOWN_INPUTS = frozenset(
    (
        "target_tokens",
        "weights",
        "advantages",
        "logprobs",
        "clip_low_threshold",
        "clip_high_threshold",
        "sequence_ratio_mask",
    )
)

_M64 = (1 << 64) - 1


class LMError(ValueError):
    """A forward/backward request the model cannot compute; the server answers it with 400."""


class LossFnError(LMError):
    """An unknown or unsupported ``loss_fn``, or a bad ``loss_fn_config``."""


class DatumError(LMError):
    """A bad datum: ``index`` is its position in the batch, and the message names it."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__("datum %d: %s" % (index, problem))
        self.index = index


class LoRAState(Protocol):
    """What the model reads and writes of a training model's state (``ModelState`` is one)."""

    base_model: str
    rank: int
    #: The ``rank * 256`` LoRA values, laid out as the module docstring says.
    weights: "array[float]"
    #: The accumulated gradient (as many values as ``weights``), or None.
    grad: Optional[List[float]]


class ForwardBackwardResult(NamedTuple):
    """What ``forward_backward`` answers: per-datum outputs and batch metrics."""

    #: One dict per datum: ``logprobs`` (log-probability of each target) and ``elementwise_loss``.
    loss_fn_outputs: List[Dict[str, List[float]]]
    #: ``loss:sum``, the loss summed over every position of every datum.
    metrics: Dict[str, float]


class _Datum(NamedTuple):
    rows: List[int]
    outs: List[int]
    inputs: Dict[str, List[float]]


class _Batch(NamedTuple):
    loss_fn: str
    config: Dict[str, float]
    data: List[_Datum]


class _Tables(NamedTuple):
    embed: List[List[float]]
    out_rows: List[Tuple[float, ...]]
    out_cols: List[List[float]]


def vocab_size(base_model: str) -> int:
    """Return the vocabulary size token ids of ``base_model`` are checked against."""
    for prefix, size in VOCAB_SIZES:
        if base_model.startswith(prefix):
            return size
    return DEFAULT_VOCAB_SIZE


def token_row(token: int) -> int:
    """Return the embedding table row a token id is hashed to."""
    return (((token * 0x9E3779B97F4A7C15) & _M64) >> 40) % ROWS


def token_bucket(token: int) -> int:
    """Return the output bucket a target token id is hashed to."""
    return (((token * 0xC2B2AE3D27D4EB4F) & _M64) >> 40) % OUTPUTS


def lora_scale(rank: int) -> float:
    """Return ``s``, the factor of the LoRA term (rank-stabilised: ``1 / sqrt(rank)``)."""
    return 1.0 / math.sqrt(rank)


@functools.lru_cache(maxsize=16)
def _tables(base_model: str) -> _Tables:
    # The frozen base model: fixed for a base model name on every host and in every process.
    digest = hashlib.sha256(("base\0%s" % base_model).encode("utf-8")).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    embed = [[rng.gauss(0.0, 1.0) for _ in range(HIDDEN)] for _ in range(ROWS)]
    std = 1.0 / math.sqrt(HIDDEN)
    out_rows = [tuple(rng.gauss(0.0, std) for _ in range(HIDDEN)) for _ in range(OUTPUTS)]
    return _Tables(embed, out_rows, [list(col) for col in zip(*out_rows)])


# ---------------------------------------------------------------------------------------------- checks


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ids(index: int, name: str, values: Any, vocab: int, base_model: str) -> List[int]:
    try:
        ids = list(values)
    except TypeError:
        raise DatumError(index, "%s must be a list of token ids, got %s" % (name, type(values).__name__)) from None
    for pos, tok in enumerate(ids):
        if not isinstance(tok, int) or isinstance(tok, bool):
            raise DatumError(index, "%s[%d] is %r, not an int token id" % (name, pos, tok))
        if not 0 <= tok < vocab:
            raise DatumError(
                index,
                "%s[%d]=%d is outside the vocabulary of %s (0-%d)" % (name, pos, tok, base_model, vocab - 1),
            )
    return ids


def _config(loss_fn: str, loss_fn_config: Optional[Mapping[str, Any]]) -> Dict[str, float]:
    allowed = LOSS_FN_CONFIG[loss_fn]
    config = dict(allowed)
    for key, value in (loss_fn_config or {}).items():
        if key not in allowed:
            raise LossFnError(
                "loss_fn_config key %r is not used by %s (accepted: %s)"
                % (key, loss_fn, ", ".join(sorted(allowed)) or "none")
            )
        if not _number(value) or value < 0:
            raise LossFnError("loss_fn_config[%r]=%r is not a finite number >= 0" % (key, value))
        config[key] = float(value)
    if allowed and config["clip_low_threshold"] > config["clip_high_threshold"]:
        raise LossFnError(
            "loss_fn_config: clip_low_threshold %r exceeds clip_high_threshold %r"
            % (config["clip_low_threshold"], config["clip_high_threshold"])
        )
    return config


def check(
    base_model: str,
    data: Sequence[Tuple[Sequence[int], Mapping[str, Sequence[Any]]]],
    loss_fn: str,
    loss_fn_config: Optional[Mapping[str, Any]] = None,
) -> _Batch:
    """Validate a batch for ``base_model`` and return it prepared for :func:`forward_backward`.

    Raises:
        LossFnError: ``loss_fn`` is unknown or unsupported, or ``loss_fn_config`` does not fit it.
        DatumError: a datum lacks an input the loss needs, has lengths that differ from its token count,
            a value of the wrong type, or a token id outside ``[0, vocab_size(base_model))``.
    """
    if loss_fn not in LOSS_FNS:
        what = "is not supported by the local server" if loss_fn in UNSUPPORTED_LOSS_FNS else "is unknown"
        raise LossFnError("loss_fn %r %s; use one of %s" % (loss_fn, what, ", ".join(LOSS_FNS)))
    config = _config(loss_fn, loss_fn_config)
    vocab = vocab_size(base_model)
    needed = ("target_tokens",) + REQUIRED_INPUTS[loss_fn]
    prepared = []
    for index, datum in enumerate(data):
        try:
            tokens, inputs = datum
        except (TypeError, ValueError):
            raise DatumError(index, "expected a (tokens, loss_fn_inputs) pair") from None
        ids = _ids(index, "model_input", tokens, vocab, base_model)
        if not isinstance(inputs, Mapping):
            raise DatumError(index, "loss_fn_inputs must be a mapping, got %s" % type(inputs).__name__)
        unknown = sorted(set(inputs) - KNOWN_INPUTS)
        if unknown:
            raise DatumError(index, "unknown loss_fn_inputs %s" % ", ".join(map(repr, unknown)))
        missing = [name for name in needed if name not in inputs]
        if missing:
            raise DatumError(index, "%s needs loss_fn_inputs %s" % (loss_fn, ", ".join(map(repr, missing))))
        targets = _ids(index, "target_tokens", inputs["target_tokens"], vocab, base_model)
        floats: Dict[str, List[float]] = {}
        for name in needed[1:]:
            try:
                values = list(inputs[name])
            except TypeError:
                raise DatumError(index, "%s must be a list of numbers" % name) from None
            bad = next((pos for pos, v in enumerate(values) if not _number(v)), None)
            if bad is not None:
                raise DatumError(index, "%s[%d] is %r, not a finite number" % (name, bad, values[bad]))
            floats[name] = [float(v) for v in values]
        for name, size in [("target_tokens", len(targets))] + [(n, len(v)) for n, v in floats.items()]:
            if size != len(ids):
                raise DatumError(index, "%s has %d values for %d model_input tokens" % (name, size, len(ids)))
        prepared.append(_Datum([token_row(t) for t in ids], [token_bucket(t) for t in targets], floats))
    return _Batch(loss_fn, config, prepared)


# ---------------------------------------------------------------------------------------------- losses

# Each loss maps (logprob, datum inputs, position, config) to (loss term, d loss / d logprob).
_Loss = Callable[[float, Dict[str, List[float]], int, Dict[str, float]], Tuple[float, float]]


def _cross_entropy(lp: float, x: Dict[str, List[float]], t: int, cfg: Dict[str, float]) -> Tuple[float, float]:
    w = x["weights"][t]
    return -w * lp, -w


def _importance_sampling(
    lp: float, x: Dict[str, List[float]], t: int, cfg: Dict[str, float]
) -> Tuple[float, float]:
    ratio_adv = math.exp(lp - x["logprobs"][t]) * x["advantages"][t]
    return -ratio_adv, -ratio_adv


def _ppo(lp: float, x: Dict[str, List[float]], t: int, cfg: Dict[str, float]) -> Tuple[float, float]:
    ratio = math.exp(lp - x["logprobs"][t])
    adv = x["advantages"][t]
    clipped = min(max(ratio, cfg["clip_low_threshold"]), cfg["clip_high_threshold"])
    if ratio * adv <= clipped * adv:
        return -ratio * adv, -ratio * adv
    # The clipped term is the smaller one and constant in the ratio: no gradient.
    return -clipped * adv, 0.0


def _cispo(lp: float, x: Dict[str, List[float]], t: int, cfg: Dict[str, float]) -> Tuple[float, float]:
    ratio = math.exp(lp - x["logprobs"][t])
    coef = min(max(ratio, cfg["clip_low_threshold"]), cfg["clip_high_threshold"]) * x["advantages"][t]
    # The clipped ratio is a constant weight (stop-gradient) on the log-probability.
    return -coef * lp, -coef


_LOSSES: Dict[str, _Loss] = {
    "cross_entropy": _cross_entropy,
    "importance_sampling": _importance_sampling,
    "ppo": _ppo,
    "cispo": _cispo,
}


# ---------------------------------------------------------------------------------------------- model


def forward_backward(
    state: LoRAState,
    data: Sequence[Tuple[Sequence[int], Mapping[str, Sequence[Any]]]],
    loss_fn: str,
    loss_fn_config: Optional[Mapping[str, Any]] = None,
    forward_only: bool = False,
) -> ForwardBackwardResult:
    """Compute per-datum log-probabilities and the loss; unless ``forward_only``, accumulate its gradient.

    The gradient of the summed loss with respect to the LoRA weights is added to ``state.grad`` (created
    on first use), where it stays until ``state.adamw_step`` applies and clears it.

    Raises:
        LMError: as :func:`check`, before anything is computed; or :class:`DatumError` when an importance
            ratio ``exp(logprob - sampling logprob)`` overflows. Nothing is accumulated then.
    """
    batch = check(state.base_model, data, loss_fn, loss_fn_config)
    return run(state, batch, forward_only)


def run(state: LoRAState, batch: _Batch, forward_only: bool = False) -> ForwardBackwardResult:
    """Run a batch already validated by :func:`check` (for the same base model) on ``state``."""
    assert HIDDEN == 8, "the logits below are unrolled for HIDDEN == 8"
    r = state.rank
    s = lora_scale(r)
    tables = _tables(state.base_model)
    weights = state.weights
    b_rows = [weights[(ROWS + j) * r : (ROWS + j + 1) * r].tolist() for j in range(HIDDEN)]
    b_cols = list(zip(*b_rows))
    loss_of = _LOSSES[batch.loss_fn]
    cfg = batch.config

    logprobs = [[0.0] * len(d.rows) for d in batch.data]
    losses = [[0.0] * len(d.rows) for d in batch.data]
    # Positions sharing an input row share their logits: compute each row once, in first-use order.
    groups: Dict[int, List[Tuple[int, int]]] = {}
    for i, d in enumerate(batch.data):
        for t, row in enumerate(d.rows):
            groups.setdefault(row, []).append((i, t))

    grad = None
    if not forward_only:
        # A copy: state.grad changes only when the whole batch went through.
        grad = list(state.grad) if state.grad is not None else [0.0] * len(weights)
    b_terms: List[Tuple[List[float], List[float]]] = []  # (s * dL/dh, a[row]) per row, for dL/dB
    for row, members in groups.items():
        a = weights[row * r : (row + 1) * r].tolist()
        base = tables.embed[row]
        adapted = any(a)
        if adapted:
            h = [base[j] + s * sum(map(mul, b_rows[j], a)) for j in range(HIDDEN)]
        else:
            h = base
        h0, h1, h2, h3, h4, h5, h6, h7 = h
        z = [
            w0 * h0 + w1 * h1 + w2 * h2 + w3 * h3 + w4 * h4 + w5 * h5 + w6 * h6 + w7 * h7
            for w0, w1, w2, w3, w4, w5, w6, w7 in tables.out_rows
        ]
        top = max(z)
        ex = [math.exp(v - top) for v in z]
        total = sum(ex)
        lse = top + math.log(total)
        coefs = []
        csum = 0.0
        for i, t in members:
            d = batch.data[i]
            out = d.outs[t]
            lp = z[out] - lse
            logprobs[i][t] = lp
            try:
                losses[i][t], c = loss_of(lp, d.inputs, t, cfg)
            except OverflowError:
                raise DatumError(i, "the importance ratio at position %d overflows (logprob %r, sampling logprob %r)"
                                 % (t, lp, d.inputs["logprobs"][t])) from None
            if c:
                coefs.append((out, c))
                csum += c
        if grad is None or not coefs:
            continue
        # dL/dz = sum_t c_t (onehot(out_t) - softmax(z)).
        k = -csum / total
        dz = [k * v for v in ex]
        for out, c in coefs:
            dz[out] += c
        sdh = [s * sum(map(mul, col, dz)) for col in tables.out_cols]
        d0, d1, d2, d3, d4, d5, d6, d7 = sdh
        lo = row * r
        grad_a = [
            d0 * b0 + d1 * b1 + d2 * b2 + d3 * b3 + d4 * b4 + d5 * b5 + d6 * b6 + d7 * b7
            for b0, b1, b2, b3, b4, b5, b6, b7 in b_cols
        ]
        grad[lo : lo + r] = map(add, grad[lo : lo + r], grad_a)
        if adapted:
            b_terms.append((sdh, a))
    if grad is not None:
        if b_terms:
            sdh_cols = list(zip(*(term[0] for term in b_terms)))
            a_cols = list(zip(*(term[1] for term in b_terms)))
            for j in range(HIDDEN):
                offset = (ROWS + j) * r
                for kk in range(r):
                    grad[offset + kk] += sum(map(mul, sdh_cols[j], a_cols[kk]))
        state.grad = grad

    outputs = [{"logprobs": lps, "elementwise_loss": ls} for lps, ls in zip(logprobs, losses)]
    return ForwardBackwardResult(outputs, {"loss:sum": sum(sum(ls) for ls in losses)})


def lora_init(rank: int, rng: random.Random) -> List[float]:
    """Return fresh LoRA weights: ``a`` zero (the adapted model starts as the base model), ``B`` gaussian."""
    b = [rng.gauss(0.0, 1.0) for _ in range(HIDDEN * rank)]
    return list(repeat(0.0, ROWS * rank)) + b
