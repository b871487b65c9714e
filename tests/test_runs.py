"""Tests for training runs: ``get_training_run`` and ``list_training_runs``, the server routes, the official SDK and CLI."""

import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import pytest

import tinkex_persist as tp
from tinkex_persist.localserver import LocalServer

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "rest_targets.json").read_text())
VECTORS = {v["name"]: v for v in GOLDEN["vectors"]}
TINKER_CLI = pathlib.Path(sys.executable).with_name("tinker")


class Targets(logging.Handler):
    """Records the request targets (path and query) a LocalServer received, from its request log."""

    LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/1\.[01]"')

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = []

    def emit(self, record: logging.LogRecord) -> None:
        m = self.LINE.search(record.getMessage())
        if m:
            self.seen.append((m.group(1), m.group(2)))

    def of(self, prefix):
        return [t for t in self.seen if t[1].startswith(prefix)]


@pytest.fixture
def targets():
    """Capture every request target the local servers of this test receive."""
    handler = Targets()
    log = logging.getLogger("tinkex_persist.localserver._http")
    previous = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)
    log.setLevel(previous)


def _vector_target(name, run_id):
    return VECTORS[name]["target"].replace("<session-1>:train:0", run_id)


class TestGetTrainingRun:
    """Tests for ``tp.get_training_run``."""

    def test_describes_the_run_and_its_newest_checkpoint(self, mgmt_service):
        """The run names its base model, rank, metadata and, as ``last_checkpoint``, the newest training save."""
        tc = mgmt_service.create_lora_training_client("Qwen/Qwen3-8B", rank=4, user_metadata={"team": "a"}).result()
        tp.save_state(tc, "first").result()
        newest = tp.save_state(tc, "second").result().path
        run = tp.get_training_run(mgmt_service, tc.model_id).result()
        assert (tc.model_id, "Qwen/Qwen3-8B", 4, True, False) == (
            run.training_run_id, run.base_model, run.lora_rank, run.is_lora, run.corrupted)
        assert newest == run.last_checkpoint.tinker_path
        assert "training" == run.last_checkpoint.checkpoint_type
        assert None is run.last_sampler_checkpoint
        assert {"team": "a"} == run.user_metadata
        assert run.last_checkpoint.time <= run.last_request_time

    def test_a_tinker_path_names_its_run(self, mgmt_service, seed_run, targets):
        """A checkpoint path is reduced to its run id; the request is the SDK's, byte for byte."""
        run_id, (path,) = seed_run(["a"])
        run = tp.get_training_run(mgmt_service, path).result()
        assert run_id == run.training_run_id
        assert [("GET", _vector_target("get_training_run_by_tinker_path", run_id))] == targets.of("/api/v1/training_runs")

    def test_a_run_without_checkpoints_has_no_last_checkpoint(self, mgmt_service):
        """A fresh run is known to the server; it has no last checkpoint yet."""
        tc = mgmt_service.create_lora_training_client("Qwen/Qwen3-8B", rank=2).result()
        run = tp.get_training_run(mgmt_service, tc.model_id).result()
        assert (tc.model_id, None, None) == (run.training_run_id, run.last_checkpoint, run.user_metadata)

    def test_an_unknown_run_is_not_found(self, mgmt_service):
        """A run the server never saw fails the Future with NotFoundError."""
        with pytest.raises(tp.NotFoundError):
            tp.get_training_run(mgmt_service, "no-such-run:train:0").result()

    @pytest.mark.parametrize("bad", ["", "a/b", "tinker://x/weights", "tinker://x/bogus/y", 7, None])
    def test_bad_input_is_refused_before_sending(self, mgmt_service, bad, targets):
        """A malformed run id or path raises at once and sends nothing."""
        with pytest.raises((tp.UsageError, TypeError)):
            tp.get_training_run(mgmt_service, bad)
        assert [] == targets.seen

    def test_not_a_service_client_is_a_type_error(self):
        """The first argument must be a ServiceClient."""
        with pytest.raises(TypeError):
            tp.get_training_run(object(), "r:train:0")

    def test_runs_survive_a_server_restart_through_their_checkpoints(self, tmp_path):
        """After a restart (models are gone) a run with checkpoints is still described, from its newest save."""
        root = tmp_path / "root"
        with LocalServer(root) as server:
            with tp.ServiceClient(base_url=server.url, api_key="tml-x") as service:
                tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=3).result()
                path = tp.save_state(tc, "kept").result().path
        with LocalServer(root) as server:
            with tp.ServiceClient(base_url=server.url, api_key="tml-x") as service:
                run = tp.get_training_run(service, tc.model_id).result()
                listed = tp.list_training_runs(service).result()
        assert (3, path) == (run.lora_rank, run.last_checkpoint.tinker_path)
        assert [tc.model_id] == [r.training_run_id for r in listed]

    def test_a_run_whose_saved_state_is_damaged_is_corrupted(self, tmp_path):
        """When a checkpoint's files fail their sha256 on load, the run reports ``corrupted``."""
        root = tmp_path / "root"
        with LocalServer(root) as server:
            with tp.ServiceClient(base_url=server.url, api_key="tml-x") as service:
                tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=3).result()
                path = tp.save_state(tc, "kept").result().path
                for weights in (root / "data").glob("*/weights.bin"):
                    data = weights.read_bytes()
                    weights.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
                with pytest.raises(tp.RequestFailedError):
                    tp.create_training_client_from_state(service, path).result()
                assert True is tp.get_training_run(service, path).result().corrupted


class TestListTrainingRuns:
    """Tests for ``tp.list_training_runs``."""

    def test_every_page_each_run_once(self, mgmt_service, seed_run, targets):
        """With pages of 2, five runs come back in five distinct entries over three requests (SDK query form)."""
        made = [seed_run(["a"])[0] for _ in range(5)]
        listed = tp.list_training_runs(mgmt_service, page_size=2).result()
        assert sorted(made) == sorted(r.training_run_id for r in listed)
        assert len(listed) == len({r.training_run_id for r in listed})
        sent = [t for _, t in targets.of("/api/v1/training_runs?")]
        assert [VECTORS["list_training_runs"]["target"].replace("limit=3&offset=1", "limit=2&offset=%d" % o)
                for o in (0, 2, 4)] == sent

    def test_newest_run_first(self, mgmt_service, seed_run):
        """Runs are listed most recently used first."""
        first, _ = seed_run(["a"])
        second, _ = seed_run(["a"])
        listed = [r.training_run_id for r in tp.list_training_runs(mgmt_service).result()]
        assert [second, first] == listed

    def test_limit_stops_paging(self, mgmt_service, seed_run, targets):
        """``limit`` returns that many and asks for no more than needed."""
        for _ in range(3):
            seed_run(["a"])
        listed = tp.list_training_runs(mgmt_service, limit=2).result()
        assert 2 == len(listed)
        assert [("GET", "/api/v1/training_runs?limit=2&offset=0&access_scope=owned")] == targets.of("/api/v1/training_runs?")

    def test_no_runs_is_an_empty_list(self, mgmt_service):
        """A server with nothing lists nothing."""
        assert [] == tp.list_training_runs(mgmt_service).result()

    @pytest.mark.parametrize("kw", [{"limit": 0}, {"limit": "3"}, {"page_size": 0}, {"limit": True}])
    def test_bad_input_is_refused_before_sending(self, mgmt_service, kw, targets):
        """A bad limit or page size raises UsageError and sends nothing."""
        with pytest.raises(tp.UsageError):
            tp.list_training_runs(mgmt_service, **kw)
        assert [] == targets.seen

    def test_to_json(self, mgmt_service, seed_run):
        """``to_json`` gives RFC 3339 times and the last checkpoint as a listing entry."""
        run_id, (path,) = seed_run(["a"])
        data = tp.list_training_runs(mgmt_service).result()[0].to_json()
        assert (run_id, path, None) == (data["training_run_id"], data["last_checkpoint"]["tinker_path"],
                                        data["last_sampler_checkpoint"])
        assert data["last_request_time"].endswith("Z")


class TestServerRoutes:
    """Tests for the embedded server's training-run routes, over raw HTTP."""

    def test_query_is_decoded_strictly(self, api):
        """An unknown query parameter, a repeated one or a bad access scope is a 400 naming it."""
        for query, word in (("?limt=3", "limt"), ("?limit=1&limit=2", "limit"), ("?access_scope=all", "access_scope"),
                            ("?limit=x", "limit"), ("?limit=0", "limit")):
            resp = api.get("/api/v1/training_runs" + query)
            assert (400, True) == (resp.status_code, word in resp.json()["detail"]), query
        model = api.model()
        resp = api.get("/api/v1/training_runs/%s?access_scope=owned&x=1" % model)
        assert (400, True) == (resp.status_code, "x" in resp.json()["detail"])

    def test_cursor_and_offset(self, api):
        """The listing answers the SDK's shape: runs and a cursor with the total."""
        models = [api.model() for _ in range(3)]
        body = api.get("/api/v1/training_runs?limit=2&offset=1&access_scope=owned").json()
        assert {"offset": 1, "limit": 2, "total_count": 3} == body["cursor"]
        assert 2 == len(body["training_runs"])
        assert set(models) >= {r["training_run_id"] for r in body["training_runs"]}


class TestOfficialSdk:
    """The official SDK's RestClient reads training runs from the embedded server."""

    def test_rest_client_training_runs(self, sdk_server):
        """``get_training_run``, ``get_training_run_by_tinker_path`` and ``list_training_runs`` all see the run."""
        tinker = pytest.importorskip("tinker")
        with tp.ServiceClient(base_url=sdk_server.url, api_key=os.environ["TINKER_API_KEY"]) as service:
            tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4, user_metadata={"k": "v"}).result()
            path = tp.save_state(tc, "s1").result().path
        rest = tinker.RestClient(base_url=sdk_server.url, api_key=os.environ["TINKER_API_KEY"])  # RestClient() caches one holder per process
        by_id = rest.get_training_run(tc.model_id).result()
        by_path = rest.get_training_run_by_tinker_path(path).result()
        listed = rest.list_training_runs().result()
        assert (tc.model_id, 4, path, {"k": "v"}) == (
            by_id.training_run_id, by_id.lora_rank, by_id.last_checkpoint.tinker_path, by_id.user_metadata)
        assert by_id == by_path
        assert ([tc.model_id], 1) == ([r.training_run_id for r in listed.training_runs], listed.cursor.total_count)

    def test_official_cli_run_list_and_info(self, sdk_server, tmp_path):
        """``tinker run list`` and ``tinker run info`` exit 0 and name the server's run and its checkpoint."""
        if not TINKER_CLI.exists():
            pytest.skip("the official tinker CLI is not installed")
        with tp.ServiceClient(base_url=sdk_server.url, api_key=os.environ["TINKER_API_KEY"]) as service:
            tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
            path = tp.save_state(tc, "s1").result().path
        env = dict(os.environ)
        listed = subprocess.run([str(TINKER_CLI), "--format", "json", "run", "list"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert 0 == listed.returncode, listed.stderr
        assert tc.model_id in listed.stdout
        info = subprocess.run([str(TINKER_CLI), "--format", "json", "run", "info", tc.model_id], env=env,
                              capture_output=True, text=True, timeout=120)
        assert 0 == info.returncode, info.stderr
        data = json.loads(info.stdout)
        assert (tc.model_id, path) == (data["training_run_id"], data["last_checkpoint"]["tinker_path"])


class TestCli:
    """Tests for ``tinkex-persist runs list`` and ``runs info``."""

    def test_runs_list_human_and_json(self, run_cli, seed_run):
        """``runs list`` prints a table with a count; ``--json`` lists each run with its last checkpoint."""
        run_id, (path,) = seed_run(["a"], rank=4)
        code, out, _ = run_cli("runs", "list")
        lines = out.splitlines()
        assert (0, ["RUN", "BASE", "MODEL", "RANK"]) == (code, lines[0].split()[:4])
        assert [run_id, "Qwen/Qwen3-8B", "4"] == lines[1].split()[:3]
        assert "1 run(s)" == lines[-1]
        code, out, _ = run_cli("runs", "list", "--json")
        data = json.loads(out)
        assert (0, [run_id], [path]) == (code, [r["training_run_id"] for r in data["training_runs"]],
                                         [r["last_checkpoint"]["tinker_path"] for r in data["training_runs"]])

    def test_runs_list_empty(self, run_cli):
        """With no runs, a one-line note."""
        assert (0, "no training runs\n") == run_cli("runs", "list")[:2]

    def test_runs_info_human_and_json(self, run_cli, seed_run):
        """``runs info`` shows the run's fields; ``--json`` the TrainingRun; a path names its run."""
        run_id, (path,) = seed_run(["a"], rank=4)
        code, out, _ = run_cli("runs", "info", path)
        rows = dict(line.split(None, 1) if not line.startswith(("base model", "last ", "LoRA rank")) else
                    (line[:23].strip(), line[23:].strip()) for line in out.splitlines())
        assert (0, run_id, "ok") == (code, rows["run"], rows["state"])
        assert rows["last checkpoint"].startswith(path)
        code, out, _ = run_cli("--json", "runs", "info", run_id)
        data = json.loads(out)
        assert (0, run_id, 4, False, path) == (code, data["training_run_id"], data["lora_rank"], data["corrupted"],
                                               data["last_checkpoint"]["tinker_path"])

    def test_runs_info_unknown_exits_1(self, run_cli):
        """An unknown run exits 1 with the error on stderr."""
        code, out, err = run_cli("runs", "info", "nope:train:0")
        assert (1, "") == (code, out)
        assert "404" in err

    def test_runs_info_bad_run_exits_2(self, run_cli):
        """A malformed run id exits 2."""
        code, _, err = run_cli("runs", "info", "tinker://bad")
        assert 2 == code
        assert "tinker://" in err
