"""An embedded Tinker-compatible server (stdlib only) for checkpoint persistence: ``LocalServer``."""

from ..exceptions import RootInUseError
from ._faults import Fault, FaultQueue
from ._options import ServerOptions
from ._service import Stats
from .server import LocalServer, serve_forever

__all__ = ("Fault", "FaultQueue", "LocalServer", "RootInUseError", "ServerOptions", "Stats", "serve_forever")
