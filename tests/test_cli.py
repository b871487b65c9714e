"""Tests for the ``tinkex-persist`` command line, run in-process (``main``) and as a process, against LocalServer."""

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
import requests

from tinkex_persist import cli, manage


def _listing(service, run_id):
    return manage.list_checkpoints(service, run_id).result()


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_PERSIST_"))}
    env.update(extra)
    return env


class TestInfo:
    """Tests for ``info``."""

    def test_human_and_json(self, run_cli, seed_run):
        """``info`` prints a key/value table, or with --json the listing fields and the WeightsInfo fields."""
        _, (path,) = seed_run(["a"], rank=4)
        code, out, _ = run_cli("info", path)
        assert 0 == code
        assert ["path", "type", "size", "created"] == [line.split("  ")[0].strip() for line in out.splitlines()[:4]]
        assert "LoRA rank           4" in out
        code, out, _ = run_cli("info", path, "--json")
        expected = {"tinker_path": path, "base_model": "Qwen/Qwen3-8B", "is_lora": True, "lora_rank": 4,
                    "train_unembed": True, "train_mlp": True, "train_attn": True, "optimizer": "adamw",
                    "checkpoint_type": "training", "public": False, "expires_at": None}
        data = json.loads(out)
        assert (0, expected) == (code, {k: data[k] for k in expected})

    def test_missing_checkpoint_exits_1(self, run_cli, seed_run):
        """An API error (404) exits 1 with a one-line message on stderr, and a JSON error with --json."""
        run_id, _ = seed_run(["a"])
        code, out, err = run_cli("--json", "info", "tinker://%s/weights/nope" % run_id)
        assert (1, "NotFoundError", 404) == (code, json.loads(out)["error"]["type"], json.loads(out)["error"]["status_code"])
        assert err.startswith("error: POST /api/v1/weights_info -> 404")

    def test_bad_path_exits_2(self, run_cli):
        """A malformed path is a usage error: exit 2, nothing on stdout."""
        code, out, err = run_cli("info", "not-a-path")
        assert (2, "") == (code, out)
        assert "tinker://" in err


class TestList:
    """Tests for ``list``."""

    def test_human_table(self, run_cli, seed_run):
        """``list --run`` prints a table newest first with a count and total size."""
        run_id, paths = seed_run(["a", "b"])
        code, out, _ = run_cli("list", "--run", run_id)
        lines = out.splitlines()
        assert 0 == code
        assert ["PATH", "TYPE", "CREATED", "SIZE", "EXPIRES", "PUBLIC"] == lines[0].split()
        assert [paths[1], paths[0]] == [line.split()[0] for line in lines[1:3]]
        assert lines[-1].startswith("2 checkpoint(s), ")

    def test_json_and_limit(self, run_cli, seed_run):
        """``--json --limit N`` prints at most N checkpoints as JSON objects."""
        seed_run(["a", "b", "c"])
        code, out, _ = run_cli("list", "--limit", "2", "--json")
        data = json.loads(out)
        assert (0, 2) == (code, len(data["checkpoints"]))
        assert {"checkpoint_id", "checkpoint_type", "time", "tinker_path", "size_bytes", "expires_at", "public",
                "user_metadata"} == set(data["checkpoints"][0])

    def test_empty(self, run_cli):
        """No checkpoints: a plain message, or an empty JSON list."""
        assert (0, "no checkpoints\n") == run_cli("list")[:2]
        assert {"checkpoints": []} == json.loads(run_cli("list", "--json")[1])

    def test_bad_limit_exits_2(self, run_cli):
        """``--limit 0`` is rejected by argparse with exit 2."""
        assert 2 == run_cli("list", "--limit", "0")[0]


class TestDelete:
    """Tests for ``delete``."""

    def test_deletes_with_yes(self, run_cli, seed_run, mgmt_service):
        """``delete --yes PATH...`` deletes and prints one line per path plus a summary."""
        run_id, paths = seed_run(["a", "b", "c"])
        code, out, _ = run_cli("delete", "--yes", paths[0], paths[1])
        assert 0 == code
        assert ["deleted", "deleted"] == [line.split()[0] for line in out.splitlines()[:2]]
        assert "2 checkpoint(s) deleted" in out
        assert ["c"] == [c.name for c in _listing(mgmt_service, run_id)]

    def test_json(self, run_cli, seed_run):
        """``--json`` prints each path's status."""
        _, paths = seed_run(["a"])
        code, out, _ = run_cli("--json", "delete", "-y", paths[0])
        data = json.loads(out)
        assert (0, False, [(paths[0], "deleted")]) == (code, data["dry_run"], [(r["path"], r["status"]) for r in data["results"]])

    def test_dry_run_deletes_nothing(self, run_cli, seed_run, mgmt_service):
        """``--dry-run`` needs no confirmation, reports would-delete and leaves the listing equal."""
        run_id, paths = seed_run(["a", "b"])
        before = _listing(mgmt_service, run_id)
        code, out, _ = run_cli("delete", "--dry-run", *paths)
        assert 0 == code
        assert ["would", "would"] == [line.split()[0] for line in out.splitlines()[:2]]
        assert "nothing was deleted" in out
        assert before == _listing(mgmt_service, run_id)
        data = json.loads(run_cli("delete", "--dry-run", "--json", *paths)[1])
        assert (True, ["would_delete", "would_delete"]) == (data["dry_run"], [r["status"] for r in data["results"]])

    def test_refuses_without_yes_when_stdin_is_not_a_terminal(self, run_cli, seed_run, mgmt_service):
        """Without --yes and without a terminal to ask on, delete exits 2 and deletes nothing."""
        run_id, paths = seed_run(["a"])
        code, out, err = run_cli("delete", paths[0])
        assert (2, "") == (code, out)
        assert "--yes" in err
        assert 1 == len(_listing(mgmt_service, run_id))

    def test_partial_failure_exits_3(self, run_cli, seed_run, mgmt_service):
        """Some deletes failing exits 3; the others are deleted and every failure is printed."""
        run_id, paths = seed_run(["a", "b"])
        missing = "tinker://%s/weights/gone" % run_id
        code, out, _ = run_cli("delete", "--yes", paths[0], missing)
        assert 3 == code
        assert ["deleted", "not"] == [line.split()[0] for line in out.splitlines()[:2]]
        assert "1 not deleted" in out
        assert ["b"] == [c.name for c in _listing(mgmt_service, run_id)]

    def test_all_failed_exits_1(self, run_cli, seed_run):
        """When every delete fails the exit code is 1."""
        run_id, _ = seed_run(["a"])
        code, out, _ = run_cli("--json", "delete", "--yes", "tinker://%s/weights/gone" % run_id)
        assert (1, "not_found") == (code, json.loads(out)["results"][0]["status"])

    def test_run_selection_by_time(self, run_cli, seed_run, mgmt_service):
        """``--run RUN --before DATE`` selects the run's checkpoints created before DATE."""
        run_id, paths = seed_run(["a", "b"])
        newest = _listing(mgmt_service, run_id)[0].time
        code, out, _ = run_cli("--json", "delete", "--yes", "--run", run_id, "--before", newest.isoformat())
        assert (0, [paths[0]]) == (code, [r["path"] for r in json.loads(out)["results"]])
        code, out, _ = run_cli("delete", "--yes", "--run", run_id, "--after", "2999-01-01")
        assert (0, ["b"]) == (code, [c.name for c in _listing(mgmt_service, run_id)])
        assert "nothing to delete" in out

    @pytest.mark.parametrize(
        "argv",
        [["delete"], ["delete", "--before", "2020-01-01", "tinker://r/weights/a"], ["delete", "--run", "r", "tinker://r/weights/a"],
         ["delete", "--run", "r", "--before", "last tuesday"], ["delete", "--yes", "tinker://r/weights/../a"]],
        ids=["nothing", "before-without-run", "paths-and-run", "bad-date", "bad-path"],
    )
    def test_usage_errors_exit_2(self, run_cli, argv):
        """Contradictory or malformed selections exit 2 before anything is deleted."""
        assert 2 == run_cli(*argv)[0]

    def test_asks_on_a_terminal(self, keyed_server, mgmt_service, seed_run, tmp_path):
        """On a terminal, delete lists the paths and asks; 'n' aborts (exit 1), 'y' deletes (exit 0)."""
        run_id, paths = seed_run(["a"])
        env = _env(TINKER_API_KEY=mgmt_service.config.api_key)
        argv = [sys.executable, "-m", "tinkex_persist", "--base-url", keyed_server.url, "delete", paths[0]]
        for answer, expected_code, expected_left in (("n", 1, 1), ("y", 0, 0)):
            master, slave = pty.openpty()
            proc = subprocess.Popen(argv, stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=str(tmp_path))
            os.close(slave)
            prompt = _read_until(master, b"[y/N]")
            os.write(master, answer.encode() + b"\n")
            proc.wait(timeout=20)
            os.close(master)
            assert b"Delete 1 checkpoint(s)?" in prompt
            assert (expected_code, expected_left) == (proc.returncode, len(_listing(mgmt_service, run_id)))


def _read_until(fd, marker, timeout=20.0):
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


class TestKeepLast:
    """Tests for ``keep-last``."""

    def test_keeps_n_newest(self, run_cli, seed_run, mgmt_service):
        """``keep-last 2`` keeps exactly the two newest and prints keep/deleted lines."""
        run_id, _ = seed_run(["s0", "s1", "s2", "s3"])
        code, out, _ = run_cli("keep-last", "2", "--run", run_id, "--yes")
        assert 0 == code
        assert ["keep", "keep", "deleted", "deleted"] == [line.split()[0] for line in out.splitlines()[:4]]
        assert ["s3", "s2"] == [c.name for c in _listing(mgmt_service, run_id)]

    def test_dry_run_json(self, run_cli, seed_run, mgmt_service):
        """``keep-last --dry-run --json`` lists kept and would-be-deleted checkpoints and deletes nothing."""
        run_id, paths = seed_run(["s0", "s1", "s2"])
        code, out, _ = run_cli("keep-last", "1", "--run", run_id, "--dry-run", "--json")
        data = json.loads(out)
        assert (0, True) == (code, data["dry_run"])
        assert [paths[2]] == [c["tinker_path"] for c in data["kept"]]
        assert [(paths[1], "would_delete"), (paths[0], "would_delete")] == [(r["path"], r["status"]) for r in data["results"]]
        assert 3 == len(_listing(mgmt_service, run_id))

    def test_nothing_to_do(self, run_cli, seed_run):
        """A run with no more than N checkpoints: nothing is deleted, exit 0."""
        run_id, _ = seed_run(["only"])
        code, out, _ = run_cli("keep-last", "1", "--run", run_id)
        assert (0, True) == (code, "nothing to delete" in out)

    def test_partial_failure_exits_3(self, run_cli, seed_run, keyed_server):
        """A refused delete during keep-last exits 3 and is printed; the other delete happens."""
        run_id, _ = seed_run(["s0", "s1", "s2"])
        keyed_server.faults.add("/api/v1/training_runs/*/checkpoints/weights/s0", method="DELETE", status=403)
        code, out, _ = run_cli("keep-last", "1", "--run", run_id, "--yes")
        assert (3, ["deleted", "FAILED"]) == (code, [line.split()[0] for line in out.splitlines()[:2]])

    def test_zero_is_a_usage_error(self, run_cli):
        """``keep-last 0`` exits 2: a run's newest checkpoint is never deleted."""
        assert 2 == run_cli("keep-last", "0", "--run", "r")[0]


class TestTtl:
    """Tests for ``ttl``."""

    def test_set_and_remove(self, run_cli, seed_run, mgmt_service):
        """``--set`` gives the checkpoint an expiry; ``--remove`` clears it; both print a line or JSON."""
        run_id, (path,) = seed_run(["a"])
        code, out, _ = run_cli("ttl", path, "--set", "7200", "--yes")
        assert (0, True) == (code, out.startswith(path + ": expires in 7200 s"))
        assert None is not _listing(mgmt_service, run_id)[0].expires_at
        code, out, _ = run_cli("ttl", path, "--remove", "--json", "--yes")
        assert (0, {"tinker_path": path, "ttl_seconds": None, "dry_run": False}) == (code, json.loads(out))
        assert None is _listing(mgmt_service, run_id)[0].expires_at

    @pytest.mark.parametrize("argv", [["--set", "10"], ["--set", "x"], [], ["--set", "7200", "--remove"]],
                             ids=["too-short", "not-a-number", "neither", "both"])
    def test_usage_errors_exit_2(self, run_cli, argv):
        """A TTL out of range, not a number, or missing/contradictory flags exits 2."""
        assert 2 == run_cli("ttl", "tinker://r/weights/a", *argv)[0]


class TestDownload:
    """Tests for ``download``."""

    def test_human_and_json(self, run_cli, seed_run, tmp_path):
        """``download`` exports, fetches the files under --dest and prints directory, export and files; --json too."""
        _, (a, b) = seed_run(["a", "b"])
        code, out, err = run_cli("download", a, "--dest", str(tmp_path))
        assert 0 == code
        assert "sha256 verified" in out
        lines = out.splitlines()
        assert lines[2].startswith("via export tinker://") and lines[2].endswith("/external_weights/download (deleted)")
        assert ["adapter_config.json", "adapter_model.safetensors"] == [line.strip() for line in lines[3:]]
        assert "" == err  # stderr is not a terminal and --progress was not given
        code, out, _ = run_cli("download", b, "--dest", str(tmp_path), "--json")
        data = json.loads(out)
        assert (0, True, 0, "external_weights", True) == (
            code, data["sha256_verified"], data["resumed_from"], data["method"], data["export_deleted"])
        assert sorted(data["file_sha256"]) == sorted(os.listdir(data["directory"]))

    def test_progress_goes_to_stderr(self, run_cli, seed_run, tmp_path):
        """``--progress`` reports phases on stderr; stdout keeps only the JSON result."""
        _, (path,) = seed_run(["a"])
        code, out, err = run_cli("download", path, "--dest", str(tmp_path), "--json", "--progress")
        assert (0, True) == (code, "done" in err)
        json.loads(out)

    def test_existing_target_exits_1_unless_overwrite(self, run_cli, seed_run, tmp_path):
        """A second download into the same place fails with exit 1; --overwrite replaces it."""
        _, (path,) = seed_run(["a"])
        assert 0 == run_cli("download", path, "--dest", str(tmp_path))[0]
        code, _, err = run_cli("download", path, "--dest", str(tmp_path))
        assert (1, True) == (code, "already exists" in err)
        assert 0 == run_cli("download", path, "--dest", str(tmp_path), "--overwrite")[0]


class TestConfigurationAndLogging:
    """Tests for the key sources, -v logging and argument handling."""

    def test_missing_key_exits_2(self, keyed_server, capsys):
        """Without TINKER_API_KEY or --api-key-file the command exits 2 naming the variable."""
        code = cli.main(["--base-url", keyed_server.url, "list"])
        assert (2, True) == (code, "TINKER_API_KEY" in capsys.readouterr().err)

    def test_key_file(self, keyed_server, mgmt_service, tmp_path, capsys):
        """``--api-key-file`` supplies the key; a missing file exits 2."""
        key_file = tmp_path / "key"
        key_file.write_text(mgmt_service.config.api_key + "\n")
        assert 0 == cli.main(["list", "--base-url", keyed_server.url, "--api-key-file", str(key_file)])
        assert 2 == cli.main(["list", "--base-url", keyed_server.url, "--api-key-file", str(tmp_path / "nope")])

    def test_wrong_key_exits_1(self, keyed_server, tmp_path, capsys):
        """A key the server rejects (401) is an API failure: exit 1."""
        key_file = tmp_path / "key"
        key_file.write_text("tml-wrong")
        assert 1 == cli.main(["--base-url", keyed_server.url, "--api-key-file", str(key_file), "list"])
        assert "401" in capsys.readouterr().err

    def test_verbose_logs_requests_without_the_key(self, run_cli, seed_run, tmp_path, mgmt_service):
        """``-v`` logs each request at DEBUG on stderr and never prints the API key or a signed URL's token."""
        _, (path,) = seed_run(["a"])
        code, out, err = run_cli("-v", "download", path, "--dest", str(tmp_path))
        assert 0 == code
        assert "DEBUG" in err and "GET /api/v1/training_runs/" in err
        assert mgmt_service.config.api_key not in out + err
        client_lines = [line for line in err.splitlines() if "tinkex_persist._external" in line]
        assert any("/<signed>" in line for line in client_lines)
        # A signed URL carries its credential in its path and query: the client logs only its origin.
        assert [] == [line for line in client_lines if "/signed/" in line or "token=" in line]

    def test_logging_is_undone_after_main(self, run_cli):
        """main() removes its log handler, so the library stays silent afterwards."""
        import logging

        logger = logging.getLogger("tinkex_persist")
        before = (list(logger.handlers), logger.level)
        run_cli("-v", "list")
        assert before == (list(logger.handlers), logger.level)

    @pytest.mark.parametrize("argv, code", [(["--help"], 0), ([], 2), (["frobnicate"], 2), (["list", "--bogus"], 2),
                                            (["--version"], 0)])
    def test_argparse_exit_codes(self, argv, code, capsys):
        """--help/--version exit 0; a missing or unknown command or option exits 2."""
        assert code == cli.main(argv)

    def test_no_key_option_on_the_command_line(self, capsys):
        """There is no option taking the key itself."""
        assert 2 == cli.main(["--api-key", "tml-x", "list"])


class TestEntryPoints:
    """Tests for ``python -m tinkex_persist``, the console script, ``serve`` and ``demo``."""

    def test_python_m(self):
        """``python -m tinkex_persist --version`` prints the version and exits 0."""
        proc = subprocess.run([sys.executable, "-m", "tinkex_persist", "--version"], capture_output=True, text=True,
                              env=_env(), timeout=30)
        assert (0, True) == (proc.returncode, proc.stdout.startswith("tinkex-persist "))

    def test_console_script(self):
        """The installed ``tinkex-persist`` script runs cli.main."""
        script = os.path.join(os.path.dirname(sys.executable), "tinkex-persist")
        if not os.path.exists(script):
            pytest.skip("console script not installed in this environment")
        proc = subprocess.run([script, "list", "--help"], capture_output=True, text=True, env=_env(), timeout=30)
        assert (0, True) == (proc.returncode, "--run" in proc.stdout)

    def test_serve_until_sigterm(self, tmp_path):
        """``serve`` prints its URL, requires the key named by --api-key-env, and exits 0 on SIGTERM."""
        env = _env(MY_SERVER_KEY="tml-served")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tinkex_persist", "serve", "--root", str(tmp_path / "root"), "--api-key-env",
             "MY_SERVER_KEY"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            assert 401 == requests.get(url + "/api/v1/healthz", timeout=10).status_code
            assert 200 == requests.get(url + "/api/v1/healthz", headers={"X-API-Key": "tml-served"}, timeout=10).status_code
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        assert 0 == proc.returncode
        assert "tml-served" not in proc.stderr.read()

    def test_serve_json_and_missing_key_variable(self, tmp_path, capsys):
        """``serve --json`` prints the URL as one JSON line (one readline() gets it); an unset --api-key-env variable exits 2.

        Failed on the old main: the object was printed over five indented lines.
        """
        assert 2 == cli.main(["serve", "--root", str(tmp_path), "--api-key-env", "TINKER_NOT_SET_ANYWHERE"])
        proc = subprocess.Popen([sys.executable, "-m", "tinkex_persist", "serve", "--root", str(tmp_path), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        try:
            data = json.loads(proc.stdout.readline())
            assert (False, True) == (data["api_key_required"], data["url"].startswith("http://127.0.0.1:"))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        assert 0 == proc.returncode

    def test_demo_runs_tinkex_persist_demo(self, capsys):
        """``demo`` runs the save/crash/resume demo: exit 0 with every check passed, and a JSON verdict with --json."""
        code = cli.main(["demo"])
        out = capsys.readouterr().out
        assert (0, True, 5) == (code, "All checks passed" in out, out.count("[ok]"))
        code = cli.main(["demo", "--json"])
        out, err = capsys.readouterr()
        assert (0, {"ok": True, "exit_code": 0}, True) == (code, json.loads(out), "All checks passed" in err)
