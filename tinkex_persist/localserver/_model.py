"""Model state of the local server: LoRA weights, gradients, AdamW moments and a step counter, with their byte form.

Weights are the ``rank * 256`` float64 LoRA values of the tiny model in :mod:`._lm`, deterministic from
(base_model, rank, seed). ``forward_backward`` (in :mod:`._lm`) adds gradients to ``grad``;
:meth:`ModelState.adamw_step` applies them with AdamW and clears them. A step with no gradient accumulated
since the previous one is an AdamW step on a zero gradient, as torch takes it: the step count advances, the
moments decay, and the weights move by decoupled weight decay and by what the moments still carry (nothing,
on a fresh model). The byte form of weights and moments is unchanged: old checkpoints load.
"""

import hashlib
import math
import random
import struct
import sys
from array import array
from operator import mul
from typing import Dict, List, Optional, Tuple

from . import _lm

#: Values per unit of LoRA rank: one row of the hashed embedding table each, plus the hidden width.
VALUES_PER_RANK = _lm.ROWS + _lm.HIDDEN


def _le(values: array) -> bytes:
    # Fixed little-endian byte form, so digests do not depend on the host.
    if sys.byteorder == "big":  # pragma: no cover
        values = array("d", values)
        values.byteswap()
    return values.tobytes()


def _from_le(data: bytes) -> array:
    values = array("d")
    values.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        values.byteswap()
    return values


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest, "big"))


class ModelState:
    """Weights plus AdamW state of one training model."""

    def __init__(self, base_model: str, rank: int, seed: Optional[int] = None) -> None:
        self.base_model = base_model
        self.rank = rank
        rng = _rng("weights", base_model, rank, 0 if seed is None else seed)
        self.weights = array("d", _lm.lora_init(rank, rng))
        #: Gradient of the losses summed since the last step, or None when nothing was accumulated.
        self.grad: Optional[List[float]] = None
        self.reset_optimizer()

    def reset_optimizer(self) -> None:
        n = len(self.weights)
        self.m = array("d", bytes(8 * n))
        self.v = array("d", bytes(8 * n))
        self.step = 0

    def weights_bytes(self) -> bytes:
        return _le(self.weights)

    def optimizer_bytes(self) -> bytes:
        return struct.pack("<Q", self.step) + _le(self.m) + _le(self.v)

    def digests(self) -> Tuple[str, str]:
        """Return the sha256 hex digests of the weights and of the optimizer state."""
        return hashlib.sha256(self.weights_bytes()).hexdigest(), hashlib.sha256(self.optimizer_bytes()).hexdigest()

    def restore(self, weights: bytes, optimizer: Optional[bytes]) -> None:
        """Set the weights from their byte form; restore the optimizer from ``optimizer`` or reset it."""
        values = _from_le(weights)
        if len(values) != len(self.weights):
            raise ValueError("checkpoint holds %d weights, model has %d" % (len(values), len(self.weights)))
        self.weights = values
        self.grad = None
        if optimizer is None:
            self.reset_optimizer()
            return
        n = len(values)
        if len(optimizer) != 8 + 16 * n:
            raise ValueError("optimizer state has %d bytes, expected %d" % (len(optimizer), 8 + 16 * n))
        (self.step,) = struct.unpack_from("<Q", optimizer)
        self.m = _from_le(optimizer[8 : 8 + 8 * n])
        self.v = _from_le(optimizer[8 + 8 * n :])

    def adamw_step(
        self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, grad_clip_norm: float
    ) -> Dict[str, float]:
        """Apply one AdamW step to the accumulated gradient, clear it, and return the step's metrics.

        As ``torch.optim.AdamW`` after ``torch.nn.utils.clip_grad_norm_``: the global gradient norm is
        clipped to ``grad_clip_norm`` when that is > 0; weight decay is decoupled (``w *= 1 - lr * wd``);
        moments are bias-corrected by ``1 - beta ** step``. With no gradient accumulated the step runs on a
        zero gradient (``optimizer.zero_grad(set_to_none=False)`` then ``step()``); no loss is reported, since
        none was computed.
        """
        w = self.weights
        grad: List[float] = [0.0] * len(w) if self.grad is None else self.grad
        norm = math.sqrt(sum(map(mul, grad, grad)))
        if grad_clip_norm > 0.0:
            coef = grad_clip_norm / (norm + 1e-6)
            if coef < 1.0:
                grad = [g * coef for g in grad]
        self.step += 1
        step_size = lr / (1.0 - beta1**self.step)
        c2_sqrt = math.sqrt(1.0 - beta2**self.step)
        decay = 1.0 - lr * weight_decay
        a1, a2 = 1.0 - beta1, 1.0 - beta2
        m = [mi + a1 * (g - mi) for mi, g in zip(self.m, grad)]
        v = [beta2 * vi + a2 * g * g for vi, g in zip(self.v, grad)]
        sqrt = math.sqrt
        self.weights = array(
            "d", [wi * decay - step_size * mi / (sqrt(vi) / c2_sqrt + eps) for wi, mi, vi in zip(w, m, v)]
        )
        self.m, self.v = array("d", m), array("d", v)
        self.grad = None
        return {"grad_norm": norm, "step": float(self.step), "learning_rate": lr}
