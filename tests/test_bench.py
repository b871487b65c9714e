"""The benchmark script runs end to end and prints every section (speed itself is not asserted here)."""

import pathlib
import re
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "tools" / "bench.py"


class TestBenchQuick:
    """Tests for ``tools/bench.py --quick``."""

    def test_quick_run_prints_all_sections_with_figures(self):
        """``--quick`` exits 0 and prints latency ratios, polls, throughput, import time, footprint and downloads."""
        proc = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300)
        assert 0 == proc.returncode, proc.stderr[-2000:]
        out = proc.stdout
        for heading in ("1. Per-operation latency", "2. Polls per save", "3. Throughput", "4. Import time", "5. Installed footprint",
                        "6. Embedded server", "7. Big downloads"):
            assert heading in out
        assert 4 == len(re.findall(r"ours/floor \d+\.\d\dx", out))
        assert 3 == len(re.findall(r"max_workers=\d+ +\d+ saves/s", out))
        assert re.search(r"tinkex_persist +\d+ distributions", out)
        # The official/ours download target is printed only when the official SDK is installed (not on Python 3.9).
        sdk = "official SDK not installed" not in out
        assert (7 if sdk else 6) == len(re.findall(r"target: .*: (met|MISSED)", out))
        assert sdk == bool(re.search(r"official/ours \d+\.\d\dx +target: >= 2x: (met|MISSED)", out))
        assert re.search(r"ours/raw throughput \d+\.\d\dx", out)
