"""The state a server's parts share (:class:`ServerCore`), and the checks several routes make."""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .. import _wire
from .._auth import (
    FailureThrottle,
    KeyRing,
    TicketBook,
    is_loopback_host,
)
from .._connections import ConnectionTable, connection_bound
from .._filters import Filter, FilterError, filter_from_query
from .._handoff import Handoff, Lost
from .._history import Resume, SinceError
from .._hub import Client, Hub
from .._loop_thread import LoopThread
from ._options import ForwarderStats, ServerOptions, ServerState
from ._responses import bad_request, error, since_text
from ._sockets import TrackedConnection, soft_nofile
from ._source import SOURCE_WAIT, CountedIds, IdScheme, RecordSource, caught_up

# Where an authenticated request keeps the KeyId of the key it came with (a typed key from
# aiohttp 3.14 on, which warns about plain string keys; a string before it).
KEY_ID: Any = (
    web.RequestKey("wslogging_key_id", bytes) if hasattr(web, "RequestKey") else "wslogging_key_id"
)


class ServerCore:
    """The state every part of a :class:`LogServer` shares, and the checks several of its
    routes make. The parts (accepting, the guard, the JSON API, SSE, WebSocket, ingest) are
    classes over this one; :class:`LogServer` joins them and owns the lifecycle."""

    # Set once the server runs (see LogServer._serve).
    _runner: web.AppRunner
    _sweeper: asyncio.Task[None]
    _consumer: asyncio.Task[None]

    def __init__(
        self,
        options: ServerOptions,
        dropped: Callable[[], int],
        source: RecordSource | None = None,
        ingest_secret: str | None = None,
        backend: str = "embedded",
    ) -> None:
        """Serve records :meth:`submit` hands in (and, with ``ingest_secret``, those of
        forwarding processes), or, with ``source``, the source's records (then :meth:`submit`
        refuses every record). ``backend`` is what ``/api/stats`` calls it without a source
        (``"collector"`` for ``wslogging serve`` without Redis)."""
        if source is not None and ingest_secret is not None:
            raise ValueError("a server of a record source takes no forwarded records")
        self.options = options
        self._backend = backend
        # Forwarding processes must prove they know it (see _ingest); None: no /ws/ingest.
        self._ingest_secret = ingest_secret
        self._forwarders: collections.OrderedDict[int, ForwarderStats] = collections.OrderedDict()
        self._ingest_sockets: set[web.WebSocketResponse] = set()
        # Records forwarders sent that the queue had no room for.
        self.ingest_dropped = 0
        self._sock: socket.socket | None = None
        self.state = ServerState.NEW
        self._dropped = dropped
        self._keys = KeyRing(options.keys)
        self._throttle = FailureThrottle()
        # Budgets (see budget_of) with failures waiting for their answer, and how many wait.
        self._delayed: dict[str, tuple[asyncio.Lock, int]] = {}
        self._table = ConnectionTable(connection_bound(soft_nofile(), options.max_clients))
        self._handshakes: set[asyncio.Task[None]] = set()
        self._tickets = TicketBook()
        self._loopback = is_loopback_host(options.host)
        self.hub = Hub(
            history=options.history,
            client_queue_size=options.client_queue_size,
            slow_client=options.slow_client,
            max_clients=options.max_clients,
            first_id=source.first_id if source else None,
            epoch=source.epoch if source else None,
        )
        self._source = source
        self._ids: IdScheme = source.attach(self.hub) if source else CountedIds()
        self.port = 0
        self._handoff: Handoff[_wire.LogEntry | Lost] | None = None
        # The server thread and its loop (made by start()).
        self._loop_thread = LoopThread("wslogging-server")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._stopped = self._loop_thread.stopped
        # Set once the listening socket is closed (see _wait_for_release).
        self._released = threading.Event()
        self._served = False
        self._close_budget = 1.0
        self._restarting = False
        self._closer: asyncio.Task[None] | None = None

    def _authenticated(self, request: web.Request) -> None:
        """The request's connection has begun an authenticated request: no deadline."""
        protocol = request.protocol
        if isinstance(protocol, TrackedConnection) and protocol.entry is not None:
            self._table.authenticated(protocol.entry)

    async def _not_ready(self, request: web.Request, header_since: bool) -> web.Response | None:
        """With a source: a 503 while it has not loaded yet (Redis unreachable since the
        server started), since an id cannot be resolved before; then a wait (bounded) until
        it has read up to the ``since`` asked for."""
        source = self._source
        if source is None:
            return None
        try:
            async with asyncio.timeout(SOURCE_WAIT):
                await source.ready()
        except TimeoutError:
            return error(503, "unavailable", "the records' source is not readable yet; retry")
        since = since_text(request, header_since)
        if since is not None:
            await caught_up(source, since)
        return None

    def _since(self, request: web.Request, header: bool) -> int | Resume | None:
        """The resume point a request names (see :func:`since_text`), if any."""
        text = since_text(request, header)
        return None if text is None else self._ids.since(text)

    def _open(
        self, request: web.Request, *, header_since: bool
    ) -> tuple[Filter, int | Resume | None] | web.Response:
        """The filter and resume point a stream asks for, or the error response."""
        if self.hub.full:
            return error(503, "unavailable", "too many clients")
        if self.hub.clients_of(request[KEY_ID]) >= self.options.max_clients_per_key:
            return error(503, "unavailable", "too many streams for this API key")
        try:
            return filter_from_query(request.query.items()), self._since(request, header_since)
        except (FilterError, SinceError) as exc:
            return bad_request(str(exc))

    def _track(self, request: web.Request, client: Client) -> asyncio.Transport | None:
        """Note this stream's task (close() waits for it) and give ``client`` the means to
        cut its connection; returns the connection's transport."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        transport = request.transport
        client.abort = transport.abort if transport is not None else None
        return transport
