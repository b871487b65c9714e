"""Tests for ``tools/vendor.py``: a copy under another package name works unchanged, in a separate process."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "vendor.py"

# Runs in a fresh interpreter whose sys.path has only the vendored copy: importing the original package fails.
SCRIPT = textwrap.dedent(
    """
    import logging, sys, tempfile
    sys.modules["tinkex_persist"] = None  # any import of the original package now raises ImportError
    import acme_tp
    from acme_tp.localserver import LocalServer
    from acme_tp import checkpoints

    with LocalServer(tempfile.mkdtemp()) as server:
        with acme_tp.ServiceClient(base_url=server.url, api_key="tml-vendored") as service:
            tc = service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
            saved = acme_tp.save_state(tc, "v1").result()
            resumed = acme_tp.create_training_client_from_state_with_optimizer(service, saved.path).result()
            loaded = acme_tp.load_state(
                service.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result(), saved.path).result()
            listed = checkpoints.list_checkpoints(service, tc.model_id).result()
    print(saved.path.split("/")[-1], resumed.model_id != tc.model_id, loaded.path == saved.path,
          [c.name for c in listed], checkpoints.logger.name, type(acme_tp.UsageError("x")).__module__)
    """
)


def _vendor(dest, name="acme_tp"):
    return subprocess.run([sys.executable, str(TOOL), str(dest), "--as", name], capture_output=True, text=True, timeout=60)


def _clean_env(pythonpath):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_PERSIST_", "PYTHON"))}
    env["PYTHONPATH"] = str(pythonpath)
    return env


class TestVendor:
    """Tests for ``tools/vendor.py``."""

    def test_vendored_copy_saves_and_loads(self, tmp_path):
        """A copy vendored as ``acme_tp`` saves, resumes and lists against its own LocalServer without the original."""
        dest = tmp_path / "project" / "src"
        proc = _vendor(dest)
        assert (0, str(dest / "acme_tp")) == (proc.returncode, proc.stdout.strip()), proc.stderr
        run = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, %r)\n" % str(dest) + SCRIPT],
                             capture_output=True, text=True, timeout=60, cwd=str(tmp_path), env=_clean_env(dest))
        assert 0 == run.returncode, run.stderr
        assert "v1 True True ['v1'] acme_tp.checkpoints acme_tp.exceptions" == run.stdout.strip()

    def test_vendored_cli_runs(self, tmp_path):
        """``python -m <copy>`` runs the copy's command line."""
        _vendor(tmp_path)
        run = subprocess.run([sys.executable, "-m", "acme_tp", "--version"], capture_output=True, text=True, timeout=60,
                             cwd=str(tmp_path), env=_clean_env(tmp_path))
        assert (0, True) == (run.returncode, run.stdout.startswith("tinkex-persist "))

    def test_copy_has_no_caches_and_a_marker(self, tmp_path):
        """The copy holds no __pycache__, records where it came from, and carries the license and py.typed."""
        _vendor(tmp_path)
        copied = tmp_path / "acme_tp"
        assert [] == list(copied.rglob("__pycache__"))
        assert (ROOT / "LICENSE").read_bytes() == (copied / "LICENSE").read_bytes()
        assert "Apache License" in (copied / "LICENSE").read_text().split("\n", 3)[1]
        assert (copied / "py.typed").is_file()
        assert (copied / "VENDORED_FROM").read_text().startswith("tinkex_persist ")
        assert (copied / "checkpoints.py").read_bytes() == (ROOT / "tinkex_persist" / "checkpoints.py").read_bytes()

    def test_replaces_an_earlier_copy_but_nothing_else(self, tmp_path):
        """Vendoring again replaces an earlier copy; a directory that is not a copy is left alone (exit 1)."""
        assert 0 == _vendor(tmp_path).returncode
        assert 0 == _vendor(tmp_path).returncode
        (tmp_path / "mine").mkdir()
        proc = _vendor(tmp_path, "mine")
        assert (1, True) == (proc.returncode, "not a vendored copy" in proc.stderr)

    @pytest.mark.parametrize("name", ["not-valid", "class", "1abc"])
    def test_rejects_bad_package_names(self, tmp_path, name):
        """A name that is not a Python identifier, or is a keyword, is refused."""
        assert 1 == _vendor(tmp_path, name).returncode

    def test_detects_absolute_self_imports(self, tmp_path):
        """The tool's check finds none in the package and finds one planted in a copy."""
        sys.path.insert(0, str(TOOL.parent))
        try:
            import vendor
        finally:
            sys.path.remove(str(TOOL.parent))
        assert [] == vendor.absolute_self_imports(str(ROOT / "tinkex_persist"))
        planted = tmp_path / "pkg"
        planted.mkdir()
        (planted / "__init__.py").write_text("from tinkex_persist import manage\n")
        assert ["__init__.py:1"] == vendor.absolute_self_imports(str(planted))
        with pytest.raises(ValueError, match="absolute imports"):
            vendor.vendor(str(tmp_path / "out"), "acme", source=str(planted))
        (planted / "__init__.py").write_text("from . import manage\n")
        with pytest.raises(ValueError, match="must carry the license"):
            vendor.vendor(str(tmp_path / "out"), "acme", source=str(planted))
