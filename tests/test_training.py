"""Training verbs: forward_backward, forward, optim_step and save_weights_for_sampler, on the wire and on the embedded server."""

import base64
import json
import pathlib

import pytest
import requests

import tinkex_persist as tp
from tinkex_persist import _proto
from tinkex_persist.localserver import LocalServer

from conftest import TEST_KEY
from faultproxy import FaultProxy

BASE = "Qwen/Qwen3-8B"
GOLDEN = pathlib.Path(__file__).parent / "golden"
#: The datum of the SDK's captured forward_backward and forward calls.
TOKENS = [101, 2023, 2003, 1037, 3231]
TARGETS = [2023, 2003, 1037, 3231, 102]
WEIGHTS = [0.0, 1.0, 1.0, 1.0, 1.0]


def _datum(tokens=TOKENS, targets=TARGETS, weights=WEIGHTS):
    return tp.Datum(model_input=tp.ModelInput.from_ints(tokens), loss_fn_inputs={"target_tokens": targets, "weights": weights})


def _batch():
    """A fixed batch of three sequences."""
    seqs = [[101, 7592, 2088, 999, 102, 2023], [101, 1045, 2293, 8081, 102], [101, 3231, 2003, 2204, 1012, 102, 0]]
    return [_datum(s[:-1], s[1:], [1.0] * (len(s) - 1)) for s in seqs]


def _vector(kind, name):
    """A captured SDK 0.38 request (tests/golden, copied from the shared wire vectors)."""
    return json.loads((GOLDEN / kind / ("%s-accept-%s.json" % (kind == "protobuf" and "ForwardBackwardRequest" or name[0], name[1] if kind == "requests" else name))).read_text())


def _sdk_json(body):
    """The bytes the SDK's HTTP client sends for a JSON body (compact, key order kept)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _train(tc, data, steps, lr=0.05):
    """Pipelined forward_backward + optim_step; return the loss curve."""
    losses = []
    for _ in range(steps):
        fb = tc.forward_backward(data, "cross_entropy")
        op = tc.optim_step(tp.AdamParams(learning_rate=lr))
        losses.append(fb.result(timeout=30).metrics["loss:sum"])
        op.result(timeout=30)
    return losses


@pytest.fixture
def proxied(local_server):
    """(proxy, service client through the proxy, training client) on the embedded server."""
    with FaultProxy(local_server.url) as proxy, tp.ServiceClient(
        base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None, backoff_factor=0
    ) as service:
        tc = service.create_lora_training_client(BASE, rank=8, seed=3).result(timeout=30)
        yield proxy, service, tc


class TestGoldenBodies:
    """Every training request encodes to the official SDK's captured vector."""

    @pytest.mark.parametrize("name", ["forward_backward", "forward"])
    def test_protobuf_body_equals_the_canonical_bytes_and_decodes_to_the_same_message(self, proxied, name):
        """The forward_backward / forward body is the vector's canonical bytes (our model id and seq_id in place)."""
        proxy, _, tc = proxied
        vector = _vector("protobuf", name)
        call = tc.forward if name == "forward" else tc.forward_backward
        call([_datum()], "cross_entropy").result(timeout=30)
        sent = [r for r in proxy.records if r.path == "/api/v1/forward_backward"]
        assert 1 == len(sent)
        canonical = _proto.decode("ForwardBackwardRequest", base64.b64decode(vector["body_base64_canonical"]), strict=True)
        canonical.update(model_id=tc.model_id, seq_id=1)
        assert _proto.encode("ForwardBackwardRequest", canonical) == sent[0].body
        assert canonical == _proto.decode("ForwardBackwardRequest", sent[0].body, strict=True)

    @pytest.mark.parametrize("name, request_type", [("forward_backward", "ForwardBackward"), ("forward", "Forward")])
    def test_headers_of_the_submission_and_its_poll(self, proxied, name, request_type):
        """The submission is protobuf answered in JSON; its poll asks for protobuf and names the request type."""
        proxy, _, tc = proxied
        proxy.records.clear()
        getattr(tc, name)([_datum()], "cross_entropy").result(timeout=30)
        submit, poll = proxy.records
        assert ("application/x-protobuf", "application/json") == (submit.headers["content-type"], submit.headers["accept"])
        assert "/api/v1/retrieve_future" == poll.path
        assert ("application/x-protobuf", request_type) == (poll.headers["accept"], poll.headers["x-tinker-request-type"])
        assert "application/json" == poll.headers["content-type"]

    def test_optim_step_body_is_byte_equal(self, proxied):
        """optim_step(AdamParams(learning_rate=1e-4)) sends the vector's bytes, adam_params last."""
        proxy, _, tc = proxied
        vector = _vector("requests", ("OptimStepRequest", "optim_step"))
        tc.optim_step(tp.AdamParams(learning_rate=1e-4)).result(timeout=30)
        (sent,) = [r for r in proxy.records if r.path == "/api/v1/optim_step"]
        assert _sdk_json(dict(vector["body"], model_id=tc.model_id, seq_id=1)) == sent.body
        assert "OptimStep" == proxy.records[-1].headers["x-tinker-request-type"]

    def test_positional_keyword_and_legacy_forms_send_the_same_body(self, proxied):
        """A positional AdamParams, adam_params= and the flat function send identical parameters."""
        proxy, _, tc = proxied
        params = tp.AdamParams(learning_rate=0.001, weight_decay=0.01, grad_clip_norm=1.0)
        tc.optim_step(params).result(timeout=30)
        tc.optim_step(adam_params=params).result(timeout=30)
        tp.optim_step(tc, params).result(timeout=30)
        bodies = [json.loads(r.body) for r in proxy.records if r.path == "/api/v1/optim_step"]
        assert [1, 2, 3] == [b.pop("seq_id") for b in bodies]
        assert bodies[0] == bodies[1] == bodies[2]

    def test_save_weights_for_sampler_body_is_byte_equal(self, proxied):
        """save_weights_for_sampler('sampler-1', ttl_seconds=7200) sends the vector's bytes with kind: snapshot."""
        proxy, _, tc = proxied
        vector = _vector("requests", ("SaveWeightsForSamplerRequest", "save_weights_for_sampler"))
        result = tp.save_weights_for_sampler(tc, "sampler-1", ttl_seconds=7200).result(timeout=30)
        (sent,) = [r for r in proxy.records if r.path == "/api/v1/save_weights_for_sampler"]
        assert _sdk_json(dict(vector["body"], model_id=tc.model_id, seq_id=1)) == sent.body
        assert "tinker://%s/sampler_weights/sampler-1" % tc.model_id == result.path
        assert "SaveWeightsForSampler" == proxy.records[-1].headers["x-tinker-request-type"]

    def test_non_adam_families_travel_as_the_sdk_sends_them(self, proxied):
        """Dimuon parameters go under optimizer_params and a dimuon optimizer in optimizer_config, as SDK 0.38 serialises them."""
        tinker = pytest.importorskip("tinker")
        from tinker._compat import model_dump

        proxy, service, tc = proxied
        with pytest.raises(tp.BadRequestError) as info:
            tc.optim_step({"type": "dimuon", "learning_rate": 0.01}).result(timeout=30)
        assert "adamw" in str(info.value)
        with pytest.raises(tp.BadRequestError):
            service.create_lora_training_client(BASE, rank=8, optimizer=tinker.types.DimuonOptimizerConfig()).result(timeout=30)
        (step,) = [r.body for r in proxy.records if r.path == "/api/v1/optim_step"]
        creates = [r.body for r in proxy.records if r.path == "/api/v1/create_model"]
        sdk_step = tinker.types.OptimStepRequest(
            optim_params=tinker.types.DimuonParams(learning_rate=0.01), model_id=tc.model_id, seq_id=1
        )
        sdk_create = tinker.types.CreateModelRequest(
            session_id=service.session_id, model_seq_id=1, base_model=BASE,
            lora_config=tinker.types.LoraConfig(rank=8), optimizer_config=tinker.types.DimuonOptimizerConfig(),
        )

        def sdk_bytes(request):
            return json.dumps(model_dump(request, exclude_unset=False, exclude_none=True, mode="json"), separators=(",", ":")).encode()

        assert sdk_bytes(sdk_step) == step
        assert sdk_bytes(sdk_create) == creates[-1]

    def test_optimizer_on_create_from_state_travels_as_optimizer_config(self, proxied):
        """create_training_client_from_state(path, optimizer=...) sends optimizer_config as SDK 0.38 does; _with_optimizer sends none."""
        tinker = pytest.importorskip("tinker")
        from tinker._compat import model_dump

        proxy, service, tc = proxied
        path = tc.save_state("c").result(timeout=30).path
        tp.create_training_client_from_state(service, path, optimizer={"type": "adamw"}).result(timeout=30)
        tp.create_training_client_from_state_with_optimizer(service, path).result(timeout=30)
        plain, exact = [r.body for r in proxy.records if r.path == "/api/v1/load_weights"]
        for body, seq, optimizer, config in ((plain, 1, False, tinker.types.AdamOptimizerConfig()), (exact, 2, True, None)):
            sdk = tinker.types.LoadWeightsRequest(
                session_id=service.session_id, model_seq_id=seq, path=path, optimizer=optimizer, optimizer_config=config
            )
            expected = json.dumps(model_dump(sdk, exclude_unset=False, exclude_none=True, mode="json"), separators=(",", ":"))
            assert expected.encode() == body


class TestTraining:
    """The embedded server trains: loss falls, results are deterministic, splits combine, pipelines complete."""

    def test_loss_falls_over_20_steps_on_a_fixed_batch(self, training_client):
        """Twenty forward_backward + optim_step rounds on one batch lower loss:sum at every step."""
        losses = _train(training_client, _batch(), 20)
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
        assert losses[-1] < 0.75 * losses[0]

    def test_results_are_deterministic_for_a_seed(self, service):
        """Two runs with the same seed give the same loss curve; another seed gives another."""
        curves = []
        for seed in (5, 5, 6):
            tc = service.create_lora_training_client(BASE, rank=4, seed=seed).result(timeout=30)
            curves.append(_train(tc, _batch(), 4))
        assert curves[0] == curves[1]
        assert curves[0] != curves[2]

    def test_one_worker_completes_a_pipelined_training_loop(self, local_server):
        """With max_workers=1, forward_backward + optim_step + save_state submitted together all complete, in order."""
        with tp.ServiceClient(base_url=local_server.url, api_key=TEST_KEY, max_workers=1, heartbeat_interval=None) as svc:
            tc = svc.create_lora_training_client(BASE, rank=4, seed=1).result(timeout=30)
            futures = []
            for step in range(3):
                futures.append(tc.forward_backward(_batch(), "cross_entropy"))
                futures.append(tc.optim_step(tp.AdamParams(learning_rate=0.05)))
                futures.append(tp.save_state(tc, "step-%d" % step))
            results = [f.result(timeout=60) for f in futures]
        assert [3, 6, 9] == [r.seq_id for r in results[2::3]]
        losses = [r.metrics["loss:sum"] for r in results[0::3]]
        assert losses[2] < losses[0]

    def test_forward_computes_without_changing_the_model(self, training_client):
        """forward gives forward_backward's loss and logprobs, and repeating it changes nothing."""
        data = _batch()
        first = tp.forward(training_client, data, "cross_entropy").result(timeout=30)
        again = training_client.forward(data, "cross_entropy").result(timeout=30)
        both = tp.forward_backward(training_client, data, "cross_entropy").result(timeout=30)
        assert first == again
        assert first.metrics["loss:sum"] == both.metrics["loss:sum"]
        assert [o["logprobs"].tolist() for o in first.loss_fn_outputs] == [o["logprobs"].tolist() for o in both.loss_fn_outputs]
        assert [5, 4, 6] == [len(o["logprobs"]) for o in first.loss_fn_outputs]

    def test_a_batch_over_the_chunk_limit_is_split_and_combined(self, local_server):
        """With at most 2 datums per request, 3 datums go in 2 consecutive requests and combine to the unsplit result."""
        with FaultProxy(local_server.url) as proxy, tp.ServiceClient(
            base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None, fwdbwd_max_chunk_len=2
        ) as svc:
            tc = svc.create_lora_training_client(BASE, rank=4, seed=2).result(timeout=30)
            split = tc.forward(_batch(), "cross_entropy").result(timeout=30)
            sent = [_proto.decode_forward_backward_request(r.body) for r in proxy.records if r.path == "/api/v1/forward_backward"]
            whole = [tc.forward([d], "cross_entropy").result(timeout=30) for d in _batch()]
        assert [(1, 2), (2, 1)] == [(m.seq_id, len(m.data)) for m in sent]
        assert [o for w in whole for o in w.loss_fn_outputs] == split.loss_fn_outputs
        assert pytest.approx(sum(w.metrics["loss:sum"] for w in whole), rel=1e-12) == split.metrics["loss:sum"]

    def test_a_failed_part_stops_the_rest_of_the_split_call(self, local_server):
        """When the first request of a split call is refused, the later part is not sent and the call fails."""
        with FaultProxy(local_server.url) as proxy, tp.ServiceClient(
            base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None, fwdbwd_max_chunk_len=2
        ) as svc:
            tc = svc.create_lora_training_client(BASE, rank=4, seed=2).result(timeout=30)
            proxy.add("status", "/api/v1/forward_backward", status=400, body=b'{"detail": "refused"}')
            with pytest.raises(tp.BadRequestError):
                tc.forward_backward(_batch(), "cross_entropy").result(timeout=30)
            assert 1 == tp.save_state(tc, "after").result(timeout=30).seq_id  # the refused seq_id is reused
            sent = [r for r in proxy.records if r.path == "/api/v1/forward_backward"]
        assert 1 == len(sent)


class TestSamplerCheckpoints:
    """Sampler weights: saved, listed, described, deleted, and never loaded as training state."""

    def test_sampler_checkpoint_lifecycle(self, service, training_client):
        """The saved path is listed as a sampler checkpoint, weights_info describes it, and it can be deleted."""
        tc = training_client
        saved = tc.save_weights_for_sampler("s-1", user_metadata={"k": "v"}).result(timeout=30)
        assert ("tinker://%s/sampler_weights/s-1" % tc.model_id, 1) == (saved.path, saved.seq_id)
        (listed,) = tp.list_checkpoints(service, tc.model_id).result(timeout=30)
        assert (saved.path, "sampler", {"k": "v"}) == (listed.tinker_path, listed.checkpoint_type, listed.user_metadata)
        assert (BASE, 8) == (lambda i: (i.base_model, i.lora_rank))(tp.get_weights_info(service, saved.path).result(timeout=30))
        tp.delete_checkpoints(service, [saved.path]).result(timeout=30)
        assert [] == tp.list_checkpoints(service, tc.model_id).result(timeout=30)

    def test_the_training_run_names_its_last_sampler_checkpoint(self, service, training_client):
        """After a training save and a sampler save, the run's last_checkpoint and last_sampler_checkpoint name them."""
        saved = training_client.save_state("t-1").result(timeout=30)
        sampler = training_client.save_weights_for_sampler("s-1").result(timeout=30)
        run = tp.get_training_run(service, training_client.model_id).result(timeout=30)
        assert (saved.path, sampler.path) == (run.last_checkpoint.tinker_path, run.last_sampler_checkpoint.tinker_path)

    def test_a_sampler_path_is_refused_as_training_state_before_sending(self, proxied):
        """Loading or resuming from a sampler path raises UsageError at once; nothing is sent."""
        proxy, service, tc = proxied
        path = tc.save_weights_for_sampler("s").result(timeout=30).path
        before = len(proxy.records)
        for call in (
            lambda: tp.create_training_client_from_state_with_optimizer(service, path),
            lambda: tp.create_training_client_from_state(service, path),
            lambda: tp.load_state(tc, path),
        ):
            with pytest.raises(tp.UsageError) as info:
                call()
            assert "sampler" in str(info.value)
        assert before == len(proxy.records)

    def test_bad_sampler_arguments_are_refused(self, training_client):
        """A bad name, TTL or metadata raises UsageError at once."""
        for kwargs in ({"name": "a/b"}, {"name": "ok", "ttl_seconds": 5}, {"name": "ok", "user_metadata": {"k": 1}}):
            with pytest.raises(tp.UsageError):
                tp.save_weights_for_sampler(training_client, **kwargs)


class TestBadInput:
    """Bad training input raises UsageError before anything is sent."""

    def test_each_bad_input_is_refused_and_nothing_is_sent(self, local_server):
        """Mismatched lengths, a non-int token, an unknown loss, a negative learning rate, an oversized datum."""
        with FaultProxy(local_server.url) as proxy, tp.ServiceClient(
            base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None, fwdbwd_max_chunk_bytes_count=1000
        ) as svc:
            tc = svc.create_lora_training_client(BASE, rank=4, seed=2).result(timeout=30)
            before = len(proxy.records)
            cases = {
                "mismatched": lambda: tc.forward_backward([_datum(TOKENS, TARGETS[:3], WEIGHTS)], "cross_entropy"),
                "non-int token": lambda: tc.forward_backward([_datum([101, "x", 3], [1, 2, 3], [1.0] * 3)], "cross_entropy"),
                "unknown loss": lambda: tc.forward_backward([_datum()], "mse"),
                "negative lr": lambda: tc.optim_step(tp.AdamParams(learning_rate=-1e-3)),
                "negative dimuon lr": lambda: tc.optim_step({"type": "dimuon", "learning_rate": -1.0}),
                "oversized": lambda: tc.forward_backward([_datum(list(range(300)), list(range(300)), [1.0] * 300)], "cross_entropy"),
                "empty": lambda: tc.forward([], "cross_entropy"),
                "no params": lambda: tc.optim_step(),
                "both params": lambda: tc.optim_step(tp.AdamParams(), adam_params=tp.AdamParams()),
                "not a datum": lambda: tp.forward_backward(tc, [{"model_input": [1]}], "cross_entropy"),
            }
            messages = {}
            for label, call in cases.items():
                with pytest.raises(tp.UsageError) as info:
                    call()
                messages[label] = str(info.value)
            assert before == len(proxy.records)
        assert "3" in messages["mismatched"] and "5" in messages["mismatched"]
        assert "mse" in messages["unknown loss"]
        assert "learning_rate" in messages["negative lr"]
        assert "more than one request may carry" in messages["oversized"]

    @pytest.mark.parametrize(
        "params, needle",
        [
            ({"type": "dimuon"}, "learning_rate"),
            ({"type": "dimuon", "learning_rate": 0.1, "beta2": 0.9}, "beta2"),
            ({"type": "dimuon", "learning_rate": 0.1, "beta1": 1.0}, "beta1"),
            ({"type": "adamw", "learning_rate": 0.1}, "AdamParams"),
            ({"type": 3}, "type"),
            ({"type": "other", "learning_rate": float("nan")}, "learning_rate"),
            ({"type": "other", "x": object()}, "JSON"),
            ({"learning_rate": 0.1, "momentum": 0.9}, "momentum"),
            (0.1, "AdamParams"),
        ],
    )
    def test_bad_optimizer_parameters(self, training_client, params, needle):
        """Each malformed optimizer parameter set raises UsageError naming the problem."""
        with pytest.raises(tp.UsageError) as info:
            training_client.optim_step(params)
        assert needle in str(info.value)

    @pytest.mark.parametrize("optimizer", [{"kind": "adamw"}, "adamw", {"type": "dimuon", "v": float("inf")}])
    def test_bad_optimizer_configs(self, service, optimizer):
        """A malformed optimizer= raises UsageError before anything is sent."""
        with pytest.raises(tp.UsageError):
            service.create_lora_training_client(BASE, rank=4, optimizer=optimizer)

    def test_a_dict_without_type_is_adam(self, training_client):
        """A dict without a type is AdamParams' keywords (an AdamW step)."""
        assert training_client.optim_step({"learning_rate": 0.01}).result(timeout=30).metrics is not None


class TestServerRoutes:
    """The embedded server decodes protobuf strictly and refuses what its model cannot take, before a seq_id is used."""

    def _post(self, server, path, body, **headers):
        h = {"X-API-Key": TEST_KEY, "Content-Type": "application/x-protobuf"}
        h.update(headers)
        return requests.post(server.url + path, data=body, headers=h, timeout=10)

    def _body(self, tc, seq_id=1, **datum):
        return _proto.encode_forward_backward_request(model_id=tc.model_id, seq_id=seq_id, data=[_datum(**datum)], loss_fn="cross_entropy")

    def test_an_unknown_field_number_is_a_400_naming_it(self, local_server, training_client):
        """A body with field 15 added is refused, and the answer names field 15."""
        body = self._body(training_client) + bytes([15 << 3, 1])
        resp = self._post(local_server, "/api/v1/forward_backward", body)
        assert 400 == resp.status_code
        assert "15" in resp.json()["detail"]

    def test_a_token_outside_the_vocabulary_is_a_400_naming_the_datum(self, training_client):
        """Token 151936 (past Qwen3's vocabulary) fails the Future with a 400 naming datum 0; the seq_id stays free."""
        bad = _datum([101, 151936, 3], [1, 2, 3], [1.0] * 3)
        with pytest.raises(tp.BadRequestError) as info:
            training_client.forward_backward([bad], "cross_entropy").result(timeout=30)
        assert "datum 0" in str(info.value) and "151936" in str(info.value)
        assert 1 == tp.save_state(training_client, "after").result(timeout=30).seq_id

    def test_wrong_media_type_or_encoding_is_a_415(self, local_server, training_client):
        """A JSON body or a zstd-encoded one on the protobuf route gets 415."""
        assert 415 == self._post(local_server, "/api/v1/forward_backward", b"{}", **{"Content-Type": "application/json"}).status_code
        assert 415 == self._post(local_server, "/api/v1/forward_backward", self._body(training_client), **{"Content-Encoding": "zstd"}).status_code

    def test_the_forward_route_computes_without_a_gradient(self, local_server, training_client):
        """POST /api/v1/forward answers a future whose protobuf result has per-datum logprobs; a JSON poll gets 406."""
        resp = self._post(local_server, "/api/v1/forward", self._body(training_client))
        rid = resp.json()["request_id"]
        poll = {"request_id": rid, "allow_metadata_only": True}
        as_json = requests.post(local_server.url + "/api/v1/retrieve_future", json=poll, headers={"X-API-Key": TEST_KEY}, timeout=10)
        assert 406 == as_json.status_code
        as_proto = requests.post(
            local_server.url + "/api/v1/retrieve_future", json=poll,
            headers={"X-API-Key": TEST_KEY, "Accept": "application/x-protobuf"}, timeout=10,
        )
        assert "application/x-protobuf" == as_proto.headers["Content-Type"]
        out = _proto.decode_forward_backward_output(as_proto.content)
        assert [5] == [len(o["logprobs"]) for o in out.loss_fn_outputs]
        again = self._post(local_server, "/api/v1/forward", self._body(training_client, seq_id=2))
        poll["request_id"] = again.json()["request_id"]
        repeat = requests.post(
            local_server.url + "/api/v1/retrieve_future", json=poll,
            headers={"X-API-Key": TEST_KEY, "Accept": "application/x-protobuf"}, timeout=10,
        )
        assert out == _proto.decode_forward_backward_output(repeat.content)

    def test_a_json_result_where_protobuf_was_asked_is_a_decode_error(self, local_server, training_client):
        """A server answering a forward_backward poll in JSON fails the Future with DecodeError, as in the SDK."""
        with FaultProxy(local_server.url) as proxy, tp.ServiceClient(
            base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None
        ) as svc:
            tc = svc.create_lora_training_client(BASE, rank=4).result(timeout=30)
            proxy.add("status", "/api/v1/retrieve_future", status=200, body=b'{"metrics": {"loss:sum": 1.0}}')
            with pytest.raises(tp.DecodeError) as info:
                tc.forward_backward([_datum()], "cross_entropy").result(timeout=30)
        assert "application/x-protobuf" in str(info.value)

    def test_optim_step_without_adam_params_is_a_400(self, local_server, training_client):
        """An optim_step body with neither parameter set is refused before it takes a seq_id."""
        body = {"model_id": training_client.model_id, "seq_id": 1, "type": "optim_step"}
        resp = requests.post(local_server.url + "/api/v1/optim_step", json=body, headers={"X-API-Key": TEST_KEY}, timeout=10)
        assert 400 == resp.status_code
        body["adam_params"], body["optimizer_params"] = {}, {"type": "x"}
        resp = requests.post(local_server.url + "/api/v1/optim_step", json=body, headers={"X-API-Key": TEST_KEY}, timeout=10)
        assert 400 == resp.status_code
        assert 1 == tp.save_state(training_client, "after").result(timeout=30).seq_id

    def test_sampler_save_without_a_name_is_a_400(self, local_server, training_client):
        """An unnamed sampler save (a sampling session) is refused: the local server keeps none."""
        body = {"model_id": training_client.model_id, "sampling_session_seq_id": 0, "seq_id": 1, "type": "save_weights_for_sampler"}
        resp = requests.post(local_server.url + "/api/v1/save_weights_for_sampler", json=body, headers={"X-API-Key": TEST_KEY}, timeout=10)
        assert 400 == resp.status_code


@pytest.mark.interop
class TestOfficialSDK:
    """The official SDK 0.38 trains on the embedded server, and runs move between it and this client."""

    @pytest.fixture
    def ours(self, sdk_server):
        """A tinkex_persist ServiceClient on the server the SDK uses."""
        from conftest import SERVER_KEY

        with tp.ServiceClient(base_url=sdk_server.url, api_key=SERVER_KEY, heartbeat_interval=None) as svc:
            yield svc

    @staticmethod
    def _sdk_batch(tinker):
        return [
            tinker.types.Datum(
                model_input=tinker.types.ModelInput.from_ints(d.model_input.to_ints()),
                loss_fn_inputs={k: td.tolist() for k, td in d.loss_fn_inputs.items()},
            )
            for d in _batch()
        ]

    @classmethod
    def _sdk_train(cls, tinker, tc, steps):
        losses = []
        for _ in range(steps):
            fb = tc.forward_backward(cls._sdk_batch(tinker), "cross_entropy")
            op = tc.optim_step(tinker.types.AdamParams(learning_rate=0.05))
            losses.append(fb.result().metrics["loss:sum"])
            op.result()
        return losses

    def test_sdk_trains_here_and_losses_agree_with_ours(self, sdk_service, ours):
        """forward_backward, optim_step and save_weights_for_sampler work from the SDK; both clients see equal losses."""
        tinker = pytest.importorskip("tinker")
        sdk_tc = sdk_service.create_lora_training_client(BASE, rank=4, seed=7).result()
        tc = ours.create_lora_training_client(BASE, rank=4, seed=7).result(timeout=30)
        sdk_losses = self._sdk_train(tinker, sdk_tc, 3)
        our_losses = _train(tc, _batch(), 3)
        assert sdk_losses == our_losses
        sdk_out = sdk_tc.forward(self._sdk_batch(tinker), "cross_entropy").result()
        our_out = tc.forward(_batch(), "cross_entropy").result(timeout=30)
        assert [list(o["logprobs"].tolist()) for o in sdk_out.loss_fn_outputs] == [o["logprobs"].tolist() for o in our_out.loss_fn_outputs]
        sampler = sdk_tc.save_weights_for_sampler("sdk-sampler").result()
        assert "tinker://%s/sampler_weights/sdk-sampler" % sdk_tc.model_id == sampler.path
        assert 4 == tp.get_weights_info(ours, sampler.path).result(timeout=30).lora_rank

    def test_a_run_saved_by_the_sdk_continues_here_on_the_sdk_curve(self, sdk_service, ours):
        """An SDK-trained checkpoint resumed with create_training_client_from_state_with_optimizer trains as the SDK's resume does."""
        tinker = pytest.importorskip("tinker")
        sdk_tc = sdk_service.create_lora_training_client(BASE, rank=4, seed=11).result()
        self._sdk_train(tinker, sdk_tc, 3)
        path = sdk_tc.save_state("mid").result().path
        resumed = tp.create_training_client_from_state_with_optimizer(ours, path).result(timeout=30)
        our_curve = _train(resumed, _batch(), 5)
        sdk_curve = self._sdk_train(tinker, sdk_service.create_training_client_from_state_with_optimizer(path).result(), 5)
        assert sdk_curve == our_curve
        assert our_curve[-1] < our_curve[0]

    def test_a_run_saved_here_continues_in_the_sdk_on_our_curve(self, sdk_service, ours):
        """Our checkpoint resumed by the SDK trains exactly as our own resume does."""
        tinker = pytest.importorskip("tinker")
        tc = ours.create_lora_training_client(BASE, rank=4, seed=13).result(timeout=30)
        _train(tc, _batch(), 3)
        path = tc.save_state("mid").result(timeout=30).path
        sdk_curve = self._sdk_train(tinker, sdk_service.create_training_client_from_state_with_optimizer(path).result(), 5)
        our_curve = _train(tp.create_training_client_from_state_with_optimizer(ours, path).result(timeout=30), _batch(), 5)
        assert our_curve == sdk_curve


class TestServerRefusals:
    """What the embedded server's model cannot take fails the Future with a typed error naming the cause."""

    def test_an_image_chunk_is_a_400_naming_the_datum(self, training_client):
        """A datum with an image chunk is refused with a 400 naming it: the tiny model reads tokens only."""
        image = tp.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=2)
        datum = tp.Datum(model_input=tp.ModelInput(chunks=[image]), loss_fn_inputs={"target_tokens": [1, 2], "weights": [1.0, 1.0]})
        with pytest.raises(tp.BadRequestError) as info:
            training_client.forward_backward([datum], "cross_entropy").result(timeout=30)
        assert "datum 0" in str(info.value)

    def test_an_overflowing_importance_ratio_fails_the_request(self, training_client):
        """importance_sampling with a sampling logprob of -1000 overflows: the request fails as a user error."""
        datum = tp.Datum(
            model_input=tp.ModelInput.from_ints([1, 2, 3]),
            loss_fn_inputs={"target_tokens": [2, 3, 4], "logprobs": [-1000.0] * 3, "advantages": [1.0] * 3},
        )
        with pytest.raises(tp.RequestFailedError) as info:
            training_client.forward_backward([datum], "importance_sampling").result(timeout=30)
        assert "user" == info.value.category

    def test_a_sampler_name_in_use_fails_the_save(self, training_client):
        """Saving sampler weights twice under one name fails the second save, naming the checkpoint."""
        training_client.save_weights_for_sampler("same").result(timeout=30)
        with pytest.raises(tp.RequestFailedError) as info:
            training_client.save_weights_for_sampler("same").result(timeout=30)
        assert "sampler_weights/same" in str(info.value)

    def test_another_optimizer_family_is_refused_by_an_adamw_server(self, training_client):
        """Parameters of an unknown family are sent as given, and the AdamW-only server answers 400 naming it."""
        with pytest.raises(tp.BadRequestError) as info:
            training_client.optim_step({"type": "lion", "learning_rate": 0.1, "betas": [0.9, 0.99]}).result(timeout=30)
        assert "lion" in str(info.value)


class TestLostAnswers:
    """A forward_backward whose answer is lost is applied once: retried under its key, replayed by the server."""

    def test_a_lost_answer_does_not_accumulate_the_gradient_twice(self, local_server):
        """With the first forward_backward answer dropped after the server committed it, the loss curve equals a clean run's."""
        curves = []
        for fault in (False, True):
            with FaultProxy(local_server.url) as proxy, tp.ServiceClient(
                base_url=proxy.url, api_key=TEST_KEY, heartbeat_interval=None, backoff_factor=0
            ) as svc:
                tc = svc.create_lora_training_client(BASE, rank=4, seed=9).result(timeout=30)
                if fault:
                    proxy.add("lost_ack", "/api/v1/forward_backward")
                curves.append(_train(tc, _batch(), 3))
                sent = [r for r in proxy.records if r.path == "/api/v1/forward_backward"]
            assert (4 if fault else 3) == len(sent)
        assert curves[0] == curves[1]
        assert sent[0].body == sent[1].body and sent[0].headers["x-idempotency-key"] == sent[1].headers["x-idempotency-key"]
