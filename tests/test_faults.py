"""The fault matrix: every fault on the wire against every persistence operation, each cell's outcome pinned.

The faults, the operations, the checks of the server's state and the expected outcome of every cell are in
``faultmatrix.py``; ``tools/fault_matrix.py`` runs the same cells and prints ``docs/fault-matrix.md``.
"""

import pathlib
import subprocess
import sys

import pytest

import tinkex_persist as tp
from faultmatrix import BUDGET, DELETE, FAULTS, MAX_RETRIES, OPS, POLL, SAVE, expected, open_cell, pinned_outcomes
from faultmatrix import render, run_cell

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "fault-matrix.md"
TOOL = ROOT / "tools" / "fault_matrix.py"


@pytest.fixture
def cell(local_server):
    """A :class:`faultmatrix.Cell` on a fresh server."""
    with open_cell(local_server) as c:
        yield c


class TestFaultMatrix:
    """Tests for every operation under every fault."""

    @pytest.mark.parametrize("op", OPS)
    @pytest.mark.parametrize("fault", FAULTS, ids=[f.label for f in FAULTS])
    def test_cell_has_its_pinned_outcome(self, cell, fault, op):
        """The operation ends with the cell's pinned outcome (success with the server state verified, or that
        typed error with no duplicate and no seq_id gap), and does not hang."""
        outcome, seconds = run_cell(cell, fault, op)
        assert (expected(fault, op), True) == (outcome, seconds < BUDGET)

    def test_committed_document_is_current(self):
        """``docs/fault-matrix.md`` is what ``tools/fault_matrix.py`` prints for the pinned outcomes."""
        assert render(pinned_outcomes()) == DOC.read_text()

    def test_tool_prints_the_rows_it_ran(self, tmp_path):
        """``tools/fault_matrix.py --only`` runs one fault's cells, prints the document on stdout (cells not run
        marked so), exits 0 when they match their pins, and writes nothing."""
        before = DOC.read_bytes()
        proc = subprocess.run([sys.executable, str(TOOL), "--only", "429"], capture_output=True, text=True,
                              timeout=120, cwd=str(tmp_path))
        rows = {line.split(" | ")[0]: line for line in proc.stdout.splitlines() if line.startswith("| ")}
        assert (0, "", before) == (proc.returncode, "".join(l for l in proc.stderr.splitlines() if "MISMATCH" in l),
                                   DOC.read_bytes())
        assert "| 429 with Retry-After | " + " | ".join(["ok"] * len(OPS)) + " |" == rows["| 429 with Retry-After"]
        assert "not run" in rows["| connection refused"]


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
        report = tp.delete_checkpoints(cell.service, [cell.source]).result(timeout=BUDGET)
        assert ["deleted"] == [o.status for o in report.outcomes]
        assert ["keep"] == cell.names(cell.source.split("/")[2])

    def test_non_json_poll_answer_is_retried(self, cell):
        """A 200 that is not JSON on retrieve_future is re-polled, not reported as the result."""
        tc = cell.service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result(timeout=BUDGET)
        cell.proxy.add("garbage", POLL, count=2)
        assert tc.model_id in tp.save_state(tc, "x").result(timeout=BUDGET).path
        assert 0 == cell.proxy.pending()
