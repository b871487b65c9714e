"""The retry policy and the deadline: an immutable ``Retry`` with its attempt history, back-off,
``Retry-After`` in both forms, a total time bound per answer, and a quick, named failure for errors
that cannot heal."""

import pickle
import socket
import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import attrs
import pytest

import tinkex_persist as tp
from tinkex_persist import cli
from tinkex_persist._retry import RETRY_AFTER_MAX, Deadline, RequestHistory, Retry, attach, parse_retry_after, retries_of
from tinkex_persist._transport import Transport
from tinkex_persist.config import Config
from tinkex_persist.localserver import LocalServer

from conftest import TEST_KEY

HEALTH = "/api/v1/healthz"


def _transport(url, **kw):
    kw.setdefault("backoff_factor", 0)
    return Transport(Config(base_url=url, api_key=TEST_KEY, **kw))


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestRetryPolicy:
    """Tests for ``Retry``: immutability, history, back-off and exhaustion."""

    def test_increment_returns_a_new_policy_and_leaves_the_old_one_alone(self):
        """``increment`` returns a new policy with one retry fewer and one more history entry; the original is unchanged."""
        first = Retry(total=2, deadline=Deadline(10))
        second = first.increment("POST", "/api/v1/save_weights", status=503, maybe_applied=True)
        assert (2, (), 0) == (first.total, first.history, first.failures)
        assert (1, 1) == (second.total, second.failures)
        assert (RequestHistory("POST", "/api/v1/save_weights", None, 503, True),) == second.history

    def test_policy_is_frozen(self):
        """A policy cannot be changed in place."""
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            Retry().total = 5

    def test_history_records_errors_statuses_and_what_may_have_been_applied(self):
        """Each entry keeps method, path, error or status, the Retry-After asked for, and whether it may have been applied."""
        r = Retry(deadline=Deadline(10))
        r = r.increment("GET", "/a", error="connection refused to 127.0.0.1:1", unreachable=True)
        assert not r.maybe_applied
        r = r.increment("GET", "/a", status=429, headers={"Retry-After": "3"})
        r = r.increment("GET", "/a", error="no answer", maybe_applied=True)
        assert [
            ("connection refused to 127.0.0.1:1", None, False, None),
            (None, 429, False, 3.0),
            ("no answer", None, True, None),
        ] == [(h.error, h.status, h.maybe_applied, h.retry_after) for h in r.history]
        assert r.maybe_applied

    def test_backoff_grows_by_the_base_up_to_the_cap(self):
        """Without jitter the back-off is factor * base ** (n - 1), capped at backoff_max; 0 before any failure."""
        r = Retry(total=None, backoff_factor=0.5, backoff_base=2, backoff_max=3, jitter=False)
        waits = [r.get_backoff_time()]
        for _ in range(5):
            r = r.increment("GET", "/a", status=503)
            waits.append(r.get_backoff_time())
        assert [0.0, 0.5, 1.0, 2.0, 3.0, 3.0] == waits

    def test_jittered_backoff_stays_below_the_unjittered_value(self):
        """With jitter each back-off is drawn in [0, factor * base ** (n - 1)]."""
        r = Retry(backoff_factor=1.0).increment("GET", "/a", status=503).increment("GET", "/a", status=503)
        draws = [r.get_backoff_time() for _ in range(200)]
        assert (True, True) == (all(0 <= d <= 2.0 for d in draws), len(set(draws)) > 1)

    def test_max_history_keeps_the_newest_entries_and_the_failure_count(self):
        """With max_history the history keeps only the newest entries; the back-off still counts every failure."""
        r = Retry(total=None, max_history=1, backoff_factor=1, jitter=False, backoff_max=100)
        for status in (500, 502, 503):
            r = r.increment("GET", "/a", status=status)
        assert ([503], 3, 4.0) == ([h.status for h in r.history], r.failures, r.get_backoff_time())

    def test_total_exhausts_after_that_many_retries(self):
        """``total=1`` allows one retry: exhausted after the second failure."""
        r = Retry(total=1).increment("GET", "/a", status=503)
        assert not r.is_exhausted()
        assert r.increment("GET", "/a", status=503).is_exhausted()

    def test_patience_bounds_retries_of_an_unreachable_server(self):
        """Refusals are retried only within ``patience`` of the first one; other failures are not bounded by it."""
        r = Retry(total=None, patience=0.05, deadline=Deadline(60))
        assert not r.increment("GET", "/a", status=503).is_exhausted()
        refused = r.increment("GET", "/a", error="refused", unreachable=True)
        assert refused.time_left() <= 0.05
        time.sleep(0.06)
        assert (True, False) == (refused.is_exhausted(), refused.sleep(0.01))

    def test_is_retry_follows_the_status_list(self):
        """Only the listed statuses are retried."""
        r = Retry()
        assert [True, True, True, False, False] == [r.is_retry(s) for s in (408, 429, 503, 404, 501)]

    def test_sleep_refuses_a_wait_past_the_deadline(self):
        """``sleep`` returns False at once when the wait would end after the deadline, and True after a short wait."""
        r = Retry(deadline=Deadline(0.5)).increment("GET", "/a", status=503, headers={"Retry-After": "30"})
        t0 = time.monotonic()
        assert (30.0, False) == (r.next_wait(), r.sleep())
        assert time.monotonic() - t0 < 0.5
        assert r.sleep(0.01)

    def test_retry_after_can_be_ignored(self):
        """With ``respect_retry_after_header=False`` the back-off is used instead."""
        r = Retry(respect_retry_after_header=False, backoff_factor=0.25, jitter=False)
        assert 0.25 == r.increment("GET", "/a", status=429, headers={"Retry-After": "30"}).next_wait()

    def test_policy_pickles_with_its_history(self):
        """A policy (attached to an error that crosses processes) survives pickling."""
        r = Retry(deadline=Deadline(10)).increment("GET", "/a", error="reset", maybe_applied=True)
        copy = pickle.loads(pickle.dumps(r))
        assert (r.history, r.total) == (copy.history, copy.total)
        assert abs(r.deadline.remaining() - copy.deadline.remaining()) < 1


class TestInterruptPolicy:
    """Tests for ``Retry.interrupt`` and ``Transport.abort``."""

    def test_set_interrupt_ends_a_wait_at_once(self):
        """A wait under a set interrupt returns False at once; an error's recorded policy drops the event (it pickles)."""
        import threading

        stop = threading.Event()
        r = Retry(interrupt=stop).increment("GET", "/a", status=503)
        assert (False, True) == (r.interrupted, r.sleep(0.01))
        stop.set()
        t0 = time.monotonic()
        assert (True, False) == (r.interrupted, r.sleep(30))
        assert time.monotonic() - t0 < 5
        exc = attach(tp.APIConnectionError("x"), r)
        assert r.history == pickle.loads(pickle.dumps(exc)).retries.history

    def test_aborted_transport_sends_nothing(self, proxy):
        """After ``abort()`` a request fails with APIConnectionError saying the client is stopping; nothing is sent."""
        t = _transport(proxy.url)
        t.abort()
        with pytest.raises(tp.APIConnectionError, match="stopping"):
            t.request("POST", HEALTH, b"{}")
        with pytest.raises(tp.APIConnectionError, match="not sent"):
            t.send("GET", HEALTH)
        assert [] == proxy.paths()

    def test_abort_during_back_off_ends_the_call(self, proxy):
        """An abort while the call waits to retry a 503 ends it at once with the stopping error, chained to the 503."""
        import threading

        proxy.add("status", HEALTH, status=503, count=5)
        t = _transport(proxy.url, backoff_factor=30, backoff_max=30)
        threading.Timer(0.3, t.abort).start()
        t0 = time.monotonic()
        with pytest.raises(tp.APIConnectionError, match="stopping") as info:
            t.request("GET", HEALTH)
        assert time.monotonic() - t0 < 10
        assert isinstance(info.value.__cause__, tp.InternalServerError)


class TestRetryAfter:
    """Tests for parsing ``Retry-After``."""

    NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()

    @pytest.mark.parametrize(
        "value, expected",
        [
            ("3", 3.0),
            (" 0.5 ", 0.5),
            ("-4", 0.0),
            ("86400", RETRY_AFTER_MAX),
            ("Fri, 02 Jan 2026 03:04:35 GMT", 30.0),
            ("Fri, 02 Jan 2026 03:04:35 -0000", 30.0),
            ("Fri, 02 Jan 2026 04:04:05 +0100", 0.0),
            ("Fri, 02 Jan 2026 03:00:00 GMT", 0.0),
            ("Wed, 31 Dec 2025 23:59:59 GMT", 0.0),
            ("nan", None),
            ("soon", None),
            ("", None),
            (None, None),
        ],
    )
    def test_seconds_and_http_dates(self, value, expected):
        """Delay-seconds and HTTP dates (RFC 9110) give a wait clamped to [0, RETRY_AFTER_MAX]; junk gives None."""
        assert expected == parse_retry_after(value, now=self.NOW)


class TestDeadline:
    """Tests for ``Deadline``."""

    def test_unbounded_deadline_never_expires(self):
        """``Deadline(None)`` has infinite time left."""
        d = Deadline(None)
        assert (float("inf"), False, 5.0) == (d.remaining(), d.expired(), d.cap(5.0))

    def test_remaining_expired_and_cap(self):
        """A passed deadline is expired; ``cap`` cuts a timeout to the time left but not below the floor."""
        assert Deadline(0).expired()
        d = Deadline(100)
        assert (False, 2.0, 1.0) == (d.expired(), d.cap(2.0), Deadline(-5).cap(60.0, 1.0))
        assert d.cap(1000.0) <= 100

    def test_earliest_picks_the_sooner_bound(self):
        """``earliest`` returns whichever deadline ends first; an unbounded one never wins."""
        soon, late, never = Deadline(1), Deadline(100), Deadline(None)
        assert (soon, soon, soon, late) == (soon.earliest(late), late.earliest(soon), soon.earliest(never),
                                            never.earliest(late))
        assert soon is soon.earliest(None)
        assert "in " in repr(soon) and "none" in repr(never)


class TestRetryAfterOverHttp:
    """Tests for ``Retry-After`` answers through the transport."""

    def test_http_date_is_honoured_then_the_retry_succeeds(self, proxy):
        """429 with an HTTP-date Retry-After a moment ahead: the client waits for it, then succeeds."""
        # HTTP dates have whole seconds: two seconds ahead is still ahead once truncated.
        when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=2), usegmt=True)
        proxy.add("status", HEALTH, status=429, headers=(("Retry-After", when),))
        resp = _transport(proxy.url).request("GET", HEALTH)
        assert (200, [HEALTH, HEALTH]) == (resp.status, proxy.paths())
        assert 0 < resp.retries.history[0].retry_after <= 3

    def test_http_date_past_the_deadline_fails_without_waiting(self, proxy):
        """A Retry-After date beyond the call's deadline ends the call at once with the 429."""
        when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
        proxy.add("status", HEALTH, status=429, headers=(("Retry-After", when),))
        t0 = time.monotonic()
        with pytest.raises(tp.RateLimitError) as info:
            _transport(proxy.url, retry_deadline=5).request("GET", HEALTH)
        assert time.monotonic() - t0 < 5
        assert ([HEALTH], 1) == (proxy.paths(), len(retries_of(info.value).history))


class _Trickler:
    """A raw-socket HTTP server on loopback that sends its head at once, then the body one byte at a time."""

    def __init__(self, interval, body=b'{"ok": true}' + b" " * 400):
        self.interval = interval
        self.body = body
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(self.body))
                for i in range(len(self.body)):
                    if self.stop.wait(self.interval):
                        return
                    conn.sendall(self.body[i : i + 1])
            except OSError:
                return

    def close(self):
        self.stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (closing alone does not, on Linux)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def trickler():
    """A server trickling its answer one byte every 0.2 s, well inside a 1 s read timeout."""
    server = _Trickler(0.2)
    yield server
    server.close()


class TestTotalTimeBound:
    """Tests for the bound on the whole answer: a trickle just inside the read timeout still ends by the deadline."""

    def test_trickling_answer_ends_by_the_deadline(self, trickler):
        """Each byte arrives inside the read timeout, yet the call raises APITimeoutError by its deadline."""
        t0 = time.monotonic()
        with pytest.raises(tp.APITimeoutError) as info:
            _transport(trickler.url, timeout=(1.0, 1.0), retry_deadline=1.5).request("GET", HEALTH)
        assert time.monotonic() - t0 < 1.5 + 2
        assert "not complete by the deadline" in str(info.value)

    def test_trickling_answer_to_an_operation_ends_by_the_deadline(self, trickler):
        """A public operation against a trickling server fails with APITimeoutError by its retry deadline."""
        t0 = time.monotonic()
        with tp.ServiceClient(base_url=trickler.url, api_key=TEST_KEY, timeout=(1.0, 1.0), retry_deadline=1.5,
                              heartbeat_interval=None) as svc:
            with pytest.raises(tp.APITimeoutError):
                tp.list_checkpoints(svc).result(timeout=30)
        assert time.monotonic() - t0 < 1.5 + 2


class TestTimeToFail:
    """Tests for errors that cannot heal (no retries) and for a refused connection (a few seconds), each named."""

    def test_refused_connection_names_the_address_and_gives_up_after_the_patience(self):
        """A closed port fails with "connection refused to 127.0.0.1:<port>" once ``connect_patience`` has run out,
        though retries and the deadline would allow much longer; no attempt counts as possibly applied."""
        port = _closed_port()
        t0 = time.monotonic()
        with pytest.raises(tp.APIConnectionError) as info:
            _transport("http://127.0.0.1:%d" % port, backoff_factor=0.05, backoff_max=0.1, connect_patience=0.5,
                       max_retries=1000).request("POST", HEALTH, b"{}")
        assert time.monotonic() - t0 < 0.5 + 2
        assert "POST %s failed: connection refused to 127.0.0.1:%d" % (HEALTH, port) == str(info.value)
        history = retries_of(info.value).history
        assert (True, False) == (len(history) > 1, any(h.maybe_applied for h in history))

    def test_default_refused_connection_fails_within_seconds(self):
        """With default settings (10 retries, 5 min deadline) a refused connection fails within the default patience."""
        from tinkex_persist.config import DEFAULT_CONNECT_PATIENCE

        port = _closed_port()
        t0 = time.monotonic()
        with pytest.raises(tp.APIConnectionError, match="connection refused"):
            Transport(Config(base_url="http://127.0.0.1:%d" % port)).request("GET", HEALTH)
        assert time.monotonic() - t0 < DEFAULT_CONNECT_PATIENCE + 2

    def test_patience_reaches_a_server_that_starts_late(self, tmp_path):
        """With ``connect_patience=None`` refusals are retried up to the deadline: a server started meanwhile answers."""
        port = _closed_port()
        started = []

        def start_later():
            time.sleep(0.3)
            started.append(LocalServer(tmp_path / "late", port=port).start())

        t = threading.Thread(target=start_later)
        t.start()
        try:
            resp = _transport("http://127.0.0.1:%d" % port, backoff_factor=0.05, backoff_max=0.1,
                              max_retries=1000, connect_patience=None, retry_deadline=20).request("GET", HEALTH)
        finally:
            t.join()
            for server in started:
                server.stop()
        assert 200 == resp.status
        assert all("connection refused" in h.error for h in resp.retries.history)

    def test_unresolvable_host_fails_at_once(self):
        """A host name that cannot resolve fails after one attempt, naming the host."""
        with pytest.raises(tp.APIConnectionError) as info:
            _transport("https://nonexistent.invalid", max_retries=10, backoff_factor=5).request("GET", HEALTH)
        assert "GET %s failed: cannot resolve host nonexistent.invalid" % HEALTH == str(info.value)
        assert 1 == len(retries_of(info.value).history)

    def test_https_to_an_http_server_fails_at_once(self, local_server):
        """``https://`` against the plain-HTTP server is a TLS handshake failure: one attempt, the cause named."""
        url = local_server.url.replace("http://", "https://")
        with pytest.raises(tp.APIConnectionError) as info:
            _transport(url, max_retries=10, backoff_factor=5).request("GET", HEALTH)
        port = int(url.rsplit(":", 1)[1])
        assert str(info.value).startswith("GET %s failed: TLS handshake failed with 127.0.0.1:%d: " % (HEALTH, port))
        assert 1 == len(retries_of(info.value).history)

    def test_read_timeout_is_named_and_retried(self, proxy):
        """A stalled answer is an APITimeoutError naming the read timeout; it may have been applied, so it is
        marked so in the history, and it is retried."""
        proxy.add("stall", HEALTH, seconds=2, count=2)
        with pytest.raises(tp.APITimeoutError) as info:
            _transport(proxy.url, max_retries=1, timeout=(1.0, 0.2)).request("GET", HEALTH)
        assert "no answer from 127.0.0.1:%d within the read timeout" % int(proxy.url.rsplit(":", 1)[1]) in str(info.value)
        assert [True, True] == [h.maybe_applied for h in retries_of(info.value).history]

    def test_lost_answer_is_named_and_may_have_been_applied(self, proxy):
        """A connection closed without an answer is retried, and recorded as possibly applied."""
        proxy.add("lost_ack", HEALTH)
        resp = _transport(proxy.url).request("GET", HEALTH)
        assert 200 == resp.status
        [entry] = resp.retries.history
        assert (True, True) == (entry.maybe_applied, "without an answer" in entry.error)

    def test_verbose_cli_logs_each_attempt(self, capsys, monkeypatch):
        """``-v`` shows each refused attempt and the retry decisions; the final message names the cause."""
        port = _closed_port()
        monkeypatch.setenv("TINKER_API_KEY", TEST_KEY)
        monkeypatch.setenv("TINKEX_PERSIST_CONNECT_PATIENCE", "0.5")
        code = cli.main(["--base-url", "http://127.0.0.1:%d" % port, "-v", "list"])
        _, err = capsys.readouterr()
        refused = "connection refused to 127.0.0.1:%d" % port
        attempts = [line for line in err.splitlines() if "failed after" in line and refused in line]
        assert (True, True, True) == (code != 0, len(attempts) >= 2, "retrying GET" in err)
        assert TEST_KEY not in err


ARCHIVE_API = "/api/v1/training_runs/*/archive"


class TestDownloadUnderThePolicy:
    """Tests for the archive wait and the download resume, which follow the same policy."""

    @pytest.fixture
    def keyed_server(self, tmp_path):
        """An older server: the archive route and no ``save_weights_external``, so downloads take the archive."""
        from conftest import SERVER_KEY

        with LocalServer(tmp_path / "keyed-server", api_key=SERVER_KEY, external_weights=False) as server:
            yield server

    def test_archive_wait_honours_an_http_date(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """A 503 whose Retry-After is an HTTP date a moment ahead is waited out, then the download completes."""
        _, (path,) = seed_run(["a"])
        when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=1), usegmt=True)
        keyed_server.faults.add(ARCHIVE_API, status=503, headers={"Retry-After": when}, body={"detail": "building"})
        phases = []
        result = tp.download_checkpoint(mgmt_service, path, str(tmp_path), progress=lambda p: phases.append(p.phase)).result()
        assert (["waiting"], True) == ([p for p in phases if p == "waiting"], result.sha256_verified)

    def test_archive_wait_ends_at_once_when_the_date_is_past_the_budget(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """A Retry-After date beyond the wait budget ends the wait at once with APITimeoutError after one check."""
        _, (path,) = seed_run(["a"])
        when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=300), usegmt=True)
        keyed_server.faults.add(ARCHIVE_API, status=503, headers={"Retry-After": when}, count=5)
        t0 = time.monotonic()
        with pytest.raises(tp.APITimeoutError, match=r"not ready after \d+ s \(1 checks") as info:
            tp.download_checkpoint(mgmt_service, path, str(tmp_path), wait_timeout=30).result()
        assert time.monotonic() - t0 < 30
        assert [503] == [h.status for h in retries_of(info.value).history]

    def test_signed_url_at_an_unresolvable_host_fails_at_once(self, mgmt_service, keyed_server, seed_run, tmp_path):
        """A signed URL whose host cannot resolve is not resumed: DownloadError names the host, no resume tried."""
        _, (path,) = seed_run(["a"])
        keyed_server.faults.add(ARCHIVE_API, status=302, headers={"Location": "https://nonexistent.invalid/a.tar"}, body={})
        with pytest.raises(tp.DownloadError) as info:
            tp.download_checkpoint(mgmt_service, path, str(tmp_path), max_resumes=5).result()
        assert "(cannot resolve host nonexistent.invalid); 0 resume(s) tried" in str(info.value)
        assert 1 == len(retries_of(info.value).history)


_CHILD = r"""
import sys
import tinkex_persist as tp

def run(svc):
    tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()
    fut = tp.save_state(tc, "slow")
    print("waiting", flush=True)
    fut.result()
    print("saved", flush=True)

if sys.argv[2] == "with":
    with tp.ServiceClient(base_url=sys.argv[1], api_key="k", heartbeat_interval=None) as svc:
        run(svc)
else:
    run(tp.ServiceClient(base_url=sys.argv[1], api_key="k", heartbeat_interval=None))
"""


class TestInterrupt:
    """Tests for Ctrl-C while a save is pending on the server: the process ends within seconds, the save not reported."""

    @pytest.fixture
    def keyed_server(self, tmp_path):
        """An older server (archive route, no ``save_weights_external``): the download test interrupts the archive."""
        from conftest import SERVER_KEY

        with LocalServer(tmp_path / "keyed-server", api_key=SERVER_KEY, external_weights=False) as server:
            yield server

    @pytest.mark.parametrize("form", ["with", "bare"])
    def test_first_ctrl_c_ends_the_process(self, tmp_path, form):
        """One SIGINT during ``save_state(...).result()`` (the server holds each poll for 12 s) ends the process
        within seconds, with SIGINT's exit status and without "saved"."""
        import signal
        import subprocess
        import sys

        with LocalServer(tmp_path / "srv", api_key="k") as server:
            child = subprocess.Popen([sys.executable, "-c", _CHILD, server.url, form], cwd=str(tmp_path),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert "ready\n" == child.stdout.readline()
                server.faults.add("/api/v1/retrieve_future", delay=12, count=10)
                child.stdin.write("go\n")
                child.stdin.flush()
                assert "waiting\n" == child.stdout.readline()
                time.sleep(0.5)  # let the worker enter the held long-poll
                t0 = time.monotonic()
                child.send_signal(signal.SIGINT)
                out, err = child.communicate(timeout=30)
                took = time.monotonic() - t0
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        assert (True, "", True) == (child.returncode in (-signal.SIGINT, 130), out, "KeyboardInterrupt" in err)
        assert took < 10

    def test_first_ctrl_c_stops_a_download_and_keeps_the_partial_file(self, keyed_server, mgmt_service, seed_run,
                                                                      tmp_path):
        """One SIGINT during ``download_checkpoint(...).result()`` on a slow transfer ends the process within
        seconds; what arrived stays in ``<target>.tar.part`` for a later call to resume."""
        import signal
        import subprocess
        import sys
        from urllib.parse import urlsplit

        import requests

        from conftest import SERVER_KEY
        from faultproxy import FaultProxy

        _, (path,) = seed_run(["a"])
        run, kind, name = path[len("tinker://"):].split("/")
        api = "%s/api/v1/training_runs/%s/checkpoints/%s/%s/archive" % (keyed_server.url, run, kind, name)
        signed = requests.get(api, headers={"X-API-Key": SERVER_KEY}, allow_redirects=False, timeout=10).headers["Location"]
        dest = tmp_path / "dest"
        script = (
            "import sys, tinkex_persist as tp\n"
            "with tp.ServiceClient(base_url=sys.argv[1], api_key=sys.argv[2], heartbeat_interval=None) as svc:\n"
            "    fut = tp.download_checkpoint(svc, sys.argv[3], sys.argv[4])\n"
            "    print('waiting', flush=True)\n"
            "    fut.result()\n"
            "    print('done', flush=True)\n"
        )
        with FaultProxy(keyed_server.url) as proxy:
            proxy.add("trickle", "/local/v1/archives/*", seconds=0.01)
            keyed_server.faults.add(ARCHIVE_API, status=302, headers={"Location": proxy.url + urlsplit(signed).path}, body={})
            child = subprocess.Popen([sys.executable, "-c", script, keyed_server.url, SERVER_KEY, path, str(dest)],
                                     cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert "waiting\n" == child.stdout.readline()
                part = dest / run / kind / (name + ".tar.part")
                deadline = time.monotonic() + 20
                while not (part.exists() and part.stat().st_size > 0) and time.monotonic() < deadline:
                    time.sleep(0.05)
                t0 = time.monotonic()
                child.send_signal(signal.SIGINT)
                out, err = child.communicate(timeout=30)
                took = time.monotonic() - t0
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        assert (True, "", True) == (child.returncode in (-signal.SIGINT, 130), out, "KeyboardInterrupt" in err)
        assert took < 10
        assert part.stat().st_size > 0


class TestPollSchedule:
    """The waits between polls of a future the server answers ``try_again`` at once (no long-poll)."""

    def test_result_pending_two_seconds_costs_twelve_polls(self):
        """Simulated without sleeping: a result ready 2 s after the first poll is seen by the 12th poll."""
        from tinkex_persist._ops import poll_waits
        from tinkex_persist._retry import schedule

        times = schedule(poll_waits(), 2.0)
        assert 12 == len(times)
        assert 0.05 == pytest.approx(times[-1] - 2.0)

    def test_no_gap_between_polls_exceeds_the_cap(self):
        """Every wait is at most POLL_MAX_WAIT, so detection lags a result by at most that (plus a round trip)."""
        from tinkex_persist._ops import POLL_MAX_WAIT, poll_waits
        from tinkex_persist._retry import schedule

        times = schedule(poll_waits(), 10.0, round_trip=0.001)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert POLL_MAX_WAIT + 0.001 == pytest.approx(max(gaps))
        assert [0.051, 0.201] == [round(g, 6) for g in gaps[:2]]

    def test_schedule_needs_a_deterministic_policy(self):
        """A jittered policy has no fixed schedule: schedule() refuses it."""
        from tinkex_persist._retry import schedule

        with pytest.raises(ValueError):
            schedule(Retry(jitter=True), 1.0)
