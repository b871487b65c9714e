"""The fault matrix: every fault on the wire against every persistence operation.

A :class:`FaultProxy` sits between the client and a ``LocalServer``. For each (fault, operation) pair the
future must either succeed with the server holding exactly the expected result, or fail with a typed
error within the configured budget; never a false success, a duplicate checkpoint or model, a gap or
duplicate seq_id, or a hang. The matrix (fault x operation -> outcome) is printed, written under the
pytest temporary directory, and, when the whole matrix ran, to ``docs/fault-matrix.md``.
"""

import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest

import tinkex_persist as tp
from conftest import TEST_KEY, Api
from faultproxy import FaultProxy
from tinkex_persist.manage import delete_checkpoints

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
#: No operation of a cell may take longer than this (it is far above what the settings above allow).
BUDGET = 8.0


class Fault(NamedTuple):
    """One row of the matrix: how to inject it, and where (``None``: the operation's submit path)."""

    label: str
    kind: str
    options: Dict[str, Any]
    path: Optional[str] = None
    count: int = 1


FAULTS = [
    Fault("connection refused", "refuse", {}),
    Fault("reset before the request is read", "reset_before", {}),
    Fault("reset after commit (lost ack)", "lost_ack", {}),
    Fault("answer stalled past the read timeout", "stall", {"seconds": 2.0}),
    Fault("500 burst (3)", "status", {"status": 500}, count=3),
    Fault("502 burst (3)", "status", {"status": 502}, count=3),
    Fault("503 burst (3)", "status", {"status": 503}, count=3),
    Fault("503 burst longer than the retries", "status", {"status": 503}, count=MAX_RETRIES + 1),
    Fault("429 with Retry-After", "status", {"status": 429, "headers": (("Retry-After", "0.05"),)}),
    Fault("408 storm on retrieve_future", "status", {"status": 408}, path=POLL, count=4),
    Fault("410 on retrieve_future", "status", {"status": 410, "body": b'{"detail": "gone"}'}, path=POLL),
    Fault("connection cut mid-body", "truncate", {}),
    Fault("truncated JSON, 200", "short_json", {}),
    Fault("non-JSON body, 200", "garbage", {}),
    Fault("wrong content type", "wrong_type", {}),
    Fault("slow trickle of bytes", "trickle", {"seconds": 0.005}),
]


# --------------------------------------------------------------------------- the matrix artefact

_RESULTS: Dict[Tuple[str, str], Tuple[str, float]] = {}


def _table(with_times: bool) -> str:
    lines = ["| fault | " + " | ".join("`%s`" % op for op in OPS) + " |", "|---" * (len(OPS) + 1) + "|"]
    for fault in FAULTS:
        cells = []
        for op in OPS:
            outcome, seconds = _RESULTS.get((fault.label, op), ("not run", 0.0))
            cells.append("%s (%.2fs)" % (outcome, seconds) if with_times and outcome != "n/a" else outcome)
        lines.append("| %s | %s |" % (fault.label, " | ".join(cells)))
    return "\n".join(lines) + "\n"


def counts() -> Dict[str, int]:
    """Outcome -> number of cells."""
    out: Dict[str, int] = {}
    for outcome, _ in _RESULTS.values():
        key = "ok" if outcome == "ok" else "n/a" if outcome == "n/a" else "typed error"
        out[key] = out.get(key, 0) + 1
    return out


@pytest.fixture(scope="module", autouse=True)
def matrix_artefact(tmp_path_factory):
    """Write the matrix after the module: with timings under the pytest tmp dir, without them in docs/."""
    yield
    if not _RESULTS:
        return
    summary = ", ".join("%d %s" % (n, k) for k, n in sorted(counts().items()))
    text = "# Fault matrix\n\nOutcome of each operation under each fault (%s).\n\n" % summary
    out = tmp_path_factory.mktemp("fault-matrix") / "fault-matrix.md"
    out.write_text(text + _table(with_times=True))
    print("\n" + text + _table(with_times=True) + "written to %s" % out)
    if len(_RESULTS) == len(FAULTS) * len(OPS):
        stable = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "fault-matrix.md")
        body = (
            text
            + "`ok`: the future succeeded and the server holds exactly the expected result. An error name: the future "
            "failed with that typed error within the configured budget, the server holds no duplicate checkpoint or "
            "model, and (for saves and loads) the next request on the same training client succeeds with the next "
            "seq_id, with no gap. `n/a`: the operation sends no such request. "
            "Regenerated by `pytest tests/test_faults.py`.\n\n" + _table(with_times=False)
        )
        if not os.path.exists(stable) or open(stable).read() != body:
            with open(stable, "w") as f:
                f.write(body)


# --------------------------------------------------------------------------- one cell


class Cell:
    """A server, a proxy in front of it, a client through the proxy, and a seeded source checkpoint."""

    def __init__(self, server, proxy: FaultProxy) -> None:
        self.server = server
        self.proxy = proxy
        self.service = tp.ServiceClient(base_url=proxy.url, api_key=TEST_KEY, **CLIENT)
        raw = Api(server.url)
        mid = raw.model(rank=8, seed=5)
        raw.step(mid, 1)
        self.source = raw.save(mid, 2, "src")["path"]
        raw.save(mid, 3, "keep")
        self.source_entry = server.service.store.get(self.source)

    def models(self) -> int:
        return len(self.server.service.model_ids())

    def model(self, model_id: str) -> Dict[str, Any]:
        return self.server.model_info(model_id)

    def accepted_seq_ids(self, model_id: str) -> List[int]:
        return self.server.service.accepted_seq_ids(model_id)

    def names(self, run_id: str) -> List[str]:
        return sorted(e["name"] for e in self.server.service.store.list(run_id))

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
        while self.proxy.pending():
            self.proxy._take("*")


@pytest.fixture
def cell(local_server):
    """A :class:`Cell` on a fresh server."""
    with FaultProxy(local_server.url) as proxy:
        c = Cell(local_server, proxy)
        try:
            yield c
        finally:
            proxy.refuse()  # a closed client must not wait on a proxy connection
            c.service.close()


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
    entry = c.server.service.store.get(result.path)
    assert info["weights_sha256"] == entry["weights_sha256"]


def _check_loaded(c: Cell, model_id: str, optimizer: bool) -> None:
    info = c.model(model_id)
    expected = (c.source_entry["weights_sha256"], 1 if optimizer else 0)
    assert expected == (info["weights_sha256"], info["step"])
    if optimizer:
        assert c.source_entry["optimizer_sha256"] == info["optimizer_sha256"]


def _save(c: Cell, fault: Fault) -> Tuple[str, float]:
    tc = c.service.create_lora_training_client("Qwen/Qwen3-8B", rank=8, seed=1).result(timeout=BUDGET)
    c.inject(fault, "save_state")
    result, error, seconds = _run(lambda: tp.save_state(tc, "x"))
    c.heal(fault)
    names = c.names(tc.model_id)
    if error is None:
        entry = c.server.service.store.get(result.path)
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
        return "n/a", 0.0
    run_id = c.source.split("/")[2]
    c.inject(fault, "delete")
    report, error, seconds = _run(lambda: delete_checkpoints(c.service, [c.source]))
    c.heal(fault)
    names = c.names(run_id)
    if error is None:
        assert ([c.source], ["keep"]) == (report.deleted, names)
    else:
        assert names in (["keep"], ["keep", "src"])
    assert len(c.server.service.store.list()) == c.data_dirs()
    return _outcome(error), seconds


def _outcome(error: Optional[BaseException]) -> str:
    if error is None:
        return "ok"
    assert isinstance(error, tp.TinkexPersistError)
    return type(error).__name__


class TestFaultMatrix:
    """Tests for every operation under every fault."""

    @pytest.mark.parametrize("op", OPS)
    @pytest.mark.parametrize("fault", FAULTS, ids=[f.label for f in FAULTS])
    def test_succeeds_exactly_once_or_fails_typed_within_budget(self, cell, fault, op):
        """The future succeeds with exactly the expected server state, or fails typed, in budget, with no duplicate."""
        if op == "save_state":
            outcome, seconds = _save(cell, fault)
        elif op.startswith("load_state"):
            outcome, seconds = _load(cell, fault, op.endswith("optimizer"))
        elif op.startswith("create_training_client"):
            outcome, seconds = _from_state(cell, fault, op.endswith("optimizer"))
        else:
            outcome, seconds = _delete(cell, fault)
        _RESULTS[(fault.label, op)] = (outcome, seconds)
        assert seconds < BUDGET
        assert len(cell.server.service.store.list()) == cell.data_dirs()


class TestAmbiguousOutcomes:
    """Tests for requests whose outcome the client cannot know."""

    def test_unknown_save_is_settled_before_the_next_request(self, cell):
        """A save whose every attempt got a 503 fails typed; the next save first re-sends it under the same
        idempotency key (the server applies it once), so seq_ids stay gapless."""
        tc = cell.service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result(timeout=BUDGET)
        cell.proxy.add("status", SAVE, status=503, count=MAX_RETRIES + 1)
        with pytest.raises(tp.InternalServerError):
            tp.save_state(tc, "x").result(timeout=BUDGET)
        assert [] == cell.names(tc.model_id)
        assert 2 == tp.save_state(tc, "y").result(timeout=BUDGET).seq_id
        saves = [r for r in cell.proxy.records if r.path == SAVE]
        assert 1 == len({r.headers["x-idempotency-key"] for r in saves[: MAX_RETRIES + 2]})
        assert (["x", "y"], [1, 2]) == (cell.names(tc.model_id), cell.accepted_seq_ids(tc.model_id))

    def test_refused_connection_does_not_consume_a_seq_id(self, cell):
        """A save that never connected leaves no gap: after the outage the next save takes seq_id 1."""
        tc = cell.service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result(timeout=BUDGET)
        cell.proxy.refuse()
        with pytest.raises(tp.APIConnectionError):
            tp.save_state(tc, "x").result(timeout=BUDGET)
        cell.proxy.restore()
        assert 1 == tp.save_state(tc, "y").result(timeout=BUDGET).seq_id
        assert ["y"] == cell.names(tc.model_id)

    def test_still_unknown_outcome_fails_the_next_request_without_sending_it(self, cell):
        """While the earlier request stays unanswerable, later ones on that client fail typed, naming it."""
        tc = cell.service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result(timeout=BUDGET)
        cell.proxy.add("status", SAVE, status=503, count=2 * (MAX_RETRIES + 1) + 1)
        with pytest.raises(tp.InternalServerError):
            tp.save_state(tc, "x").result(timeout=BUDGET)
        with pytest.raises(tp.APIConnectionError) as info:
            tp.save_state(tc, "y").result(timeout=BUDGET)
        assert "seq_id 1" in str(info.value) and "still unknown" in str(info.value)
        assert isinstance(info.value.__cause__, tp.InternalServerError)
        assert 1 == tp.save_state(tc, "z").result(timeout=BUDGET).seq_id - 1
        assert ["x", "z"] == cell.names(tc.model_id)

    def test_delete_whose_answer_was_lost_reports_deleted(self, cell):
        """A delete committed before its answer was lost is reported ``deleted`` (the retry's 404 is its own work)."""
        cell.proxy.add("lost_ack", DELETE)
        report = delete_checkpoints(cell.service, [cell.source]).result(timeout=BUDGET)
        assert ["deleted"] == [o.status for o in report.outcomes]
        assert ["keep"] == cell.names(cell.source.split("/")[2])

    def test_non_json_poll_answer_is_retried(self, cell):
        """A 200 that is not JSON on retrieve_future is re-polled, not reported as the result."""
        tc = cell.service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result(timeout=BUDGET)
        cell.proxy.add("garbage", POLL, count=2)
        assert tc.model_id in tp.save_state(tc, "x").result(timeout=BUDGET).path
        assert 0 == cell.proxy.pending()
