"""Tests for what a distribution of the project carries: the license and the ``py.typed`` marker."""

import configparser
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


class TestPackaging:
    """Tests for the packaging metadata in ``setup.cfg``."""

    def test_license_file_is_the_declared_apache_license(self):
        """``LICENSE`` holds the full Apache-2.0 text, the license setup.cfg declares and ships."""
        text = (ROOT / "LICENSE").read_text()
        meta = _setup_cfg()["metadata"]
        assert ("Apache-2.0", "LICENSE") == (meta["license"], meta["license_files"].strip())
        assert (True, True) == ("Version 2.0, January 2004" in text, "END OF TERMS AND CONDITIONS" in text)

    def test_py_typed_is_package_data(self):
        """The package has a ``py.typed`` marker and setup.cfg ships it, so type checkers read our hints."""
        assert "py.typed" == _setup_cfg()["options.package_data"]["tinkex_persist"].strip()
        assert (ROOT / "tinkex_persist" / "py.typed").is_file()
