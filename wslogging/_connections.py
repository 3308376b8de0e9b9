"""Pure: the bound on the connections a server holds, and the deadline to authenticate."""

from __future__ import annotations

from collections.abc import Callable

# Seconds from accept by which a connection must have begun an authenticated request (a
# keyed HTTP request, WebSocket handshake or SSE stream, or a forwarder's proof); TLS
# handshake, request line and headers all count against it.
AUTH_DEADLINE = 5.0
# The share of the process's descriptors (soft RLIMIT_NOFILE) the server may hold: 1/4.
SHARE = 4
# Connections beyond max_clients: forwarders, keep-alive requests, handshakes in flight.
RESERVE = 64


def connection_bound(soft_limit: int | None, max_clients: int) -> int:
    """How many connections a server may hold at once: a quarter of ``soft_limit`` (the
    process's soft ``RLIMIT_NOFILE``; ``None`` where unlimited or unknown), and never more
    than ``max_clients`` plus :data:`RESERVE`; at least 1."""
    bound = max_clients + RESERVE
    if soft_limit is not None:
        bound = min(bound, soft_limit // SHARE)
    return max(1, bound)


class Connection:
    """One accepted connection: how to close it, and until when it may go unauthenticated."""

    __slots__ = ("close", "deadline", "fileno", "open")

    def __init__(self, close: Callable[[], None], deadline: float, fileno: int = -1) -> None:
        # Closes it at once (without waiting for the peer); the server's own.
        self.close = close
        # Its socket's descriptor, for a forked child to let go of (see abandon_after_fork).
        self.fileno = fileno
        # None once it has begun an authenticated request.
        self.deadline: float | None = deadline
        self.open = True


class ConnectionTable:
    """The connections a server holds: at most ``bound``, each authenticated within
    ``deadline`` seconds of being accepted or closed.

    Bounded: a connection accepted while ``bound`` are held takes the place of the oldest
    one that has not authenticated (that one is closed: it has had the most time and not
    used it); if every one has, the new one is refused. Both count as refused. A
    flood of idle or slow peers therefore churns among itself, while a client that
    authenticates at once keeps its place. Authenticated connections are never closed here:
    streams keep their heartbeats, keep-alive connections aiohttp's idle timeout.
    """

    def __init__(self, bound: int, deadline: float = AUTH_DEADLINE) -> None:
        self.bound = bound
        self.deadline = deadline
        self.refused = 0
        self.timed_out = 0
        self._authenticated: set[Connection] = set()
        # Oldest first; their deadlines are in the same order.
        self._pending: dict[Connection, None] = {}

    def __len__(self) -> int:
        return len(self._authenticated) + len(self._pending)

    def connections(self) -> list[Connection]:
        """Every connection held, the pending ones first."""
        return [*self._pending, *self._authenticated]

    def opened(self, now: float, close: Callable[[], None], fileno: int = -1) -> Connection | None:
        """Take a new connection, closing another to make room if need be (see above);
        ``None`` if it is refused: the caller closes it."""
        if len(self) >= self.bound:
            self.refused += 1
            if not self._pending:
                return None
            self._drop(next(iter(self._pending)))
        connection = Connection(close, now + self.deadline, fileno)
        self._pending[connection] = None
        return connection

    def authenticated(self, connection: Connection) -> None:
        """``connection`` has begun an authenticated request: no deadline from now on."""
        if connection.open and connection.deadline is not None:
            connection.deadline = None
            del self._pending[connection]
            self._authenticated.add(connection)

    def closed(self, connection: Connection) -> None:
        """``connection`` is gone (however); idempotent."""
        if connection.open:
            connection.open = False
            self._pending.pop(connection, None)
            self._authenticated.discard(connection)

    def sweep(self, now: float) -> None:
        """Close every connection past its deadline."""
        while self._pending:
            oldest = next(iter(self._pending))
            assert oldest.deadline is not None
            if oldest.deadline > now:
                break
            self.timed_out += 1
            self._drop(oldest)

    def close_all(self) -> None:
        """Close every connection (the server is shutting down)."""
        for connection in self.connections():
            self._drop(connection)

    def _drop(self, connection: Connection) -> None:
        self.closed(connection)
        connection.close()

    def stats(self) -> dict[str, int]:
        return {
            "connections_open": len(self),
            "connections_limit": self.bound,
            "connections_refused": self.refused,
            "connections_timed_out": self.timed_out,
        }
