"""Tests for checkpoint management: weights info, listing, deletion, retention and TTLs, against LocalServer."""

import datetime
import pickle
import time

import pytest

import tinkex_persist as tp
from tinkex_persist import _time, checkpoints, manage

from faultproxy import EXTRA_KEY, EXTRA_VALUE

DELETE_PATTERN = "/api/v1/training_runs/*/checkpoints/weights/*"


@pytest.fixture
def mgmt_url(keyed_server, front):
    """Every test here runs against answers as served and against answers carrying unknown keys at every depth."""
    return front(keyed_server.url)


def _names(checkpoints):
    return [c.name for c in checkpoints]


def _deletes(server):
    return sum(n for path, n in server.stats.requests.items() if path.startswith("/api/v1/training_runs/")
               and "/checkpoints/weights/" in path and not path.endswith(("/ttl", "/archive")))


class TestGetWeightsInfo:
    """Tests for `get_weights_info`."""

    def test_describes_a_saved_checkpoint(self, mgmt_service, seed_run, mgmt_url, keyed_server):
        """The Future resolves to a WeightsInfo with the run's base model, rank and trained layers, and the
        optimizer config as the server gave it (an open object: a key a newer service adds there is kept)."""
        _, (path,) = seed_run(["a"], rank=4)
        info = manage.get_weights_info(mgmt_service, path).result()
        config = {"type": "adamw"} if mgmt_url == keyed_server.url else {"type": "adamw", EXTRA_KEY: EXTRA_VALUE}
        expected = tp.WeightsInfo(base_model="Qwen/Qwen3-8B", is_lora=True, lora_rank=4, train_unembed=True,
                                  train_mlp=True, train_attn=True, optimizer="adamw", optimizer_config=config)
        assert expected == info

    def test_bad_path_raises_before_sending(self, mgmt_service, keyed_server):
        """A path that is not tinker://<run>/<kind>/<name> raises UsageError at once; nothing reaches the server."""
        with pytest.raises(tp.UsageError):
            manage.get_weights_info(mgmt_service, "s3://bucket/x")
        assert 0 == keyed_server.stats.requests["/api/v1/weights_info"]

    def test_missing_checkpoint_fails_the_future(self, mgmt_service, seed_run):
        """An unknown checkpoint sets NotFoundError on the Future."""
        run_id, _ = seed_run(["a"])
        with pytest.raises(tp.NotFoundError):
            manage.get_weights_info(mgmt_service, "tinker://%s/weights/nope" % run_id).result()

    def test_requires_a_service_client(self):
        """Anything but a ServiceClient is a TypeError."""
        with pytest.raises(TypeError):
            manage.get_weights_info(object(), "tinker://r/weights/a")


class TestListCheckpoints:
    """Tests for `list_checkpoints`."""

    def test_lists_one_run_newest_first_with_all_fields(self, mgmt_service, seed_run):
        """A run's listing has id, type, aware-UTC time, tinker_path, size and expiry of each checkpoint."""
        run_id, paths = seed_run(["a", "b"])
        manage.set_checkpoint_ttl(mgmt_service, paths[0], 7200).result()
        listed = manage.list_checkpoints(mgmt_service, run_id).result()
        assert ["b", "a"] == _names(listed)
        b, a = listed
        assert ("weights/a", "training", paths[0], run_id) == (a.checkpoint_id, a.checkpoint_type, a.tinker_path, a.run_id)
        assert datetime.timezone.utc == a.time.tzinfo
        assert abs((datetime.datetime.now(datetime.timezone.utc) - a.time).total_seconds()) < 60
        assert a.size_bytes > 0
        assert 7200 == pytest.approx((a.expires_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds(), abs=60)
        assert None is b.expires_at

    def test_user_listing_fetches_every_page(self, mgmt_service, keyed_server, seed_run):
        """Without a run id every page of /api/v1/checkpoints is fetched until total_count is reached.

        Each page after the first starts on the last entry already read (offsets 0, 1, 2, 3 for five
        entries two at a time), so a listing that moves in between is noticed.
        """
        _, paths = seed_run(["a", "b", "c", "d", "e"])
        listed = manage.list_checkpoints(mgmt_service, page_size=2).result()
        assert sorted(paths) == sorted(c.tinker_path for c in listed)
        assert 4 == keyed_server.stats.requests["/api/v1/checkpoints"]

    def test_limit_stops_paging_early(self, mgmt_service, keyed_server, seed_run):
        """``limit`` returns at most that many and asks for no page beyond them."""
        seed_run(["a", "b", "c", "d", "e"])
        listed = manage.list_checkpoints(mgmt_service, limit=3, page_size=2).result()
        assert ["e", "d", "c"] == _names(listed)
        assert 2 == keyed_server.stats.requests["/api/v1/checkpoints"]

    def test_json_form_is_rfc3339(self, mgmt_service, seed_run):
        """``to_json`` gives RFC 3339 UTC strings ending in Z and keeps the SDK's key names."""
        run_id, _ = seed_run(["a"])
        (cp,) = manage.list_checkpoints(mgmt_service, run_id).result()
        data = cp.to_json()
        assert data["time"].endswith("Z")
        assert {"checkpoint_id", "checkpoint_type", "time", "tinker_path", "size_bytes", "expires_at", "public",
                "user_metadata"} == set(data)

    @pytest.mark.parametrize("kwargs", [{"run_id": "a/b"}, {"run_id": ""}, {"limit": 0}, {"page_size": True}])
    def test_bad_arguments_raise_at_once(self, mgmt_service, kwargs):
        """A malformed run id, limit or page size raises UsageError before anything is sent."""
        with pytest.raises(tp.UsageError):
            manage.list_checkpoints(mgmt_service, **kwargs)

    def test_unknown_run_fails_the_future(self, mgmt_service):
        """Listing a run the server does not know sets NotFoundError on the Future."""
        with pytest.raises(tp.NotFoundError):
            manage.list_checkpoints(mgmt_service, "no-such-run:train:0").result()


class TestParseTime:
    """Tests for the timestamp parser used by listings and the CLI."""

    @pytest.mark.parametrize(
        "text, expected",
        [
            ("2025-01-02T03:04:05Z", datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)),
            ("2025-01-02T03:04:05.1234567+00:00", datetime.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=datetime.timezone.utc)),
            ("2025-01-02 05:04:05+0200", datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)),
            ("2025-01-02T03:04", datetime.datetime(2025, 1, 2, 3, 4, tzinfo=datetime.timezone.utc)),
            ("2025-01-02", datetime.datetime(2025, 1, 2, tzinfo=datetime.timezone.utc)),
            ("0", datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)),
        ],
    )
    def test_accepts_the_services_forms(self, text, expected):
        """RFC 3339 with Z or an offset, any fraction length, date-only and epoch seconds all parse to aware UTC."""
        assert expected == _time.parse_time(text)

    def test_rejects_garbage(self):
        """Text that is not a time raises ValueError."""
        with pytest.raises(ValueError):
            _time.parse_time("yesterday")

    def test_empty_time_is_none_and_format_round_trips(self):
        """An absent time parses to None; format_time writes RFC 3339 UTC that parses back to the same instant."""
        when = datetime.datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)
        assert (None, None, "2025-01-02T03:04:05.000006Z", when) == (
            _time.parse_time(""), _time.format_time(None), _time.format_time(when),
            _time.parse_time(_time.format_time(when)),
        )

    def test_user_date_and_seconds(self):
        """A user's date parses to aware UTC; a bad date or duration raises ValueError naming the accepted form."""
        assert (datetime.datetime(2025, 1, 2, tzinfo=datetime.timezone.utc), 3600) == (
            _time.parse_date("2025-01-02"), _time.parse_seconds("3600"))
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            _time.parse_date("last tuesday")
        with pytest.raises(ValueError, match="whole number of seconds"):
            _time.parse_seconds("1h")


def _info(name, day):
    return tp.CheckpointInfo(
        checkpoint_id="weights/" + name,
        checkpoint_type="training",
        time=datetime.datetime(2025, 1, day, tzinfo=datetime.timezone.utc),
        tinker_path="tinker://run:train:0/weights/" + name,
    )


class TestSelectCheckpoints:
    """Tests for `checkpoints.select_checkpoints`, the time selection behind ``delete --run --before/--after``."""

    LISTED = [_info("c", 3), _info("a", 1), _info("b", 2)]

    @pytest.mark.parametrize(
        "before_day, after_day, expected",
        [(None, None, ["c", "a", "b"]), (3, None, ["a", "b"]), (None, 1, ["c", "b"]), (3, 1, ["b"]), (1, 3, [])],
        ids=["no-bounds", "before", "after", "between", "empty-window"],
    )
    def test_bounds_are_strict_and_order_is_kept(self, before_day, after_day, expected):
        """Only checkpoints strictly before ``before`` and strictly after ``after`` are kept, in the given order."""
        day = lambda d: None if d is None else datetime.datetime(2025, 1, d, tzinfo=datetime.timezone.utc)  # noqa: E731
        chosen = checkpoints.select_checkpoints(self.LISTED, before=day(before_day), after=day(after_day))
        assert expected == _names(chosen)

    @pytest.mark.parametrize("bound", [datetime.datetime(2025, 1, 2), "2025-01-02"], ids=["naive", "str"])
    def test_bound_must_be_an_aware_datetime(self, bound):
        """A naive datetime or a string as a bound raises UsageError (a naive time cannot be compared with UTC)."""
        with pytest.raises(tp.UsageError, match="timezone-aware"):
            checkpoints.select_checkpoints(self.LISTED, before=bound)

    def test_selects_from_a_real_listing(self, mgmt_service, seed_run):
        """Applied to a run's listing, a bound after every creation time selects them all, one before selects none."""
        run_id, _ = seed_run(["x", "y"])
        listed = manage.list_checkpoints(mgmt_service, run_id).result()
        later = max(c.time for c in listed) + datetime.timedelta(seconds=1)
        assert (sorted(_names(listed)), []) == (
            sorted(_names(checkpoints.select_checkpoints(listed, before=later))),
            checkpoints.select_checkpoints(listed, after=later),
        )


class TestDeleteCheckpoints:
    """Tests for `delete_checkpoints`."""

    def test_deletes_every_path(self, mgmt_service, seed_run):
        """Each path is deleted and reported as such, with its size; the run's listing no longer has them."""
        run_id, paths = seed_run(["a", "b", "c"])
        report = manage.delete_checkpoints(mgmt_service, paths[:2]).result()
        assert [("deleted", p) for p in paths[:2]] == [(o.status, o.path) for o in report.outcomes]
        assert all(o.size_bytes > 0 for o in report.outcomes)
        assert (True, False) == (report.ok, report.dry_run)
        assert ["c"] == _names(manage.list_checkpoints(mgmt_service, run_id).result())

    def test_dry_run_deletes_nothing(self, mgmt_service, keyed_server, seed_run):
        """A dry run reports would_delete for each path; the listing is equal before and after and no DELETE is sent."""
        run_id, paths = seed_run(["a", "b"])
        before = manage.list_checkpoints(mgmt_service, run_id).result()
        report = manage.delete_checkpoints(mgmt_service, paths, dry_run=True).result()
        after = manage.list_checkpoints(mgmt_service, run_id).result()
        assert before == after
        assert ["would_delete", "would_delete"] == [o.status for o in report.outcomes]
        assert 0 == _deletes(keyed_server)

    def test_dry_run_names_missing_paths(self, mgmt_service, seed_run):
        """A dry run reports a path that does not exist as not_found, and fails with the full report."""
        run_id, paths = seed_run(["a"])
        missing = "tinker://%s/weights/gone" % run_id
        with pytest.raises(manage.CheckpointDeleteError) as info:
            manage.delete_checkpoints(mgmt_service, [paths[0], missing], dry_run=True).result()
        assert ["would_delete", "not_found"] == [o.status for o in info.value.report.outcomes]

    def test_dry_run_on_an_unknown_run_reports_not_found(self, mgmt_service):
        """A dry run naming a run the server does not know reports its paths as not_found."""
        with pytest.raises(manage.CheckpointDeleteError) as info:
            manage.delete_checkpoints(mgmt_service, ["tinker://ghost:train:0/weights/a"], dry_run=True).result()
        assert ["not_found"] == [o.status for o in info.value.report.outcomes]

    def test_one_failure_does_not_stop_the_others(self, mgmt_service, keyed_server, seed_run):
        """A refused delete and a missing path are reported; every other path is still deleted."""
        run_id, paths = seed_run(["a", "b", "c"])
        keyed_server.faults.add("/api/v1/training_runs/*/checkpoints/weights/b", method="DELETE", status=403)
        missing = "tinker://%s/weights/gone" % run_id
        with pytest.raises(manage.CheckpointDeleteError) as info:
            manage.delete_checkpoints(mgmt_service, paths + [missing]).result()
        report = info.value.report
        assert ["deleted", "failed", "deleted", "not_found"] == [o.status for o in report.outcomes]
        assert isinstance(report.outcomes[1].error, tp.PermissionDeniedError)
        assert isinstance(report.outcomes[3].error, tp.NotFoundError)
        assert "2 of 4" in str(info.value)
        assert ["b"] == _names(manage.list_checkpoints(mgmt_service, run_id).result())

    def test_error_pickles_with_its_report(self, mgmt_service, seed_run):
        """CheckpointDeleteError survives a pickle round-trip with its per-path report."""
        run_id, _ = seed_run(["a"])
        with pytest.raises(manage.CheckpointDeleteError) as info:
            manage.delete_checkpoints(mgmt_service, ["tinker://%s/weights/gone" % run_id]).result()
        copy = pickle.loads(pickle.dumps(info.value))
        assert (str(info.value), info.value.report) == (str(copy), copy.report)

    def test_order_kept_and_duplicates_dropped_with_one_worker(self, mgmt_url, mgmt_service, seed_run):
        """With max_workers=1 and max_concurrency=1 the batch completes (no deadlock), in request order, once per path."""
        _, paths = seed_run(["a", "b", "c"])
        with tp.ServiceClient(base_url=mgmt_url, api_key=mgmt_service.config.api_key, max_workers=1) as service:
            report = manage.delete_checkpoints(service, [paths[2], paths[0], paths[2]], max_concurrency=1).result(10)
        assert [paths[2], paths[0]] == report.deleted

    def test_bad_input_raises_before_sending(self, mgmt_service, keyed_server):
        """A single str, a malformed path or a bad flag raises at once; nothing is deleted."""
        with pytest.raises(TypeError):
            manage.delete_checkpoints(mgmt_service, "tinker://r/weights/a")
        with pytest.raises(tp.UsageError):
            manage.delete_checkpoints(mgmt_service, ["tinker://r/weights/a", "tinker://r/weights/../x"])
        with pytest.raises(tp.UsageError):
            manage.delete_checkpoints(mgmt_service, ["tinker://r/weights/a"], dry_run="yes")
        with pytest.raises(tp.UsageError):
            manage.delete_checkpoints(mgmt_service, ["tinker://r/weights/a"], max_concurrency=0)
        assert 0 == _deletes(keyed_server)

    def test_empty_batch_is_a_no_op(self, mgmt_service):
        """No paths: an empty, successful report."""
        assert () == manage.delete_checkpoints(mgmt_service, []).result().outcomes


class TestKeepLast:
    """Tests for `keep_last`."""

    def test_keeps_exactly_the_n_newest(self, mgmt_service, seed_run):
        """Of five checkpoints, keep_last(2) leaves the two newest and reports the three it deleted."""
        run_id, paths = seed_run(["s0", "s1", "s2", "s3", "s4"])
        result = manage.keep_last(mgmt_service, run_id, 2).result()
        assert ["s4", "s3"] == _names(result.kept)
        assert [paths[2], paths[1], paths[0]] == result.deletes.deleted
        assert ["s4", "s3"] == _names(manage.list_checkpoints(mgmt_service, run_id).result())

    def test_dry_run_reports_and_deletes_nothing(self, mgmt_service, keyed_server, seed_run):
        """A dry run reports what would go; the listing is unchanged and no DELETE is sent."""
        run_id, paths = seed_run(["s0", "s1", "s2"])
        before = manage.list_checkpoints(mgmt_service, run_id).result()
        result = manage.keep_last(mgmt_service, run_id, 1, dry_run=True).result()
        assert [paths[1], paths[0]] == result.deletes.deleted
        assert ["would_delete", "would_delete"] == [o.status for o in result.deletes.outcomes]
        assert before == manage.list_checkpoints(mgmt_service, run_id).result()
        assert 0 == _deletes(keyed_server)

    def test_never_deletes_the_only_checkpoint(self, mgmt_service, seed_run):
        """keep_last(1) on a run with one checkpoint deletes nothing; n=0 is refused at once."""
        run_id, _ = seed_run(["only"])
        result = manage.keep_last(mgmt_service, run_id, 1).result()
        assert (["only"], ()) == (_names(result.kept), result.deletes.outcomes)
        with pytest.raises(tp.UsageError):
            manage.keep_last(mgmt_service, run_id, 0)

    def test_fewer_than_n_is_a_no_op(self, mgmt_service, seed_run):
        """A run with fewer than n checkpoints keeps them all."""
        run_id, _ = seed_run(["a", "b"])
        result = manage.keep_last(mgmt_service, run_id, 5).result()
        assert (["b", "a"], []) == (_names(result.kept), result.deletes.deleted)

    def test_partial_failure_is_raised_with_the_report(self, mgmt_service, keyed_server, seed_run):
        """A refused delete fails the Future with CheckpointDeleteError; the other deletes still happen."""
        run_id, paths = seed_run(["s0", "s1", "s2"])
        keyed_server.faults.add("/api/v1/training_runs/*/checkpoints/weights/s0", method="DELETE", status=403)
        with pytest.raises(manage.CheckpointDeleteError) as info:
            manage.keep_last(mgmt_service, run_id, 1).result()
        assert ["deleted", "failed"] == [o.status for o in info.value.report.outcomes]
        assert ["s2", "s0"] == _names(manage.list_checkpoints(mgmt_service, run_id).result())

    def test_unknown_run_fails_the_future(self, mgmt_service):
        """keep_last on a run the server does not know sets NotFoundError on the Future."""
        with pytest.raises(tp.NotFoundError):
            manage.keep_last(mgmt_service, "no-such-run:train:0", 1).result()


class TestSetCheckpointTtl:
    """Tests for `set_checkpoint_ttl`."""

    def test_sets_and_removes_the_expiry(self, mgmt_service, seed_run):
        """A TTL sets expires_at about ttl seconds ahead; None removes it."""
        run_id, (path,) = seed_run(["a"])
        assert None is manage.set_checkpoint_ttl(mgmt_service, path, 3600).result()
        (cp,) = manage.list_checkpoints(mgmt_service, run_id).result()
        assert 3600 == pytest.approx(cp.expires_at.timestamp() - time.time(), abs=60)
        manage.set_checkpoint_ttl(mgmt_service, path, None).result()
        (cp,) = manage.list_checkpoints(mgmt_service, run_id).result()
        assert None is cp.expires_at

    @pytest.mark.parametrize("ttl", [0, 59, True, 1.5, "3600"])
    def test_out_of_range_ttl_raises_at_once(self, mgmt_service, ttl):
        """A TTL outside 3600 s..10 years, or not an int, raises UsageError before anything is sent."""
        with pytest.raises(tp.UsageError):
            manage.set_checkpoint_ttl(mgmt_service, "tinker://r/weights/a", ttl)

    def test_missing_checkpoint_fails_the_future(self, mgmt_service, seed_run):
        """Setting the TTL of an unknown checkpoint sets NotFoundError on the Future."""
        run_id, _ = seed_run(["a"])
        with pytest.raises(tp.NotFoundError):
            manage.set_checkpoint_ttl(mgmt_service, "tinker://%s/weights/nope" % run_id, 3600).result()
