"""Model state of the local server: LoRA weights, AdamW moments and a step counter, with their byte form.

Weights are ``rank * 256`` float64 values, deterministic from (base_model, rank, seed). ``optim_step``
runs AdamW on a fixed synthetic objective, ``0.5 * |w - target|^2``, so optimizer state changes results.
"""

import hashlib
import math
import random
import struct
import sys
from array import array
from typing import Dict, Optional, Tuple

#: Values per unit of LoRA rank.
VALUES_PER_RANK = 256


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
        n = rank * VALUES_PER_RANK
        rng = _rng("weights", base_model, rank, 0 if seed is None else seed)
        self.weights = array("d", (rng.gauss(0.0, 0.02) for _ in range(n)))
        target = _rng("target", base_model, rank)
        self.target = array("d", (target.uniform(-0.1, 0.1) for _ in range(n)))
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
        """Advance one AdamW step on the synthetic objective and return its metrics."""
        w, t, m, v = self.weights, self.target, self.m, self.v
        grad = [wi - ti for wi, ti in zip(w, t)]
        loss = 0.5 * sum(g * g for g in grad)
        norm = math.sqrt(2.0 * loss)
        if grad_clip_norm > 0.0 and norm > grad_clip_norm:
            scale = grad_clip_norm / norm
            grad = [g * scale for g in grad]
        self.step += 1
        c1 = 1.0 - beta1**self.step
        c2 = 1.0 - beta2**self.step
        for i, g in enumerate(grad):
            mi = m[i] = beta1 * m[i] + (1.0 - beta1) * g
            vi = v[i] = beta2 * v[i] + (1.0 - beta2) * g * g
            w[i] -= lr * ((mi / c1) / (math.sqrt(vi / c2) + eps) + weight_decay * w[i])
        return {"loss": loss, "grad_norm": norm, "step": float(self.step), "learning_rate": lr}
