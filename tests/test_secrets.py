"""Secrets: the API key and weights access tokens never appear in a repr, an exception (with its chained
causes), a DEBUG log line, CLI output or ``--json``, even when a server echoes them back."""

import json
import os
import re
import logging
import signal
import subprocess
import sys
import traceback

import pytest
import requests

import tinkex_persist as tp
from conftest import SERVER_KEY
from faultproxy import FaultProxy
from tinkex_persist import cli
from tinkex_persist.localserver import LocalServer

KEY = SERVER_KEY
TOKEN = "wat-SECRET-token-0a1b2c3d4e5f"


def _texts(value):
    """Every string form of ``value``; for an exception also its attributes and the whole cause chain."""
    out = [str(value), repr(value)]
    if isinstance(value, BaseException):
        out.append("".join(traceback.format_exception(type(value), value, value.__traceback__)))
        seen = set()
        while value is not None and id(value) not in seen:
            seen.add(id(value))
            out.extend([str(value), repr(value), repr(getattr(value, "__dict__", {})), repr(value.args)])
            value = value.__cause__ or value.__context__
    return out


def _assert_clean(texts):
    leaks = [t for t in texts if KEY in t or TOKEN in t]
    assert [] == leaks


@pytest.fixture
def echo_proxy(keyed_server):
    """A FaultProxy in front of ``keyed_server``."""
    with FaultProxy(keyed_server.url) as proxy:
        yield proxy


class TestLibrary:
    """Tests for what the library shows of its secrets."""

    def test_operations_with_failures_leak_nothing(self, keyed_server, echo_proxy, caplog, tmp_path):
        """Saves, loads, create-from-state, deletes and downloads, with faults, hostile echoes and DEBUG
        logging of every logger, show neither the key nor the token anywhere."""
        # A server can echo the key on any request, and a token only on a request that carried it.
        echoed = json.dumps({"detail": "you sent X-API-Key %s and token %s" % (KEY, TOKEN)}).encode()
        echoed_key = json.dumps({"detail": "you sent X-API-Key %s" % KEY}).encode()
        captured, errors = [], []
        with caplog.at_level(logging.DEBUG):
            with tp.ServiceClient(
                base_url=echo_proxy.url, api_key=KEY, backoff_factor=0, max_retries=2, heartbeat_interval=None,
                timeout=(1.0, 0.5),
            ) as svc:
                tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
                echo_proxy.add("lost_ack", "/api/v1/save_weights")
                echo_proxy.add("status", "/api/v1/save_weights", status=503, body=echoed_key)
                path = tp.save_state(tc, "a").result(timeout=10).path

                def download():
                    # load_weights faults the steps above left unused would otherwise answer the export's
                    # load_weights, which carries no token (a server echoes a token only where it was sent).
                    echo_proxy.clear()
                    return tp.download_checkpoint(svc, path, str(tmp_path / "dl"))

                steps = [
                    (("status", "/api/v1/load_weights", dict(status=status, body=echoed, count=3)),
                     lambda: tp.create_training_client_from_state(svc, path, weights_access_token=TOKEN))
                    for status in (400, 401, 403, 404, 409, 422, 500)
                ]
                steps += [
                    (("garbage", "/api/v1/load_weights", dict(count=3)),
                     lambda: tp.load_state_with_optimizer(tc, path, weights_access_token=TOKEN)),
                    (("status", "/api/v1/retrieve_future", dict(status=410, body=echoed)),
                     lambda: tp.create_training_client_from_state(svc, path, weights_access_token=TOKEN)),
                    (None, lambda: tp.create_training_client_from_state(svc, path + "-x", weights_access_token=TOKEN)),
                    (None, download),
                    (("status", "/api/v1/training_runs/*", dict(status=500, body=echoed_key, count=3)),
                     lambda: tp.delete_checkpoints(svc, [path])),
                ]
                good = tp.create_training_client_from_state_with_optimizer(svc, path, weights_access_token=TOKEN)
                captured.append(good.result(timeout=10))
                for fault, call in steps:
                    if fault:
                        echo_proxy.add(fault[0], fault[1], **fault[2])
                    try:
                        captured.append(call().result(timeout=20))
                    except tp.TinkexPersistError as exc:
                        errors.append(exc)
                captured += [svc, tc, svc.config, good]
        assert 9 <= len(errors)
        texts = [caplog.text] + [t for obj in captured + errors for t in _texts(obj)]
        _assert_clean(texts)

    def test_unreachable_server_errors_leak_nothing(self):
        """A refused connection's error chain (which holds the requests exception) shows no secret."""
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tp.ServiceClient(base_url="http://127.0.0.1:%d" % port, api_key=KEY, max_retries=0) as svc:
            with pytest.raises(tp.APIConnectionError) as info:
                tp.create_training_client_from_state(svc, "tinker://r/weights/a", weights_access_token=TOKEN).result(10)
        _assert_clean(_texts(info.value))

    def test_pickled_errors_leak_nothing(self, keyed_server, echo_proxy):
        """An error that crossed a process boundary (pickled) carries no secret either."""
        import pickle

        echo_proxy.add("status", "/api/v1/create_session", status=401, body=json.dumps({"detail": KEY}).encode())
        with tp.ServiceClient(base_url=echo_proxy.url, api_key=KEY, max_retries=0) as svc:
            with pytest.raises(tp.AuthenticationError) as info:
                svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
        _assert_clean(_texts(pickle.loads(pickle.dumps(info.value))))


class TestCommandLine:
    """Tests for what the command line prints."""

    @pytest.mark.parametrize(
        "argv",
        [
            ["list"],
            ["info", "{path}"],
            ["ttl", "{path}", "--set", "7200", "--yes"],
            ["download", "{path}", "--dest", "{dest}"],
            ["delete", "{path}", "--yes"],
            ["keep-last", "1", "--run", "{run}", "--yes"],
            ["info", "tinker://nope/weights/x"],
        ],
    )
    @pytest.mark.parametrize("flags", [[], ["--json"], ["-v"], ["-v", "--json"]])
    def test_output_never_shows_the_key(self, keyed_server, monkeypatch, capsys, tmp_path, argv, flags):
        """Every subcommand, human or ``--json``, quiet or ``-v``, prints neither the key nor the signed token."""
        monkeypatch.setenv("TINKER_API_KEY", KEY)
        with tp.ServiceClient(base_url=keyed_server.url, heartbeat_interval=None) as svc:
            tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
            path = tp.save_state(tc, "a").result(timeout=10).path
        args = [a.format(path=path, dest=tmp_path / "dest", run=tc.model_id) for a in argv]
        cli.main(["--base-url", keyed_server.url] + flags + args)
        out, err = capsys.readouterr()
        assert out or err
        _assert_clean([out, err])
        assert [] == re.findall(r"/local/v1/archives/(?!<signed>)[^\s\"]+", out + err)

    def test_wrong_key_from_a_file_is_not_printed(self, keyed_server, capsys, tmp_path):
        """A rejected key read from ``--api-key-file`` is not echoed in the error."""
        key_file = tmp_path / "key"
        key_file.write_text(TOKEN)  # a wrong key is a secret too
        for flags in ([], ["--json"], ["-v"]):
            assert 1 == cli.main(["--base-url", keyed_server.url, "--api-key-file", str(key_file)] + flags + ["list"])
            out, err = capsys.readouterr()
            assert "401" in out + err
            _assert_clean([out, err])


class TestKeyWhitespace:
    """Tests for an API key read with surrounding whitespace (a trailing newline from a file or a mounted secret)."""

    @pytest.mark.parametrize("raw", [KEY + "\n", "  %s\r\n" % KEY, "\t%s " % KEY])
    def test_surrounding_whitespace_is_stripped(self, raw):
        """``Config`` and ``Config.from_env`` keep the key without its surrounding whitespace."""
        assert (KEY, KEY) == (tp.Config(api_key=raw).api_key, tp.Config.from_env({"TINKER_API_KEY": raw}).api_key)

    def test_operations_work_with_a_trailing_newline(self, keyed_server):
        """A client given the key with its trailing newline authenticates and saves."""
        with tp.ServiceClient(base_url=keyed_server.url, api_key=KEY + "\n", heartbeat_interval=None) as svc:
            tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
            result = tp.save_state(tc, "nl").result(timeout=10)
        assert "tinker://%s/weights/nl" % tc.model_id == result.path

    @pytest.mark.parametrize("bad", [KEY[:8] + "\n" + KEY[8:], KEY[:8] + " " + KEY[8:], KEY + "\u2013"])
    def test_inner_whitespace_or_non_ascii_is_config_error_without_the_key(self, bad):
        """A key that cannot travel in a header is a ConfigError naming the position, never the key."""
        with pytest.raises(tp.ConfigError) as info:
            tp.ServiceClient(base_url="http://127.0.0.1:9", api_key=bad)
        texts = _texts(info.value)
        assert [] == [t for t in texts if bad in t or KEY[8:] in t or KEY[:8] in t]
        assert "position" in str(info.value)

    def test_cli_with_a_newline_in_the_key_prints_no_key(self, keyed_server, monkeypatch, capsys):
        """The CLI given a key with a newline inside fails with a usage error and prints nothing of the key."""
        bad = KEY[:8] + "\n" + KEY[8:]
        monkeypatch.setenv("TINKER_API_KEY", bad)
        code = cli.main(["--base-url", keyed_server.url, "list"])
        out, err = capsys.readouterr()
        assert (True, [], []) == (code != 0, [p for p in (KEY[:8], KEY[8:]) if p in out + err],
                                  [line for line in err.splitlines() if "Traceback" in line])

    def test_cli_with_a_trailing_newline_works(self, keyed_server, monkeypatch, capsys):
        """The CLI given the key with a trailing newline in the environment lists, exit code 0."""
        monkeypatch.setenv("TINKER_API_KEY", KEY + "\n")
        code = cli.main(["--base-url", keyed_server.url, "list"])
        out, err = capsys.readouterr()
        assert 0 == code
        _assert_clean([out, err])


class TestServerKeyWhitespace:
    """Tests for the key a local server requires: stripped like the client's, checked without being shown."""

    @pytest.mark.parametrize("raw", [KEY + "\n", "  %s\r\n" % KEY])
    def test_the_server_strips_its_own_key(self, tmp_path, raw):
        """A server given its key with surrounding whitespace accepts the key itself, and refuses another."""
        with LocalServer(tmp_path, api_key=raw) as server:
            ok = requests.get(server.url + "/api/v1/healthz", headers={"X-API-Key": KEY}, timeout=10)
            wrong = requests.get(server.url + "/api/v1/healthz", headers={"X-API-Key": KEY + "x"}, timeout=10)
            with tp.ServiceClient(base_url=server.url, api_key=KEY, heartbeat_interval=None) as svc:
                tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
        assert (200, 401, KEY) == (ok.status_code, wrong.status_code, server.api_key)
        assert tc.model_id.endswith(":train:0")

    @pytest.mark.parametrize("bad, says", [(" \n", "blank"), (KEY[:8] + " " + KEY[8:], "position 8")])
    def test_a_blank_or_broken_server_key_is_a_config_error_without_the_key(self, tmp_path, bad, says):
        """A key that is only whitespace (which would serve without one) or has a space inside is refused."""
        with pytest.raises(tp.ConfigError) as info:
            LocalServer(tmp_path, api_key=bad)
        assert says in str(info.value)
        assert [] == [t for t in _texts(info.value) if KEY[:8] in t or KEY[8:] in t]

    def test_serve_strips_the_key_it_reads(self, tmp_path):
        """``serve --api-key-env VAR`` with a trailing newline in VAR requires the bare key, and the key appears
        in none of its output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_PERSIST_"))}
        env["MY_SERVER_KEY"] = KEY + "\n"
        argv = [sys.executable, "-m", "tinkex_persist", "serve", "--root", str(tmp_path / "root"), "--api-key-env", "MY_SERVER_KEY"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            url = proc.stdout.readline().strip()
            statuses = [requests.get(url + "/api/v1/healthz", headers=h, timeout=10).status_code
                        for h in ({"X-API-Key": KEY}, {})]
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
        assert ([200, 401], 0) == (statuses, proc.returncode)
        _assert_clean([url, out, err])
        assert "API key required" in err

    @pytest.mark.parametrize("value, says", [(" \n", "not set or empty"), ("zq\nxw", "position 2")])
    def test_serve_refuses_a_blank_or_broken_variable(self, tmp_path, monkeypatch, capsys, value, says):
        """A variable holding only whitespace is "not set or empty" (exit 2), not a server without a key; one
        with a newline inside is a usage error naming the variable and the position, not the key."""
        monkeypatch.setenv("MY_SERVER_KEY", value)
        code = cli.main(["serve", "--root", str(tmp_path / "root"), "--api-key-env", "MY_SERVER_KEY"])
        err = capsys.readouterr().err
        assert (2, True, True, []) == (code, says in err, "MY_SERVER_KEY" in err, [p for p in ("zq", "xw") if p in err])


class TestRedactionKeepsData:
    """Tests that redaction applies to messages only: a short key that also occurs in data leaves the data intact."""

    @pytest.mark.parametrize("key", ["k", "test", "train", "0"])
    def test_ids_paths_and_listings_are_unaltered(self, tmp_path, key):
        """With a key such as "train" (which every model id contains), model ids, checkpoint paths, listings,
        weights_info and a resume come back exactly as the server sent them."""
        with LocalServer(tmp_path / "srv", api_key=key) as server:
            with tp.ServiceClient(base_url=server.url, api_key=key, heartbeat_interval=None) as svc:
                tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
                names = ["test", "k-train", "0-" + key]
                paths = [tp.save_state(tc, n).result(timeout=10).path for n in names]
                listed = tp.list_checkpoints(svc, tc.model_id).result(timeout=10)
                info = tp.get_weights_info(svc, paths[0]).result(timeout=10)
                resumed = tp.create_training_client_from_state(svc, paths[0]).result(timeout=10)
            runs = server.service.list_run(tc.model_id)
        assert ["tinker://%s/weights/%s" % (tc.model_id, n) for n in names] == paths
        assert sorted(paths) == sorted(c.tinker_path for c in listed)
        assert sorted(paths) == sorted(c["tinker_path"] for c in runs["checkpoints"])
        assert "<redacted>" not in repr((tc.model_id, resumed.model_id, paths, listed, info))

    def test_an_echoed_short_key_is_redacted_in_the_message_only(self, tmp_path):
        """A server error echoing the key shows <redacted> in the message; a later success keeps its data."""
        with LocalServer(tmp_path / "srv", api_key="train") as server, FaultProxy(server.url) as proxy:
            with tp.ServiceClient(base_url=proxy.url, api_key="train", max_retries=0, heartbeat_interval=None) as svc:
                proxy.add("status", "/api/v1/create_session", status=403, body=b'{"detail": "key train is blocked"}')
                with pytest.raises(tp.PermissionDeniedError) as info:
                    svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
                tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
        assert "key <redacted> is blocked" in str(info.value) and "train" not in info.value.body
        assert ":train:" in tc.model_id or "train" in tc.model_id
