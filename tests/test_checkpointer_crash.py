"""Kill -9 a training loop that uses ``Checkpointer`` at random moments, restart it, and compare with an uninterrupted run."""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import wait_until
import tinkex_persist as tp
from tinkex_persist.localserver import LocalServer

LOOP = str(pathlib.Path(__file__).with_name("crashloop.py"))
API_KEY = "tml-crash-loop-key-0123456789"
TOTAL, SAVE_EVERY, KEEP_LAST = 300, 4, 3
KILLS = 20


def _side(path):
    """Parse the loop's side file into a list of (event, args) tuples."""
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line]


def _records(log_dir):
    """Every line of the record file, parsed strictly (a torn line fails the test)."""
    path = log_dir / "checkpoints.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _spawn(url, log_dir, side):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(pathlib.Path(LOOP).parent), os.environ.get("PYTHONPATH")])))
    args = [sys.executable, LOOP, url, str(log_dir), str(side), str(TOTAL), str(SAVE_EVERY), str(KEEP_LAST)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_for(predicate, proc, timeout=20.0):
    """Poll until ``predicate()`` holds or the process exits; return whether it held."""
    wait_until(lambda: predicate() or proc.poll() is not None, timeout=timeout, interval=0.002)
    return bool(predicate())


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
class TestKillAndResume:
    """Tests for ``Checkpointer`` under kill -9 of the training process."""

    def test_twenty_kills_end_where_an_uninterrupted_run_ends(self, tmp_path):
        """Killed at 20 random moments (in saves, before record appends, anywhere) and restarted, the loop ends
        with the uninterrupted run's weights, Adam state and loss curve; the record file always parses, each
        restart resumes at the newest committed step, and no resumed segment replays a step."""
        rng = random.Random(20261130)
        saves = []  # one entry per save the server starts writing

        def slow_save(stage, path):
            if stage == "files_written":
                saves.append(path)
            time.sleep(0.015)

        with LocalServer(tmp_path / "server", api_key=API_KEY, save_hook=slow_save) as server:
            ref_side = tmp_path / "reference.side"
            ref = _spawn(server.url, tmp_path / "reference", ref_side)
            out, err = ref.communicate(timeout=60)
            assert 0 == ref.returncode, err.decode()
            reference = json.loads(out.decode().splitlines()[-1])
            ref_loss = {int(e[1]): e[2] for e in _side(ref_side) if e[0] == "ran"}
            assert list(range(TOTAL)) == sorted(ref_loss)

            log_dir, side = tmp_path / "log", tmp_path / "loop.side"
            modes, kills, final = [], 0, None
            while True:
                committed = [r for r in _records(log_dir) if "state_path" in r]
                expected_start = committed[-1]["batch"] if committed else 0
                events_before = len(_side(side))
                saves_before = len(saves)
                proc = _spawn(server.url, log_dir, side)
                mode = rng.choice(["time", "save", "record"]) if kills < KILLS else "none"
                nth = rng.randint(1, 3)  # kill in the nth save (or before the nth record append) of this process
                if mode == "time":
                    hit = _wait_for(lambda: False, proc, timeout=rng.uniform(0.0, 0.8)) or proc.poll() is None
                elif mode == "save":
                    hit = _wait_for(lambda: len(saves) - saves_before >= nth, proc)
                    time.sleep(rng.uniform(0.0, 0.012))
                elif mode == "record":
                    hit = _wait_for(lambda: [e[0] for e in _side(side)[events_before:]].count("recording") >= nth, proc)
                else:
                    hit = False
                if hit and proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                    modes.append(mode)
                out, err = proc.communicate(timeout=60)
                segment = _side(side)[events_before:]
                if segment:
                    assert ("start", str(expected_start)) == segment[0][:2], segment[:3]
                    ran = [int(e[1]) for e in segment if e[0] == "ran"]
                    assert list(range(expected_start, expected_start + len(ran))) == ran
                    for e in segment:
                        if e[0] == "ran":
                            assert ref_loss[int(e[1])] == e[2], "step %s" % e[1]
                records = _records(log_dir)  # parses every line, or fails
                batches = [r["batch"] for r in records if not r.get("final")]
                assert sorted(set(batches)) == batches
                if proc.returncode == 0:
                    final = json.loads(out.decode().splitlines()[-1])
                    break
                assert -signal.SIGKILL == proc.returncode, err.decode()[-2000:]

            with tp.ServiceClient(base_url=server.url, api_key=API_KEY, heartbeat_interval=None) as service:
                listed = {c.tinker_path for c in tp.list_checkpoints(service).result() if c.checkpoint_type == "training"}

        assert KILLS == kills
        assert {"time", "save", "record"} == set(modes)
        assert reference == final
        records = _records(log_dir)
        assert {"name": "final", "batch": TOTAL, "final": True} == {k: records[-1][k] for k in ("name", "batch", "final")}
        reference_runs = {r["state_path"].split("/")[2] for r in _records(tmp_path / "reference")}
        ours = {p for p in listed if p.split("/")[2] not in reference_runs}
        recorded = {r["state_path"] for r in records}
        periodic = [r["state_path"] for r in records if r.get("periodic")]
        # Retention left exactly the newest KEEP_LAST periodic checkpoints and the final one of those recorded...
        assert set(periodic[-KEEP_LAST:]) | {records[-1]["state_path"]} == ours & recorded
        # ...and never touched the checkpoints committed by a process killed before it recorded them.
        assert ours - recorded, "no kill landed between a committed save and its record"
