"""Interop of ``Checkpointer`` with the tinker-cookbook's own ``checkpoints.jsonl`` code (``checkpoint_utils``).

The cookbook is installed without its dependencies (``pip install --no-deps tinker-cookbook==0.6.1``): its
``checkpoint_utils`` imports with only ``tinker``. The tests skip when it is absent or does not import
(Python 3.9: it uses ``X | None`` annotations).
"""

import pytest

import tinkex_persist as tp
from tinkex_persist.demo import model_state, train_step

from conftest import SERVER_KEY as KEY, sdk_train_step

tinker = pytest.importorskip("tinker")
try:
    from tinker_cookbook import checkpoint_utils
except Exception as exc:  # ImportError, or TypeError from its annotations on Python 3.9
    pytest.skip("tinker_cookbook.checkpoint_utils does not import: %s" % exc, allow_module_level=True)

pytestmark = pytest.mark.interop

BASE = "Qwen/Qwen3-8B"


@pytest.fixture
def ours(sdk_server):
    """A tinkex_persist ServiceClient on the server the official SDK points at."""
    with tp.ServiceClient(base_url=sdk_server.url, api_key=KEY, heartbeat_interval=None) as svc:
        yield svc


def digests(service, model_id):
    state = model_state(service, model_id)
    return state["weights_sha256"], state["optimizer_sha256"]


class TestCookbookInterop:
    """Tests for runs that move between the tinker-cookbook's checkpoint code and ``Checkpointer``."""

    def test_cookbook_record_is_resumed_and_continued(self, sdk_service, ours, tmp_path):
        """A record written by the cookbook's ``save_checkpoint`` through the official SDK resumes in Checkpointer
        (weights, Adam state, start and loop state); Checkpointer's next record is what ``get_last_checkpoint`` finds."""
        log = str(tmp_path / "log")
        sdk_tc = sdk_service.create_lora_training_client(BASE, rank=1, seed=4).result()
        for _ in range(4):
            sdk_train_step(sdk_tc)
        (tmp_path / "log").mkdir()
        paths = checkpoint_utils.save_checkpoint(
            training_client=sdk_tc, name="000004", log_path=log, loop_state={"batch": 4, "epoch": 0, "elapsed_tokens": 96}
        )
        ckpt = tp.Checkpointer(ours, log, save_every=2)
        result = ckpt.resume_or_create(BASE, rank=1)
        tc, start = result
        assert ("record", 4, paths["state_path"], {"epoch": 0, "elapsed_tokens": 96}) == (
            result.source, start, result.path, result.state
        )
        assert digests(ours, sdk_tc.model_id) == digests(ours, tc.model_id)
        for step in range(start, 6):
            train_step(tc)
            ckpt.step(tc, step + 1, epoch=0, elapsed_tokens=24 * (step + 1))
        last = checkpoint_utils.get_last_checkpoint(log)
        assert (6, 0, "tinker://%s/weights/000006" % tc.model_id, 144) == (
            last.batch, last.epoch, last.state_path, last.get("elapsed_tokens")
        )

    def test_checkpointer_records_are_read_and_resumed_by_the_cookbook(self, sdk_service, ours, tmp_path):
        """``get_last_checkpoint`` returns Checkpointer's newest record (the final one at the end), and the official
        SDK resumes it with optimizer bit-exact."""
        log = tmp_path / "log"
        ckpt = tp.Checkpointer(ours, log, save_every=2, keep_last=1)
        tc, start = ckpt.resume_or_create(BASE, rank=1, seed=4)
        for step in range(start, 4):
            train_step(tc)
            ckpt.step(tc, step + 1, epoch=1)
        mid = checkpoint_utils.get_last_checkpoint(str(log))
        assert (4, 1, None, "000004") == (mid.batch, mid.epoch, mid.final, mid.name)
        train_step(tc)
        ckpt.finish(tc, 5)
        last = checkpoint_utils.get_last_checkpoint(str(log))
        assert ("final", 5, True) == (last.name, last.batch, last.final)
        resumed = sdk_service.create_training_client_from_state_with_optimizer(last.state_path).result()
        assert digests(ours, tc.model_id) == digests(ours, resumed.model_id)
        assert 3 == len(checkpoint_utils.load_checkpoints_file(str(log)))
