"""Time the local server's training core: ``forward_backward`` + AdamW ``optim_step`` in pure Python, no HTTP.

A fixed batch of 4 datums x 32 random Qwen3 token ids (cross-entropy, all weights 1) is trained for
``--steps`` steps per LoRA rank; each figure is the median wall time of ``--repeats`` runs. Usage::

    python tools/bench_model.py                  # 100 steps, ranks 1, 8 and 32, 3 runs each
    python tools/bench_model.py --steps 10 --repeats 1
"""

import argparse
import random
import statistics
import time
from typing import List, Optional, Sequence, Tuple

from tinkex_persist.localserver import _lm
from tinkex_persist.localserver._model import ModelState

BASE = "Qwen/Qwen3-8B"


def make_batch(datums: int, tokens: int, seed: int = 0) -> List[Tuple[List[int], dict]]:
    rng = random.Random(seed)
    batch = []
    for _ in range(datums):
        seq = [rng.randrange(_lm.vocab_size(BASE)) for _ in range(tokens + 1)]
        batch.append((seq[:-1], {"target_tokens": seq[1:], "weights": [1.0] * tokens}))
    return batch


def train(rank: int, steps: int, batch: Sequence[Tuple[List[int], dict]], lr: float) -> Tuple[float, List[float]]:
    state = ModelState(BASE, rank, seed=1)
    curve = []
    t0 = time.perf_counter()
    for _ in range(steps):
        curve.append(_lm.forward_backward(state, batch, "cross_entropy").metrics["loss:sum"])
        state.adamw_step(lr, 0.9, 0.95, 1e-12, 0.0, 0.0)
    return time.perf_counter() - t0, curve


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args(argv)
    batch = make_batch(4, 32)
    positions = sum(len(tokens) for tokens, _ in batch)
    print("Training core: %d steps of %d datums x %d tokens, cross_entropy, AdamW lr=%g" % (
        args.steps, len(batch), positions // len(batch), args.lr))
    for rank in args.ranks:
        times = []
        for _ in range(args.repeats):
            seconds, curve = train(rank, args.steps, batch, args.lr)
            times.append(seconds)
        print("rank %3d  %7.3f s per %d steps (median of %d, min %.3f)  mean loss %.3f -> %.3f" % (
            rank, statistics.median(times), args.steps, len(times), min(times),
            curve[0] / positions, curve[-1] / positions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
