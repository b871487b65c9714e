"""Tests for checkpoint names outside Latin-1: save, list, download and delete them end to end."""

import os

import pytest

import tinkex_persist as tp
from tinkex_persist import checkpoints, download

from conftest import SERVER_KEY

NAMES = ["名前", "emoji-🚀", "café au lait", "ascii-only"]


class TestNamesOutsideLatin1:
    """Tests for checkpoints whose names hold characters an HTTP header cannot carry raw."""

    @pytest.mark.parametrize("name", NAMES)
    def test_downloads_and_extracts(self, mgmt_service, keyed_server, seed_run, tmp_path, name):
        """A checkpoint named outside Latin-1 downloads, verifies and extracts under its own name.

        Failed on the old main: the server could not encode its Content-Disposition header and dropped
        the connection at byte 0 ("broke off at byte 0 ... call again to resume").
        """
        _, (path,) = seed_run([name])
        result = download.download_checkpoint(mgmt_service, path, tmp_path / "out").result()
        assert os.path.join(str(tmp_path / "out"), path[len("tinker://"):]) == result.directory
        assert True == result.sha256_verified
        assert [] != result.files

    @pytest.mark.parametrize("name", NAMES)
    def test_saves_lists_and_deletes(self, mgmt_service, seed_run, name):
        """The name comes back unchanged from the listing, and a delete by path removes exactly it."""
        run_id, (path,) = seed_run([name])
        listed = checkpoints.list_checkpoints(mgmt_service, run_id).result()
        assert [path] == [c.tinker_path for c in listed]
        report = checkpoints.delete_checkpoints(mgmt_service, [path]).result()
        assert ["deleted"] == [o.status for o in report.outcomes]
        assert [] == checkpoints.list_checkpoints(mgmt_service, run_id).result()

    def test_archive_header_names_the_file_in_utf8(self, mgmt_service, keyed_server, seed_run):
        """The signed URL answers with an ASCII fallback and the UTF-8 ``filename*`` of RFC 6266."""
        import requests

        _, (path,) = seed_run(["名前"])
        run, kind, name = path[len("tinker://"):].split("/")
        url = "%s/api/v1/training_runs/%s/checkpoints/%s/%s/archive" % (keyed_server.url, run, kind, name)
        resp = requests.get(url, headers={"X-API-Key": SERVER_KEY}, timeout=10)
        assert 200 == resp.status_code
        expected = "attachment; filename=\"__.tar\"; filename*=UTF-8''%E5%90%8D%E5%89%8D.tar"
        assert expected == resp.headers["Content-Disposition"]

    def test_request_path_is_percent_encoded_utf8(self, mgmt_service, keyed_server, seed_run):
        """The client sends the name percent-encoded as UTF-8 in the REST path (what httpx sends for the SDK)."""
        run_id, (path,) = seed_run(["emoji-🚀"])
        checkpoints.set_checkpoint_ttl(mgmt_service, path, 7200).result()
        expected = "/api/v1/training_runs/%s/checkpoints/weights/emoji-%%F0%%9F%%9A%%80/ttl" % run_id
        assert 1 == keyed_server.stats.requests[expected]

    def test_messages_do_not_carry_the_key(self, mgmt_service, seed_run, tmp_path):
        """A failed download of a non-Latin-1 name says which checkpoint, without the API key."""
        run_id, _ = seed_run(["x"])
        with pytest.raises(tp.RequestFailedError, match="名前-missing not found") as info:
            download.download_checkpoint(mgmt_service, "tinker://%s/weights/名前-missing" % run_id, tmp_path).result()
        assert SERVER_KEY not in str(info.value)
