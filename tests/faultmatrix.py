"""The fault matrix as data: every fault on the wire against every persistence operation, and the outcome
each cell must have.

A :class:`FaultProxy` sits between the client and a ``LocalServer``. For each (fault, operation) cell,
:func:`run_cell` runs the operation with the fault injected and checks the server's state: a success must
leave exactly the expected result on the server; a failure must be a typed error, leave no duplicate
checkpoint or model, and (for saves and loads) let the next request on the same training client succeed
with the next seq_id. ``Fault.expect`` pins each cell's outcome, so a cell that regresses from success to a
typed error (or changes its error class) fails ``tests/test_faults.py``. ``tools/fault_matrix.py`` runs the
matrix and prints ``docs/fault-matrix.md`` (:func:`render`).
"""

import contextlib
import os
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import tinkex_persist as tp
from conftest import TEST_KEY, Api
from faultproxy import FaultProxy
from tinkex_persist.localserver import LocalServer

SAVE = "/api/v1/save_weights"
LOAD = "/api/v1/load_weights"
POLL = "/api/v1/retrieve_future"
DELETE = "/api/v1/training_runs/*/checkpoints/*"
OPS = (
    "save_state",
    "load_state",
    "load_state_with_optimizer",
    "create_training_client_from_state",
    "create_training_client_from_state_with_optimizer",
    "delete",
)
SUBMIT_PATH = {
    "save_state": SAVE,
    "load_state": LOAD,
    "load_state_with_optimizer": LOAD,
    "create_training_client_from_state": LOAD,
    "create_training_client_from_state_with_optimizer": LOAD,
    "delete": DELETE,
}
#: Client settings of every cell: 4 attempts, no back-off, short timeouts.
MAX_RETRIES = 3
CLIENT = dict(
    backoff_factor=0,
    max_retries=MAX_RETRIES,
    timeout=(1.0, 0.5),
    poll_read_timeout=1.0,
    poll_timeout=3.0,
    retry_deadline=3.0,
    heartbeat_interval=None,
)
#: No operation of a cell may take longer than this (far above what the settings above allow): a hang guard.
BUDGET = 8.0

#: The outcome of a cell that succeeded with the server state verified.
OK = "ok"
#: The outcome of a cell whose operation sends no request the fault applies to.
NA = "n/a"


def every(outcome: str) -> Tuple[str, ...]:
    """The same expected outcome for every operation."""
    return (outcome,) * len(OPS)


class Fault(NamedTuple):
    """One row of the matrix: how to inject it, where (``None``: the operation's submit path), and the
    expected outcome of each operation, in :data:`OPS` order."""

    label: str
    kind: str
    options: Dict[str, Any]
    expect: Tuple[str, ...]
    path: Optional[str] = None
    count: int = 1


FAULTS = [
    Fault("connection refused", "refuse", {}, every("APIConnectionError")),
    Fault("reset before the request is read", "reset_before", {}, every(OK)),
    Fault("reset after commit (lost ack)", "lost_ack", {}, every(OK)),
    Fault("answer stalled past the read timeout", "stall", {"seconds": 2.0}, every(OK)),
    Fault("500 burst (3)", "status", {"status": 500}, every(OK), count=3),
    Fault("502 burst (3)", "status", {"status": 502}, every(OK), count=3),
    Fault("503 burst (3)", "status", {"status": 503}, every(OK), count=3),
    Fault(
        "503 burst longer than the retries",
        "status",
        {"status": 503},
        every("InternalServerError")[:-1] + ("CheckpointDeleteError",),
        count=MAX_RETRIES + 1,
    ),
    Fault("429 with Retry-After", "status", {"status": 429, "headers": (("Retry-After", "0.05"),)}, every(OK)),
    Fault("408 storm on retrieve_future", "status", {"status": 408}, every(OK)[:-1] + (NA,), path=POLL, count=4),
    Fault(
        "410 on retrieve_future",
        "status",
        {"status": 410, "body": b'{"detail": "gone"}'},
        every("PromiseExpiredError")[:-1] + (NA,),
        path=POLL,
    ),
    Fault("connection cut mid-body", "truncate", {}, every(OK)),
    Fault("truncated JSON, 200", "short_json", {}, every(OK)),
    Fault("non-JSON body, 200", "garbage", {}, every(OK)),
    Fault("wrong content type", "wrong_type", {}, every(OK)),
    Fault("slow trickle of bytes", "trickle", {"seconds": 0.005}, every(OK)),
]
FAULTS_BY_LABEL = {f.label: f for f in FAULTS}


def expected(fault: Fault, op: str) -> str:
    """The pinned outcome of one cell."""
    return fault.expect[OPS.index(op)]


# --------------------------------------------------------------------------- one cell


class Cell:
    """A server, a proxy in front of it, a client through the proxy, and a seeded source checkpoint."""

    def __init__(self, server: LocalServer, proxy: FaultProxy) -> None:
        self.server = server
        self.proxy = proxy
        self.service = tp.ServiceClient(base_url=proxy.url, api_key=TEST_KEY, **CLIENT)
        raw = Api(server.url)
        mid = raw.model(rank=8, seed=5)
        raw.train(mid, 1)
        self.source = raw.save(mid, 3, "src")["path"]
        raw.save(mid, 4, "keep")
        self.source_entry = self.store.get(self.source)

    @property
    def store(self) -> Any:
        return self.server.store

    def models(self) -> int:
        assert self.server.service is not None
        return len(self.server.service.model_ids())

    def model(self, model_id: str) -> Dict[str, Any]:
        return self.server.model_info(model_id)

    def accepted_seq_ids(self, model_id: str) -> List[int]:
        assert self.server.service is not None
        return self.server.service.accepted_seq_ids(model_id)

    def names(self, run_id: str) -> List[str]:
        return sorted(e["name"] for e in self.store.list(run_id))

    def data_dirs(self) -> int:
        return len(os.listdir(os.path.join(self.server.root, "data")))

    def inject(self, fault: Fault, op: str) -> None:
        if fault.kind == "refuse":
            self.proxy.refuse()
        else:
            self.proxy.add(fault.kind, fault.path or SUBMIT_PATH[op], count=fault.count, **fault.options)

    def heal(self, fault: Fault) -> None:
        if fault.kind == "refuse":
            self.proxy.restore()
        self.proxy.clear()

    def close(self) -> None:
        self.proxy.refuse()  # a closed client must not wait on a proxy connection
        self.service.close()


@contextlib.contextmanager
def open_cell(server: LocalServer) -> Iterator[Cell]:
    """A :class:`Cell` on a running server, with its proxy; closed at the end."""
    with FaultProxy(server.url) as proxy:
        cell = Cell(server, proxy)
        try:
            yield cell
        finally:
            cell.close()


def _run(fn: Callable[[], Any]) -> Tuple[Any, Optional[BaseException], float]:
    t0 = time.monotonic()
    try:
        value, error = fn().result(timeout=BUDGET + 5), None
    except tp.TinkexPersistError as exc:
        value, error = None, exc
    return value, error, time.monotonic() - t0


def _follow_up_save(c: Cell, tc: tp.TrainingClient) -> None:
    """The next request on ``tc`` succeeds with the next seq_id, and the accepted seq_ids have no gap."""
    result = tp.save_state(tc, "after").result(timeout=BUDGET)
    info = c.model(tc.model_id)
    accepted = c.accepted_seq_ids(tc.model_id)
    assert (info["next_seq_id"] - 1, list(range(1, info["next_seq_id"]))) == (result.seq_id, accepted)
    entry = c.store.get(result.path)
    assert info["weights_sha256"] == entry["weights_sha256"]


def _check_loaded(c: Cell, model_id: str, optimizer: bool) -> None:
    info = c.model(model_id)
    expected_state = (c.source_entry["weights_sha256"], 1 if optimizer else 0)
    assert expected_state == (info["weights_sha256"], info["step"])
    if optimizer:
        assert c.source_entry["optimizer_sha256"] == info["optimizer_sha256"]


def _save(c: Cell, fault: Fault) -> Tuple[str, float]:
    tc = c.service.create_lora_training_client("Qwen/Qwen3-8B", rank=8, seed=1).result(timeout=BUDGET)
    c.inject(fault, "save_state")
    result, error, seconds = _run(lambda: tp.save_state(tc, "x"))
    c.heal(fault)
    names = c.names(tc.model_id)
    if error is None:
        entry = c.store.get(result.path)
        info = c.model(tc.model_id)
        assert ("tinker://%s/weights/x" % tc.model_id, ["x"]) == (result.path, names)
        assert (info["weights_sha256"], info["optimizer_sha256"]) == (entry["weights_sha256"], entry["optimizer_sha256"])
        assert info["next_seq_id"] - 1 == result.seq_id
    else:
        assert names in ([], ["x"])  # committed or not, never twice
    _follow_up_save(c, tc)
    return _outcome(error), seconds


def _load(c: Cell, fault: Fault, optimizer: bool) -> Tuple[str, float]:
    op = "load_state_with_optimizer" if optimizer else "load_state"
    tc = c.service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result(timeout=BUDGET)
    c.inject(fault, op)
    fn = tp.load_state_with_optimizer if optimizer else tp.load_state
    result, error, seconds = _run(lambda: fn(tc, c.source))
    c.heal(fault)
    if error is None:
        assert (c.source, tc.model_id, optimizer) == (result.path, result.model_id, result.optimizer)
        _check_loaded(c, tc.model_id, optimizer)
    _follow_up_save(c, tc)
    return _outcome(error), seconds


def _from_state(c: Cell, fault: Fault, optimizer: bool) -> Tuple[str, float]:
    op = "create_training_client_from_state" + ("_with_optimizer" if optimizer else "")
    c.service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result(timeout=BUDGET)  # opens the session
    before = c.models()
    c.inject(fault, op)
    fn = tp.create_training_client_from_state_with_optimizer if optimizer else tp.create_training_client_from_state
    tc, error, seconds = _run(lambda: fn(c.service, c.source))
    c.heal(fault)
    if error is None:
        assert before + 1 == c.models()
        _check_loaded(c, tc.model_id, optimizer)
        _follow_up_save(c, tc)
    else:
        assert c.models() in (before, before + 1)
    return _outcome(error), seconds


def _delete(c: Cell, fault: Fault) -> Tuple[str, float]:
    if fault.path == POLL:
        return NA, 0.0
    run_id = c.source.split("/")[2]
    c.inject(fault, "delete")
    report, error, seconds = _run(lambda: tp.delete_checkpoints(c.service, [c.source]))
    c.heal(fault)
    names = c.names(run_id)
    if error is None:
        assert ([c.source], ["keep"]) == (report.deleted, names)
    else:
        assert names in (["keep"], ["keep", "src"])
    assert len(c.store.list()) == c.data_dirs()
    return _outcome(error), seconds


def _outcome(error: Optional[BaseException]) -> str:
    if error is None:
        return OK
    assert isinstance(error, tp.TinkexPersistError)
    return type(error).__name__


def run_cell(c: Cell, fault: Fault, op: str) -> Tuple[str, float]:
    """Run one cell and check the server's state; return the outcome (``ok``, ``n/a`` or the error class
    name) and the seconds the operation took. Raises ``AssertionError`` when the state is wrong."""
    if op == "save_state":
        outcome, seconds = _save(c, fault)
    elif op.startswith("load_state"):
        outcome, seconds = _load(c, fault, op.endswith("optimizer"))
    elif op.startswith("create_training_client"):
        outcome, seconds = _from_state(c, fault, op.endswith("optimizer"))
    else:
        outcome, seconds = _delete(c, fault)
    assert len(c.store.list()) == c.data_dirs()
    return outcome, seconds


def run_cell_on_a_fresh_server(fault: Fault, op: str) -> Tuple[str, float]:
    """Run one cell on a new LocalServer in a temporary directory (what ``tools/fault_matrix.py`` does)."""
    with tempfile.TemporaryDirectory(prefix="fault-matrix-") as root:
        with LocalServer(root) as server, open_cell(server) as cell:
            return run_cell(cell, fault, op)


# --------------------------------------------------------------------------- the document


def summary(outcomes: Dict[Tuple[str, str], str]) -> Dict[str, int]:
    """Outcome kind (``ok``, ``typed error``, ``n/a``) -> number of cells."""
    out: Dict[str, int] = {}
    for outcome in outcomes.values():
        key = outcome if outcome in (OK, NA) else "typed error"
        out[key] = out.get(key, 0) + 1
    return out


def pinned_outcomes() -> Dict[Tuple[str, str], str]:
    """(fault label, operation) -> the outcome pinned in :data:`FAULTS`."""
    return {(f.label, op): expected(f, op) for f in FAULTS for op in OPS}


def render(outcomes: Dict[Tuple[str, str], str]) -> str:
    """Return ``docs/fault-matrix.md`` for these outcomes."""
    counts = ", ".join("%d %s" % (n, k) for k, n in sorted(summary(outcomes).items()))
    lines = [
        "# Fault matrix",
        "",
        "Outcome of each operation under each fault (%s)." % counts,
        "",
        "`ok`: the future succeeded and the server holds exactly the expected result. An error name: the future "
        "failed with that typed error within the configured budget, the server holds no duplicate checkpoint or "
        "model, and (for saves and loads) the next request on the same training client succeeds with the next "
        "seq_id, with no gap. `n/a`: the operation sends no such request. Each cell's outcome is pinned in "
        "`tests/faultmatrix.py` and checked by `tests/test_faults.py`; this page is produced by "
        "`python tools/fault_matrix.py --write`.",
        "",
        "| fault | " + " | ".join("`%s`" % op for op in OPS) + " |",
        "|---" * (len(OPS) + 1) + "|",
    ]
    for fault in FAULTS:
        cells = [outcomes.get((fault.label, op), "not run") for op in OPS]
        lines.append("| %s | %s |" % (fault.label, " | ".join(cells)))
    return "\n".join(lines) + "\n"
