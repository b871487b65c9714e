"""``LocalServer``: a loopback Tinker-compatible server for checkpoint persistence, and ``serve_forever``."""

import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Set, Union

from ._http import Handler
from ._service import FaultQueue, HTTPError, Service, Stats
from ._store import CheckpointStore

logger = logging.getLogger(__name__)

#: Largest accepted request body, in bytes.
DEFAULT_MAX_BODY = 16 * 1024 * 1024
#: How long ``retrieve_future`` holds a pending poll (the official SDK gives up on a poll after 45 s).
DEFAULT_LONG_POLL_TIMEOUT = 30.0
#: How long a request with a seq_id ahead of the expected one waits for the gap to fill.
DEFAULT_SEQ_WAIT = 3.0
#: Idle time after which a connection that sends nothing is closed.
DEFAULT_SOCKET_TIMEOUT = 30.0


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # The stdlib's listen backlog of 5 drops SYNs when a burst of clients connects at once; each dropped
    # SYN costs the client a 1 s (then 3 s) retransmission.
    request_queue_size = 128
    local: "LocalServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The stdlib prints tracebacks to stderr; a reset or timed-out client is routine here.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class LocalServer:
    """A Tinker-compatible server for the persistence subset of the API, backed by a directory.

    It speaks what the official SDK 0.38.0 sends: sessions, ``create_model``, ``save_weights``,
    ``load_weights`` (both addressings), ``optim_step``, ``retrieve_future``, checkpoint listing,
    deletion and TTLs, plus a signed tar download. Checkpoints survive restarts; sessions and models
    do not. Use it as a context manager::

        with LocalServer(tmp_path) as server:
            client = Client(base_url=server.url, api_key="tml-local")

    Args:
        root: Directory holding the checkpoints (created if missing).
        host: Address to bind; loopback by default.
        port: Port to bind; 0 picks a free one (see :attr:`url`).
        api_key: When set, every request except the signed download must carry it in ``X-API-Key``.
        certfile: PEM certificate; with ``keyfile`` the server speaks HTTPS.
        keyfile: PEM private key for ``certfile``.
        complete_delay: Seconds before each future completes; 0 completes at once.
        long_poll: Hold pending polls until completion (or ``long_poll_timeout``); when False,
            answer ``try_again`` at once.
        long_poll_timeout: Longest hold of a pending poll, in seconds.
        pending_status: HTTP status of a ``try_again`` answer: 200 or 408.
        seq_wait: Seconds a request whose seq_id is ahead of the expected one waits for the gap.
        allow_late_load: Accept ``load_weights`` on a model after its first request.
        session_load: Accept session-addressed ``load_weights`` (create-from-state); when False, answer
            400 naming ``session_id`` and ``model_seq_id``, as a server predating it does.
        future_ttl: Seconds a future's outcome is kept; later polls get 410.
        archive_url_ttl: Lifetime of a signed download URL, in seconds.
        max_body: Largest accepted request body in bytes; larger ones get 413.
        socket_timeout: Idle seconds before a silent connection is closed.
        clock: Wall clock (epoch seconds) for TTLs and expiries; tests may pass a fake one.
        client_config: Answer of ``client/config``; by default it turns the SDK's pyqwest transport off.
        save_hook: Called as ``save_hook(stage, tinker_path)`` at ``files_written``, ``dir_renamed`` and
            ``index_written`` during each save (used by crash tests).

    Attributes:
        stats: :class:`Stats`; ``stats.requests[path]`` counts requests per path.
        faults: :class:`FaultQueue` of one-shot injected faults.
        seq_log: ``seq_log[model_id]`` lists the seq_ids a model received, in arrival order.
    """

    def __init__(
        self,
        root: Union[str, "os.PathLike[str]"],
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: Optional[str] = None,
        *,
        certfile: Optional[str] = None,
        keyfile: Optional[str] = None,
        complete_delay: float = 0.0,
        long_poll: bool = True,
        long_poll_timeout: float = DEFAULT_LONG_POLL_TIMEOUT,
        pending_status: int = 200,
        seq_wait: float = DEFAULT_SEQ_WAIT,
        allow_late_load: bool = False,
        session_load: bool = True,
        future_ttl: float = 3600.0,
        archive_url_ttl: float = 3600.0,
        max_body: int = DEFAULT_MAX_BODY,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        clock: Callable[[], float] = time.time,
        client_config: Optional[Dict[str, Any]] = None,
        save_hook: Optional[Callable[[str, str], None]] = None,
    ) -> None:
        if pending_status not in (200, 408):
            raise ValueError("pending_status must be 200 or 408, got %r" % (pending_status,))
        self.root = os.fspath(root)
        self.host = host
        self.port = port
        self.api_key = api_key
        self.certfile = certfile
        self.keyfile = keyfile
        self.max_body = max_body
        self.socket_timeout = socket_timeout
        self.client_config = {"use_pyqwest_transport": False} if client_config is None else dict(client_config)
        self.stats = Stats()
        self.faults = FaultQueue()
        self._opts = {
            "clock": clock,
            "complete_delay": complete_delay,
            "long_poll": long_poll,
            "long_poll_timeout": long_poll_timeout,
            "pending_status": pending_status,
            "seq_wait": seq_wait,
            "allow_late_load": allow_late_load,
            "session_load": session_load,
            "future_ttl": future_ttl,
            "archive_url_ttl": archive_url_ttl,
            "save_hook": save_hook,
        }
        self.service: Optional[Service] = None
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._conns: Set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._prev_sigterm: Any = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        if self._httpd is None:
            raise RuntimeError("LocalServer is not running; call start() first")
        host = self.host if ":" not in self.host else "[%s]" % self.host
        return "%s://%s:%d" % ("https" if self.certfile else "http", host, self.port)

    @property
    def seq_log(self) -> Dict[str, List[Optional[int]]]:
        """seq_ids each model received, in arrival order (reset by a restart)."""
        return self.service.seq_log if self.service is not None else {}

    def bind(self) -> None:
        """Bind the port without serving yet, for :meth:`serve_forever` in the foreground.

        After it :attr:`url` is known, and (in the main thread) SIGTERM already stops the server cleanly,
        so a caller may print the URL before serving without racing a supervisor's SIGTERM.

        Raises:
            RuntimeError: The server is already running.
            OSError: The address cannot be bound.
        """
        self._bind(foreground=True)

    def _bind(self, foreground: bool = True) -> None:
        if self._httpd is not None:
            raise RuntimeError("LocalServer is already running")
        self.service = Service(CheckpointStore(self.root, self._opts["clock"]), self._opts)
        cls = _HTTPServer6 if ":" in self.host else _HTTPServer
        httpd = cls((self.host, self.port), Handler)
        httpd.local = self
        if self.certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.certfile, self.keyfile)
            # The handshake runs in the handler thread (Handler.setup), not in the accept loop.
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        if foreground and threading.current_thread() is threading.main_thread():
            self._prev_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        logger.debug("local server on %s, root %s", self.url, self.root)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # shutdown() blocks until the serving loop exits, so it cannot run in the loop's own thread.
        httpd = self._httpd
        if httpd is not None:
            threading.Thread(target=httpd.shutdown, name="tinkex-localserver-stop", daemon=True).start()

    def start(self) -> "LocalServer":
        """Bind and serve in a daemon thread. Returns self.

        Raises:
            RuntimeError: The server is already running.
            OSError: The address cannot be bound.
        """
        self._bind(foreground=False)
        assert self._httpd is not None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="tinkex-localserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and wake waiting polls. Checkpoints stay on disk."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        if self._thread is not None:
            httpd.shutdown()
            self._thread.join()
            self._thread = None
        httpd.server_close()
        if self._prev_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._prev_sigterm = None
        if self.service is not None:
            self.service.stop()
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve_forever(self) -> None:
        """Serve in the calling thread until Ctrl-C or SIGTERM, then stop cleanly (binds first if needed)."""
        if self._httpd is None:
            self.bind()
        assert self._httpd is not None
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            logger.debug("local server interrupted")
        finally:
            self.stop()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def track_connection(self, conn: socket.socket, add: bool) -> None:
        """Add (``add``) or remove an open client connection, so :meth:`stop` can close it. Internal, for the handler."""
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def model_info(self, model_id: str) -> Dict[str, Any]:
        """Return what ``GET /local/v1/models/{model_id}`` answers: step, seq state and sha256 digests.

        Raises:
            KeyError: No such model on the running server.
        """
        if self.service is None:
            raise KeyError(model_id)
        try:
            return self.service.model_info(model_id)
        except HTTPError:
            raise KeyError(model_id) from None


def serve_forever(
    root: Union[str, "os.PathLike[str]"],
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: Optional[str] = None,
    **options: Any,
) -> None:
    """Run a :class:`LocalServer` in the foreground: print its URL, serve until Ctrl-C or SIGTERM.

    Args:
        root: Checkpoint directory.
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        api_key: Key every request must carry in ``X-API-Key``; None disables the check.
        **options: Further :class:`LocalServer` keyword arguments.
    """
    server = LocalServer(root, host, port, api_key, **options)
    server.bind()
    print(server.url, file=sys.stdout, flush=True)
    server.serve_forever()
