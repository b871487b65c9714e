"""Tests for the error hierarchy: classes, status mapping, pickling and message hygiene."""

import pickle

import pytest

from tinkex_persist import exceptions as E


class TestHierarchy:
    """Tests for the exception class tree."""

    @pytest.mark.parametrize(
        "cls, base",
        [
            (E.UsageError, ValueError),
            (E.ConfigError, ValueError),
            (E.ConfigError, E.TinkexPersistError),
            (E.APITimeoutError, E.APIConnectionError),
            (E.BadRequestError, E.APIStatusError),
            (E.AuthenticationError, E.APIStatusError),
            (E.PermissionDeniedError, E.APIStatusError),
            (E.NotFoundError, E.APIStatusError),
            (E.ConflictError, E.APIStatusError),
            (E.UnprocessableEntityError, E.APIStatusError),
            (E.RateLimitError, E.APIStatusError),
            (E.InternalServerError, E.APIStatusError),
            (E.PromiseExpiredError, E.APIStatusError),
            (E.CheckpointExistsError, E.RequestFailedError),
            (E.DecodeError, E.TinkexPersistError),
            (E.RequestFailedError, E.TinkexPersistError),
            (E.ArchiveChecksumError, E.DownloadError),
            (E.UnsafeArchiveError, E.DownloadError),
            (E.CheckpointDeleteError, E.TinkexPersistError),
            (E.RootInUseError, E.TinkexPersistError),
            (E.OperationCancelledError, E.TinkexPersistError),
        ],
    )
    def test_subclass_table(self, cls, base):
        """Each class sits where ported ``except`` clauses expect it."""
        assert issubclass(cls, base)

    def test_no_builtin_names_are_shadowed(self):
        """The module defines no ConnectionError or TimeoutError of its own."""
        assert not hasattr(E, "ConnectionError")
        assert not hasattr(E, "TimeoutError")

    @pytest.mark.parametrize(
        "status, cls",
        [(400, E.BadRequestError), (401, E.AuthenticationError), (403, E.PermissionDeniedError),
         (404, E.NotFoundError), (409, E.ConflictError), (410, E.PromiseExpiredError),
         (422, E.UnprocessableEntityError), (429, E.RateLimitError), (500, E.InternalServerError),
         (503, E.InternalServerError), (418, E.APIStatusError)],
    )
    def test_status_mapping(self, status, cls):
        """Each HTTP error status maps to the SDK-named class."""
        assert cls is E.status_error_class(status)


INSTANCES = [
    E.TinkexPersistError("base"),
    E.UsageError("bad name"),
    E.ConfigError("no key"),
    E.APIConnectionError("refused", method="POST", url="/api/v1/save_weights"),
    E.APITimeoutError("timed out", method="POST", url="/x"),
    E.NotFoundError("POST /x -> 404", status_code=404, method="POST", url="/x", request_id="r-1", body='{"detail":"no"}'),
    E.InternalServerError("boom", status_code=502),
    E.DecodeError("bad json", errors=["$: not JSON"], body="<html>"),
    E.RequestFailedError("failed", request_id="r-2", category="user"),
    E.CheckpointExistsError("exists", request_id="r-3", path="tinker://m/weights/a"),
    E.CheckpointDeleteError("2 of 3 deletes failed", report={"failed": 2}),
    E.DownloadError("cut", partial_path="/tmp/x.tar.part"),
    E.ArchiveChecksumError("sha256 mismatch", partial_path="/tmp/y.tar.part"),
    E.UnsafeArchiveError("member ../x escapes"),
    E.RootInUseError("checkpoint root /srv is in use", root="/srv"),
    E.OperationCancelledError("stopped waiting", partial_path="/tmp/z.tar.part"),
]


class TestPickle:
    """Tests for pickling errors across processes."""

    @pytest.mark.parametrize("exc", INSTANCES, ids=lambda e: type(e).__name__)
    def test_round_trip_keeps_class_message_and_attributes(self, exc):
        """An exception survives pickling with its type, message and attributes."""
        copy = pickle.loads(pickle.dumps(exc))
        assert type(exc) is type(copy)
        assert str(exc) == str(copy)
        assert vars(exc) == vars(copy)


class TestMessages:
    """Tests for error message content."""

    def test_body_is_capped(self):
        """Only the first 2,000 characters of a body are kept."""
        exc = E.APIStatusError("x", status_code=500, body="a" * 10_000)
        assert E.MAX_BODY_CHARS + len("...[truncated]") == len(exc.body)

    def test_str_is_the_message(self):
        """``str(exc)`` is the one-line message."""
        assert "POST /x -> 404" == str(INSTANCES[5])

    def test_none_body_stays_none(self):
        """An error without a body keeps ``body`` as None."""
        assert None is E.DecodeError("x").body
