"""What a server is given and what it reports: its options, state and forwarders' counts,
and its socket and URL."""

from __future__ import annotations

import enum
import logging
import socket
from dataclasses import dataclass
from typing import Any

from .._hub import SlowClientPolicy


class ServerState(enum.Enum):
    """The server's lifecycle."""

    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True)
class ServerOptions:
    """Validated options; see the SPEC §2 table."""

    host: str
    port: int
    keys: tuple[str, ...]
    history: int
    queue_size: int
    client_queue_size: int
    slow_client: SlowClientPolicy
    heartbeat: float
    max_clients: int
    max_clients_per_key: int
    allowed_origins: frozenset[str] | None
    allow_query_token: bool
    ssl_certfile: str | None
    ssl_keyfile: str | None
    # Records below this level are shed first when the app's queue is nearly full; None: not.
    keep_level: int | None = logging.WARNING


@dataclass
class ForwarderStats:
    """What ``/api/stats`` lists for one forwarding process (by pid)."""

    pid: int
    connected: bool = True
    records_received: int = 0
    # The forwarder's own count: records it could not queue or send.
    records_dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "connected": self.connected,
            "records_received": self.records_received,
            "records_dropped": self.records_dropped,
        }


def base_url(options: ServerOptions, port: int) -> str:
    """The base URL clients use for a server with ``options`` on ``port`` (no trailing
    slash); a wildcard address is named by the loopback one."""
    host = options.host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if options.ssl_certfile else "http"
    return f"{scheme}://{host}:{port}"


def bind_socket(host: str, port: int) -> socket.socket:
    """A non-blocking socket listening on ``host:port``; ``OSError`` (``EADDRINUSE`` when
    another socket listens there) if it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets a restarted app rebind at once past TIME_WAIT; on Linux this still refuses
        # a port another socket is listening on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
