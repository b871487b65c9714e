"""A small HTTP/1.1 fault-injecting proxy for tests: loopback only, stdlib only.

It forwards each request to an upstream server and records it. One-shot faults, matched by request
path (``fnmatch``), change what happens to one request: answer without forwarding, drop the
connection before or after the upstream committed, stall, truncate, trickle or garble the answer.

With ``extra_keys=True`` the proxy plays a newer service: it adds an unknown key to every object at
every depth of every JSON answer it forwards (see :func:`add_unknown_keys`).
"""

import fnmatch
import json
import socket
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

#: Fault kinds and what they do.
KINDS = {
    "reset_before": "read the request, close the connection without forwarding it",
    "lost_ack": "forward the request (the server commits it), then close without answering",
    "stall": "forward, then hold the answer for `seconds` and close",
    "status": "answer `status` with `body` and `headers` without forwarding",
    "truncate": "forward, then send the head and half the body and close",
    "garbage": "forward, then answer 200 with a body that is not JSON",
    "wrong_type": "forward, then answer with the server's body labelled text/html",
    "trickle": "forward, then send the answer 16 bytes at a time, `seconds` apart (default 2 ms)",
    "short_json": "forward, then answer 200 with the first half of the server's JSON body (a matching Content-Length)",
}


#: The key a "newer service" adds, and its value: itself nested, so decoders must skip a whole subtree.
EXTRA_KEY = "zz_added_by_newer_service"
EXTRA_VALUE = {"nested": [1, {"deeper": True}], "text": "x"}
#: Keys whose object value is the caller's own free-form data (a ``Dict[str, ...]``, not a schema object):
#: a newer service would not add keys there, so they are left as they are.
DATA_MAPS = frozenset({"user_metadata", "metrics"})


def add_unknown_keys(value: Any) -> Any:
    """Return ``value`` with ``EXTRA_KEY`` added to every object at every depth (``DATA_MAPS`` values excepted)."""
    if isinstance(value, list):
        return [add_unknown_keys(v) for v in value]
    if isinstance(value, dict):
        out = {k: (v if k in DATA_MAPS else add_unknown_keys(v)) for k, v in value.items()}
        out[EXTRA_KEY] = EXTRA_VALUE
        return out
    return value


def _extend_answer(head: bytes, headers: Dict[str, str], body: bytes) -> bytes:
    """Return the answer with unknown keys added to its JSON body and its Content-Length fixed."""
    if not body or "application/json" not in headers.get("content-type", ""):
        return head + body
    body = json.dumps(add_unknown_keys(json.loads(body)), separators=(",", ":")).encode("utf-8")
    lines = [
        line for line in head.split(b"\r\n") if line and not line.lower().startswith(b"content-length:")
    ]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Fault(NamedTuple):
    kind: str
    path: str = "*"
    status: int = 500
    body: bytes = b'{"detail": "injected"}'
    headers: Tuple[Tuple[str, str], ...] = ()
    seconds: float = 0.0


class Recorded(NamedTuple):
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    fault: Optional[str]


def _read_message(f, *, request: bool) -> Optional[Tuple[bytes, Dict[str, str], bytes]]:
    """Read one HTTP/1.1 message (start line, headers, Content-Length body) from a file object."""
    start = f.readline(65537)
    if not start:
        return None
    raw = [start]
    headers: Dict[str, str] = {}
    while True:
        line = f.readline(65537)
        raw.append(line)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = f.read(length) if length else b""
    return b"".join(raw), headers, body


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream`` (host, port), applying queued one-shot faults.

    ``extra_keys=True`` adds an unknown key to every object of every forwarded JSON answer.
    """

    def __init__(self, upstream_url: str, *, extra_keys: bool = False) -> None:
        hostport = upstream_url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        self.upstream = (host.strip("[]"), int(port))
        self.extra_keys = extra_keys
        self.records: List[Recorded] = []
        self._faults: List[Fault] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._conns: List[socket.socket] = []

    def add(self, kind: str, path: str = "*", count: int = 1, **kw) -> None:
        """Queue ``count`` faults of ``kind`` for requests whose path matches ``path``."""
        assert kind in KINDS, kind
        with self._lock:
            self._faults.extend([Fault(kind, path, **kw)] * count)

    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    def clear(self) -> None:
        """Drop every queued fault that no request used."""
        with self._lock:
            self._faults.clear()

    def _take(self, path: str) -> Optional[Fault]:
        with self._lock:
            for i, f in enumerate(self._faults):
                if fnmatch.fnmatchcase(path, f.path):
                    return self._faults.pop(i)
        return None

    def paths(self) -> List[str]:
        return [r.path for r in self.records]

    def __enter__(self) -> "FaultProxy":
        t = threading.Thread(target=self._accept, args=(self._sock,), daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def refuse(self) -> None:
        """Stop listening and cut every open connection: new connections are refused until :meth:`restore`."""
        self._close_listener()
        self._cut_connections()

    def restore(self) -> None:
        """Listen again on the same port after :meth:`refuse`."""
        self._sock = socket.create_server(("127.0.0.1", self.port))
        t = threading.Thread(target=self._accept, args=(self._sock,), daemon=True)
        t.start()
        self._threads.append(t)

    def _close_listener(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._sock.close()

    def _cut_connections(self) -> None:
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._close_listener()
        self._cut_connections()
        for c in list(self._conns):
            c.close()
        for t in self._threads:
            t.join(timeout=5)

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        try:
            rf = conn.makefile("rb")
            while not self._stop.is_set():
                msg = _read_message(rf, request=True)
                if msg is None:
                    return
                head, headers, body = msg
                method, target = head.split(b" ", 2)[:2]
                path = target.decode("latin-1").split("?", 1)[0]
                fault = self._take(path)
                self.records.append(Recorded(method.decode(), path, headers, body, fault.kind if fault else None))
                if fault and fault.kind == "reset_before":
                    return
                if fault and fault.kind == "status":
                    extra = "".join("%s: %s\r\n" % h for h in fault.headers)
                    conn.sendall(
                        b"HTTP/1.1 %d Injected\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
                        % (fault.status, len(fault.body), extra.encode())
                        + fault.body
                    )
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=60)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    uf = upstream.makefile("rb")
                upstream.sendall(head + body)
                answer = _read_message(uf, request=False)
                if answer is None:
                    return
                rhead, rheaders, rbody = answer
                if fault is None and self.extra_keys:
                    conn.sendall(_extend_answer(rhead, rheaders, rbody))
                    continue
                if fault is None:
                    conn.sendall(rhead + rbody)
                    continue
                if fault.kind == "lost_ack":
                    return
                if fault.kind == "stall":
                    self._stop.wait(fault.seconds)
                    return
                if fault.kind == "truncate":
                    conn.sendall(rhead + rbody[: len(rbody) // 2])
                    return
                if fault.kind == "garbage":
                    junk = b"<html>502 gateway page</html>"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(junk) + junk)
                    continue
                if fault.kind == "wrong_type":
                    conn.sendall(rhead.replace(b"application/json", b"text/html") + rbody)
                    continue
                if fault.kind == "trickle":
                    data = rhead + rbody
                    for i in range(0, len(data), 16):
                        conn.sendall(data[i : i + 16])
                        time.sleep(fault.seconds or 0.002)
                    continue
                if fault.kind == "short_json":
                    cut = rbody[: len(rbody) // 2]
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(cut) + cut
                    )
                    continue
        except OSError:
            return
        finally:
            if upstream is not None:
                upstream.close()
            conn.close()
