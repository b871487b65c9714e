"""``LocalServer``: a loopback Tinker-compatible server for checkpoint persistence, and ``serve_forever``."""

import logging
import os
import signal
import socket
import ssl
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Set, Union

import attrs

from ..config import check_api_key
from ..exceptions import ConfigError
from ._faults import FaultQueue
from ._http import Handler
from ._options import ServerOptions
from ._service import HTTPError, Service, Stats
from ._store import CheckpointStore

logger = logging.getLogger(__name__)

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
    do not. One root is served by one server at a time: a second one (in any process) fails to start
    with :class:`~tinkex_persist.exceptions.RootInUseError`. Use it as a context manager::

        with LocalServer(tmp_path) as server:
            client = Client(base_url=server.url, api_key="tml-local")

    ``with LocalServer(root).start() as server:`` works too.

    Args:
        root: Directory holding the checkpoints (created if missing).
        host: Address to bind; loopback by default.
        port: Port to bind; 0 picks a free one (see :attr:`url`).
        api_key: When set, every request except the signed download must carry it in ``X-API-Key``.
            Surrounding whitespace (a trailing newline from a file or a mounted secret) is stripped, as the
            client strips the key it sends.
        options: Behaviour settings (timings, limits, TLS, test hooks); see :class:`ServerOptions`.
        **changes: :class:`ServerOptions` fields that override ``options``, e.g. ``complete_delay=0.5``.

    Raises:
        TypeError: An unknown keyword argument, or an option of the wrong type.
        ValueError: An option out of range (see :class:`ServerOptions`).
        ConfigError: ``api_key`` is blank, or has a space, control or non-ASCII character inside (the
            message never shows the key).

    Attributes:
        options: The :class:`ServerOptions` in effect.
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
        options: Optional[ServerOptions] = None,
        **changes: Any,
    ) -> None:
        base = ServerOptions() if options is None else options
        if not isinstance(base, ServerOptions):
            raise TypeError("options must be a ServerOptions, got %r" % (base,))
        self.options: ServerOptions = attrs.evolve(base, **changes) if changes else base
        self.root = os.fspath(root)
        self.host = host
        self.port = port
        self.api_key = check_api_key(api_key, "the server's api_key")
        if api_key is not None and self.api_key is None:
            raise ConfigError("the server's api_key is blank; pass None to serve without a key")
        self.stats = Stats()
        self.faults = FaultQueue()
        self.service: Optional[Service] = None
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._conns: Set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._prev_sigterm: Any = None

    def __repr__(self) -> str:
        state = self.url if self._httpd is not None else "stopped"
        return "<LocalServer %s root=%r%s>" % (state, self.root, " api_key required" if self.api_key else "")

    @property
    def certfile(self) -> Optional[str]:
        """PEM certificate of an HTTPS server (``options.certfile``)."""
        return self.options.certfile

    @property
    def keyfile(self) -> Optional[str]:
        """PEM key of an HTTPS server (``options.keyfile``)."""
        return self.options.keyfile

    @property
    def max_body(self) -> int:
        """Largest accepted request body in bytes (``options.max_body``)."""
        return self.options.max_body

    @property
    def socket_timeout(self) -> float:
        """Idle seconds before a silent connection is closed (``options.socket_timeout``)."""
        return self.options.socket_timeout

    @property
    def client_config(self) -> Dict[str, Any]:
        """Answer of ``client/config`` (a copy of ``options.client_config``)."""
        return dict(self.options.client_config)

    @property
    def running(self) -> bool:
        """True between :meth:`start` (or :meth:`bind`) and :meth:`stop`."""
        return self._httpd is not None

    @property
    def open_connections(self) -> int:
        """Number of client connections currently open."""
        with self._conns_lock:
            return len(self._conns)

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
            RootInUseError: Another server serves the same root.
            OSError: The address cannot be bound.
        """
        self._bind(foreground=True)

    def _bind(self, foreground: bool = True) -> None:
        if self._httpd is not None:
            raise RuntimeError("LocalServer is already running")
        store = CheckpointStore(self.root, self.options.clock)  # raises RootInUseError before anything is bound
        try:
            cls = _HTTPServer6 if ":" in self.host else _HTTPServer
            httpd = cls((self.host, self.port), Handler)
        except OSError as exc:
            store.close()
            # Name the address: "[Errno 98] Address already in use" alone does not say which one.
            raise OSError(exc.errno, "cannot bind %s port %d: %s" % (self.host, self.port, exc.strerror or exc)) from exc
        except BaseException:
            store.close()
            raise
        try:
            if self.options.certfile:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(self.options.certfile, self.options.keyfile)
                # The handshake runs in the handler thread (Handler.setup), not in the accept loop.
                httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        except BaseException:
            httpd.server_close()
            store.close()
            raise
        httpd.local = self
        self.service = Service(store, self.options)
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
            RootInUseError: Another server serves the same root.
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
        # ``with LocalServer(root).start() as server:`` enters a running server: serve on, stop at the end.
        return self if self.running else self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def track_connection(self, conn: socket.socket, add: bool) -> None:
        """Add (``add``) or remove an open client connection, so :meth:`stop` can close it. Internal, for the handler."""
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    @property
    def store(self) -> CheckpointStore:
        """The directory-backed checkpoint store of a bound or running server: the named internal interface
        for tools that measure or inspect the store without HTTP (``tools/bench.py``, the fault matrix).

        Raises:
            RuntimeError: The server is not bound (before :meth:`start`/:meth:`bind`, or after :meth:`stop`).
        """
        if self._httpd is None or self.service is None:
            raise RuntimeError("LocalServer is not running: it has no store")
        return self.service.store

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
        **options: ``options=`` a :class:`ServerOptions`, or :class:`ServerOptions` fields as keywords.

    Raises:
        RootInUseError: Another server serves the same root.
        OSError: The address cannot be bound.
    """
    server = LocalServer(root, host, port, api_key, **options)
    server.bind()
    print(server.url, file=sys.stdout, flush=True)
    server.serve_forever()
