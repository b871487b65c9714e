"""Shared fixtures: a clean environment for every test, ``LocalServer`` fixtures (without and with an API key),
and ``wait_until``."""

import os
import time
from typing import Callable, TypeVar

import pytest

from tinkex_persist.localserver import LocalServer

_PREFIXES = ("TINKER_", "TINKEX_PERSIST_")
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "curl_ca_bundle"}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch):
    """Remove ``TINKER_*``, ``TINKEX_PERSIST_*`` and proxy variables, so no test reaches past loopback."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES) or name.lower() in _PROXY_VARS:
            monkeypatch.delenv(name)


T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
    """Call ``predicate`` until it returns a truthy value or ``timeout`` seconds have passed; return its last value.

    For conditions another thread or process brings about; the caller asserts on the value returned.
    """
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


@pytest.fixture
def local_server(tmp_path):
    """A running ``LocalServer`` on ``tmp_path / "server"``, port 0, no API key."""
    with LocalServer(tmp_path / "server") as server:
        yield server


#: The API key ``keyed_server`` requires (long and unique, so tests can search output for it).
SERVER_KEY = "tml-SECRET-server-key-5f1e2d3c4b5a6978"


@pytest.fixture
def keyed_server(tmp_path):
    """A running ``LocalServer`` on ``tmp_path / "keyed-server"`` that requires ``SERVER_KEY`` on every API request."""
    with LocalServer(tmp_path / "keyed-server", api_key=SERVER_KEY) as server:
        yield server


class Api:
    """Small raw-HTTP helper over one keep-alive ``requests.Session`` bound to a server URL."""

    BASE_MODEL = "Qwen/Qwen3-8B"

    def __init__(self, url, api_key=None):
        import requests

        self.url = url
        self.http = requests.Session()
        self.http.trust_env = False
        if api_key:
            self.http.headers["X-API-Key"] = api_key

    def post(self, path, body, **headers):
        return self.http.post(self.url + path, json=body, headers=headers, timeout=10)

    def get(self, path, **kwargs):
        return self.http.get(self.url + path, timeout=10, **kwargs)

    def session(self):
        body = {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0", "type": "create_session"}
        return self.post("/api/v1/create_session", body).json()["session_id"]

    def submit(self, path, body, **headers):
        resp = self.post(path, body, **headers)
        assert 200 == resp.status_code, resp.text
        return resp.json()["request_id"]

    def result(self, request_id):
        resp = self.post("/api/v1/retrieve_future", {"request_id": request_id, "allow_metadata_only": True})
        assert 200 == resp.status_code, resp.text
        return resp.json()

    def call(self, path, body):
        return self.result(self.submit(path, body))

    def model(self, session_id=None, model_seq_id=0, rank=8, seed=None):
        lora = {"rank": rank, "train_unembed": True, "train_mlp": True, "train_attn": True}
        if seed is not None:
            lora["seed"] = seed
        body = {
            "session_id": session_id or self.session(),
            "model_seq_id": model_seq_id,
            "base_model": self.BASE_MODEL,
            "lora_config": lora,
            "optimizer_config": {"type": "adamw"},
            "type": "create_model",
        }
        return self.call("/api/v1/create_model", body)["model_id"]

    def save(self, model_id, seq_id, name, **fields):
        body = dict({"model_id": model_id, "path": name, "seq_id": seq_id, "overwrite": False}, **fields)
        body["type"] = "save_weights"
        return self.call("/api/v1/save_weights", body)

    def load(self, path, optimizer, **address):
        return self.call("/api/v1/load_weights", dict(address, path=path, optimizer=optimizer, type="load_weights"))

    def step(self, model_id, seq_id, learning_rate=0.01):
        params = {"learning_rate": learning_rate, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12}
        params.update(weight_decay=0.0, grad_clip_norm=0.0)
        body = {"model_id": model_id, "seq_id": seq_id, "type": "optim_step", "adam_params": params}
        return self.call("/api/v1/optim_step", body)

    def forward_backward(self, model_id, seq_id):
        """Submit a ``forward_backward`` (protobuf, as the SDK sends it) of the demo's fixed batch; return its request id."""
        from tinkex_persist import _proto
        from tinkex_persist.demo import batch

        body = _proto.encode_forward_backward_request(model_id=model_id, seq_id=seq_id, data=batch(), loss_fn="cross_entropy")
        resp = self.http.post(
            self.url + "/api/v1/forward_backward", data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=10
        )
        assert 200 == resp.status_code, resp.text
        return resp.json()["request_id"]

    def train(self, model_id, seq_id, learning_rate=0.01):
        """One training step on two seq_ids: ``forward_backward`` at ``seq_id``, ``optim_step`` at ``seq_id + 1``.

        Return the step's result; the gradient is real, so weights and both Adam moments change."""
        self.forward_backward(model_id, seq_id)
        return self.step(model_id, seq_id + 1, learning_rate)

    def info(self, model_id):
        resp = self.get("/local/v1/models/" + model_id)
        assert 200 == resp.status_code, resp.text
        return resp.json()


@pytest.fixture
def api(local_server):
    """An :class:`Api` bound to ``local_server``."""
    return Api(local_server.url)


@pytest.fixture
def api_for():
    """Return the :class:`Api` class, to bind helpers to servers a test starts itself."""
    return Api


# --------------------------------------------------------------------------- checkpoint management (manage, cli)

@pytest.fixture
def mgmt_url(keyed_server):
    """The URL ``mgmt_service`` talks to: ``keyed_server``'s own (a test module may put a proxy in front)."""
    return keyed_server.url


@pytest.fixture
def mgmt_service(mgmt_url):
    """A ``ServiceClient`` on ``mgmt_url`` with no back-off between retries."""
    from tinkex_persist import ServiceClient

    with ServiceClient(base_url=mgmt_url, api_key=SERVER_KEY, backoff_factor=0, max_retries=2) as service:
        yield service


@pytest.fixture
def run_cli(keyed_server, mgmt_service, monkeypatch, capsys):
    """Return ``run_cli(*argv) -> (exit_code, stdout, stderr)``: ``cli.main`` against keyed_server, key from the environment."""
    from tinkex_persist import cli

    monkeypatch.setenv("TINKER_API_KEY", mgmt_service.config.api_key)

    def invoke(*argv):
        code = cli.main(["--base-url", keyed_server.url] + list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def seed_run(mgmt_service):
    """Return ``make(names, rank=8) -> (run_id, [paths])``: a new LoRA run with one checkpoint saved per name, in order."""
    from tinkex_persist import save_state

    def make(names, rank=8):
        tc = mgmt_service.create_lora_training_client("Qwen/Qwen3-8B", rank=rank).result()
        return tc.model_id, [save_state(tc, name).result().path for name in names]

    return make


# --------------------------------------------------------------------------- core client

TEST_KEY = "tml-test-secret-key-abcdef"


@pytest.fixture
def service_url(local_server):
    """The URL ``service`` talks to: ``local_server``'s own (a test module may put a proxy in front)."""
    return local_server.url


@pytest.fixture
def service(service_url):
    """A ``ServiceClient`` on ``service_url`` with instant retries and no heartbeat."""
    from tinkex_persist import ServiceClient

    with ServiceClient(base_url=service_url, api_key=TEST_KEY, backoff_factor=0, heartbeat_interval=None) as svc:
        yield svc


@pytest.fixture
def training_client(service):
    """A fresh LoRA ``TrainingClient`` on ``service``."""
    return service.create_lora_training_client("Qwen/Qwen3-8B", rank=8, seed=3).result(timeout=30)


@pytest.fixture(params=["as_served", "extra_keys"])
def front(request):
    """Return ``front(url) -> url``, the URL a client uses to reach a server, in two modes.

    ``as_served`` is the server's own URL; ``extra_keys`` is a fault proxy that adds an unknown key to every
    object at every depth of every JSON answer, as a newer service may. Tests using it run in both modes.
    """
    from faultproxy import FaultProxy

    proxies = []

    def route(url):
        if request.param == "as_served":
            return url
        proxies.append(FaultProxy(url, extra_keys=True).__enter__())
        return proxies[-1].url

    yield route
    for p in proxies:
        p.__exit__(None, None, None)


@pytest.fixture
def proxy(local_server):
    """A fault-injecting proxy in front of ``local_server``."""
    from faultproxy import FaultProxy

    with FaultProxy(local_server.url) as p:
        yield p


# --------------------------------------------------------------------------- the official SDK as a peer


@pytest.fixture
def sdk_env(tmp_path, monkeypatch):
    """Return ``point(url)``, which aims the official SDK's environment at ``url`` (telemetry off, empty HOME)."""

    def point(url):
        monkeypatch.setenv("TINKER_API_KEY", SERVER_KEY)
        monkeypatch.setenv("TINKER_BASE_URL", url)
        monkeypatch.setenv("TINKER_TELEMETRY", "0")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))

    return point


@pytest.fixture
def sdk_server(keyed_server, sdk_env):
    """``keyed_server``, with the official SDK's environment pointed at it."""
    sdk_env(keyed_server.url)
    return keyed_server


@pytest.fixture
def sdk_service(sdk_server):
    """An official ``tinker.ServiceClient`` on ``sdk_server``, closed at teardown."""
    tinker = pytest.importorskip("tinker")
    client = tinker.ServiceClient()
    yield client
    client.close("success").result()


def sdk_train_step(tc, learning_rate=0.05):
    """One training step of an official ``TrainingClient`` on the demo's fixed batch (``forward_backward``, then
    ``optim_step``, pipelined); return its ``loss:sum``. The same step as ``tinkex_persist.demo.train_step``."""
    import tinker

    from tinkex_persist.demo import batch

    data = [
        tinker.types.Datum(
            model_input=tinker.types.ModelInput.from_ints(d.model_input.to_ints()),
            loss_fn_inputs={k: td.tolist() for k, td in d.loss_fn_inputs.items()},
        )
        for d in batch()
    ]
    fb = tc.forward_backward(data, "cross_entropy")
    op = tc.optim_step(tinker.types.AdamParams(learning_rate=learning_rate))
    loss = fb.result().metrics["loss:sum"]
    op.result()
    return loss
