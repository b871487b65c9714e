"""Tests for what a user-wide listing guarantees while other clients save and delete."""

import threading

import pytest

from faultproxy import FaultProxy
from tinkex_persist import ServiceClient, checkpoints

from conftest import SERVER_KEY

LISTING = "/api/v1/checkpoints"


class _Interleaving(FaultProxy):
    """A proxy that runs ``hooks[n]`` (a change made by another client) just before forwarding the n-th listing page."""

    def __init__(self, upstream_url, hooks):
        super().__init__(upstream_url)
        self.hooks = hooks
        self.pages = 0
        self._hook_lock = threading.Lock()

    def _take(self, path):
        if path == LISTING:
            with self._hook_lock:
                self.pages += 1
                hook = self.hooks.get(self.pages)
            if hook is not None:
                hook()
        return super()._take(path)


@pytest.fixture
def other(keyed_server, api_for):
    """Another client of the same server, saving and deleting with raw HTTP."""
    return api_for(keyed_server.url, api_key=SERVER_KEY)


def _seed(other, names):
    model_id = other.model()
    for seq, name in enumerate(names, 1):
        other.save(model_id, seq, name)
    return model_id


def _path(model_id, name):
    return "tinker://%s/weights/%s" % (model_id, name)


def _delete(other, model_id, name):
    def hook():
        assert 204 == other.http.delete(
            "%s/api/v1/training_runs/%s/checkpoints/weights/%s" % (other.url, model_id, name), timeout=10
        ).status_code

    return hook


class TestListingUnderChange:
    """Tests for `list_checkpoints` over pages while the list changes between them."""

    def _list(self, proxy, **kwargs):
        with ServiceClient(base_url=proxy.url, api_key=SERVER_KEY, backoff_factor=0) as service:
            return checkpoints.list_checkpoints(service, page_size=2, **kwargs).result()

    def test_save_and_delete_between_pages(self, keyed_server, other):
        """A save before page 2 and a delete of a listed entry before page 3 neither repeat nor skip an entry.

        Failed on the old main: offset paging returned ``e`` twice (the save shifted the list forward)
        and never returned ``c`` (the delete shifted it back), although ``c`` existed throughout.
        """
        model_id = _seed(other, "abcdef")
        later = {"n": 6}

        def save():
            later["n"] += 1
            other.save(model_id, later["n"], "g")

        hooks = {2: save, 3: _delete(other, model_id, "f")}
        with _Interleaving(keyed_server.url, hooks) as proxy:
            listed = [c.tinker_path for c in self._list(proxy)]
        assert len(set(listed)) == len(listed)
        throughout = {_path(model_id, n) for n in "abcde"}
        assert throughout == throughout & set(listed)
        assert set() == set(listed) - {_path(model_id, n) for n in "abcdefg"}

    def test_deleting_the_anchor_steps_back(self, keyed_server, other):
        """When the last entry read is deleted, and others before it too, the reader steps back and misses nothing."""
        model_id = _seed(other, "abcdefgh")

        def delete_many():
            for name in "gh":  # newest first: h and g were read on page 1
                _delete(other, model_id, name)()

        with _Interleaving(keyed_server.url, {2: delete_many}) as proxy:
            listed = [c.tinker_path for c in self._list(proxy)]
        assert len(set(listed)) == len(listed)
        assert {_path(model_id, n) for n in "abcdefgh"} == set(listed)

    def test_many_saves_between_pages_repeat_nothing(self, keyed_server, other):
        """Saves that push every read entry into the next page are read once; entries present throughout all come."""
        model_id = _seed(other, "abcd")

        def save_many():
            for seq, name in enumerate("wxyz", 5):
                other.save(model_id, seq, name)

        with _Interleaving(keyed_server.url, {2: save_many}) as proxy:
            listed = [c.tinker_path for c in self._list(proxy)]
        assert len(set(listed)) == len(listed)
        throughout = {_path(model_id, n) for n in "abcd"}
        assert throughout == throughout & set(listed)

    def test_limit_counts_distinct_entries(self, keyed_server, other):
        """``limit`` returns that many distinct checkpoints even when the list grows between pages."""
        model_id = _seed(other, "abcdef")
        hooks = {2: lambda: other.save(model_id, 7, "g")}
        with _Interleaving(keyed_server.url, hooks) as proxy:
            listed = [c.tinker_path for c in self._list(proxy, limit=4)]
        assert 4 == len(set(listed))
        assert 4 == len(listed)

    def test_page_size_one_still_lists_everything(self, keyed_server, other):
        """With one entry per page (no room for an anchor) an unchanging listing still returns each entry once."""
        model_id = _seed(other, "abc")
        with _Interleaving(keyed_server.url, {}) as proxy:
            with ServiceClient(base_url=proxy.url, api_key=SERVER_KEY) as service:
                listed = checkpoints.list_checkpoints(service, page_size=1).result()
        assert [_path(model_id, n) for n in "cba"] == [c.tinker_path for c in listed]
