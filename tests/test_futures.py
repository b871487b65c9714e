"""Tests for ordering, concurrency and the thread pool behind the Futures."""

import concurrent.futures
import threading

import pytest

import tinkex_persist as tp

from conftest import TEST_KEY


def _client(server, **kw):
    kw.setdefault("heartbeat_interval", None)
    return tp.ServiceClient(base_url=server.url, api_key=TEST_KEY, backoff_factor=0, **kw)


class TestOrdering:
    """Tests for per-model seq_id ordering under concurrency."""

    def test_16_threads_50_saves_on_4_clients_keep_seq_ids_gapless(self, local_server):
        """16 threads x 50 saves over 4 training clients: each model sees seq_ids 1..N in order, every Future resolves."""
        with _client(local_server, max_workers=8) as svc:
            clients = [svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30) for _ in range(4)]
            futures = []
            lock = threading.Lock()
            barrier = threading.Barrier(16)

            def worker(t):
                barrier.wait()
                for i in range(50):
                    fut = tp.save_state(clients[(t + i) % 4], "t%d-i%d" % (t, i))
                    with lock:
                        futures.append(fut)

            threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            results = [f.result(timeout=120) for f in futures]
        assert 800 == len({r.path for r in results})
        for tc in clients:
            seqs = [s for s in local_server.seq_log[tc.model_id] if s is not None]
            assert list(range(1, 201)) == seqs
            listed = local_server.service.list_run(tc.model_id)["checkpoints"]
            assert 200 == len(listed)

    def test_seq_ids_follow_call_order_within_a_thread(self, local_server):
        """Saves issued in order from one thread get increasing seq_ids in that order."""
        with _client(local_server, max_workers=4) as svc:
            tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
            futs = [tp.save_state(tc, "s%02d" % i) for i in range(20)]
            seqs = [f.result(timeout=30).seq_id for f in futs]
        assert list(range(1, 21)) == seqs


class TestSingleWorker:
    """Tests for ``max_workers=1``: no task ever waits on another queued task."""

    def test_create_from_state_and_20_saves_complete(self, local_server):
        """With one worker, create-from-state plus 20 saves all complete without deadlock."""
        with _client(local_server, max_workers=1) as svc:
            tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
            path = tp.save_state(tc, "base").result(timeout=30).path
            resumed_fut = tp.create_training_client_from_state_with_optimizer(svc, path)
            resumed = resumed_fut.result(timeout=30)
            futs = [tp.save_state(resumed, "s%d" % i) for i in range(20)]
            done, not_done = concurrent.futures.wait(futs, timeout=60)
        assert (20, 0) == (len(done), len(not_done))
        assert list(range(1, 21)) == [f.result().seq_id for f in futs]


class TestLifecycle:
    """Tests for close(), cancellation and errors through Futures."""

    def test_close_waits_for_running_operations(self, tmp_path):
        """close() returns only after queued operations finished, and their results are kept."""
        from tinkex_persist.localserver import LocalServer

        with LocalServer(tmp_path, complete_delay=0.05) as server:
            svc = _client(server, max_workers=2)
            tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
            futs = [tp.save_state(tc, "c%d" % i) for i in range(4)]
            svc.close()
            assert all(f.done() for f in futs)
            assert 4 == len({f.result().path for f in futs})

    def test_cancel_before_start_sends_nothing_for_that_call(self, tmp_path):
        """A Future cancelled before its work item starts reports cancelled, as CPython's pool does."""
        from tinkex_persist.localserver import LocalServer

        with LocalServer(tmp_path, complete_delay=0.1) as server, _client(server, max_workers=1) as svc:
            tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
            first = tp.save_state(tc, "first")
            second = tp.save_state(tc, "second")
            cancelled = second.cancel()
            first.result(timeout=30)
            assert cancelled and second.cancelled()

    def test_close_stops_all_threads(self, local_server):
        """After close(), the pool and heartbeat threads are gone."""
        def ours():
            return sorted(t.name for t in threading.enumerate() if t.name.startswith("tinkex_persist"))

        svc = _client(local_server, max_workers=4, heartbeat_interval=0.05)
        tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
        [f.result(timeout=30) for f in [tp.save_state(tc, "x%d" % i) for i in range(8)]]
        assert "tinkex_persist-heartbeat" in ours()
        svc.close()
        assert [] == ours()

    def test_server_failure_arrives_through_the_future(self, local_server, training_client):
        """A server error is set on the Future as a typed exception, not raised at call time."""
        local_server.faults.add("/api/v1/save_weights", status=403, body={"detail": "forbidden here"})
        fut = tp.save_state(training_client, "denied")
        with pytest.raises(tp.PermissionDeniedError) as info:
            fut.result(timeout=30)
        assert "forbidden here" in str(info.value)
        # The refused request did not consume a seq_id: the next save is seq_id 1.
        assert 1 == tp.save_state(training_client, "after").result(timeout=30).seq_id
