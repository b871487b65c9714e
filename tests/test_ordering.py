"""Unit tests for per-model ordered submission (``_ordering.ModelQueue``), with an injected sender and no server."""

import threading
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tinkex_persist._ordering import ModelQueue
from tinkex_persist._retry import RequestHistory, Retry, attach
from tinkex_persist.exceptions import (
    APIConnectionError,
    BadRequestError,
    DecodeError,
    InternalServerError,
)


class Sender:
    """Records every send as ``(path, seq_id, idempotency key)``; answers from a script of outcomes.

    ``script`` maps the n-th send (0-based) to an exception to raise, or to ``("lost", exc)``: an attempt
    whose answer was lost (recorded in the history the error carries) and then ``exc``, or to ``("lost", None)``:
    a lost answer, then success.
    """

    def __init__(self, script: Optional[Dict[int, Any]] = None) -> None:
        self.script = dict(script or {})
        self.sent: List[Tuple[str, int, str]] = []
        self.lock = threading.Lock()

    def __call__(self, path: str, request: Dict[str, Any], key: str) -> Tuple[str, Tuple[RequestHistory, ...]]:
        with self.lock:
            n = len(self.sent)
            self.sent.append((path, request["seq_id"], key))
        outcome = self.script.get(n)
        retry = Retry()
        if isinstance(outcome, tuple):
            retry = retry.increment("POST", path, error="read timed out", maybe_applied=True)
            outcome = outcome[1]
        if outcome is not None:
            raise attach(outcome, retry)
        return "handle-%d" % n, retry.history


def _request(seq_id: int) -> Dict[str, Any]:
    return {"seq_id": seq_id}


class TestCallOrder:
    """Submissions are numbered and sent in call order, whichever thread sends them."""

    def test_seq_ids_follow_call_order_across_threads(self):
        """Twenty submissions queued in order and sent from twenty threads in reverse order reach the sender as 1..20."""
        sender = Sender()
        queue = ModelQueue(sender, "m:train:0")
        submissions = [queue.enqueue("/op%d" % i, _request) for i in range(20)]
        threads = [threading.Thread(target=queue.send_through, args=(s,)) for s in reversed(submissions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ([("/op%d" % i, i + 1) for i in range(20)], list(range(1, 21)), 21) == (
            [(path, seq) for path, seq, _ in sender.sent],
            [s.seq_id for s in submissions],
            queue.next_seq_id,
        )

    def test_first_seq_id_is_configurable(self):
        """A model whose first request was already sent (legacy create-from-state) continues at ``next_seq_id``."""
        sender = Sender()
        queue = ModelQueue(sender, "m:train:0", next_seq_id=2)
        queue.send_through(queue.enqueue("/save_weights", _request))
        assert [2] == [seq for _, seq, _ in sender.sent]

    def test_whoever_arrives_sends_everything_queued_before_it(self):
        """One worker (``max_workers=1``) sending the last submission sends all earlier ones first, each once."""
        sender = Sender()
        queue = ModelQueue(sender, "m:train:0")
        first, second, third = (queue.enqueue("/op", _request) for _ in range(3))
        handle = queue.send_through(third)
        assert ("handle-2", [1, 2, 3]) == (handle, [seq for _, seq, _ in sender.sent])
        # The earlier submissions were settled on the way: asking for them sends nothing more.
        assert ("handle-0", "handle-1", 3) == (queue.send_through(first), queue.send_through(second), len(sender.sent))

    def test_later_submission_is_not_sent(self):
        """Sending up to a submission leaves the ones queued after it in the queue."""
        sender = Sender()
        queue = ModelQueue(sender, "m:train:0")
        first = queue.enqueue("/a", _request)
        queue.enqueue("/b", _request)
        queue.send_through(first)
        assert [("/a", 1)] == [(path, seq) for path, seq, _ in sender.sent]


class TestFailures:
    """A failed send keeps the numbering gapless."""

    def test_unambiguous_failure_reuses_the_seq_id(self):
        """A 4xx answer means the server did not take the seq_id: the next submission gets the same one."""
        sender = Sender({0: BadRequestError("bad", status_code=400)})
        queue = ModelQueue(sender, "m:train:0")
        failed, nxt = queue.enqueue("/a", _request), queue.enqueue("/b", _request)
        with pytest.raises(BadRequestError):
            queue.send_through(failed)
        queue.send_through(nxt)
        assert [("/a", 1), ("/b", 1)] == [(path, seq) for path, seq, _ in sender.sent]

    @pytest.mark.parametrize(
        "failure",
        [
            ("lost", APIConnectionError("read timed out")),
            InternalServerError("boom", status_code=500),
            DecodeError("not JSON"),
        ],
        ids=["lost-answer", "5xx", "undecodable-2xx"],
    )
    def test_ambiguous_failure_is_resent_with_its_key_before_the_next(self, failure):
        """After a lost answer, a 5xx or an undecodable 2xx, that request is re-sent (same seq_id and key) before the next."""
        sender = Sender({0: failure})
        queue = ModelQueue(sender, "m:train:0")
        failed, nxt = queue.enqueue("/a", _request), queue.enqueue("/b", _request)
        with pytest.raises((APIConnectionError, InternalServerError, DecodeError)):
            queue.send_through(failed)
        queue.send_through(nxt)
        (p0, s0, k0), (p1, s1, k1), (p2, s2, k2) = sender.sent
        assert (("/a", 1), ("/a", 1, k0), ("/b", 2)) == ((p0, s0), (p1, s1, k1), (p2, s2))
        assert k2 != k0

    def test_resent_request_refused_with_4xx_frees_its_seq_id(self):
        """When the re-send of an ambiguous request gets a 4xx, the server never took it: the next reuses its seq_id."""
        sender = Sender({0: InternalServerError("boom", status_code=500), 1: BadRequestError("no", status_code=400)})
        queue = ModelQueue(sender, "m:train:0")
        failed, nxt = queue.enqueue("/a", _request), queue.enqueue("/b", _request)
        with pytest.raises(InternalServerError):
            queue.send_through(failed)
        queue.send_through(nxt)
        assert [("/a", 1), ("/a", 1), ("/b", 1)] == [(path, seq) for path, seq, _ in sender.sent]

    def test_outcome_still_unknown_blocks_the_next_without_sending_it(self):
        """If the re-send fails ambiguously again, the next submission fails with APIConnectionError and is not sent."""
        sender = Sender({0: InternalServerError("boom", status_code=500), 1: APIConnectionError("refused")})
        queue = ModelQueue(sender, "m:train:0")
        failed, blocked = queue.enqueue("/a", _request), queue.enqueue("/b", _request)
        with pytest.raises(InternalServerError):
            queue.send_through(failed)
        with pytest.raises(APIConnectionError, match="seq_id 1 of m:train:0 is still unknown") as info:
            queue.send_through(blocked)
        assert ([("/a", 1), ("/a", 1)], "refused") == (
            [(path, seq) for path, seq, _ in sender.sent],
            info.value.__cause__.message,
        )

    def test_settled_after_a_later_success(self):
        """Once the re-send succeeds, its seq_id is taken and later submissions continue after it."""
        sender = Sender({0: InternalServerError("boom", status_code=500), 1: APIConnectionError("refused")})
        queue = ModelQueue(sender, "m:train:0")
        subs = [queue.enqueue("/op%d" % i, _request) for i in range(3)]
        for s in subs[:2]:
            with pytest.raises((InternalServerError, APIConnectionError)):
                queue.send_through(s)
        queue.send_through(subs[2])
        assert [("/op0", 1), ("/op0", 1), ("/op0", 1), ("/op2", 2)] == [(p, s) for p, s, _ in sender.sent]


class TestHistory:
    """Each submission keeps the history of its failed attempts, from a success or from the error."""

    def test_success_after_a_lost_answer_is_marked_maybe_applied(self):
        """A submission whose first attempt lost its answer keeps that attempt, marked as possibly applied."""
        queue = ModelQueue(Sender({0: ("lost", None)}), "m:train:0")
        sub = queue.enqueue("/a", _request)
        assert "handle-0" == queue.send_through(sub)
        assert (True, ["read timed out"]) == (sub.maybe_applied, [h.error for h in sub.history])

    def test_clean_success_and_clean_failure_are_not(self):
        """A clean success and a 4xx without earlier attempts have an empty history."""
        queue = ModelQueue(Sender({1: BadRequestError("no", status_code=400)}), "m:train:0")
        ok, bad = queue.enqueue("/a", _request), queue.enqueue("/b", _request)
        queue.send_through(ok)
        with pytest.raises(BadRequestError):
            queue.send_through(bad)
        assert [(False, ()), (False, ())] == [(s.maybe_applied, s.history) for s in (ok, bad)]
