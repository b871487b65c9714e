#!/usr/bin/env python3
"""Run the fault matrix and print ``docs/fault-matrix.md``: every fault on the wire against every operation.

    python tools/fault_matrix.py            # print the document (timings and mismatches go to stderr)
    python tools/fault_matrix.py --write    # write docs/fault-matrix.md

Each cell runs on a fresh embedded server behind the fault-injecting proxy of the test suite, with the
checks of ``tests/faultmatrix.py``. Exit status 1 when a cell's outcome differs from the one pinned there
(the document then shows what happened, so the difference is visible in review) or its checks fail.
"""

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "fault-matrix.md")
sys.path.insert(0, os.path.join(ROOT, "tests"))

import faultmatrix  # noqa: E402


def run(only: Optional[str] = None) -> Tuple[Dict[Tuple[str, str], str], List[str]]:
    """Run every cell (or those of faults whose label contains ``only``); return outcomes and problems."""
    outcomes: Dict[Tuple[str, str], str] = {}
    problems: List[str] = []
    for fault in faultmatrix.FAULTS:
        if only and only not in fault.label:
            continue
        for op in faultmatrix.OPS:
            try:
                outcome, seconds = faultmatrix.run_cell_on_a_fresh_server(fault, op)
            except AssertionError as exc:
                outcome, seconds = "check failed", 0.0
                problems.append("%s / %s: server state check failed: %s" % (fault.label, op, exc))
            outcomes[(fault.label, op)] = outcome
            want = faultmatrix.expected(fault, op)
            if outcome != want and outcome != "check failed":
                problems.append("%s / %s: %s, pinned %s" % (fault.label, op, outcome, want))
            print("%-40s %-50s %-22s %5.2fs" % (fault.label, op, outcome, seconds), file=sys.stderr, flush=True)
    return outcomes, problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write %s instead of printing it" % os.path.relpath(DOC, ROOT))
    parser.add_argument("--only", metavar="TEXT", help="run only the faults whose label contains TEXT (no --write)")
    args = parser.parse_args(argv)
    if args.write and args.only:
        parser.error("--write needs the whole matrix; drop --only")
    outcomes, problems = run(args.only)
    text = faultmatrix.render(outcomes)
    if args.write:
        with open(DOC, "w", encoding="utf-8") as f:
            f.write(text)
        print("wrote %s" % DOC, file=sys.stderr)
    else:
        sys.stdout.write(text)
    for problem in problems:
        print("MISMATCH " + problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
