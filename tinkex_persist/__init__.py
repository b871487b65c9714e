"""tinkex_persist: checkpoint persistence for the Tinker training API."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
