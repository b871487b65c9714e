"""Tests for the command line's REST commands: info, list --type, publish, unpublish, usage, prune, and confirmation."""

import datetime
import json
import os
import pty
import subprocess
import sys

import pytest

import tinkex_persist as tp
from conftest import SERVER_KEY
from test_cli import _env, _read_until
from tinkex_persist import cli
from tinkex_persist.checkpoints import plan_prune
from tinkex_persist.types import CheckpointInfo

UTC = datetime.timezone.utc


def _paths(service, **kw):
    return sorted(c.tinker_path for c in tp.list_user_checkpoints(service, **kw).result())


class TestInfo:
    """Tests for ``info``: the official ``checkpoint info`` fields plus the weights info."""

    def test_human_and_json(self, run_cli, seed_run, mgmt_service):
        """``info`` shows type, size, created, expires, public and metadata, then the weights; JSON has both."""
        run_id, (path,) = seed_run(["a"], rank=4)
        code, out, _ = run_cli("info", path)
        keys = [line.split("  ")[0].strip() for line in out.splitlines()]
        assert (0, ["path", "type", "size", "created", "expires", "public", "metadata", "base model"]) == (code, keys[:8])
        assert "LoRA rank           4" in out
        code, out, _ = run_cli("info", path, "--json")
        data = json.loads(out)
        listed = tp.list_checkpoints(mgmt_service, run_id).result()[0].to_json()
        assert (0, dict(listed, base_model="Qwen/Qwen3-8B", is_lora=True, lora_rank=4, train_unembed=True,
                        train_mlp=True, train_attn=True, optimizer="adamw")) == (code, data)

    def test_an_export_is_described(self, run_cli, mgmt_service):
        """An ``external_weights`` checkpoint is described with its type and size."""
        tc = mgmt_service.create_lora_training_client("Qwen/Qwen3-8B", rank=2).result()
        export = tc.save_weights_external("exp").result()
        code, out, _ = run_cli("--json", "info", export.path)
        data = json.loads(out)
        assert (0, "external", export.size_bytes) == (code, data["checkpoint_type"], data["size_bytes"])

    def test_missing_checkpoint_exits_1(self, run_cli, seed_run):
        """A checkpoint its run does not hold exits 1 with a JSON error and the message on stderr."""
        run_id, _ = seed_run(["a"])
        code, out, err = run_cli("--json", "info", "tinker://%s/weights/nope" % run_id)
        assert (1, "NotFoundError") == (code, json.loads(out)["error"]["type"])
        assert "not found" in err


class TestListByType:
    """Tests for ``list --type`` across all runs and within one."""

    def test_type_across_runs_and_in_a_run(self, run_cli, seed_run, mgmt_service):
        """Without --run every run is listed; --type keeps one type; with --run it filters that run."""
        run_a, (a,) = seed_run(["a"])
        tc = mgmt_service.create_lora_training_client("Qwen/Qwen3-8B", rank=2).result()
        b = tp.save_state(tc, "b").result().path
        export = tc.save_weights_external("exp").result().path
        code, out, _ = run_cli("--json", "list")
        assert (0, sorted([a, b, export])) == (code, sorted(c["tinker_path"] for c in json.loads(out)["checkpoints"]))
        code, out, _ = run_cli("list", "--type", "external")
        lines = out.splitlines()
        assert (0, ["PATH", "TYPE", "CREATED", "SIZE", "EXPIRES", "PUBLIC"], export) == (code, lines[0].split(),
                                                                                     lines[1].split()[0])
        code, out, _ = run_cli("--json", "list", "--run", tc.model_id, "--type", "training")
        assert [b] == [c["tinker_path"] for c in json.loads(out)["checkpoints"]]
        assert (0, "no sampler checkpoints\n") == run_cli("list", "--type", "sampler")[:2]

    def test_bad_type_exits_2(self, run_cli):
        """An unknown type is a usage error."""
        assert 2 == run_cli("list", "--type", "weights")[0]


class TestPublishAndUsage:
    """Tests for ``publish``, ``unpublish`` and ``usage``."""

    def test_publish_unpublish(self, run_cli, seed_run, mgmt_service):
        """publish makes it public, unpublish private; a repeat is a 409 that exits 1."""
        run_id, (path,) = seed_run(["a"])
        code, out, _ = run_cli("publish", path)
        assert (0, "%s is now public\n" % path) == (code, out)
        assert True is tp.list_checkpoints(mgmt_service, run_id).result()[0].public
        code, out, err = run_cli("--json", "publish", path)
        assert (1, 409) == (code, json.loads(out)["error"]["status_code"])
        code, out, _ = run_cli("--json", "unpublish", path)
        assert (0, {"tinker_path": path, "public": False}) == (code, json.loads(out))
        assert False is tp.list_checkpoints(mgmt_service, run_id).result()[0].public

    def test_usage(self, run_cli, seed_run, mgmt_service):
        """usage counts the stored checkpoints and their bytes, human and JSON."""
        seed_run(["a", "b"])
        total = sum(c.size_bytes for c in tp.list_user_checkpoints(mgmt_service).result())
        code, out, _ = run_cli("--json", "usage")
        data = json.loads(out)
        assert (0, 2, total) == (code, data["checkpoint_count"], data["size_bytes"])
        code, out, _ = run_cli("usage")
        assert (0, True) == (code, out.splitlines()[-1].startswith("2 checkpoint(s), "))


class TestPlanPrune:
    """Tests for ``checkpoints.plan_prune``, the selection ``prune`` uses (no server)."""

    NOW = datetime.datetime(2026, 1, 10, tzinfo=UTC)

    def _ckpt(self, run, name, days_ago, kind="weights", public=False):
        types = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}
        return CheckpointInfo(checkpoint_id="%s/%s" % (kind, name), checkpoint_type=types[kind],
                              time=self.NOW - datetime.timedelta(days=days_ago),
                              tinker_path="tinker://%s/%s/%s" % (run, kind, name), public=public)

    def test_keep_last_per_run_and_type(self):
        """keep_last keeps the newest N of each (run, type) group."""
        cps = [self._ckpt("r1", "a", 3), self._ckpt("r1", "b", 2), self._ckpt("r1", "c", 1),
               self._ckpt("r2", "x", 5), self._ckpt("r1", "s", 9, kind="sampler_weights")]
        kept, doomed, spared = plan_prune(cps, keep_last=1, now=self.NOW)
        assert (["c", "x", "s"], ["b", "a"], []) == ([c.name for c in kept], [c.name for c in doomed], spared)

    def test_older_than_with_keep_last_and_type(self):
        """older_than deletes only old ones beyond the kept newest; type limits what is touched."""
        cps = [self._ckpt("r", "new", 1), self._ckpt("r", "mid", 4), self._ckpt("r", "old", 8),
               self._ckpt("r", "s-old", 8, kind="sampler_weights")]
        kept, doomed, _ = plan_prune(cps, older_than=datetime.timedelta(days=5), type="training", now=self.NOW)
        assert (["new", "mid"], ["old"]) == ([c.name for c in kept], [c.name for c in doomed])
        kept, doomed, _ = plan_prune(cps, keep_last=2, older_than=datetime.timedelta(days=3), now=self.NOW)
        assert ["old"] == [c.name for c in doomed]

    def test_published_are_spared_unless_included(self):
        """A published checkpoint the rules would delete is spared, or deleted with include_published."""
        cps = [self._ckpt("r", "new", 1), self._ckpt("r", "pub", 5, public=True)]
        _, doomed, spared = plan_prune(cps, keep_last=1, now=self.NOW)
        assert ([], ["pub"]) == ([c.name for c in doomed], [c.name for c in spared])
        _, doomed, spared = plan_prune(cps, keep_last=1, include_published=True, now=self.NOW)
        assert (["pub"], []) == ([c.name for c in doomed], spared)

    @pytest.mark.parametrize("kw", [{}, {"keep_last": -1}, {"keep_last": 1, "type": "weights"},
                                    {"older_than": 5}, {"keep_last": 1, "include_published": "yes"}])
    def test_bad_options(self, kw):
        """Neither rule, a negative count, an unknown type or a non-timedelta age is a UsageError."""
        with pytest.raises(tp.UsageError):
            plan_prune([], **kw)


class TestPrune:
    """Tests for ``prune`` (library and command line) against the server."""

    def test_library_prune_one_run(self, seed_run, mgmt_service):
        """``tp.prune(run_id=..., keep_last=1)`` deletes all but the newest; dry run first deletes nothing."""
        run_id, paths = seed_run(["a", "b", "c"])
        plan = tp.prune(mgmt_service, run_id=run_id, keep_last=1, dry_run=True).result()
        assert ([paths[2]], [paths[1], paths[0]]) == ([c.tinker_path for c in plan.kept], plan.deletes.deleted)
        assert 3 == len(tp.list_checkpoints(mgmt_service, run_id).result())
        done = tp.prune(mgmt_service, run_id=run_id, keep_last=1).result()
        assert ([paths[1], paths[0]], [paths[2]]) == (done.deletes.deleted, _paths(mgmt_service))
        assert False is done.to_json()["dry_run"]

    def test_cli_all_runs_spares_published(self, run_cli, seed_run, mgmt_service):
        """``prune --all-runs --keep-last 1 --yes`` prunes every run and spares a published checkpoint."""
        r1, p1 = seed_run(["a", "b"])
        r2, p2 = seed_run(["x", "y"])
        tp.publish_checkpoint(mgmt_service, p2[0]).result()
        code, out, _ = run_cli("prune", "--all-runs", "--keep-last", "1", "--yes")
        assert 0 == code, out
        assert sorted([p1[1], p2[1], p2[0]]) == _paths(mgmt_service)
        assert "spare" in out
        code, out, _ = run_cli("--json", "prune", "--all-runs", "--keep-last", "1", "--include-published", "--yes")
        data = json.loads(out)
        assert (0, [p2[0]]) == (code, [r["path"] for r in data["results"]])
        assert sorted([p1[1], p2[1]]) == _paths(mgmt_service)

    def test_cli_dry_run_and_older_than(self, run_cli, seed_run, mgmt_service):
        """``--dry-run`` changes nothing; ``--older-than 1h`` on fresh checkpoints finds nothing to delete."""
        run_id, paths = seed_run(["a", "b"])
        code, out, _ = run_cli("--json", "prune", "--run", run_id, "--keep-last", "0", "--dry-run")
        data = json.loads(out)
        assert (0, True, ["would_delete", "would_delete"]) == (code, data["dry_run"],
                                                               [r["status"] for r in data["results"]])
        code, out, _ = run_cli("prune", "--run", run_id, "--older-than", "1h", "--yes")
        assert (0, True) == (code, "nothing to delete" in out)
        assert sorted(paths) == _paths(mgmt_service)

    @pytest.mark.parametrize("argv", [["--run", "r"], ["--keep-last", "1"], ["--run", "r", "--all-runs", "--keep-last", "1"],
                                      ["--run", "r", "--older-than", "soon"], ["--run", "r", "--keep-last", "-1"]])
    def test_usage_errors_exit_2(self, run_cli, argv):
        """No rule, no scope, both scopes, a bad duration or a negative count exits 2."""
        assert 2 == run_cli("prune", *argv)[0]


class TestConfirmation:
    """Every destructive command without --yes and without a terminal changes nothing and exits 2."""

    @pytest.mark.parametrize("command", ["delete", "keep-last", "prune", "ttl-set", "ttl-remove"])
    def test_refuses_and_changes_nothing(self, run_cli, seed_run, mgmt_service, command):
        """stdin is not a terminal here: the command exits 2 with a hint naming --yes, and the listing is unchanged."""
        run_id, paths = seed_run(["a", "b"])
        tp.set_checkpoint_ttl(mgmt_service, paths[0], 7200).result()
        before = tp.list_checkpoints(mgmt_service, run_id).result()
        argv = {
            "delete": ["delete", paths[0]],
            "keep-last": ["keep-last", "1", "--run", run_id],
            "prune": ["prune", "--run", run_id, "--keep-last", "1"],
            "ttl-set": ["ttl", paths[1], "--set", "7200"],
            "ttl-remove": ["ttl", paths[0], "--remove"],
        }[command]
        code, out, err = run_cli(*argv)
        assert (2, "") == (code, out)
        assert "--yes" in err and "nothing was changed" in err
        assert before == tp.list_checkpoints(mgmt_service, run_id).result()

    def test_ttl_dry_run(self, run_cli, seed_run, mgmt_service):
        """``ttl --dry-run`` says what it would do and changes nothing; for a missing checkpoint it exits 1."""
        run_id, (path,) = seed_run(["a"])
        code, out, _ = run_cli("ttl", path, "--set", "7200", "--dry-run")
        assert (0, True) == (code, out.startswith("dry run: would make"))
        assert None is tp.list_checkpoints(mgmt_service, run_id).result()[0].expires_at
        code, out, _ = run_cli("--json", "ttl", path + "x", "--remove", "--dry-run")
        assert (1, False) == (code, json.loads(out)["exists"])

    def test_keep_last_with_nothing_to_delete_needs_no_confirmation(self, run_cli, seed_run):
        """keep-last with nothing to delete exits 0 without asking."""
        run_id, _ = seed_run(["only"])
        code, out, _ = run_cli("keep-last", "1", "--run", run_id)
        assert (0, True) == (code, "nothing to delete" in out)


class TestServeHelp:
    """``serve`` lists only the options it uses."""

    def test_serve_help(self, capsys):
        """``serve --help`` offers no base URL, key file or progress, and does offer --export-size."""
        assert 0 == cli.main(["serve", "--help"])
        out = capsys.readouterr().out
        assert ("--base-url" in out, "--api-key-file" in out, "--progress" in out) == (False, False, False)
        assert "--export-size" in out and "--json" in out


class TestTerminalPrompt:
    """On a terminal, a destructive command asks; 'y' goes ahead, anything else changes nothing (exit 1)."""

    def _answer(self, url, argv, answer, tmp_path):
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "tinkex_persist", "--base-url", url] + argv, stdin=slave,
                                stdout=subprocess.PIPE, stderr=slave, env=_env(TINKER_API_KEY=SERVER_KEY),
                                cwd=str(tmp_path), text=True)
        os.close(slave)
        try:
            _read_until(master, b"[y/N]")
            os.write(master, answer + b"\n")
            out = proc.stdout.read()
            proc.wait(timeout=30)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode, out

    def test_prune_yes_deletes_what_it_showed(self, keyed_server, seed_run, mgmt_service, tmp_path):
        """Answering 'y' to prune's question deletes the checkpoints it listed."""
        run_id, paths = seed_run(["a", "b"])
        code, out = self._answer(keyed_server.url, ["prune", "--run", run_id, "--keep-last", "1"], b"y", tmp_path)
        assert (0, [paths[1]]) == (code, [c.tinker_path for c in tp.list_checkpoints(mgmt_service, run_id).result()])
        assert "deleted" in out

    @pytest.mark.parametrize("command", ["keep-last", "ttl"])
    def test_no_changes_nothing(self, keyed_server, seed_run, mgmt_service, tmp_path, command):
        """Answering 'n' to keep-last's or ttl's question exits 1 and leaves the run as it was."""
        run_id, paths = seed_run(["a", "b"])
        before = tp.list_checkpoints(mgmt_service, run_id).result()
        argv = ["keep-last", "1", "--run", run_id] if command == "keep-last" else ["ttl", paths[0], "--set", "7200"]
        code, _ = self._answer(keyed_server.url, argv, b"n", tmp_path)
        assert (1, before) == (code, tp.list_checkpoints(mgmt_service, run_id).result())
