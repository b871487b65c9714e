"""Tests for clients across ``os.fork`` (a real fork in a subprocess) and for pickling them."""

import os
import pickle
import subprocess
import sys

import pytest

import tinkex_persist as tp

KEY = "tml-fork-test-key-0123456"

#: Uses the client (pool thread, session, heartbeat, keep-alive connection), forks, saves in the child,
#: then goes on in the parent on a new model (a model is driven by one process at a time: both would
#: number their requests from the same seq_id). The child's calls have a bound: a hang shows as exit code 4.
FORK_SCRIPT = """
import os, sys
import tinkex_persist as tp
url = sys.argv[1]
service = tp.ServiceClient(url, %r, heartbeat_interval=0.05)
tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
tc.save_state("parent-before").result()
pid = os.fork()
if pid == 0:
    try:
        path = tc.save_state("child").result(timeout=30).path
        other = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
        other.save_state("child-model").result(timeout=30)
        service.close()
        os._exit(0 if path.endswith("/child") else 3)
    except BaseException as exc:
        sys.stderr.write("child failed: %%s: %%s\\n" %% (type(exc).__name__, exc))
        os._exit(4)
_, status = os.waitpid(pid, 0)
print(os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1, flush=True)
again = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=30)
again.save_state("parent-after").result(timeout=30)
service.close()
print(tc.model_id, flush=True)
""" % KEY


@pytest.fixture
def keyed_server(tmp_path):
    from tinkex_persist.localserver import LocalServer

    with LocalServer(tmp_path / "root", api_key=KEY) as server:
        yield server


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
class TestFork:
    """Tests for a client used before ``fork`` and then in both processes."""

    def test_child_saves_and_parent_goes_on(self, keyed_server):
        """A save and a new model from a child forked after the client was used complete; the parent goes on too.

        Failed on the old main: the child's pool believed its (parent's) worker threads existed, so the
        save was never run and ``result()`` waited forever (here: exit code 4 after 30 s).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_PERSIST_"))}
        proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT, keyed_server.url], capture_output=True, text=True,
                              timeout=120, env=env)
        assert 0 == proc.returncode, proc.stderr
        child_status, model_id = proc.stdout.split()
        assert "0" == child_status, proc.stderr
        with tp.ServiceClient(keyed_server.url, KEY, heartbeat_interval=None) as service:
            listed = tp.list_checkpoints(service).result()
        names = sorted(c.tinker_path.rsplit("/", 1)[1] for c in listed)
        assert ["child", "child-model", "parent-after", "parent-before"] == names
        assert KEY not in proc.stdout + proc.stderr


class TestPickle:
    """Tests for pickling the clients, which hold threads, connections and a server session."""

    def test_service_client_says_why_in_one_line(self, service):
        """Pickling a ServiceClient raises TypeError with a one-line reason and the remedy, without the key."""
        with pytest.raises(TypeError) as info:
            pickle.dumps(service)
        message = str(info.value)
        assert 1 == len(message.splitlines())
        assert "ServiceClient cannot be pickled" in message
        assert "ServiceClient(config=" in message
        assert service.config.api_key not in message

    def test_training_client_says_why_in_one_line(self, training_client):
        """Pickling a TrainingClient raises TypeError naming the way to continue in another process."""
        with pytest.raises(TypeError) as info:
            pickle.dumps(training_client)
        message = str(info.value)
        assert 1 == len(message.splitlines())
        assert "TrainingClient cannot be pickled" in message
        assert "create_training_client_from_state_with_optimizer" in message
