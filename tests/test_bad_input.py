"""The bad-input matrix: every bad argument of every public operation is a typed error that says what was
wrong, raised before anything is sent (the server counts zero requests); server-side refusals are typed too."""

import pytest

import tinkex_persist as tp
from conftest import TEST_KEY
from tinkex_persist.localserver import LocalServer

GOOD = "tinker://run-1/weights/ckpt"

BAD_NAMES = [
    ("", "is empty"),
    ("/", "'/'"),
    ("a/b", "'/'"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    ("nul\x00", "'\\x00'"),
    ("tab\tname", "'\\t'"),
    ("del\x7f", "'\\x7f'"),
    ("x" * 129, "129 characters"),
    (" padded", "white space"),
    (7, "must be a str, got int"),
    (None, "must be a str, got NoneType"),
    (b"bytes", "must be a str, got bytes"),
]

BAD_PATHS = [
    ("ckpt", "does not start with 'tinker://'"),
    ("https://run-1/weights/ckpt", "does not start with 'tinker://'"),
    ("s3://bucket/weights/ckpt", "does not start with 'tinker://'"),
    ("tinker://run-1/weights", "2 segments, not 3"),
    ("tinker://run-1", "1 segments, not 3"),
    ("tinker://", "1 segments, not 3"),
    ("tinker:///weights/ckpt", "run id '' is empty"),
    ("tinker://run-1/weights/", "is empty"),
    ("tinker://run-1/weights/ckpt/", "4 segments, not 3"),
    ("tinker://run-1/sampler_weights/ckpt", "sampler checkpoint, which cannot restore training state"),
    ("tinker://run-1/bogus/ckpt", "unknown kind 'bogus'"),
    ("tinker://run-1/weights/ckpt?x=1", "'?'"),
    ("tinker://run-1/weights/ckpt#frag", "'#'"),
    ("tinker://run-1/weights/..", "'..'"),
    ("tinker://../weights/ckpt", "'..'"),
    ("tinker://run-1/weights/a%2Fb", "'%'"),
    (None, "must be a str, got NoneType"),
    (42, "must be a str, got int"),
]

BAD_TTLS = [
    (0, "out of range"),
    (-1, "out of range"),
    (3599, "out of range"),
    (10 * 365 * 24 * 3600 + 1, "out of range"),
    (10 ** 30, "out of range"),
    (True, "got bool True"),
    (False, "got bool False"),
    (3600.0, "got float 3600.0"),
    (float("inf"), "got float inf"),
    ("3600", "got str '3600'"),
]


def _sent(server):
    return sum(server.stats.requests.values())


@pytest.fixture
def tc(training_client, local_server):
    """A training client whose creation requests are already counted."""
    return training_client


def _assert_refused(server, fn, exc_type, fragment):
    before = _sent(server)
    with pytest.raises(exc_type) as info:
        fn()
    assert fragment in str(info.value)
    assert before == _sent(server)
    return info.value


class TestNames:
    """Tests for bad checkpoint names given to ``save_state``."""

    @pytest.mark.parametrize("name, fragment", BAD_NAMES, ids=[repr(n)[:20] for n, _ in BAD_NAMES])
    def test_bad_name_is_refused_before_sending(self, local_server, tc, name, fragment):
        """A bad name is a UsageError (a ValueError) naming the problem, and nothing reaches the server."""
        err = _assert_refused(local_server, lambda: tp.save_state(tc, name), tp.UsageError, fragment)
        assert isinstance(err, ValueError)


class TestPaths:
    """Tests for bad ``tinker://`` paths given to every operation that takes one."""

    OPS = {
        "load_state": lambda svc, tc, p: tp.load_state(tc, p),
        "load_state_with_optimizer": lambda svc, tc, p: tp.load_state_with_optimizer(tc, p),
        "create_training_client_from_state": lambda svc, tc, p: tp.create_training_client_from_state(svc, p),
        "create_training_client_from_state_with_optimizer": (
            lambda svc, tc, p: tp.create_training_client_from_state_with_optimizer(svc, p)
        ),
        "get_weights_info": lambda svc, tc, p: tp.get_weights_info(svc, p),
        # The client methods the flat functions delegate to validate the same way.
        "TrainingClient.load_state": lambda svc, tc, p: tc.load_state(p),
        "TrainingClient.load_state_with_optimizer": lambda svc, tc, p: tc.load_state_with_optimizer(p),
        "ServiceClient.create_training_client_from_state": lambda svc, tc, p: svc.create_training_client_from_state(p),
        "ServiceClient.create_training_client_from_state_with_optimizer": (
            lambda svc, tc, p: svc.create_training_client_from_state_with_optimizer(p)
        ),
    }

    # get_weights_info also describes sampler checkpoints.
    CASES = [(op, p, f) for op in sorted(OPS) for p, f in BAD_PATHS if not (op == "get_weights_info" and "sampler" in f)]

    @pytest.mark.parametrize("op, path, fragment", CASES, ids=["%s-%r" % (op, p) for op, p, _ in CASES])
    def test_bad_path_is_refused_before_sending(self, local_server, service, tc, op, path, fragment):
        """A bad path is a UsageError naming the problem and the accepted form, and nothing is sent."""
        err = _assert_refused(local_server, lambda: self.OPS[op](service, tc, path), tp.UsageError, fragment)
        assert "tinker://<run_id>/weights/<name>" in str(err)

    @pytest.mark.parametrize(
        "path, fragment",
        [p for p in BAD_PATHS if "sampler" not in p[0].__repr__()],
        ids=[repr(p)[:40] for p, _ in BAD_PATHS if "sampler" not in repr(p)],
    )
    def test_bad_path_in_delete_and_ttl_is_refused_before_sending(self, local_server, service, path, fragment):
        """``delete_checkpoints`` and ``set_checkpoint_ttl`` refuse the same paths without sending."""
        _assert_refused(local_server, lambda: tp.delete_checkpoints(service, [GOOD, path]), tp.UsageError, fragment)
        _assert_refused(local_server, lambda: tp.set_checkpoint_ttl(service, path, 3600), tp.UsageError, fragment)

    def test_delete_takes_sampler_paths(self, local_server, service):
        """Deleting accepts ``sampler_weights`` paths (only loading needs training weights)."""
        with pytest.raises(tp.CheckpointDeleteError) as info:
            tp.delete_checkpoints(service, ["tinker://run-1/sampler_weights/s"], dry_run=True).result(timeout=10)
        assert ["not_found"] == [o.status for o in info.value.report.outcomes]

    def test_single_str_instead_of_a_list_is_a_type_error(self, local_server, service):
        """``delete_checkpoints(service, "tinker://...")`` is refused, not iterated character by character."""
        _assert_refused(local_server, lambda: tp.delete_checkpoints(service, GOOD), TypeError, "not a single str")


class TestTtl:
    """Tests for bad ``ttl_seconds``."""

    @pytest.mark.parametrize("ttl, fragment", BAD_TTLS, ids=[repr(t) for t, _ in BAD_TTLS])
    def test_bad_ttl_is_refused_before_sending(self, local_server, service, tc, ttl, fragment):
        """A bad TTL is a UsageError naming the value and the accepted range, for save and for set_ttl."""
        _assert_refused(local_server, lambda: tp.save_state(tc, "n", ttl_seconds=ttl), tp.UsageError, fragment)
        _assert_refused(local_server, lambda: tp.set_checkpoint_ttl(service, GOOD, ttl), tp.UsageError, fragment)


class TestBaseUrlAndKey:
    """Tests for the base URL and the API key."""

    @pytest.mark.parametrize(
        "url, fragment",
        [
            ("127.0.0.1:8000", "must start with https://"),
            ("localhost", "must start with https://"),
            ("ftp://127.0.0.1/", "must start with https://"),
            ("http://10.1.2.3:8000", "plain http:// to a non-loopback host"),
            ("http://tinker.example.org", "plain http:// to a non-loopback host"),
            ("https://u:p@example.org", "must not contain credentials"),
            (7, "must be a non-empty str"),
        ],
    )
    def test_bad_base_url_is_a_config_error(self, url, fragment):
        """The ServiceClient constructor refuses the URL, saying what is accepted."""
        with pytest.raises(tp.ConfigError) as info:
            tp.ServiceClient(base_url=url, api_key=TEST_KEY)
        assert fragment in str(info.value)

    def test_plain_http_to_a_remote_host_needs_the_opt_in(self):
        """``allow_insecure_http=True`` is the only way to send the key over plain http to a remote host."""
        svc = tp.ServiceClient(base_url="http://10.1.2.3:8000", api_key=TEST_KEY, allow_insecure_http=True)
        svc.close()
        assert "http://10.1.2.3:8000" == svc.config.base_url

    @pytest.mark.parametrize("key", [None, ""])
    def test_missing_key_names_the_variable_and_sends_nothing(self, local_server, key):
        """No API key: ConfigError naming TINKER_API_KEY, raised by the constructor before any request."""
        _assert_refused(
            local_server, lambda: tp.ServiceClient(base_url=local_server.url, api_key=key), tp.ConfigError, "TINKER_API_KEY"
        )

    @pytest.mark.parametrize(
        "op",
        ["create_lora_training_client", "create_training_client_from_state", "list_checkpoints", "delete_checkpoints"],
    )
    def test_wrong_key_is_an_authentication_error_with_a_hint(self, tmp_path, op):
        """A 401 is AuthenticationError whose message says to check the key and TINKER_API_KEY, without the key."""
        calls = {
            "create_lora_training_client": lambda s: s.create_lora_training_client("Qwen/Qwen3-8B", rank=4),
            "create_training_client_from_state": lambda s: tp.create_training_client_from_state(s, GOOD),
            "list_checkpoints": lambda s: tp.list_checkpoints(s),
            "delete_checkpoints": lambda s: tp.delete_checkpoints(s, [GOOD]),
        }
        with LocalServer(tmp_path, api_key="tml-the-right-key") as server, tp.ServiceClient(
            base_url=server.url, api_key="tml-a-wrong-key", heartbeat_interval=None, backoff_factor=0
        ) as svc:
            with pytest.raises(tp.TinkexPersistError) as info:
                calls[op](svc).result(timeout=10)
        err = info.value
        if isinstance(err, tp.CheckpointDeleteError):
            err = err.report.outcomes[0].error
        assert isinstance(err, tp.AuthenticationError)
        assert 401 == err.status_code
        assert "check the API key" in str(err) and "TINKER_API_KEY" in str(err)
        assert "tml-a-wrong-key" not in str(info.value) + repr(info.value) + str(vars(err))


class TestOtherArguments:
    """Tests for the remaining arguments of the public operations."""

    @pytest.mark.parametrize(
        "call, exc, fragment",
        [
            (lambda svc, tc: tp.save_state(tc, "n", overwrite=1), tp.UsageError, "overwrite must be a bool"),
            (lambda svc, tc: tp.save_state(tc, "n", user_metadata=["k"]), tp.UsageError, "user_metadata"),
            (lambda svc, tc: tp.save_state(tc, "n", user_metadata={"k": 1}), tp.UsageError, "str to str"),
            (lambda svc, tc: tp.load_state(tc, GOOD, weights_access_token=""), tp.UsageError, "weights_access_token"),
            (lambda svc, tc: tp.save_state(svc, "n"), TypeError, "expected a tinkex_persist.TrainingClient"),
            (lambda svc, tc: tp.load_state(None, GOOD), TypeError, "expected a tinkex_persist.TrainingClient"),
            (
                lambda svc, tc: tp.create_training_client_from_state(tc, GOOD),
                TypeError,
                "expected a tinkex_persist.ServiceClient",
            ),
            (lambda svc, tc: tp.create_training_client_from_state(svc, GOOD, base_model=""), tp.UsageError, "base_model"),
            (lambda svc, tc: svc.create_lora_training_client("Qwen/Qwen3-8B", rank=0), tp.UsageError, "rank"),
            (lambda svc, tc: svc.create_lora_training_client("Qwen/Qwen3-8B", rank=True), tp.UsageError, "rank"),
            (lambda svc, tc: tp.delete_checkpoints(svc, [GOOD], dry_run="no"), tp.UsageError, "dry_run"),
            (lambda svc, tc: tp.keep_last(svc, "run-1", 0), tp.UsageError, ""),
        ],
    )
    def test_refused_before_sending(self, local_server, service, tc, call, exc, fragment):
        """Each bad argument raises at once with a message naming it, and nothing is sent."""
        _assert_refused(local_server, lambda: call(service, tc), exc, fragment)


class TestMalformedResponses:
    """Tests for server answers that do not match the schema."""

    @pytest.mark.parametrize(
        "path, body",
        [
            ("/api/v1/save_weights", {"request_id": 5}),
            ("/api/v1/save_weights", ["not", "an", "object"]),
            ("/api/v1/retrieve_future", {"path": 7, "type": "save_weights"}),
            ("/api/v1/retrieve_future", {"type": "save_weights"}),
        ],
    )
    def test_wrong_schema_is_a_decode_error_and_the_client_recovers(self, local_server, tc, path, body):
        """A 200 whose JSON does not fit is DecodeError listing the problem; the next save still works gaplessly."""
        local_server.faults.add(path, status=200, body=body)
        with pytest.raises(tp.DecodeError) as info:
            tp.save_state(tc, "bad").result(timeout=10)
        assert info.value.errors
        result = tp.save_state(tc, "next").result(timeout=10)
        info_ = local_server.model_info(tc.model_id)
        assert info_["next_seq_id"] - 1 == result.seq_id
        assert list(range(1, info_["next_seq_id"])) == local_server.service.accepted_seq_ids(tc.model_id)

    def test_create_session_error_body_is_typed(self, local_server, service):
        """A create_session answer of the wrong shape fails the first operation with DecodeError."""
        local_server.faults.add("/api/v1/create_session", status=200, body={"session_id": None})
        with pytest.raises(tp.DecodeError):
            service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(timeout=10)
