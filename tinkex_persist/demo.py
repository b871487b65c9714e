"""``python -m tinkex_persist demo``: save, crash, resume on an embedded server, and prove the resume exact."""

import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

from . import _wire
from .api import create_training_client_from_state, create_training_client_from_state_with_optimizer, save_state
from .client import ServiceClient, TrainingClient, runner_of, send_in_order

BASE_MODEL = "Qwen/Qwen3-8B"
#: Local servers accept any key unless started with one; the demo's server is private to the demo.
DEMO_KEY = "tml-local-demo"


def optim_step(tc: TrainingClient, learning_rate: float = 1e-2) -> Dict[str, float]:
    """Run one AdamW step on the server, in the client's request order. Local-server helper, not public API."""
    params = _wire.AdamParams(learning_rate=learning_rate)
    future = send_in_order(
        tc,
        "/optim_step",
        lambda seq_id: _wire.OptimStepRequest(model_id=tc.model_id, seq_id=seq_id, adam_params=params),
        _wire.OptimStepResponse,
        "OptimStep",
    )
    result = future.result()
    return result.metrics or {}


def model_state(service: ServiceClient, model_id: str) -> Dict[str, Any]:
    """Return the local server's view of a model: step and digests of weights and optimizer state."""
    resp = runner_of(service).transport.request("GET", "/local/v1/models/%s" % model_id)
    return resp.json()


def train(tc: TrainingClient, steps: int) -> None:
    """Run ``steps`` optimizer steps."""
    for _ in range(steps):
        optim_step(tc)


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
        with LocalServer(root) as server:
            say("Local Tinker-compatible server on %s (checkpoints under %s)" % (server.url, root))
            with ServiceClient(base_url=server.url, api_key=DEMO_KEY) as service:
                tc = service.create_lora_training_client(BASE_MODEL, rank=8, seed=1).result()
                say("1. Created training run %s; training %d steps" % (tc.model_id, steps))
                train(tc, steps)
                saved = save_state(tc, "step-%d" % steps).result()
                say("2. Saved %s" % saved.path)
                train(tc, steps)
                reference = model_state(service, tc.model_id)
                say("3. Uninterrupted run trained %d more steps: step %s, weights %s, optimizer %s"
                    % (steps, reference["step"], _short(reference["weights_sha256"]), _short(reference["optimizer_sha256"])))
        say("4. Crash: the server and every session are gone; only the checkpoint directory remains")
        with LocalServer(root) as server:
            say("5. Restarted the server on the same directory (%s)" % server.url)
            with ServiceClient(base_url=server.url, api_key=DEMO_KEY) as service:
                resumed = create_training_client_from_state_with_optimizer(service, saved.path).result()
                train(resumed, steps)
                exact = model_state(service, resumed.model_id)
                say("6. Resumed with optimizer as %s and trained %d steps: weights %s, optimizer %s"
                    % (resumed.model_id, steps, _short(exact["weights_sha256"]), _short(exact["optimizer_sha256"])))
                check("weights equal the uninterrupted run's", exact["weights_sha256"] == reference["weights_sha256"])
                check("optimizer state equals the uninterrupted run's", exact["optimizer_sha256"] == reference["optimizer_sha256"])
                plain = create_training_client_from_state(service, saved.path).result()
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
