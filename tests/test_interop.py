"""Interop with the official SDK (``tinker==0.38.0``): shared checkpoints both ways, identical request bodies."""

import json
import warnings

import pytest

import tinkex_persist as tp
from tinkex_persist.demo import model_state, train_step
from tinkex_persist.localserver import LocalServer

from conftest import SERVER_KEY as KEY, sdk_train_step

tinker = pytest.importorskip("tinker")

pytestmark = pytest.mark.interop

BASE = "Qwen/Qwen3-8B"


@pytest.fixture
def server(sdk_server):
    """A LocalServer that the official SDK's environment points at."""
    return sdk_server


@pytest.fixture
def sdk(sdk_service):
    """An official ServiceClient on ``server``."""
    return sdk_service


@pytest.fixture
def ours(server):
    """A tinkex_persist ServiceClient on the same server."""
    with tp.ServiceClient(base_url=server.url, api_key=KEY, heartbeat_interval=None) as svc:
        yield svc


def _sdk_train(tc, steps=3):
    for _ in range(steps):
        sdk_train_step(tc)


class TestSharedCheckpoints:
    """Tests for checkpoints crossing between the official SDK and tinkex_persist."""

    def test_sdk_checkpoint_loads_with_optimizer_into_fresh_client(self, sdk, ours):
        """A checkpoint from the SDK's save_state loads with optimizer onto a fresh tinkex_persist client bit-exact."""
        src = sdk.create_lora_training_client(BASE, rank=8).result()
        _sdk_train(src)
        path = src.save_state("from-sdk").result().path
        fresh = ours.create_lora_training_client(BASE, rank=8).result(timeout=30)
        tp.load_state_with_optimizer(fresh, path).result(timeout=30)
        want, got = model_state(ours, src.model_id), model_state(ours, fresh.model_id)
        assert (want["weights_sha256"], want["optimizer_sha256"]) == (got["weights_sha256"], got["optimizer_sha256"])

    def test_sdk_checkpoint_creates_client_from_state(self, sdk, ours):
        """tinkex_persist's create_training_client_from_state resumes an SDK checkpoint's weights."""
        src = sdk.create_lora_training_client(BASE, rank=8).result()
        _sdk_train(src)
        path = src.save_state("from-sdk").result().path
        tc = tp.create_training_client_from_state(ours, path).result(timeout=30)
        assert model_state(ours, src.model_id)["weights_sha256"] == model_state(ours, tc.model_id)["weights_sha256"]

    def test_our_checkpoint_resumes_in_the_sdk_with_optimizer(self, sdk, ours):
        """A tinkex_persist save resumes in the SDK's create_training_client_from_state_with_optimizer bit-exact."""
        src = ours.create_lora_training_client(BASE, rank=8).result(timeout=30)
        for _ in range(3):
            train_step(src)
        path = tp.save_state(src, "from-ours").result(timeout=30).path
        resumed = sdk.create_training_client_from_state_with_optimizer(path).result()
        want, got = model_state(ours, src.model_id), model_state(ours, resumed.model_id)
        assert (want["weights_sha256"], want["optimizer_sha256"]) == (got["weights_sha256"], got["optimizer_sha256"])

    def test_our_load_on_sdk_style_refusal_matches(self, sdk, ours):
        """Both clients see the server refuse a late load; ours explains the create-from-state remedy."""
        tc = ours.create_lora_training_client(BASE, rank=8).result(timeout=30)
        path = tp.save_state(tc, "x").result(timeout=30).path
        with pytest.raises(tp.RequestFailedError) as info:
            tp.load_state(tc, path).result(timeout=30)
        assert "create_training_client_from_state" in str(info.value)
        sdk_tc = sdk.create_lora_training_client(BASE, rank=8).result()
        sdk_tc.save_state("y").result()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            with pytest.raises(tinker.RequestFailedError):
                sdk_tc.load_state(path).result()


class TestIdenticalBodies:
    """Tests comparing what both clients put on the wire for the same calls."""

    def _bodies(self, proxy, path):
        return [r.body for r in proxy.records if r.path == path]

    def test_same_calls_send_byte_identical_bodies(self, tmp_path, sdk_env):
        """Save (plain; ttl+overwrite), loads and create-from-state send the SDK's exact bytes, ids aside."""
        from faultproxy import FaultProxy

        with LocalServer(tmp_path / "r", api_key=KEY) as srv, FaultProxy(srv.url) as proxy:
            sdk_env(proxy.url)
            captured = {}
            for label in ("sdk", "ours"):
                proxy.records.clear()
                if label == "sdk":
                    svc = tinker.ServiceClient()
                    fresh = svc.create_lora_training_client(BASE, rank=8).result()
                    tc = svc.create_lora_training_client(BASE, rank=8).result()
                    p = tc.save_state("a").result().path
                    tc.save_state("b", ttl_seconds=7200, overwrite=True, user_metadata={"k": "v"}).result()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FutureWarning)
                        fresh.load_state_with_optimizer(p).result()
                    svc.create_training_client_from_state(p).result()
                    svc.create_training_client_from_state_with_optimizer(p).result()
                    ids = (svc.holder.get_session_id(),)
                    svc.close("success").result()
                else:
                    with tp.ServiceClient(api_key=KEY, base_url=proxy.url, heartbeat_interval=None) as svc:
                        fresh = svc.create_lora_training_client(BASE, rank=8).result(timeout=30)
                        tc = svc.create_lora_training_client(BASE, rank=8).result(timeout=30)
                        p = tp.save_state(tc, "a").result(timeout=30).path
                        tp.save_state(tc, "b", ttl_seconds=7200, overwrite=True, user_metadata={"k": "v"}).result(timeout=30)
                        tp.load_state_with_optimizer(fresh, p).result(timeout=30)
                        tp.create_training_client_from_state(svc, p).result(timeout=30)
                        tp.create_training_client_from_state_with_optimizer(svc, p).result(timeout=30)
                        ids = (svc.session_id,)
                bodies = []
                for path in ("/api/v1/create_session", "/api/v1/create_model", "/api/v1/save_weights", "/api/v1/load_weights"):
                    for body in self._bodies(proxy, path):
                        bodies.append((path, body.replace(ids[0].encode(), b"<session>")))
                captured[label] = bodies
        assert captured["sdk"] == captured["ours"]
        assert 8 == len(captured["ours"])
        assert all(json.loads(b) for _, b in captured["ours"])
