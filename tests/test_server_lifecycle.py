"""Tests for ``LocalServer``'s life cycle: one server per root, context managers, and its typed options."""

import json
import os
import signal
import subprocess
import sys
import threading

import attrs
import pytest

from tinkex_persist import cli
from tinkex_persist.localserver import FaultQueue, LocalServer, RootInUseError, ServerOptions

#: Serves argv[1] through the command line until killed; prints the URL first.
SERVE_CLI = [sys.executable, "-m", "tinkex_persist", "serve", "--root"]


def _serve(root):
    proc = subprocess.Popen(SERVE_CLI + [str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    return proc, watchdog


def _end(proc, watchdog):
    watchdog.cancel()
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


def _listed(api):
    return sorted(c["tinker_path"] for c in api.get("/api/v1/checkpoints", params={"limit": 10000}).json()["checkpoints"])


class TestOneServerPerRoot:
    """Tests for the root lock: a second server refuses a root in use, so no acknowledged save is lost."""

    def test_second_server_is_refused_with_a_typed_error(self, tmp_path):
        """While a server runs, starting another on its root raises ``RootInUseError`` naming the root and owner."""
        with LocalServer(tmp_path):
            with pytest.raises(RootInUseError) as info:
                LocalServer(tmp_path).start()
        assert (str(tmp_path), True) == (info.value.root, "pid %d" % os.getpid() in str(info.value))
        assert "in use by another local server" in str(info.value)

    def test_second_server_refused_by_bind_too(self, tmp_path):
        """``bind()`` (the foreground path of ``serve``) is refused the same way, and binds no port."""
        with LocalServer(tmp_path):
            second = LocalServer(tmp_path)
            with pytest.raises(RootInUseError):
                second.bind()
            assert False is second.running

    def test_start_and_stop_of_a_second_server_loses_no_save(self, tmp_path, api_for):
        """A second server started (refused) and stopped on the root leaves every later save of the first
        intact: after a restart all are listed, load, and no data directory was removed."""
        with LocalServer(tmp_path) as first:
            api = api_for(first.url)
            mid = api.model()
            paths = [api.save(mid, 1, "before")["path"]]
            second = LocalServer(tmp_path)
            with pytest.raises(RootInUseError):
                second.start()
            second.stop()
            paths += [api.save(mid, seq, "after-%d" % seq)["path"] for seq in range(2, 6)]
        with LocalServer(tmp_path) as restarted:
            api = api_for(restarted.url)
            assert sorted(paths) == _listed(api)
            assert 5 == len(os.listdir(tmp_path / "data"))
            sid = api.session()
            loaded = [api.load(p, False, session_id=sid, model_seq_id=i)["type"] for i, p in enumerate(paths)]
            assert ["load_weights"] * 5 == loaded

    def test_lock_is_released_by_stop(self, tmp_path):
        """After ``stop()`` another server may serve the root, and the first may restart after that one stops."""
        first = LocalServer(tmp_path).start()
        first.stop()
        with LocalServer(tmp_path) as second:
            assert True is second.running
        first.start()
        first.stop()
        assert False is first.running

    def test_lock_is_released_when_the_owner_is_killed(self, tmp_path, api_for):
        """A server killed with SIGKILL leaves the root free: the next server starts and lists its saves."""
        proc, watchdog = _serve(tmp_path)
        try:
            api = api_for(proc.stdout.readline().strip())
            path = api.save(api.model(), 1, "a")["path"]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            _end(proc, watchdog)
        with LocalServer(tmp_path) as server:
            assert [path] == _listed(api_for(server.url))

    def test_second_process_fails_clearly(self, tmp_path, api_for):
        """Two ``serve`` processes on one root: the second exits 1 with one line on stderr, the error naming the
        root (no "serving checkpoints from" line before it), the first keeps serving, and every save it acknowledged survives a restart."""
        first, watchdog = _serve(tmp_path)
        try:
            api = api_for(first.stdout.readline().strip())
            mid = api.model()
            paths = [api.save(mid, seq, "s%d" % seq)["path"] for seq in range(1, 4)]
            second = subprocess.run(SERVE_CLI + [str(tmp_path)], capture_output=True, text=True, timeout=60)
            paths += [api.save(mid, seq, "s%d" % seq)["path"] for seq in range(4, 7)]
            assert sorted(paths) == _listed(api)
            first.send_signal(signal.SIGTERM)
            assert 0 == first.wait(20)
        finally:
            _end(first, watchdog)
        (error,) = second.stderr.splitlines()
        assert (1, "") == (second.returncode, second.stdout)
        assert error.startswith("error: ") and str(tmp_path) in error and "in use by another local server" in error
        with LocalServer(tmp_path) as server:
            assert sorted(paths) == _listed(api_for(server.url))
            assert 6 == len(os.listdir(tmp_path / "data"))

    def test_concurrent_savers_and_intruders_lose_nothing(self, tmp_path, api_for):
        """Saves from several threads while other servers keep trying to open the root: every intruder is
        refused, and every acknowledged save is listed after a restart."""
        refused = []
        stop = threading.Event()

        def intrude():
            while not stop.is_set():
                try:
                    LocalServer(tmp_path).start().stop()
                except RootInUseError:
                    refused.append(1)

        with LocalServer(tmp_path) as server:
            acked = []

            def save(worker):
                api = api_for(server.url)
                mid = api.model()
                acked.extend(api.save(mid, seq, "w%d-%d" % (worker, seq))["path"] for seq in range(1, 11))

            intruder = threading.Thread(target=intrude, daemon=True)
            intruder.start()
            savers = [threading.Thread(target=save, args=(w,)) for w in range(4)]
            for t in savers:
                t.start()
            for t in savers:
                t.join(60)
            stop.set()
            intruder.join(60)
        with LocalServer(tmp_path) as restarted:
            assert (40, sorted(acked)) == (len(acked), _listed(api_for(restarted.url)))
        assert len(refused) >= 1

    def test_journal_removed_behind_the_server_loses_nothing(self, tmp_path, api_for):
        """A journal deleted under a running server is rewritten from the server's state at the next change,
        so the saves it acknowledged before and after survive a restart."""
        with LocalServer(tmp_path) as server:
            api = api_for(server.url)
            mid = api.model()
            first = api.save(mid, 1, "a")["path"]
            os.unlink(tmp_path / "journal.log")
            second = api.save(mid, 2, "b")["path"]
        with LocalServer(tmp_path) as server:
            assert sorted([first, second]) == _listed(api_for(server.url))


class TestFailedStart:
    """Tests for a start that fails after the root was locked: the lock is released again."""

    def test_port_in_use(self, tmp_path):
        """A port already bound raises ``OSError``; the root is free for the next server."""
        with LocalServer(tmp_path / "a") as first:
            with pytest.raises(OSError):
                LocalServer(tmp_path / "b", port=first.port).start()
        with LocalServer(tmp_path / "b") as second:
            assert True is second.running

    def test_unreadable_certificate(self, tmp_path):
        """A missing certificate file raises ``OSError``; the root is free for the next server."""
        with pytest.raises(OSError):
            LocalServer(tmp_path, certfile=str(tmp_path / "missing.pem")).start()
        with LocalServer(tmp_path) as server:
            assert True is server.running

    def test_corrupt_index(self, tmp_path):
        """An index that is not JSON fails the start with ``ValueError``, touching nothing; once the index is
        removed the next server in the same process starts (the failed one released its lock)."""
        tmp_path.joinpath("index.json").write_bytes(b"{not json")
        with pytest.raises(ValueError):
            LocalServer(tmp_path).start()
        tmp_path.joinpath("index.json").unlink()
        with LocalServer(tmp_path) as server:
            assert True is server.running


class TestServeCommandFailsQuietly:
    """Tests for ``serve`` that cannot start: it says so in one line, and nothing before it claims it serves."""

    @pytest.fixture(params=["root", "port"])
    def taken(self, request, tmp_path):
        """``(argv, what the error names)`` for a serve whose root, or whose port, a running server holds."""
        with LocalServer(tmp_path / "held") as held:
            if request.param == "root":
                yield ["serve", "--root", str(tmp_path / "held")], "in use by another local server"
            else:
                yield ["serve", "--root", str(tmp_path / "free"), "--port", str(held.port)], str(held.port)

    def test_one_line_on_stderr_and_exit_1(self, taken, capsys):
        """A root in use or a port taken: exit 1, nothing on stdout, exactly one ``error:`` line on stderr."""
        argv, named = taken
        code = cli.main(argv)
        out, err = capsys.readouterr()
        (line,) = err.splitlines()
        assert (1, "", True, True) == (code, out, line.startswith("error: "), named in line)

    def test_json_prints_one_object(self, taken, capsys):
        """With --json the failure is one JSON object on stdout (and the one line on stderr); no URL object."""
        argv, named = taken
        code = cli.main(argv + ["--json"])
        out, err = capsys.readouterr()
        data = json.loads(out)
        assert (1, ["error"], True, 1) == (code, list(data), named in data["error"]["message"], len(err.splitlines()))


class TestContextManager:
    """Tests for ``with LocalServer(...)`` and ``with LocalServer(...).start()``."""

    def test_started_server_as_context_manager(self, tmp_path, api_for):
        """``with LocalServer(root).start() as server:`` serves inside the block and stops at its end."""
        with LocalServer(tmp_path).start() as server:
            assert 200 == api_for(server.url).get("/api/v1/healthz").status_code
        assert False is server.running

    def test_unstarted_server_as_context_manager(self, tmp_path, api_for):
        """``with LocalServer(root) as server:`` starts it, and the root is free again after the block."""
        with LocalServer(tmp_path) as server:
            assert 200 == api_for(server.url).get("/api/v1/healthz").status_code
        with LocalServer(tmp_path) as again:
            assert True is again.running

    def test_start_twice_still_refused(self, tmp_path):
        """An explicit second ``start()`` on a running server raises ``RuntimeError``."""
        with LocalServer(tmp_path) as server:
            with pytest.raises(RuntimeError, match="already running"):
                server.start()

    def test_repr_shows_state_without_the_key(self, tmp_path):
        """The repr names the URL or "stopped" and never the API key."""
        server = LocalServer(tmp_path, api_key="tml-very-secret")
        assert "stopped" in repr(server)
        with server:
            assert (True, False) == (server.url in repr(server), "tml-very-secret" in repr(server))


class TestStoreInterface:
    """Tests for ``LocalServer.store``, the named internal interface tools use to reach the store without HTTP."""

    def test_store_of_a_running_server_only(self, tmp_path, api_for):
        """Before start and after stop ``store`` raises RuntimeError; while running it holds what was saved."""
        server = LocalServer(tmp_path)
        with pytest.raises(RuntimeError):
            server.store
        with server:
            api = api_for(server.url)
            path = api.save(api.model(), 1, "c")["path"]
            assert path == server.store.get(path)["tinker_path"]
        with pytest.raises(RuntimeError):
            server.store


class TestServerOptions:
    """Tests for ``ServerOptions`` and the keyword shorthand of ``LocalServer``."""

    def test_defaults(self):
        """The defaults behave like the hosted service."""
        opts = ServerOptions()
        assert (0.0, True, 200, True, {"use_pyqwest_transport": False}) == (
            opts.complete_delay, opts.long_poll, opts.pending_status, opts.session_load, opts.client_config
        )

    def test_keywords_override_options(self, tmp_path):
        """Keyword arguments override the fields of ``options=``; the rest is kept."""
        base = ServerOptions(complete_delay=0.5, seq_wait=1.0)
        server = LocalServer(tmp_path, options=base, seq_wait=2.0)
        assert (0.5, 2.0) == (server.options.complete_delay, server.options.seq_wait)
        assert base is LocalServer(tmp_path, options=base).options

    def test_options_are_frozen(self):
        """A ``ServerOptions`` cannot be changed; ``attrs.evolve`` derives a variant."""
        opts = ServerOptions()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            opts.complete_delay = 1.0  # type: ignore[misc]
        assert 1.0 == attrs.evolve(opts, complete_delay=1.0).complete_delay

    @pytest.mark.parametrize(
        "changes, error",
        [
            ({"pending_status": 404}, ValueError),
            ({"pending_status": True}, ValueError),
            ({"complete_delay": -1}, ValueError),
            ({"long_poll_timeout": 0}, ValueError),
            ({"future_ttl": -5.0}, ValueError),
            ({"max_body": 0}, ValueError),
            ({"socket_timeout": "30"}, TypeError),
            ({"seq_wait": True}, TypeError),
            ({"long_poll": 1}, TypeError),
            ({"clock": 5}, TypeError),
            ({"save_hook": "hook"}, TypeError),
            ({"keyfile": "key.pem"}, ValueError),
            ({"no_such_option": 1}, TypeError),
        ],
    )
    def test_bad_values_are_refused(self, tmp_path, changes, error):
        """A wrong type or an out-of-range value raises at construction, through either spelling."""
        with pytest.raises(error):
            ServerOptions(**changes)
        with pytest.raises(error):
            LocalServer(tmp_path, **changes)

    def test_options_must_be_server_options(self, tmp_path):
        """``options=`` takes a ``ServerOptions``, not a dict."""
        with pytest.raises(TypeError, match="ServerOptions"):
            LocalServer(tmp_path, options={"complete_delay": 1.0})  # type: ignore[arg-type]

    def test_paths_and_client_config_are_copied(self, tmp_path):
        """Path-like TLS files become strings; ``client_config`` is copied, so the caller's dict stays theirs."""
        config = {"use_pyqwest_transport": False, "extra": 1}
        opts = ServerOptions(certfile=tmp_path / "c.pem", client_config=config)
        config["extra"] = 2
        assert (str(tmp_path / "c.pem"), {"use_pyqwest_transport": False, "extra": 1}) == (
            opts.certfile, opts.client_config
        )

    def test_server_reads_its_options(self, tmp_path):
        """The server's convenience attributes mirror its options."""
        server = LocalServer(tmp_path, max_body=1234, socket_timeout=2.5)
        assert (1234, 2.5, None, None) == (server.max_body, server.socket_timeout, server.certfile, server.keyfile)


class TestFaultQueue:
    """Tests for ``FaultQueue``, the server's one-shot fault injection."""

    def test_takes_in_order_by_path_and_method(self):
        """Faults match by path pattern and method, first in first out, each once."""
        q = FaultQueue()
        q.add("/api/v1/*", method="delete", status=500)
        q.add("/api/v1/save_weights", status=503, count=2)
        assert 3 == len(q)
        assert None is q.take("GET", "/api/v1/healthz")
        assert 500 == q.take("DELETE", "/api/v1/x").status
        assert [503, 503, None] == [getattr(q.take("POST", "/api/v1/save_weights"), "status", None) for _ in range(3)]
        q.add("/x", drop=True)
        q.clear()
        assert 0 == len(q)

    @pytest.mark.parametrize("kwargs", [{"status": 99}, {"status": 600}, {"delay": -1}, {"count": -1}])
    def test_bad_faults_are_refused(self, kwargs):
        """A status outside 100-599 or a negative delay or count raises ``ValueError``."""
        with pytest.raises(ValueError):
            FaultQueue().add("/x", **kwargs)

    def test_injected_answer_defaults(self, local_server, api):
        """A status fault without a body answers ``{"detail": "injected fault"}`` and leaves the queue empty."""
        local_server.faults.add("/api/v1/healthz", status=502)
        resp = api.get("/api/v1/healthz")
        assert (502, {"detail": "injected fault"}, 0) == (resp.status_code, resp.json(), len(local_server.faults))
