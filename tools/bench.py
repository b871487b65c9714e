"""Benchmark tinkex_persist against the official SDK (when installed) and a raw ``http.client`` floor.

Everything runs against the embedded local server on loopback, in one run, with interleaved
measurements; figures are medians and p90 with the number of runs. Usage::

    python tools/bench.py            # full run (a few minutes; builds two throw-away venvs)
    python tools/bench.py --quick    # < 60 s; footprint from the installed distributions instead
    python tools/bench.py --only downloads [--download-size BYTES]   # the download section alone
"""

import argparse
import http.client
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tinkex_persist as tp
from tinkex_persist._transport import USER_AGENT
from tinkex_persist.demo import DEMO_KEY
from tinkex_persist.localserver import LocalServer

BASE = "Qwen/Qwen3-8B"
HEADERS = {"User-Agent": USER_AGENT, "Accept": "application/json", "Content-Type": "application/json", "X-API-Key": DEMO_KEY}

try:  # the official SDK is optional
    warnings.simplefilter("ignore", FutureWarning)
    import tinker  # noqa: F401

    HAVE_SDK = True
except ImportError:
    HAVE_SDK = False


# --------------------------------------------------------------------------- helpers


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def fmt_ms(values: Sequence[float]) -> str:
    return "%7.3f ms  p90 %7.3f  (n=%d)" % (statistics.median(values) * 1e3, pct(values, 0.9) * 1e3, len(values))


def scratch_root() -> str:
    # tmpfs keeps the server's fsync out of the client comparison when the machine has one.
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="tp-bench-", dir=base)


class ServerProcess:
    """A LocalServer in its own process, so client and server do not share a GIL."""

    def __init__(self, **options: object) -> None:
        self.root = scratch_root()
        code = (
            "import json, sys\n"
            "from tinkex_persist.localserver import LocalServer\n"
            "s = LocalServer(sys.argv[1], **json.loads(sys.argv[2])); s.start()\n"
            "print(s.url, flush=True); sys.stdin.read(); s.stop()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, self.root, json.dumps(options)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        self.port = int(self.url.rsplit(":", 1)[1])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


class RawClient:
    """The floor: one keep-alive ``http.client`` connection sending the same two requests per operation.

    Same bodies and the same headers as tinkex_persist (User-Agent, X-Idempotency-Key on every POST,
    X-Tinker-Request-* on polls), so the difference is client overhead only.
    """

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.connect()
        import socket

        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session_id = self.post("/api/v1/create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0",
                                                               "type": "create_session"})["session_id"]
        self.model_seq = 0
        self.model_id = self.new_model()
        self.seq = 1

    def post(self, path: str, body: dict, **extra: str) -> dict:
        headers = dict(HEADERS, **extra)
        headers["X-Idempotency-Key"] = uuid.uuid4().hex
        self.conn.request("POST", path, json.dumps(body, separators=(",", ":")), headers)
        return json.loads(self.conn.getresponse().read())

    def call(self, path: str, body: dict, kind: str = "SaveWeights") -> dict:
        rid = self.post(path, body)["request_id"]
        poll = {"X-Tinker-Request-Iteration": "0", "X-Tinker-Request-Type": kind}
        return self.post("/api/v1/retrieve_future", {"request_id": rid, "allow_metadata_only": True}, **poll)

    def new_model(self) -> str:
        body = {"session_id": self.session_id, "model_seq_id": self.model_seq, "base_model": BASE,
                "lora_config": {"rank": 8, "train_unembed": True, "train_mlp": True, "train_attn": True},
                "optimizer_config": {"type": "adamw"}, "type": "create_model"}
        self.model_seq += 1
        return self.call("/api/v1/create_model", body, "CreateModel")["model_id"]

    def save(self, name: str) -> str:
        body = {"model_id": self.model_id, "path": name, "seq_id": self.seq, "overwrite": True, "type": "save_weights"}
        self.seq += 1
        return self.call("/api/v1/save_weights", body)["path"]

    def load(self, path: str, optimizer: bool) -> None:
        body = {"model_id": self.model_id, "seq_id": self.seq, "path": path, "optimizer": optimizer, "type": "load_weights"}
        self.seq += 1
        self.call("/api/v1/load_weights", body, "LoadWeights")

    def from_state(self, path: str) -> None:
        body = {"session_id": self.session_id, "model_seq_id": self.model_seq, "path": path, "optimizer": False,
                "type": "load_weights"}
        self.model_seq += 1
        self.call("/api/v1/load_weights", body, "LoadWeights")


# --------------------------------------------------------------------------- 1. per-op latency

OPS = ("save_state", "load_state", "load_state_with_optimizer", "create_training_client_from_state")


def _latency_ops(client: str, url: str, port: int, path: str) -> Dict[str, Callable[[str], object]]:
    """The four operations of one client, set up against the server at ``url``."""
    if client == "tinkex_persist":
        svc = tp.ServiceClient(base_url=url, api_key=DEMO_KEY, heartbeat_interval=None)
        tc = svc.create_lora_training_client(BASE, rank=8).result()
        return {
            "save_state": lambda n: tp.save_state(tc, n, overwrite=True).result(),
            "load_state": lambda n: tp.load_state(tc, path).result(),
            "load_state_with_optimizer": lambda n: tp.load_state_with_optimizer(tc, path).result(),
            "create_training_client_from_state": lambda n: tp.create_training_client_from_state(svc, path).result(),
        }
    if client == "raw floor":
        raw = RawClient(port)
        return {
            "save_state": lambda n: raw.save(n),
            "load_state": lambda n: raw.load(path, False),
            "load_state_with_optimizer": lambda n: raw.load(path, True),
            "create_training_client_from_state": lambda n: raw.from_state(path),
        }
    import tinker

    os.environ.update({"TINKER_API_KEY": DEMO_KEY, "TINKER_BASE_URL": url, "TINKER_TELEMETRY": "0"})
    logging.getLogger("tinker").setLevel(logging.CRITICAL)  # its load_state logs a deprecation error per call
    sdk_svc = tinker.ServiceClient()
    sdk = sdk_svc.create_lora_training_client(BASE, rank=8).result()
    return {
        "save_state": lambda n: sdk.save_state(n, overwrite=True).result(),
        "load_state": lambda n: sdk.load_state(path).result(),
        "load_state_with_optimizer": lambda n: sdk.load_state_with_optimizer(path).result(),
        "create_training_client_from_state": lambda n: sdk_svc.create_training_client_from_state(path).result(),
    }


def latency_worker(client: str, url: str, port: int, path: str) -> None:
    """Child process: run one operation per stdin line (``op name``), print its duration in seconds."""
    ops = _latency_ops(client, url, port, path)
    print("ready", flush=True)
    for line in sys.stdin:
        op, name = line.split()
        t0 = time.perf_counter()
        ops[op](name)
        print(time.perf_counter() - t0, flush=True)
    os._exit(0)  # the official SDK's background loop would otherwise keep the process alive


def per_op_latency(rounds: int) -> Dict[str, Dict[str, List[float]]]:
    """Each client runs in its own process (no shared GIL, no other client's threads); rounds are interleaved."""
    server = ServerProcess(allow_late_load=True)
    workers: Dict[str, subprocess.Popen] = {}
    try:
        with tp.ServiceClient(base_url=server.url, api_key=DEMO_KEY, heartbeat_interval=None) as svc:
            path = tp.save_state(svc.create_lora_training_client(BASE, rank=8).result(), "p").result().path
        clients = ["tinkex_persist", "raw floor"] + (["official SDK"] if HAVE_SDK else [])
        for client in clients:
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--latency-worker", client, server.url, str(server.port), path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            assert proc.stdout is not None and "ready" == proc.stdout.readline().strip()
            workers[client] = proc

        def run(client: str, op: str, name: str) -> float:
            proc = workers[client]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("%s %s\n" % (op, name))
            proc.stdin.flush()
            return float(proc.stdout.readline())

        results: Dict[str, Dict[str, List[float]]] = {c: {op: [] for op in OPS} for c in clients}
        for client in clients:  # warm-up
            for op in OPS:
                for i in range(3):
                    run(client, op, "w%d" % i)
        for r in range(rounds):
            for op in OPS:
                for client in clients:  # interleaved: every client runs each op once per round
                    results[client][op].append(run(client, op, "r%d" % (r % 8)))
        return results
    finally:
        for proc in workers.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=30)
        server.close()


# --------------------------------------------------------------------------- 2. polls and detection delay


def polling(delays: Sequence[float], repeats: int) -> List[Tuple[str, str, float, float, float]]:
    rows = []
    for long_poll in (False, True):
        for d in delays:
            with LocalServer(scratch_root(), complete_delay=d, long_poll=long_poll) as server:
                clients: List[Tuple[str, Callable[[], object]]] = []
                svc = tp.ServiceClient(base_url=server.url, api_key=DEMO_KEY, heartbeat_interval=None)
                tc = svc.create_lora_training_client(BASE, rank=4).result()
                clients.append(("tinkex_persist", lambda: tp.save_state(tc, "d", overwrite=True).result()))
                sdk_svc = None
                if HAVE_SDK:
                    import tinker

                    os.environ.update({"TINKER_API_KEY": DEMO_KEY, "TINKER_BASE_URL": server.url, "TINKER_TELEMETRY": "0"})
                    logging.getLogger("tinker").setLevel(logging.CRITICAL)
                    sdk_svc = tinker.ServiceClient()
                    stc = sdk_svc.create_lora_training_client(BASE, rank=4).result()
                    clients.append(("official SDK", lambda: stc.save_state("d", overwrite=True).result()))
                for name, fn in clients:
                    polls, lags = [], []
                    for _ in range(repeats):
                        server.stats.reset()
                        t0 = time.perf_counter()
                        fn()
                        lags.append(time.perf_counter() - t0 - d)
                        polls.append(server.stats.requests["/api/v1/retrieve_future"])
                    rows.append((("long-poll" if long_poll else "try_again at once"), name, d,
                                 statistics.median(polls), statistics.median(lags)))
                svc.close()
                if sdk_svc is not None:
                    sdk_svc.close("success").result()
    return rows


# --------------------------------------------------------------------------- 3. throughput


def throughput(total: int, clients: int, workers: Sequence[int]) -> List[Tuple[int, float, int]]:
    server = ServerProcess()
    rows = []
    try:
        for w in workers:
            with tp.ServiceClient(base_url=server.url, api_key=DEMO_KEY, max_workers=w, heartbeat_interval=None) as svc:
                tcs = [svc.create_lora_training_client(BASE, rank=4).result() for _ in range(clients)]
                peak = [threading.active_count()]
                stop = threading.Event()

                def watch() -> None:
                    while not stop.wait(0.005):
                        peak[0] = max(peak[0], threading.active_count())

                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                t0 = time.perf_counter()
                futs = [tp.save_state(tcs[i % clients], "s%d" % (i // clients % 5), overwrite=True) for i in range(total)]
                for f in futs:
                    f.result()
                elapsed = time.perf_counter() - t0
                stop.set()
                watcher.join()
                rows.append((w, total / elapsed, peak[0] - 1))  # minus the watcher itself
    finally:
        server.close()
    return rows


# --------------------------------------------------------------------------- 4. import time


def import_time(runs: int, pythons: Dict[str, str]) -> List[Tuple[str, float, float, int]]:
    """Median import time per target, each in fresh processes of the interpreter that has it installed."""
    # VmRSS, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec.
    probe = (
        "import time, threading; t0 = time.perf_counter(); %s; dt = time.perf_counter() - t0;"
        "rss = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')];"
        "print(dt, int(rss[0]) / 1024 if rss else 0.0, threading.active_count())"
    )
    targets = [("requests, attrs, cattrs", "import requests, attrs, cattrs", pythons["tinkex_persist"]),
               ("tinkex_persist", "import tinkex_persist", pythons["tinkex_persist"])]
    if "tinker (official SDK)" in pythons:
        targets.append(("tinker (official SDK)", "import tinker", pythons["tinker (official SDK)"]))
    samples: Dict[str, List[Tuple[float, float, int]]] = {name: [] for name, _, _ in targets}
    # Bytecode as an installed package has it: allowed to be written, and written by a warm-up run.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for _, stmt, python in targets:
        subprocess.run([python, "-c", stmt], check=True, cwd=tempfile.gettempdir(), env=env)
    for _ in range(runs):
        for name, stmt, python in targets:  # interleaved fresh processes
            # From a neutral directory, so a source checkout in the cwd cannot shadow the installed package.
            out = subprocess.run([python, "-c", probe % stmt], capture_output=True, text=True, check=True,
                                 cwd=tempfile.gettempdir(), env=env).stdout.split()
            samples[name].append((float(out[0]), float(out[1]), int(out[2])))
    return [(n, statistics.median(s[0] for s in v), statistics.median(s[1] for s in v), max(s[2] for s in v))
            for n, v in samples.items()]


# --------------------------------------------------------------------------- 5. footprint


def _closure(dist: str) -> List[str]:
    seen, todo = set(), [dist]
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), 1)[0].strip().lower().replace("_", "-")
        if not name or name in seen:
            continue
        try:
            d = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(r for r in (d.requires or []) if "extra ==" not in r)
    return sorted(seen)


def _size_mb(names: Sequence[str]) -> float:
    total = 0
    for n in names:
        for f in importlib.metadata.distribution(n).files or []:
            try:
                total += os.path.getsize(str(f.locate()))
            except OSError:
                pass
    return total / 1e6


def footprint_installed() -> List[Tuple[str, int, float]]:
    rows = [("tinkex_persist", ["tinkex-persist"])]
    if HAVE_SDK:
        rows.append(("tinker (official SDK)", ["tinker"]))
    out = []
    for label, (root,) in rows:
        names = _closure(root)
        out.append((label, len(names), _size_mb(names)))
    return out


def make_venvs(repo: str, parent: str) -> Dict[str, str]:
    """``pip install`` tinkex_persist (and the official SDK, if it is installed here) into fresh venvs."""
    pythons = {}
    targets = [("tinkex_persist", repo)] + ([("tinker (official SDK)", "tinker==0.38.0")] if HAVE_SDK else [])
    for i, (label, spec) in enumerate(targets):
        d = os.path.join(parent, "venv%d" % i)
        subprocess.run([sys.executable, "-m", "venv", d], check=True)
        python = os.path.join(d, "bin", "python")
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", spec], check=True, capture_output=True)
        pythons[label] = python
    return pythons


def footprint_venv(python: str) -> Tuple[int, float]:
    """Distributions and bytes in a venv's site-packages, pip and setuptools excluded."""
    freeze = subprocess.run([python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                            capture_output=True, text=True, check=True).stdout
    dists = [x for x in freeze.splitlines() if x and x.split("==")[0].lower() not in ("pip", "setuptools")]
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    size = 0
    for entry in os.listdir(site):
        if entry.lower().startswith(("pip", "setuptools", "_distutils_hack", "distutils-precedence")):
            continue
        full = os.path.join(site, entry)
        if os.path.isdir(full):
            size += sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(full) for f in fs)
        else:
            size += os.path.getsize(full)
    return len(dists), size / 1e6


# --------------------------------------------------------------------------- the embedded server


def keep_alive_round_trips(n: int) -> List[float]:
    """Seconds per keep-alive round trip to a LocalServer (a 404 ``get_info``: no model work)."""
    import socket

    with LocalServer(scratch_root()) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("POST", "/api/v1/get_info", body=b'{"model_id":"x","type":"get_info"}')
            conn.getresponse().read()
            times.append(time.perf_counter() - t0)
        conn.close()
    return times


def connection_burst(n: int) -> float:
    """Seconds until ``n`` connections opened at once all have their answer (a 1 s stall means a dropped SYN)."""
    import socket

    with LocalServer(scratch_root()) as server:
        t0 = time.perf_counter()
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(n)]
        try:
            for sock in socks:
                sock.sendall(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            for sock in socks:
                while sock.recv(65536):
                    pass
        finally:
            for sock in socks:
                sock.close()
        return time.perf_counter() - t0


def store_save_scaling(saves: int) -> Tuple[float, float]:
    """Median seconds per store save over the first and the last 10 % of ``saves`` saves (no deletes)."""
    root = scratch_root()
    server = LocalServer(root)
    server.bind()  # holds the root; no request is served: the figure is the store's alone, no HTTP in it
    store = server.store
    info = {"base_model": BASE, "lora_rank": 1, "step": 0}
    times = []
    try:
        for i in range(saves):
            t0 = time.perf_counter()
            store.save("run-%d" % (i % 50), "c%d" % i, b"w" * 2048, b"o" * 4104, info, None, False, None)
            times.append(time.perf_counter() - t0)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    k = max(1, saves // 10)
    return statistics.median(times[:k]), statistics.median(times[-k:])


# --------------------------------------------------------------------------- 7. big downloads


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0  # pragma: no cover - not Linux


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0  # pragma: no cover - not Linux


def raw_fetch(urls: Dict[str, str], dest: str) -> int:
    """The floor: one ``http.client`` connection per file, 1 MiB reads, sha256 and write of each read."""
    import hashlib
    import http.client
    from urllib.parse import urlsplit

    total = 0
    for name, url in sorted(urls.items()):
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.request("GET", parts.path + "?" + parts.query)
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        h = hashlib.sha256()
        with open(os.path.join(dest, name), "wb", buffering=0) as f:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                f.write(chunk)
                total += len(chunk)
        conn.close()
    return total


def download_worker(mode: str, url: str, path: str, dest: str) -> None:
    """Child process: one download (``ours`` or ``raw``) of ``path``; prints seconds, bytes and RSS growth as JSON."""
    svc = tp.ServiceClient(base_url=url, api_key=DEMO_KEY, heartbeat_interval=None)
    tp.get_weights_info(svc, path).result()  # both start with a warm connection to the API
    base = _rss_mb()
    t0 = time.perf_counter()
    if mode == "raw":
        urls = tp.get_external_weights_urls(svc, path).result().urls  # the raw loop needs the URLs too
        os.makedirs(dest, exist_ok=True)
        n = raw_fetch(urls, dest)
    elif mode == "cut":  # stop at 50 %, as a killed process would
        def stop(p: object) -> None:
            if getattr(p, "bytes_done", 0) * 2 >= (getattr(p, "bytes_total", None) or size):
                print(json.dumps({"done_at_cut": getattr(p, "bytes_done")}), flush=True)
                os._exit(3)

        size = int(os.environ.get("TP_BENCH_SIZE", "0"))
        tp.download_checkpoint(svc, path, dest, progress=stop).result()
        n = 0
    else:
        n = tp.download_checkpoint(svc, path, dest).result().bytes_fetched
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "bytes": n, "rss_growth_mb": _peak_rss_mb() - base}), flush=True)
    os._exit(0)


def _run_json(argv: List[str], env: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, object], float]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise RuntimeError("%s failed (%d): %s" % (argv[:4], proc.returncode, proc.stderr[-1500:]))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{") and line.endswith("}")]
    return proc.returncode, (json.loads(lines[-1]) if lines else {}), wall


def downloads(size: int, rounds: int) -> Dict[str, object]:
    """Interleaved rounds on one export of ``size`` bytes: transfer (ours vs raw), end to end (ours vs official CLI)."""
    server = ServerProcess(export_size=size)
    scratch = scratch_root()
    me = [sys.executable, os.path.abspath(__file__)]
    ours_cli = [sys.executable, "-m", "tinkex_persist"]
    tinker_cli = os.path.join(os.path.dirname(sys.executable), "tinker")
    env = dict(os.environ, TINKER_API_KEY=DEMO_KEY, TINKER_BASE_URL=server.url, TINKER_TELEMETRY="0")
    out: Dict[str, List[float]] = {"ours transfer": [], "raw transfer": [], "ours end to end": [],
                                   "official end to end": [], "rss": []}
    try:
        with tp.ServiceClient(base_url=server.url, api_key=DEMO_KEY, heartbeat_interval=None) as svc:
            tc = svc.create_lora_training_client(BASE, rank=8).result()
            training = tp.save_state(tc, "big").result().path
            t0 = time.perf_counter()
            export = tc.save_weights_external("big").result()
            export_seconds = time.perf_counter() - t0  # the server's export, paid by both end-to-end clients
            external, total = export.path, export.size_bytes or size
        for i in range(rounds):
            for label in ("ours transfer", "raw transfer", "ours end to end", "official end to end"):
                dest = os.path.join(scratch, "r%d-%s" % (i, label.replace(" ", "-")))
                if label == "ours transfer":
                    _, data, _ = _run_json(me + ["--download-worker", "ours", server.url, external, dest])
                    out[label].append(float(data["seconds"]))  # type: ignore[arg-type]
                    out["rss"].append(float(data["rss_growth_mb"]))  # type: ignore[arg-type]
                elif label == "raw transfer":
                    _, data, _ = _run_json(me + ["--download-worker", "raw", server.url, external, dest])
                    out[label].append(float(data["seconds"]))  # type: ignore[arg-type]
                elif label == "ours end to end":
                    _, _, wall = _run_json(ours_cli + ["--base-url", server.url, "download", training, "--dest", dest,
                                                       "--json"], env)
                    out[label].append(wall)
                elif HAVE_SDK and os.path.exists(tinker_cli):
                    _, _, wall = _run_json([tinker_cli, "--format", "json", "checkpoint", "download", training,
                                            "--output", dest], env)
                    out[label].append(wall)
                shutil.rmtree(dest, ignore_errors=True)
        # A cut at 50 % (the process exits at once), then a second process resumes.
        dest = os.path.join(scratch, "cut")
        _, cut, _ = _run_json(me + ["--download-worker", "cut", server.url, external, dest],
                              dict(os.environ, TP_BENCH_SIZE=str(total)))
        _, resumed, _ = _run_json(me + ["--download-worker", "ours", server.url, external, dest])
        refetched = int(cut.get("done_at_cut", 0)) + int(resumed["bytes"]) - total  # type: ignore[call-overload]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        server.close()
    return {"size": total, "rounds": rounds, "refetched": refetched, "cut_at": cut.get("done_at_cut"),
            "export_seconds": export_seconds, **out}


# --------------------------------------------------------------------------- report


def report_polling(quick: bool) -> None:
    print("\n2. Polls per save and detection delay when the server finishes after D seconds")
    for mode, client, d, polls, lag in polling((0.05, 0.5) if quick else (0.05, 0.5, 2.0), repeats=1 if quick else 3):
        print("  %-18s %-15s D=%-5.2f polls %6.1f   delay %7.1f ms" % (mode, client, d, polls, lag * 1e3))
        if (mode, client, d) == ("try_again at once", "tinkex_persist", 2.0):
            ok = polls <= 12 and lag <= 0.1 * d + 0.005
            print("    target: pending 2 s without long-poll: <= 12 polls, delay <= 205 ms: %s" % ("met" if ok else "MISSED"))


def report_downloads(size: int, rounds: int) -> None:
    from tinkex_persist._external import CHUNK_SIZE

    print("7. Big downloads: an export of %.1f MiB over loopback, %d interleaved round(s), each client a process"
          % (size / 2**20, rounds))
    r = downloads(size, rounds)
    total = float(r["size"])  # type: ignore[arg-type]
    ours, raw = statistics.median(r["ours transfer"]), statistics.median(r["raw transfer"])  # type: ignore[arg-type]
    print("  transfer (signed URLs of an existing export; fetch, sha256, write):")
    print("    tinkex_persist   %7.3f s  %7.1f MiB/s" % (ours, total / ours / 2**20))
    print("    raw http.client  %7.3f s  %7.1f MiB/s" % (raw, total / raw / 2**20))
    print("    ours/raw throughput %.2fx   target: >= 0.90x: %s" % (raw / ours, "met" if raw / ours >= 0.9 else "MISSED"))
    e2e = statistics.median(r["ours end to end"])  # type: ignore[arg-type]
    print("  end to end (CLI process: export a training checkpoint, fetch, verify, delete the export):")
    print("    tinkex-persist download       %7.3f s   (the server's export alone: %.3f s, in both)"
          % (e2e, r["export_seconds"]))
    if r["official end to end"]:
        off = statistics.median(r["official end to end"])  # type: ignore[arg-type]
        print("    tinker checkpoint download    %7.3f s" % off)
        print("    official/ours %.2fx   target: >= 2x: %s" % (off / e2e, "met" if off / e2e >= 2 else "MISSED"))
    rss = max(r["rss"])  # type: ignore[type-var]
    print("  client RSS growth during the transfer: %.1f MB   target: <= 64 MB: %s" % (rss, "met" if rss <= 64 else "MISSED"))
    refetched = int(r["refetched"])  # type: ignore[call-overload]
    print("  cut at 50%% (byte %s), resumed by another process: %d bytes fetched twice   target: <= one chunk (%d): %s"
          % (r["cut_at"], refetched, CHUNK_SIZE, "met" if refetched <= CHUNK_SIZE else "MISSED"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sample sizes; finishes in under a minute")
    parser.add_argument("--latency-worker", nargs=4, metavar=("CLIENT", "URL", "PORT", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--download-worker", nargs=4, metavar=("MODE", "URL", "PATH", "DEST"), help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("downloads", "polling"), help="run one section only")
    parser.add_argument("--download-size", type=int, default=None, metavar="BYTES",
                        help="size of the export in the download section (default: 1 GiB, 32 MiB with --quick)")
    args = parser.parse_args(argv)
    if args.download_worker:
        mode, url, path, dest = args.download_worker
        download_worker(mode, url, path, dest)
        return 0
    if args.latency_worker:
        client, url, port, path = args.latency_worker
        latency_worker(client, url, int(port), path)
        return 0
    quick = args.quick
    t_start = time.monotonic()
    print("tinkex_persist %s benchmark, %s, Python %s, %s, %d CPUs%s" % (
        tp.__version__, time.strftime("%Y-%m-%d"), platform.python_version(), platform.machine(), os.cpu_count() or 0,
        "" if HAVE_SDK else " (official SDK not installed: its columns are skipped)"))
    print("mode: %s\n" % ("quick" if quick else "full"))

    if args.only in (None, "downloads"):
        report_downloads(args.download_size or ((32 << 20) if quick else (1 << 30)), 1 if quick else 5)
    if args.only == "downloads":
        return 0
    if args.only == "polling":
        report_polling(quick)
        return 0

    print("\n1. Per-operation latency (submit + result), median and p90, interleaved rounds")
    lat = per_op_latency(rounds=15 if quick else 200)
    for op in OPS:
        print("  %s" % op)
        for client in lat:
            print("    %-16s %s" % (client, fmt_ms(lat[client][op])))
        ours, floor = statistics.median(lat["tinkex_persist"][op]), statistics.median(lat["raw floor"][op])
        line = "    ours/floor %.2fx" % (ours / floor)
        if "official SDK" in lat:
            line += "   official/ours %.2fx" % (statistics.median(lat["official SDK"][op]) / ours)
        print(line)

    report_polling(quick)

    print("\n3. Throughput: saves across 20 training clients")
    total = 200 if quick else 1000
    for w, ops_s, peak in throughput(total, 20, (1, 4, 16)):
        print("  max_workers=%-3d %7.0f saves/s   peak threads %d   (%d saves)" % (w, ops_s, peak, total))

    print("\n6. Embedded server: keep-alive round trip, a burst of connections, save cost as the store grows")
    rtt = keep_alive_round_trips(40 if quick else 400)
    print("  keep-alive round trip %s   target: median < 5 ms (no delayed-ACK stall): %s"
          % (fmt_ms(rtt), "met" if statistics.median(rtt) < 0.005 else "MISSED"))
    burst = connection_burst(100)
    print("  100 connections at once answered in %6.1f ms   target: < 900 ms (no SYN retransmission): %s"
          % (burst * 1e3, "met" if burst < 0.9 else "MISSED"))
    first, last = store_save_scaling(1200)
    print("  store save, 1,200 saves: first 10%% %.2f ms, last 10%% %.2f ms   target: last < 2 x first + 1 ms: %s"
          % (first * 1e3, last * 1e3, "met" if last < 2 * first + 0.001 else "MISSED"))

    parent = tempfile.mkdtemp(prefix="tp-bench-venvs-")
    try:
        if quick:
            pythons = {"tinkex_persist": sys.executable}
            if HAVE_SDK:
                pythons["tinker (official SDK)"] = sys.executable
            where = "this interpreter (an editable install adds its import hook)"
        else:
            pythons = make_venvs(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), parent)
            where = "fresh venvs, `pip install`"
        print("\n4. Import time in fresh processes (median), RSS after import, threads; %s" % where)
        rows = import_time(5 if quick else 15, pythons)
        base_t = rows[0][1]
        for name, dt, rss, threads in rows:
            print("  %-24s %6.1f ms  (+%5.1f ms over requests/attrs/cattrs)  RSS %5.1f MB  threads %d"
                  % (name, dt * 1e3, (dt - base_t) * 1e3, rss, threads))

        print("\n5. Installed footprint")
        if quick:
            print("  (dependency closure of the installed distributions)")
            rows5 = footprint_installed()
        else:
            print("  (fresh venvs, pip install; pip and setuptools not counted)")
            rows5 = [(label,) + footprint_venv(python) for label, python in pythons.items()]
        for label, n, mb in rows5:
            print("  %-24s %3d distributions  %6.1f MB" % (label, n, mb))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    print("\ndone in %.1f s" % (time.monotonic() - t_start))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
