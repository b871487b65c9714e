"""The README's examples run as written."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _example(name: str) -> str:
    match = re.search(r"<!-- readme-example: %s -->\n```python\n(.*?)\n```" % re.escape(name), README.read_text(), re.S)
    assert match is not None, "README has no example named %s" % name
    return match.group(1)


class TestReadmeExamples:
    """Examples marked ``<!-- readme-example: NAME -->`` in README.md run unchanged in a fresh interpreter."""

    def test_training_example_runs_and_loss_falls(self, tmp_path):
        """The training example exits 0 against the embedded server and prints a falling loss curve."""
        script = tmp_path / "training_example.py"
        script.write_text(_example("training"))
        proc = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
        assert 0 == proc.returncode, proc.stderr
        curve = [float(x) for x in proc.stdout.splitlines()[0].split()[1:]]
        assert 10 == len(curve)
        assert curve[-1] < curve[0]
        assert "/sampler_weights/step-10" in proc.stdout
