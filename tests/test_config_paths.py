"""Tests for configuration and argument validation that happens before any request."""

import pytest

from tinkex_persist import _paths
from tinkex_persist.config import Config, check_base_url, is_loopback_host
from tinkex_persist.exceptions import ConfigError, UsageError


class TestCheckName:
    """Tests for checkpoint-name validation."""

    @pytest.mark.parametrize(
        "name, fragment",
        [
            ("", "is empty"),
            ("a/b", "'/'"),
            ("..", "'..'"),
            ("a..b", "'..'"),
            (".", "'.'"),
            ("a\nb", "'\\n'"),
            ("a\x00", "'\\x00'"),
            ("x" * 129, "129 characters"),
            (" a", "white space"),
            ("a?b", "'?'"),
            ("a\\b", "'\\\\'"),
        ],
    )
    def test_bad_names_raise_usage_error_saying_why(self, name, fragment):
        """Each bad name is refused with a message naming the problem and what is accepted."""
        with pytest.raises(UsageError) as info:
            _paths.check_name(name)
        assert fragment in str(info.value)
        assert "1-128 characters" in str(info.value)

    @pytest.mark.parametrize("name", [None, 3, b"abc", ["a"]])
    def test_non_str_names_raise(self, name):
        """A name that is not a str is refused with its type."""
        with pytest.raises(UsageError) as info:
            _paths.check_name(name)
        assert type(name).__name__ in str(info.value)

    @pytest.mark.parametrize("name", ["ckpt-1", "step_000100", "a.b", "x" * 128, "名前"])
    def test_good_names_pass(self, name):
        """Ordinary names are returned unchanged."""
        assert name == _paths.check_name(name)


class TestParsePath:
    """Tests for ``tinker://`` path parsing."""

    @pytest.mark.parametrize(
        "path, fragment",
        [
            ("ckpt-1", "does not start with"),
            ("http://run/weights/a", "does not start with"),
            ("tinker://run/weights", "2 segments"),
            ("tinker://run/weights/a/", "4 segments"),
            ("tinker://run/weights/a?x=1", "'?'"),
            ("tinker://run/sampler_weights/a", "sampler checkpoint"),
            ("tinker://run/blobs/a", "unknown kind"),
            ("tinker:///weights/a", "run id '' is empty"),
            ("tinker://run/weights/..", "'..'"),
            (42, "must be a str"),
        ],
    )
    def test_bad_paths_raise_usage_error(self, path, fragment):
        """Each malformed path is refused, and the message shows the accepted form."""
        with pytest.raises(UsageError) as info:
            _paths.parse_path(path)
        assert fragment in str(info.value)
        assert "tinker://<run_id>/weights/<name>" in str(info.value)

    def test_good_path_parses(self):
        """A training path splits into run id, kind and name and prints back unchanged."""
        p = _paths.parse_path("tinker://sess-1:train:0/weights/ckpt-1")
        assert ("sess-1:train:0", "weights", "ckpt-1") == tuple(p)
        assert "tinker://sess-1:train:0/weights/ckpt-1" == str(p)
        assert "weights/ckpt-1" == p.checkpoint_id

    def test_sampler_path_is_accepted_when_not_training(self):
        """Sampler paths parse where training state is not required."""
        assert "sampler_weights" == _paths.parse_path("tinker://r/sampler_weights/s", training=False).kind


class TestCheckTtl:
    """Tests for ``ttl_seconds`` validation."""

    @pytest.mark.parametrize(
        "ttl, fragment",
        [(0, "out of range"), (-5, "out of range"), (3599, "out of range"), (10**12, "out of range"),
         (True, "bool"), (3600.0, "float"), ("3600", "str")],
    )
    def test_bad_ttls_raise(self, ttl, fragment):
        """Out-of-range or non-int TTLs are refused, naming the accepted range or the wrong type."""
        with pytest.raises(UsageError) as info:
            _paths.check_ttl(ttl)
        assert fragment in str(info.value)

    @pytest.mark.parametrize("ttl", [None, 3600, 7 * 24 * 3600])
    def test_good_ttls_pass(self, ttl):
        """None and in-range ints are accepted."""
        assert ttl == _paths.check_ttl(ttl)


class TestConfig:
    """Tests for ``Config`` and its environment handling."""

    @pytest.mark.parametrize(
        "url, fragment",
        [
            ("", "non-empty"),
            ("127.0.0.1:8000", "must start with https://"),
            ("ftp://example.org", "must start with https://"),
            ("http://example.org", "plain http://"),
            ("https://user:pw@example.org", "credentials"),
            ("https://example.org/?a=1", "query string"),
            ("https://example.org:99999", "not a valid URL"),
        ],
    )
    def test_bad_base_urls_raise_config_error(self, url, fragment):
        """Each unusable base URL is refused with the reason."""
        with pytest.raises(ConfigError) as info:
            check_base_url(url)
        assert fragment in str(info.value)

    @pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost/x/", "http://[::1]:9", "https://example.org/p/"])
    def test_good_base_urls_are_normalised(self, url):
        """Loopback http and any https URL are accepted without a trailing slash."""
        assert url.rstrip("/") == check_base_url(url)

    def test_http_to_remote_host_needs_opt_in(self):
        """Plain http to a remote host is accepted only with ``allow_insecure_http``."""
        assert "http://example.org" == Config(base_url="http://example.org", allow_insecure_http=True).base_url

    @pytest.mark.parametrize("host, expected", [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True),
                                                ("localhost", True), ("example.org", False), ("10.0.0.1", False), (None, False)])
    def test_loopback_detection(self, host, expected):
        """Only loopback names and addresses count as loopback."""
        assert expected == is_loopback_host(host)

    def test_from_env_reads_key_url_and_knobs(self):
        """Environment values fill the config; explicit arguments win."""
        env = {"TINKER_API_KEY": "tml-k", "TINKER_BASE_URL": "http://127.0.0.1:1", "TINKEX_PERSIST_MAX_WORKERS": "7",
               "TINKEX_PERSIST_READ_TIMEOUT": "9", "TINKEX_PERSIST_POLL_TIMEOUT": "30"}
        cfg = Config.from_env(env, max_workers=2)
        assert ("tml-k", "http://127.0.0.1:1", 2, (5.0, 9.0), 30.0) == (
            cfg.api_key, cfg.base_url, cfg.max_workers, cfg.timeout, cfg.poll_timeout)

    @pytest.mark.parametrize("env", [{"TINKEX_PERSIST_MAX_WORKERS": "0"}, {"TINKEX_PERSIST_MAX_WORKERS": "x"},
                                     {"TINKEX_PERSIST_READ_TIMEOUT": "soon"}, {"TINKEX_PERSIST_POLL_TIMEOUT": "-1"}])
    def test_bad_env_values_raise_naming_the_variable(self, env):
        """A bad environment value raises ConfigError naming the variable."""
        with pytest.raises(ConfigError) as info:
            Config.from_env(env)
        assert list(env)[0] in str(info.value)

    def test_missing_key_names_the_variable(self):
        """Asking for a missing key names TINKER_API_KEY."""
        with pytest.raises(ConfigError) as info:
            Config.from_env({}).require_api_key()
        assert "TINKER_API_KEY" in str(info.value)

    def test_api_key_not_in_repr(self):
        """The API key never appears in the config's repr."""
        assert "tml-SECRET" not in repr(Config(api_key="tml-SECRET"))

    @pytest.mark.parametrize("kwargs", [{"timeout": (0, 1)}, {"timeout": "5"}, {"max_workers": 0}, {"poll_timeout": -1},
                                        {"max_retries": -1}, {"backoff_factor": -1}, {"max_workers": 1.5}])
    def test_bad_options_raise_config_error(self, kwargs):
        """Invalid numeric options are refused at construction."""
        with pytest.raises(ConfigError):
            Config(**kwargs)

    def test_scalar_timeout_becomes_a_pair(self):
        """One number sets both the connect and the read timeout."""
        assert (3.0, 3.0) == Config(timeout=3).timeout

    def test_evolve_ignores_none(self):
        """``evolve`` keeps fields whose new value is None."""
        cfg = Config(api_key="tml-a", max_workers=3)
        assert (3, "tml-a") == (cfg.evolve(max_workers=None, api_key=None).max_workers, cfg.evolve().api_key)
