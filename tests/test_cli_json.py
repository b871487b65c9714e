"""Tests for the command line's failure output: one JSON object with ``--json``, exit codes, the missing-key hint."""

import json
import os
import pty
import subprocess
import sys

import pytest

from tinkex_persist import cli

from conftest import SERVER_KEY
from test_cli import _env, _read_until


def _one_json_object(text):
    """Parse ``text`` as exactly one JSON object (raises if there is anything else on stdout)."""
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


class TestJsonFailures:
    """Tests for ``--json`` when the command fails before or after reaching the server."""

    @pytest.mark.parametrize(
        "argv, needle",
        [
            (["--json", "list", "--limit", "0"], "--limit"),
            (["--json", "frobnicate"], "frobnicate"),
            (["list", "--json", "--bogus"], "--bogus"),
            (["--json", "ttl", "tinker://r/weights/a"], "--set"),
            (["--json"], "COMMAND"),
        ],
        ids=["bad-value", "unknown-command", "unknown-option", "missing-choice", "no-command"],
    )
    def test_argument_errors_print_one_json_error(self, capsys, argv, needle):
        """An argument error with ``--json`` exits 2 with argparse's usage on stderr and one JSON error on stdout.

        Failed on the old main: argparse exited before ``--json`` was seen, leaving stdout empty.
        """
        code = cli.main(argv)
        out, err = capsys.readouterr()
        error = _one_json_object(out)["error"]
        assert (2, "UsageError") == (code, error["type"])
        assert needle in error["message"]
        assert "usage: tinkex-persist" in err

    def test_argument_errors_without_json_keep_stdout_empty(self, capsys):
        """Without ``--json`` an argument error writes only to stderr."""
        assert 2 == cli.main(["list", "--limit", "0"])
        out, err = capsys.readouterr()
        assert ("", True) == (out, "error:" in err)

    def test_refusal_without_a_terminal_prints_one_json_error(self, keyed_server, monkeypatch, capsys, seed_run):
        """``delete`` without ``--yes`` and no terminal exits 2 with one JSON error naming ``--yes``; nothing is deleted.

        Failed on the old main: stdout stayed empty.
        """
        _, (path,) = seed_run(["a"])
        monkeypatch.setenv("TINKER_API_KEY", SERVER_KEY)
        code = cli.main(["--base-url", keyed_server.url, "--json", "delete", path])
        out, err = capsys.readouterr()
        error = _one_json_object(out)["error"]
        assert (2, "UsageError") == (code, error["type"])
        assert "--yes" in error["message"]
        assert SERVER_KEY not in out + err

    def test_answer_no_on_a_terminal_prints_one_json_error(self, keyed_server, seed_run, tmp_path):
        """Answering 'n' to the delete prompt with ``--json`` exits 1 with one JSON ``Aborted`` object on stdout."""
        _, (path,) = seed_run(["a"])
        master, slave = pty.openpty()
        argv = [sys.executable, "-m", "tinkex_persist", "--base-url", keyed_server.url, "--json", "delete", path]
        proc = subprocess.Popen(argv, stdin=slave, stdout=subprocess.PIPE, stderr=slave,
                                env=_env(TINKER_API_KEY=SERVER_KEY), cwd=str(tmp_path), text=True)
        os.close(slave)
        try:
            _read_until(master, b"[y/N]")
            os.write(master, b"n\n")
            out = proc.stdout.read()
            proc.wait(timeout=20)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        expected = {"error": {"type": "Aborted", "message": "aborted; nothing was changed"}}
        assert (1, expected) == (proc.returncode, _one_json_object(out))


class TestMissingKey:
    """Tests for the message when no API key is configured."""

    def test_names_both_ways_to_give_a_key(self, capsys, local_server):
        """Without a key, ``list`` exits 2 and names ``TINKER_API_KEY`` and ``--api-key-file``, in text and in JSON.

        Failed on the old main: the message said ``api_key=...``, which a command-line user cannot pass.
        """
        assert 2 == cli.main(["--base-url", local_server.url, "list"])
        err = capsys.readouterr().err
        assert "TINKER_API_KEY" in err and "--api-key-file" in err
        assert 2 == cli.main(["--base-url", local_server.url, "--json", "list"])
        error = _one_json_object(capsys.readouterr().out)["error"]
        assert "ConfigError" == error["type"]
        assert "TINKER_API_KEY" in error["message"] and "--api-key-file" in error["message"]
        assert 0 == local_server.stats.requests["/api/v1/checkpoints"]


class TestHelp:
    """Tests for ``--help``."""

    def test_help_lists_every_exit_code(self, capsys):
        """``--help`` lists exit codes 0, 1, 2, 3 and 130 (interrupted).

        Failed on the old main: 130 was not listed.
        """
        with pytest.raises(SystemExit) as info:
            cli.build_parser().parse_args(["--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert 0 == info.value.code
        for code in ("0 success", "1 API/transport failure", "2 usage error", "3 some deletes failed",
                     "130 interrupted (Ctrl-C)"):
            assert code in out
        assert 0 == cli.main(["--help"])
