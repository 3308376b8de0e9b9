"""Tail a running Python app's logs live over WebSocket and Server-Sent Events."""

from ._redact import RedactingFilter
from ._structlog import StructlogProcessor
from ._version import __version__
from .handler import WebSocketHandler, broadcast_log, broadcast_log_sync

__all__ = [
    "RedactingFilter",
    "StructlogProcessor",
    "WebSocketHandler",
    "__version__",
    "broadcast_log",
    "broadcast_log_sync",
]
