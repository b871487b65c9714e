"""TLS: the local server serves HTTPS with given certificate files; the client verifies it against a custom
CA bundle, fails without it, and never turns verification off by default."""

import pytest
import requests

import tinkex_persist as tp
from conftest import TEST_KEY
from tinkex_persist.config import Config
from tinkex_persist.localserver import LocalServer

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A trustme CA, a certificate for 127.0.0.1 and localhost, and a second, unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: str(d / name) for name in ("cert.pem", "key.pem", "ca.pem", "other-ca.pem")}
    cert.private_key_and_cert_chain_pem.write_to_path(files["cert.pem"])
    cert.private_key_pem.write_to_path(files["key.pem"])
    ca.cert_pem.write_to_path(files["ca.pem"])
    other.cert_pem.write_to_path(files["other-ca.pem"])
    return files


@pytest.fixture
def https_server(tmp_path, pki):
    """A LocalServer speaking HTTPS with the trustme certificate and requiring TEST_KEY."""
    with LocalServer(tmp_path / "root", certfile=pki["cert.pem"], keyfile=pki["key.pem"], api_key=TEST_KEY) as server:
        yield server


def _client(server, **kw):
    kw.setdefault("heartbeat_interval", None)
    return tp.ServiceClient(base_url=server.url, api_key=TEST_KEY, backoff_factor=0, max_retries=1, **kw)


class TestVerification:
    """Tests for certificate verification."""

    def test_custom_ca_bundle_verifies_and_operations_work(self, https_server, pki):
        """With ``verify=<CA bundle>`` a save, a resume and a listing all work over HTTPS."""
        assert https_server.url.startswith("https://127.0.0.1:")
        with _client(https_server, verify=pki["ca.pem"]) as svc:
            tc = svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
            path = tp.save_state(tc, "a").result(timeout=10).path
            resumed = tp.create_training_client_from_state_with_optimizer(svc, path).result(timeout=10)
            listed = tp.list_checkpoints(svc, tc.model_id).result(timeout=10)
        assert ([path], tc.model_id != resumed.model_id) == ([c.tinker_path for c in listed], True)

    @pytest.mark.parametrize("verify", [True, "other-ca.pem"])
    def test_untrusted_certificate_fails_typed_and_sends_nothing(self, https_server, pki, verify):
        """Without the right CA the operation fails with APIConnectionError caused by an SSL error; no request
        reaches the handler."""
        with _client(https_server, verify=pki[verify] if isinstance(verify, str) else verify) as svc:
            with pytest.raises(tp.APIConnectionError) as info:
                svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
        assert isinstance(info.value.__cause__, requests.exceptions.SSLError)
        assert {} == dict(https_server.stats.requests)

    def test_verification_is_on_by_default(self, https_server):
        """``Config()``, ``Config.from_env`` and ``ServiceClient`` default to ``verify=True``; nothing sets False."""
        with _client(https_server) as svc:
            assert (True, True, True) == (Config().verify, Config.from_env({}).verify, svc.config.verify)

    def test_environment_cannot_turn_verification_off(self, https_server, monkeypatch):
        """``CURL_CA_BUNDLE=""`` or ``REQUESTS_CA_BUNDLE`` (which requests itself may honour) do not weaken it."""
        monkeypatch.setenv("CURL_CA_BUNDLE", "")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
        with _client(https_server) as svc:
            with pytest.raises(tp.APIConnectionError):
                svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)

    def test_plain_http_to_the_https_port_fails_typed(self, https_server):
        """Speaking plain HTTP to the TLS port fails with a typed error, not a hang."""
        url = https_server.url.replace("https://", "http://")
        with tp.ServiceClient(base_url=url, api_key=TEST_KEY, max_retries=0, timeout=(1.0, 1.0),
                              heartbeat_interval=None) as svc:
            with pytest.raises(tp.APIConnectionError):
                svc.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)


class TestServer:
    """Tests for the HTTPS side of ``LocalServer``."""

    def test_a_client_that_never_handshakes_does_not_pin_the_server(self, tmp_path, pki):
        """A TCP connection that never starts TLS is dropped after ``socket_timeout``; others are served meanwhile."""
        import socket

        with LocalServer(tmp_path / "root", certfile=pki["cert.pem"], keyfile=pki["key.pem"],
                         socket_timeout=0.1) as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle:
                assert 200 == requests.get(server.url + "/api/v1/healthz", verify=pki["ca.pem"], timeout=5).status_code
                assert b"" == idle.recv(1)
