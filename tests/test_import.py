"""Tests for the package surface and import-time behaviour."""

import ast
import pathlib
import subprocess
import sys

import tinkex_persist

PACKAGE = pathlib.Path(tinkex_persist.__file__).parent


class TestImport:
    """Tests for importing tinkex_persist."""

    def test_all_is_a_sorted_tuple_of_existing_names(self):
        """``__all__`` is a sorted tuple and every name in it exists."""
        assert isinstance(tinkex_persist.__all__, tuple)
        assert sorted(tinkex_persist.__all__) == list(tinkex_persist.__all__)
        missing = [n for n in tinkex_persist.__all__ if not hasattr(tinkex_persist, n)]
        assert [] == missing

    def test_public_functions_are_exported(self):
        """The contract's flat functions and clients are public."""
        expected = {
            "save_state", "load_state", "load_state_with_optimizer", "create_training_client_from_state",
            "create_training_client_from_state_with_optimizer", "ServiceClient", "TrainingClient",
        }
        assert expected <= set(tinkex_persist.__all__)

    def test_import_starts_no_thread_and_adds_only_a_null_handler(self):
        """Importing the package in a fresh interpreter starts no thread and configures no logging."""
        code = (
            "import logging, threading; before = threading.active_count(); import tinkex_persist, tinkex_persist.localserver;"
            "print(threading.active_count() - before, logging.getLogger().handlers == [],"
            " [type(h).__name__ for h in logging.getLogger('tinkex_persist').handlers])"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(None, 2)
        assert ["0", "True", "['NullHandler']"] == [o.strip() for o in out]

    def test_management_modules_load_on_first_use(self):
        """``import tinkex_persist`` loads neither the checkpoint nor the download module; each loads on first use, tarfile only with download."""
        code = (
            "import sys, tinkex_persist as tp; heavy = ['tinkex_persist.checkpoints', 'tinkex_persist.download', 'tarfile'];"
            "loaded = lambda: ''.join('1' if m in sys.modules else '0' for m in heavy); steps = [loaded()];"
            "tp.list_checkpoints; steps.append(loaded()); tp.download_checkpoint; steps.append(loaded()); print(*steps)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        assert "000 100 111" == out

    def test_protobuf_codec_loads_on_the_first_training_call(self):
        """``import tinkex_persist`` does not load the protobuf codec; the first ``forward_backward`` call does."""
        code = (
            "import sys, tinkex_persist as tp; before = 'tinkex_persist._proto' in sys.modules;"
            "from tinkex_persist.localserver import LocalServer; import tempfile;"
            "srv = LocalServer(tempfile.mkdtemp()).start();"
            "svc = tp.ServiceClient(base_url=srv.url, api_key='k');"
            "tc = svc.create_lora_training_client('Qwen/Qwen3-8B', rank=1).result();"
            "datum = tp.Datum(model_input=tp.ModelInput.from_ints([1, 2]),"
            " loss_fn_inputs={'target_tokens': [2, 3], 'weights': [1.0, 1.0]});"
            "tc.forward_backward([datum], 'cross_entropy').result();"
            "print(before, 'tinkex_persist._proto' in sys.modules); svc.close(); srv.stop()"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.split()
        assert ["False", "True"] == out

    def test_runtime_imports_are_relative_or_allowed(self):
        """Package modules import only the stdlib, requests, attrs, cattrs and themselves (relatively), so a vendored copy works."""
        allowed = {"requests", "attrs", "cattrs", "typing_extensions"}
        stdlib = set(getattr(sys, "stdlib_module_names", ())) or None
        offenders = []
        for path in PACKAGE.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    if top == "tinkex_persist" or (top not in allowed and stdlib is not None and top not in stdlib):
                        offenders.append("%s: %s" % (path.name, name))
        assert [] == offenders

    def test_environment_is_read_only_in_config(self):
        """Only config.py reads os.environ."""
        readers = sorted(p.name for p in PACKAGE.rglob("*.py") if "os.environ" in p.read_text() and p.name != "config.py")
        assert [] == readers
