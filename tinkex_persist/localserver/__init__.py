"""An embedded Tinker-compatible server (stdlib only) for checkpoint persistence: ``LocalServer``."""

from ._service import Fault, FaultQueue, Stats
from .server import LocalServer, serve_forever

__all__ = ("Fault", "FaultQueue", "LocalServer", "Stats", "serve_forever")
