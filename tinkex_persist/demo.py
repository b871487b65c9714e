"""``python -m tinkex_persist demo``: save, crash, resume on an embedded server, and prove the resume exact."""

import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

from .api import (
    create_training_client_from_state,
    forward_backward,
    optim_step as _optim_step,
)
from .checkpointer import Checkpointer
from .client import ServiceClient, TrainingClient, runner_of
from .training_types import AdamParams, Datum, ModelInput

BASE_MODEL = "Qwen/Qwen3-8B"
#: Local servers accept any key unless started with one; the demo's server is private to the demo.
DEMO_KEY = "tml-local-demo"
#: Learning rate of the demo's AdamW steps.
LEARNING_RATE = 0.05
#: The demo's fixed training batch: token ids as a Qwen3 tokenizer would give them, each predicting the next.
SEQUENCES = (
    (9707, 11, 1879, 0, 576, 3974, 13876, 38835),
    (785, 3974, 374, 264, 1273, 315, 279, 1849),
    (40, 1075, 5426, 6467, 304, 13027, 13),
)


def batch() -> List[Datum]:
    """The demo's fixed batch: next-token cross-entropy on each sequence, every position weighted 1."""
    return [
        Datum(
            model_input=ModelInput.from_ints(list(seq[:-1])),
            loss_fn_inputs={"target_tokens": list(seq[1:]), "weights": [1.0] * (len(seq) - 1)},
        )
        for seq in SEQUENCES
    ]


def train_step(tc: TrainingClient, learning_rate: float = LEARNING_RATE) -> float:
    """Run one training step on the fixed batch and return its ``loss:sum``.

    A ``forward_backward`` computes the loss and its gradient, then ``optim_step`` applies the gradient (AdamW).
    Both are submitted before waiting, as a training loop pipelines them.
    """
    fb = forward_backward(tc, batch(), "cross_entropy")
    step = _optim_step(tc, AdamParams(learning_rate=learning_rate))
    loss = fb.result().metrics["loss:sum"]
    step.result()
    return loss


def model_state(service: ServiceClient, model_id: str) -> Dict[str, Any]:
    """Return the local server's view of a model: step and digests of weights and optimizer state."""
    resp = runner_of(service).transport.request("GET", "/local/v1/models/%s" % model_id)
    return resp.json()


def train(
    tc: TrainingClient, steps: int, *, checkpointer: Optional[Checkpointer] = None, start: int = 0
) -> List[float]:
    """Run ``steps`` training steps (:func:`train_step`) on the fixed batch; return the losses.

    With a ``checkpointer``, ``checkpointer.step(tc, n)`` follows each step, ``n`` counting the steps completed
    from ``start``.
    """
    losses = []
    for done in range(start, start + steps):
        losses.append(train_step(tc))
        if checkpointer is not None:
            checkpointer.step(tc, done + 1)
    return losses


def _curve(losses: Sequence[float]) -> str:
    return " ".join("%.3f" % x for x in losses)


def _short(digest: str) -> str:
    return digest[:12]


def run(out: TextIO, steps: int = 5) -> bool:
    """Run the demo, writing a report to ``out``; return True when every check holds."""
    from .localserver import LocalServer

    t0 = time.monotonic()
    checks: List[bool] = []

    def say(msg: str) -> None:
        out.write(msg + "\n")
        out.flush()

    def check(label: str, ok: bool, detail: str = "") -> None:
        checks.append(ok)
        say("  [%s] %s%s" % ("ok" if ok else "FAILED", label, (" (%s)" % detail) if detail else ""))

    with tempfile.TemporaryDirectory(prefix="tinkex-persist-demo-") as root:
        store, log_dir = os.path.join(root, "server"), os.path.join(root, "log")
        with LocalServer(store) as server:
            say("Local Tinker-compatible server on %s (checkpoints under %s)" % (server.url, store))
            with ServiceClient(base_url=server.url, api_key=DEMO_KEY) as service:
                ckpt = Checkpointer(service, log_dir, save_every=steps)
                tc, start = ckpt.resume_or_create(BASE_MODEL, rank=8, seed=1)
                say("1. Checkpointer found no record in %s: created training run %s; training %d steps "
                    "(forward_backward + optim_step, cross-entropy on %d sequences)"
                    % (log_dir, tc.model_id, steps, len(SEQUENCES)))
                first = train(tc, steps, checkpointer=ckpt, start=start)
                say("   loss:sum per step: %s" % _curve(first))
                saved = ckpt.plan()
                saved_path = saved.path or ""  # the steps above saved one
                say("2. Checkpointer saved %s at step %d and recorded it in %s" % (saved_path, saved.start, ckpt.path))
                second = train(tc, steps)
                say("   loss:sum per step: %s" % _curve(second))
                check("loss falls over the %d steps" % (2 * steps), second[-1] < first[0],
                      "%.3f -> %.3f" % (first[0], second[-1]))
                reference = model_state(service, tc.model_id)
                say("3. Uninterrupted run trained %d more steps: step %s, weights %s, optimizer %s"
                    % (steps, reference["step"], _short(reference["weights_sha256"]), _short(reference["optimizer_sha256"])))
        say("4. Crash: the server and every session are gone; only the checkpoint directory and the log remain")
        with LocalServer(store) as server:
            say("5. Restarted the server on the same directory (%s)" % server.url)
            with ServiceClient(base_url=server.url, api_key=DEMO_KEY) as service:
                ckpt = Checkpointer(service, log_dir, save_every=steps)
                resumed, start = ckpt.resume_or_create(BASE_MODEL, rank=8, seed=1)
                again = train(resumed, steps, checkpointer=ckpt, start=start)
                exact = model_state(service, resumed.model_id)
                say("6. Checkpointer resumed from its %s at step %d (weights and optimizer) as %s and trained %d steps: "
                    "weights %s, optimizer %s" % (ckpt.source, start, resumed.model_id, steps,
                                                  _short(exact["weights_sha256"]), _short(exact["optimizer_sha256"])))
                say("   loss:sum per step: %s" % _curve(again))
                check("the resumed loss curve equals the uninterrupted run's", again == second)
                check("weights equal the uninterrupted run's", exact["weights_sha256"] == reference["weights_sha256"])
                check("optimizer state equals the uninterrupted run's", exact["optimizer_sha256"] == reference["optimizer_sha256"])
                plain = create_training_client_from_state(service, saved_path).result()
                train(plain, steps)
                weights_only = model_state(service, plain.model_id)
                say("7. Resumed weights only as %s and trained %d steps: weights %s"
                    % (plain.model_id, steps, _short(weights_only["weights_sha256"])))
                check("a weights-only resume diverges (fresh Adam moments)",
                      weights_only["weights_sha256"] != reference["weights_sha256"])
    ok = all(checks)
    say("%s in %.2f s" % ("All checks passed" if ok else "Some checks FAILED", time.monotonic() - t0))
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; exit status 0 only if every check holds."""
    return 0 if run(sys.stdout) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
