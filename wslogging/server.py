"""The embedded aiohttp server: routes, auth, and its lifecycle in a daemon thread of its own.

The app's threads reach the server only through :meth:`LogServer.submit` (a bounded janus
queue, see :class:`Handoff`); nothing else crosses between the two sides.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import errno
import fcntl
import json
import logging
import math
import os
import resource
import socket
import ssl
import struct
import termios
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from . import _ingest, _wire
from ._auth import (
    FailureThrottle,
    KeyId,
    KeyRing,
    TicketBook,
    bearer_token,
    budget_of,
    is_loopback_host,
)
from ._connections import AUTH_DEADLINE, Connection, ConnectionTable, connection_bound
from ._filters import Filter, FilterError, filter_from_query
from ._handoff import Handoff, Lost
from ._history import Gap, Held, LossMark, Resume, SinceError, parse_id
from ._hub import Batch, Client, ClientState, Hub, Item, SendPing, SendPong, SlowClientPolicy
from ._ingest import INGEST_PATH, IngestError
from ._openapi import openapi_document
from ._protocol import (
    ClientMessage,
    Liveness,
    MessageBudget,
    Ping,
    ProtocolError,
    Subscribe,
    parse_client_message,
)
from ._redact import DEFAULT_FIELDS, DEFAULT_MASK, RedactingFilter
from ._stderr import say
from ._version import __version__
from ._viewer import viewer_page

# The close code (RFC 6455's "service restart") that tells forwarders this process serves the
# port again in a moment.
RESTARTING = 1012
# Routes anyone may reach; every other one needs a key.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/openapi.json"})
# Heartbeats a write may go without progress before the client is taken for gone.
STALL_HEARTBEATS = 4
# Bytes per write call; the stall deadline applies to each (see _write_in_slices).
WRITE_SLICE = 256 * 1024
# Longest ``client_id`` a WebSocket may name.
MAX_CLIENT_ID = 128
# aiohttp's own frame limit, above ours so that we can answer instead of dropping the socket.
_WS_READ_LIMIT = 1024 * 1024
# What _consume takes from the queue at once: everything waiting, up to a quarter of the queue
# and MAX_BATCH (one batch's work, and the bytes joined for it, hold the GIL and the clients'
# attention in one go), and never fewer than MIN_BATCH.
MIN_BATCH = 1000
MAX_BATCH = 5000
# Longest rest of the consumer between two batches (see _consume).
MAX_REST = 0.01
# Default and largest page of ``GET /api/logs``.
PAGE_DEFAULT = 1000
PAGE_MAX = 10000
# How long a request waits for a source to load (see RecordSource.ready) before it gets 503.
SOURCE_WAIT = 3.0
# The ``retry:`` an SSE stream starts with: how long a browser waits before reconnecting.
SSE_RETRY_MS = 2000
# The headers of a WebSocket handshake that aiohttp reads; their values must be ASCII.
_HANDSHAKE_HEADERS = (
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
)
# Where an authenticated request keeps the KeyId of the key it came with (a typed key from
# aiohttp 3.14 on, which warns about plain string keys; a string before it).
_KEY_ID: Any = (
    web.RequestKey("wslogging_key_id", bytes) if hasattr(web, "RequestKey") else "wslogging_key_id"
)
# The close code and reason of a stream whose key was removed (SPEC §3's code for a bad key).
REVOKED = (4401, "API key revoked")
# Forwarding processes connected at once, at most; more get HTTP 503.
MAX_FORWARDERS = 1024
# Forwarders (connected or gone) whose counts /api/stats lists, the most recent ones.
FORWARDER_STATS = 256
# Seconds an HTTP keep-alive connection may sit idle after a response before it is closed.
KEEPALIVE_IDLE = 10.0
# Seconds between two sweeps for connections past their deadline (see ConnectionTable).
SWEEP_INTERVAL = 1.0
# Seconds accepting pauses when the process is out of descriptors (the app's to have).
ACCEPT_PAUSE = 1.0
# Connections accepted per wakeup at most, so that a flood cannot hold up the loop.
ACCEPT_BURST = 128
# aiohttp's request handler options, the same for the runner and every connection.
_HANDLER_OPTIONS: dict[str, Any] = {
    # access_log=None: an access line could carry a credential, and must never be streamed;
    # logger=_http_log, for the same reason (see _HttpLogScrubber).
    "access_log": None,
    "keepalive_timeout": KEEPALIVE_IDLE,
}


class _HttpLogScrubber(logging.Filter):
    """Keeps credentials out of what aiohttp's request handler logs (on :data:`_http_log`).

    aiohttp logs a request it cannot parse at ERROR with its raw request line, which may hold
    a key or a ticket, and anyone who can connect can send one: such a record becomes DEBUG
    and names the error's class only. Any other record (a bug of ours) keeps its traceback,
    with every credential in it masked. Changes the record in place: it is aiohttp's own,
    made for this call, and no handler has seen it yet.
    """

    _redactor = RedactingFilter(fields=(*DEFAULT_FIELDS, "ticket"))

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            detail = f": {type(error).__name__} (HTTP {error.code})"
            record.msg = str(record.msg) + detail.replace("%", "%%")
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        else:
            record.__dict__.update(self._redactor.filter(record).__dict__)
        return True


# The logger aiohttp's request handler uses: ours, so never streamed, and scrubbed.
_http_log = logging.getLogger("wslogging.http")
_http_log.addFilter(_HttpLogScrubber())


class _HandshakeLogScrubber(logging.Filter):
    """On aiohttp's WebSocket logger, for records of a wslogging server's thread only (the
    program may use aiohttp itself): aiohttp warns when a handshake's
    ``Sec-WebSocket-Protocol`` names nothing the server speaks, quoting it, and browsers often
    carry a token there. Such a record becomes DEBUG, its arguments masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(server.thread_id == record.thread for server in list(_servers)):
            if isinstance(record.args, tuple):
                record.args = tuple(DEFAULT_MASK for _ in record.args)
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("aiohttp.websocket").addFilter(_HandshakeLogScrubber())


class _TrackedConnection(web.RequestHandler):
    """aiohttp's protocol for one accepted connection, which tells the server's
    :class:`ConnectionTable` when it ends, and answers a request it cannot parse with the
    server's own JSON error, never with anything of the request."""

    __slots__ = ("entry", "on_lost")

    def __init__(self, manager: web.Server, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(manager, loop=loop, logger=_http_log, **_HANDLER_OPTIONS)
        self.entry: Connection | None = None
        self.on_lost: Callable[[Connection], None] | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.entry is not None and self.on_lost is not None:
            self.on_lost(self.entry)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's logs the error (see _HttpLogScrubber) and raises if an answer has begun;
        # its answer may quote the request line (and any token in it) back.
        super().handle_error(request, status, exc, message)
        if status >= 500:
            response = _error(status, "internal_error", "the server could not answer")
        else:
            response = _error(status, "bad_request", "malformed HTTP request")
        response.force_close()
        return response


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


def _error(status: int, error: str, detail: str, **headers: str) -> web.Response:
    body = json.dumps({"error": error, "detail": detail})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def _unauthorized(detail: str) -> web.Response:
    return _error(401, "unauthorized", detail, **{"WWW-Authenticate": "Bearer"})


def _bad_request(detail: str) -> web.Response:
    return _error(400, "bad_request", detail)


def _json(data: Any) -> web.Response:
    return web.Response(body=_wire.dumps(data), content_type="application/json")


def _positive(request: web.Request, name: str, maximum: float, kind: type = float) -> float | None:
    """An optional positive number query parameter (``kind``: int or float), at most
    ``maximum``."""
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        value: float = kind(text)
    except (ValueError, OverflowError):
        raise FilterError(f"{name} must be a positive {kind.__name__}") from None
    if not 0 < value <= maximum:
        raise FilterError(f"{name} must be more than 0 and at most {maximum:g}")
    return value


def _since_text(request: web.Request, header: bool) -> str | None:
    """``Last-Event-ID`` (when ``header``) wins over ``?since=``: a reconnecting EventSource
    sends the header while its URL still carries the original ``since``."""
    text = request.headers.get("Last-Event-ID") if header else None
    if not text:
        text = request.query.get("since")
    return text or None


class IdScheme(Protocol):
    """How the ids clients see relate to positions in the server's history."""

    def since(self, text: str) -> int | Resume:
        """A ``since`` / ``Last-Event-ID`` for :meth:`History.resume`; raises
        :class:`SinceError` for text that is no id."""

    def ack(self, text: str) -> int:
        """The position an acknowledged id stands for; raises :class:`SinceError`."""

    def wire_id(self, position: int) -> str:
        """The id clients see for the history position ``position``."""


class CountedIds:
    """The ids of a server that takes its records from the app: its history's positions."""

    since = ack = staticmethod(parse_id)

    @staticmethod
    def wire_id(position: int) -> str:
        return str(position)


class RecordSource(Protocol):
    """Where a server gets its records when not from the app's threads (``wslogging serve``
    reads them from a Redis stream): it runs as a task on the server's loop."""

    first_id: int
    epoch: str

    def attach(self, hub: Hub) -> IdScheme:
        """The hub the source feeds (it may count ``records_failed`` there), and the ids
        it serves in exchange."""

    async def run(self, accept: Callable[[Sequence[Held], bool], None]) -> None:
        """Pass records to ``accept`` in order, never awaiting it, until cancelled; its second
        argument says whether loss marks are among them."""

    def stats(self) -> dict[str, Any]:
        """What ``/api/stats`` adds about the source."""

    async def ready(self) -> None:
        """Return once the source has loaded what it had when the server started, against
        which ids are resolved."""

    async def reached(self, since: str) -> None:
        """Return once the source has read up to the id ``since`` (at once for text that is
        no id of the source): a client may come from another server further ahead, and
        resuming it before would send it records it has."""

    async def acked(self, client_id: str) -> str | None:
        """The id ``client_id`` last acknowledged to any server of the source, if known."""

    def ack(self, client_id: str, wire_id: str) -> None:
        """Remember (without waiting) that ``client_id`` acknowledged ``wire_id``."""


def _message(item: LossMark | Gap | dict[str, Any]) -> bytes:
    """The JSON of a gap or a protocol message."""
    if isinstance(item, LossMark):
        return item.data
    if isinstance(item, Gap):
        return _wire.dumps(_wire.gap_message(item.missed, item.reason))
    return _wire.dumps(item)


def _sse(item: Held | Gap | dict[str, Any]) -> bytes:
    """The SSE event for one queued item (records carry ``id:``; gaps are ``event: gap``, with
    the ``id:`` of the loss mark when the gap stands in the stream)."""
    if isinstance(item, _wire.LogEntry):
        return _wire.sse_event(item.data, event_id=item.wire_id)
    if isinstance(item, LossMark):
        return _wire.sse_event(item.data, event_id=item.wire_id, event="gap")
    kind = "gap" if isinstance(item, Gap) else str(item.get("type", "message"))
    return _wire.sse_event(_message(item), event=kind)


class LogServer:
    """Serves one :class:`Hub` over HTTP, SSE and WebSocket from a daemon thread.

    Lifecycle: :meth:`start` binds the socket on the caller's thread (so a port in use raises
    ``OSError`` there, at once) and starts the thread, without waiting for it: the caller may
    hold logging's module lock (``dictConfig`` does), which the new thread's asyncio may need.
    :meth:`close` is idempotent and bounded in time.
    """

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
        self._table = ConnectionTable(connection_bound(_soft_nofile(), options.max_clients))
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
        self.thread_id: int | None = None
        self._handoff: Handoff[_wire.LogEntry | Lost] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._stopped = threading.Event()
        # Set once the listening socket is closed (see _wait_for_release).
        self._released = threading.Event()
        self._served = False
        self._close_budget = 1.0
        self._restarting = False
        self._closer: asyncio.Task[None] | None = None

    # -- app side -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return base_url(self.options, self.port)

    def start(self, sock: socket.socket | None = None) -> None:
        """Bind (or take ``sock``, already listening), then serve from a new daemon thread.
        Raises ``OSError`` if the port cannot be bound and ``ssl.SSLError`` / ``OSError`` for
        unusable certificate files."""
        if self.state is not ServerState.NEW:
            raise RuntimeError("LogServer.start() may be called once; make a new server")
        ssl_context = self._ssl_context()
        if sock is None:
            try:
                sock = bind_socket(self.options.host, self.options.port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not _wait_for_release(self.options):
                    raise
                # An earlier server of this process has just let the port go.
                sock = bind_socket(self.options.host, self.options.port)
        self._sock = sock
        _servers.add(self)
        self.port = sock.getsockname()[1]
        # Made here, on the caller's thread: asyncio logs while making a loop, and in the
        # server thread that log call could wait for the lock dictConfig holds around us.
        self._loop = new_event_loop()
        if self._source is None:
            self._handoff = Handoff(
                self.options.queue_size,
                self._loop,
                keep_level=self.options.keep_level,
                mark=True,
            )
        self.state = ServerState.RUNNING
        self._thread = threading.Thread(
            target=self._run, args=(sock, ssl_context), name="wslogging-server", daemon=True
        )
        self._thread.start()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.options.ssl_certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.options.ssl_certfile, self.options.ssl_keyfile)
        return context

    def submit(self, entry: _wire.LogEntry) -> bool:
        """Hand ``entry`` to the server without waiting (any thread). ``False`` when the
        queue is full or the server is not running: the caller counts the drop."""
        handoff = self._handoff
        if handoff is None or self.state is not ServerState.RUNNING:
            return False
        return handoff.put(entry)

    def lost(self, count: int) -> None:
        """Records lost before they reached :meth:`submit` (any thread, never waiting):
        clients are told with ``gap(overflow)`` at this place in the stream."""
        handoff = self._handoff
        if handoff is not None and self.state is ServerState.RUNNING:
            handoff.lost(count, "overflow")

    def set_keys(self, keys: tuple[str, ...]) -> None:
        """Accept ``keys`` from now on (any thread); streams opened with any other key are
        closed soon after: WebSockets with 4401, SSE streams ended. Raises ``ValueError`` for
        no keys, leaving the old ones in force.

        The swap is one assignment, so every request authenticated after this returns sees
        the new keys; the sweep runs on the loop after any connection already past its check
        has registered, so none slips through.
        """
        self._keys = KeyRing(keys)
        loop = self._loop
        if loop is None or self.state is not ServerState.RUNNING:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(self._close_revoked)

    def reconfigure(self, options: ServerOptions, dropped: Callable[[], int]) -> list[str]:
        """Serve on with ``options`` from now on (the same host, port and TLS files as now),
        counting drops with ``dropped``: what a handler adopting this server after a
        reconfiguration asks (see :class:`wslogging.WebSocketHandler`). History, epoch,
        clients and forwarders stay. Keys are swapped as :meth:`set_keys` does; the limits on
        clients, their queues and the heartbeat apply to connections opened from now on. The
        names of the options that differ and cannot change while serving (``history``,
        ``queue_size``, ``keep_level``: sizes of what is held) are returned; they keep their
        values until the server starts afresh."""
        old = self.options
        kept = [
            name
            for name in ("history", "queue_size", "keep_level")
            if getattr(old, name) != getattr(options, name)
        ]
        self.options = dataclasses.replace(
            options, **{name: getattr(old, name) for name in kept}, port=old.port
        )
        self._dropped = dropped
        self.hub.client_queue_size = options.client_queue_size
        self.hub.slow_client = options.slow_client
        self.hub.max_clients = options.max_clients
        self._table.bound = connection_bound(_soft_nofile(), options.max_clients)
        self.set_keys(options.keys)  # streams of keys no longer accepted are closed
        return kept

    def close(self, timeout: float, restarting: bool = False) -> None:
        """Deliver what is queued, close WebSockets with 1001 and end SSE streams, then stop
        the thread, all within about ``timeout`` seconds. Idempotent. ``restarting``: this
        process serves the port again in a moment (a reconfiguration that could not keep
        this server): forwarders are closed with 1012 (service restart) rather than 1001, and
        those this process started leave the port to it (see :class:`Forwarder`)."""
        if self.state is not ServerState.RUNNING:
            return
        self.state = ServerState.CLOSED
        self._restarting = restarting
        # Under logging's module lock (dictConfig closing the handlers it replaces) the server
        # thread may be waiting for that lock to log, so this thread must not wait for it:
        # delivery then goes on after we return.
        may_wait = threading.get_ident() != self.thread_id and not holds_logging_lock()
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._begin_shutdown, timeout)
        except RuntimeError:  # the loop is already closed
            return
        # The budget covers delivery; closing the sockets afterwards takes up to a second more.
        if may_wait and not self._stopped.wait(timeout + 2.0):
            say("the server did not stop in time")

    # -- server thread --------------------------------------------------------------------

    def _run(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        self.thread_id = threading.get_ident()  # records logged here are never streamed
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._serve(sock, ssl_context))
            except Exception as exc:
                say(f"the server could not start: {exc!r}")
                self.state = ServerState.CLOSED  # later records are counted as dropped
                return
            self._served = True
            if self.state is not ServerState.RUNNING:  # closed while we were starting
                self._begin_shutdown(self._close_budget)
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                sock.close()
                self._released.set()
                self._stopped.set()

    async def _serve(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_get("/api/logs", self._logs)
        app.router.add_get("/api/get-logs-stream", self._sse)
        app.router.add_get("/ws/logs", self._ws)
        app.router.add_post("/api/ticket", self._ticket)
        if self._ingest_secret is not None:
            app.router.add_get(INGEST_PATH, self._ingest)
        # handler_cancellation: a client that disconnects ends its handler (and frees its
        # slot) at once, rather than at the next write.
        self._runner = web.AppRunner(
            app,
            logger=_http_log,
            shutdown_timeout=1.0,
            handler_cancellation=True,
            **_HANDLER_OPTIONS,
        )
        await self._runner.setup()
        # Accepted here rather than by a site of aiohttp's, so that every connection is in
        # the table from accept on, a TLS handshake included (see _admit).
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._accept_ready, sock, ssl_context)
        self._sweeper = asyncio.create_task(self._sweep())
        self._consumer = asyncio.create_task(
            self._consume() if self._source is None else self._read_source(self._source)
        )

    # -- connections ----------------------------------------------------------------------

    def _accept_ready(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        """Accept what the listening socket has (a burst at most) into the table."""
        for _ in range(ACCEPT_BURST):
            try:
                accepted, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the peer gave up while waiting in the backlog
            except OSError:
                # Out of descriptors (EMFILE: the app's, and it keeps them) or memory, or
                # worse: the peers wait in the kernel's backlog a moment (as with asyncio).
                self._pause_accepting(sock, ssl_context)
                return
            self._admit(accepted, ssl_context)

    def _pause_accepting(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())

        def resume() -> None:
            if self.state is ServerState.RUNNING and sock.fileno() >= 0:
                loop.add_reader(sock.fileno(), self._accept_ready, sock, ssl_context)

        loop.call_later(ACCEPT_PAUSE, resume)

    def _admit(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        """Serve ``sock`` if the table takes it (see :class:`ConnectionTable`), else close it."""
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        protocol = _TrackedConnection(server, loop)

        def close() -> None:
            # The transport once there is one; before (a TLS handshake), the socket itself:
            # shut down, its transport sees the end and closes it.
            if protocol.transport is not None:
                protocol.transport.abort()
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        entry = self._table.opened(loop.time(), close, sock.fileno())
        if entry is None:
            sock.close()
            return
        protocol.entry, protocol.on_lost = entry, self._table.closed
        sock.setblocking(False)
        task = loop.create_task(self._handshake(sock, protocol, ssl_context))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(
        self,
        sock: socket.socket,
        protocol: _TrackedConnection,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=ssl_context,
                ssl_handshake_timeout=AUTH_DEADLINE if ssl_context else None,
            )
        except (Exception, asyncio.CancelledError):
            # A failed TLS handshake (asyncio has closed the socket): the protocol never
            # heard of the connection, so it is taken off the table here.
            assert protocol.entry is not None
            self._table.closed(protocol.entry)

    def _authenticated(self, request: web.Request) -> None:
        """The request's connection has begun an authenticated request: no deadline."""
        protocol = request.protocol
        if isinstance(protocol, _TrackedConnection) and protocol.entry is not None:
            self._table.authenticated(protocol.entry)

    async def _sweep(self) -> None:
        """Close the connections past their deadline, once every :data:`SWEEP_INTERVAL`."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self._table.sweep(loop.time())

    async def _consume(self) -> None:
        """Move records from the app's queue into the hub, in batches, never awaiting a
        client.

        Each batch is everything waiting (up to a quarter of the queue, at most
        :data:`MAX_BATCH`), taken under one lock. Under an error storm the app's thread holds
        the GIL but for the switch interval, and every system call this thread makes (a write
        to a client, the loop's poll) hands it back to the app for up to that long (5 ms by
        default): the records that come meanwhile must go out with the next batch, however
        many they are, or the queue overflows while the server sleeps.

        Paced by its own cost: after a batch it rests as long as the batch took (at most
        :data:`MAX_REST` seconds) before it takes the next. Fanning a record out to a thousand
        clients costs a thousand writes whether it goes alone or with others, so under load
        the records that come meanwhile go out together, in one write per client, and the
        server spends at most about half its time writing; with few clients the rest is
        next to nothing.
        """
        handoff = self._handoff
        assert handoff is not None
        get_batch = handoff.get_batch
        accept = self._accept
        clock = time.thread_time  # the work done, not the time spent waiting for the GIL
        # [] once closing, and everything queued has been accepted.
        batch = max(MIN_BATCH, min(MAX_BATCH, self.options.queue_size // 4))
        while entries := await get_batch(batch):
            began = clock()
            if handoff.marked:
                accept([_mark(e) if isinstance(e, Lost) else e for e in entries], marked=True)
            else:
                accept(entries)  # type: ignore[arg-type]  # no Lost without marked
            # Also lets the writers run between batches.
            await asyncio.sleep(min(clock() - began, MAX_REST))

    async def _read_source(self, source: RecordSource) -> None:
        """Run ``source``; should it fail (a bug: it handles its own outages), say so and go
        on serving what is held."""
        try:
            await source.run(self._accept)
        except Exception as exc:
            say(f"reading records stopped: {exc!r}")

    def _close_revoked(self) -> None:
        """Close every stream whose key is no longer accepted (server thread)."""
        for client in list(self.hub.clients):
            if client.key not in self._keys:
                client.kick(*REVOKED)

    def _accept(self, entries: Sequence[Held], marked: bool = False) -> None:
        """:meth:`Hub.accept`, guarded: a bug there must cost one batch, not the stream."""
        try:
            self.hub.accept(entries, marked)
        except Exception as exc:
            self.hub.records_failed += len(entries)
            say(f"{len(entries)} record(s) could not be served: {exc!r}")

    def _begin_shutdown(self, budget: float) -> None:
        """Start :meth:`_shutdown` once, however many times it is asked for; if the server
        is still starting, :meth:`_run` starts it as soon as it has."""
        self._close_budget = budget
        if self._served and self._closer is None and self._loop is not None:
            self._closer = self._loop.create_task(self._shutdown(budget))

    async def _shutdown(self, budget: float) -> None:
        try:
            await self._close_everything(budget)
        finally:
            asyncio.get_running_loop().stop()

    async def _close_everything(self, budget: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        # The port first: a handler configured anew on it can bind it at once.
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._released.set()
        self._sweeper.cancel()
        # Forwarders next, so that one of them takes the port over while we finish.
        ingest = [
            asyncio.ensure_future(self._close_ingest(ws, self._restarting))
            for ws in self._ingest_sockets
        ]
        if ingest:
            await asyncio.wait(ingest, timeout=min(1.0, budget))
        if self._handoff is None:
            self._consumer.cancel()  # a source: what it has accepted is all there is to send
        else:
            # Later submits fail fast; the consumer drains what is queued at its usual pace
            # (so clients that keep up lose nothing), then stops.
            self._handoff.shutdown()
        await asyncio.wait([self._consumer], timeout=max(0.0, deadline - loop.time()))
        self.hub.finish_all(1001, "server shutting down")
        if self._connections:
            await asyncio.wait(self._connections, timeout=max(0.0, deadline - loop.time()))
        for client in list(self.hub.clients):
            if client.abort is not None:
                client.abort()
        await self._runner.cleanup()
        # Whatever is left: TLS connections waiting for the peer's close_notify, which an
        # idle peer (a browser's preconnected socket, say) never sends, and those still in
        # their TLS handshake. Once the loop stops their sockets would be left open.
        # Everything due has been sent by now, so cut them off.
        self._table.close_all()
        if self._handshakes:
            await asyncio.wait(self._handshakes, timeout=1.0)
        for task in self._handshakes:
            task.cancel()
        await asyncio.sleep(0)  # the aborted transports close their sockets

    # -- auth and guards ------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # The header itself: aiohttp's request.host may fall back to a blocking DNS lookup.
        host = request.headers.get("Host")
        if self._loopback and host is not None and not is_loopback_host(host):
            # DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends its own Host.
            return _error(403, "forbidden", "Host must be a loopback name")
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        # These answer a bad key (or ingest proof) themselves (see _ws and _ingest).
        if request.path not in ("/ws/logs", INGEST_PATH):
            problem = self._authenticate(request)
            if problem is not None:
                return await self._throttled(request) or _unauthorized(problem)
        return await handler(request)

    def _authenticate(self, request: web.Request) -> str | None:
        """Why the request is not authorized, or ``None`` if it is: the key it came with is
        then noted on it (:data:`_KEY_ID`) and its connection is authenticated. The reasons
        name the problem, never the credential. The key is checked before anything is
        counted or waited for: a right key is never held back by anyone's wrong ones."""
        key_id, problem = self._credential(request)
        if key_id is None:
            return problem
        request[_KEY_ID] = key_id
        self._authenticated(request)
        return None

    async def _throttled(self, request: web.Request) -> web.Response | None:
        """Count a failed authentication against the request's budget (see
        :class:`FailureThrottle`). Within the budget, ``None``: the caller refuses it at once
        (401, or 4401 after a WebSocket upgrade). Past it, a 429 with ``Retry-After`` (a
        WebSocket before the upgrade), given after the throttle's delay and one at a time
        per budget, so that guessing slows down.

        Bounded: a request waiting here holds its connection, which counts against the
        connection bound and is closed at its deadline like any other unauthenticated one;
        the waiting budgets are forgotten as soon as nothing waits for them.
        """
        budget = budget_of(request.remote or "")
        delay = self._throttle.failed(budget, time.monotonic())
        if not delay:
            return None
        lock, waiting = self._delayed.get(budget) or (asyncio.Lock(), 0)
        self._delayed[budget] = (lock, waiting + 1)
        try:
            async with lock:
                await asyncio.sleep(delay)
        finally:
            lock, waiting = self._delayed[budget]
            if waiting > 1:
                self._delayed[budget] = (lock, waiting - 1)
            else:
                del self._delayed[budget]
        retry = self._throttle.retry_after(budget, time.monotonic())
        return _error(
            429,
            "too_many_requests",
            "too many failed authentications from this address",
            **{"Retry-After": str(max(1, math.ceil(retry)))},
        )

    def _credential(self, request: web.Request) -> tuple[KeyId | None, str]:
        """The key the request came with, or ``None`` and why not."""
        keys = self._keys  # one ring for the whole check, though another thread may swap it
        token = bearer_token(request.headers.get("Authorization"))
        if token is None and self.options.allow_query_token:
            token = request.query.get("access_token") or None
        if token is not None:
            return keys.match(token), "invalid API key"
        ticket = request.query.get("ticket")
        if ticket and request.method == "GET":
            key_id = self._tickets.redeem(ticket, time.monotonic())
            # A ticket issued for a key removed since is as dead as the key.
            return (key_id if key_id in keys else None), "invalid or expired ticket"
        return None, "missing API key"

    # -- routes ---------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        page = viewer_page()  # read from the package once, then cached
        return web.Response(
            body=page.html,
            content_type="text/html",
            charset="utf-8",
            headers=page.headers(request.headers.get("Host")),
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _openapi(self, request: web.Request) -> web.Response:
        # The origin the client used: what a GPT action or a script should call back.
        host = request.headers.get("Host") or f"{self.options.host}:{self.port}"
        return _json(openapi_document(f"{request.scheme}://{host}"))

    async def _stats(self, request: web.Request) -> web.Response:
        stats: dict[str, Any] = self.hub.stats()
        forwarders = [f.to_json() for f in self._forwarders.values()]
        stats["records_dropped"] = (
            self._dropped() + self.ingest_dropped + sum(f["records_dropped"] for f in forwarders)
        )
        stats["pid"] = os.getpid()
        stats["forwarders"] = forwarders
        stats["queue_size"] = self._handoff.qsize() if self._handoff else 0
        stats["epoch"] = self.hub.epoch
        stats.update(self._source.stats() if self._source else {"backend": self._backend})
        stats.update(self._table.stats())  # connections_open, _limit, _refused, _timed_out
        return _json(stats)

    async def _ticket(self, request: web.Request) -> web.Response:
        ticket = self._tickets.issue(time.monotonic(), request[_KEY_ID])
        return _json({"ticket": ticket, "expires_in": int(self._tickets.lifetime)})

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
            return _error(503, "unavailable", "the records' source is not readable yet; retry")
        since = _since_text(request, header_since)
        if since is not None:
            await _caught_up(source, since)
        return None

    async def _logs(self, request: web.Request) -> web.Response:
        if unready := await self._not_ready(request, header_since=False):
            return unready
        try:
            flt = filter_from_query(request.query.items())
            since = self._since(request, header=False)
            limit = int(_positive(request, "limit", PAGE_MAX, int) or PAGE_DEFAULT)
        except (FilterError, SinceError) as exc:
            return _bad_request(str(exc))
        history = self.hub.history
        gap: Gap | None = None
        if since is None:
            records, last = history.latest(flt, limit), history.last_id
        else:
            start, gap = history.resume(since, flt)
            records, last = history.page(start, history.last_id, flt, limit)
        # The records' JSON is spliced in as encoded once for everyone, not built again. Loss
        # marks in the page go to "gaps", each with its id: where in the page it stands.
        body = b"".join(
            (
                b'{"records":[',
                b",".join(e.data for e in records if type(e) is not LossMark),
                b'],"last_id":"',
                self._ids.wire_id(last).encode(),
                b'","gap":',
                b"null" if gap is None else _message(gap),
                b',"gaps":[',
                b",".join(e.data for e in records if type(e) is LossMark),
                b"]}",
            )
        )
        return web.Response(body=body, content_type="application/json")

    def _since(self, request: web.Request, header: bool) -> int | Resume | None:
        """The resume point a request names (see :func:`_since_text`), if any."""
        text = _since_text(request, header)
        return None if text is None else self._ids.since(text)

    def _open(
        self, request: web.Request, *, header_since: bool
    ) -> tuple[Filter, int | Resume | None] | web.Response:
        """The filter and resume point a stream asks for, or the error response."""
        if self.hub.full:
            return _error(503, "unavailable", "too many clients")
        if self.hub.clients_of(request[_KEY_ID]) >= self.options.max_clients_per_key:
            return _error(503, "unavailable", "too many streams for this API key")
        try:
            return filter_from_query(request.query.items()), self._since(request, header_since)
        except (FilterError, SinceError) as exc:
            return _bad_request(str(exc))

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        if unready := await self._not_ready(request, header_since=True):
            return unready
        opened = self._open(request, header_since=True)
        if isinstance(opened, web.Response):
            return opened
        try:
            limit = _positive(request, "limit", 1e9, int)
            duration = _positive(request, "timeout", 1e9)
        except FilterError as exc:
            return _bad_request(str(exc))
        heartbeat = self.options.heartbeat
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        # Registered before the first await, so that max_clients holds however many requests
        # arrive at once.
        client = self.hub.connect(*opened, key=request[_KEY_ID])
        sent = 0
        try:
            await response.prepare(request)
            self._track(request, client)
            await response.write(_wire.sse_retry(SSE_RETRY_MS))
            async with asyncio.timeout(duration) as deadline:
                while True:
                    items = await client.next_batch(heartbeat)
                    if items is None:
                        break
                    chunk = []
                    for item in items:
                        assert not isinstance(item, SendPing | SendPong)  # WebSocket only
                        chunk.append(_sse(item))
                        if isinstance(item, _wire.LogEntry):
                            sent += 1
                            if limit is not None and sent >= limit:
                                break
                    if not chunk:
                        # Caught up: the ping carries how far the stream was examined, which
                        # a reconnecting EventSource then sends back as Last-Event-ID.
                        last = self._ids.wire_id(self.hub.history.last_id)
                        chunk.append(_wire.sse_ping(last))
                    await _write_in_slices(
                        response.write, b"".join(chunk), STALL_HEARTBEATS * heartbeat
                    )
                    if limit is not None and sent >= limit:
                        break
            await response.write_eof()
        except TimeoutError:
            if deadline.expired():  # the client's own ?timeout=: a normal end
                await response.write_eof()
            else:
                client.cut_off()
        except (ConnectionError, RuntimeError):
            pass  # the client went away (aiohttp raises either, depending on when)
        finally:
            client.closed()
        return response

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = self.options.allowed_origins
        if allowed is not None and origin is not None and origin not in allowed:
            return _error(403, "forbidden", "Origin not allowed")
        for name in _HANDSHAKE_HEADERS:
            if not all(value.isascii() for value in request.headers.getall(name, ())):
                # aiohttp fails on these with a 500 and a traceback, not a 400.
                return _bad_request(f"{name} must be ASCII")
        problem = self._authenticate(request)
        client = None
        if problem is not None and (refused := await self._throttled(request)):
            return refused
        if problem is None:
            if unready := await self._not_ready(request, header_since=False):
                return unready
            client_id = request.query.get("client_id") or None
            if client_id is not None and len(client_id) > MAX_CLIENT_ID:
                return _bad_request(f"client_id is longer than {MAX_CLIENT_ID} characters")
            # Asked of the source before _open, so that nothing is awaited between the
            # checks there and the client's registration.
            stored = await self._stored_ack(client_id, request)
            opened = self._open(request, header_since=False)
            if isinstance(opened, web.Response):
                return opened
            flt, since = opened
            if since is None and client_id is not None:
                since = self.hub.acked(client_id)  # resume right after the last ack
                if since is None and stored is not None:
                    with contextlib.suppress(SinceError):
                        since = self._ids.since(stored)
            # Registered before the first await, so that max_clients holds however many
            # handshakes arrive at once.
            client = self.hub.connect(flt, since, self._hello(flt), request[_KEY_ID])
            client.client_id = client_id
        # Pings are ours (see _ws_writer), not aiohttp's: its heartbeat expects the pong within
        # half a heartbeat of the ping, which a healthy client still reading a backlog misses.
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=_WS_READ_LIMIT)
        try:
            await ws.prepare(request)
            if client is None:
                # Accepted, then closed at once: a browser sees the reason; no record is sent.
                await ws.close(code=4401, message=str(problem).encode())
            else:
                await self._ws_session(ws, client, self._track(request, client))
        except ConnectionError:
            pass  # the peer left during the handshake: nobody to answer (nor to log about)
        finally:
            if client is not None:
                client.closed()
        return ws

    async def _ws_session(
        self, ws: web.WebSocketResponse, client: Client, transport: asyncio.Transport | None
    ) -> None:
        """Read the client's messages while :meth:`_ws_writer` sends to it."""
        writer = asyncio.create_task(self._ws_writer(ws, client, transport))
        try:
            budget = MessageBudget()
            async for frame in ws:
                if frame.type is WSMsgType.ERROR:
                    break  # aiohttp has closed the connection (e.g. a frame over its limit)
                if not budget.take(time.monotonic()):
                    client.kick(1008, "too many messages")
                    break
                if frame.type is WSMsgType.PONG:
                    if client.liveness is not None:
                        client.liveness.pong()
                    continue
                if frame.type is WSMsgType.PING:
                    client.send_control(SendPong(frame.data))
                    continue
                try:
                    if frame.type is not WSMsgType.TEXT:
                        raise ProtocolError("send JSON text messages")
                    self._on_message(client, parse_client_message(frame.data, self._ids.ack))
                except ProtocolError as exc:
                    if not budget.error():
                        client.kick(1008, "too many malformed messages")
                        break
                    client.send_control({"type": "error", "detail": str(exc)})
            if client.state is ClientState.FINISHING:
                await writer  # it closes the socket with the code the client was kicked with
        finally:
            writer.cancel()

    async def _stored_ack(self, client_id: str | None, request: web.Request) -> str | None:
        """The id ``client_id`` last acknowledged to another server of the source (or to
        an earlier run of this one), when this one does not know it and it matters."""
        source = self._source
        if source is None or client_id is None or request.query.get("since"):
            return None
        if self.hub.acked(client_id) is not None:
            return None
        stored = await source.acked(client_id)
        if stored is not None:
            await _caught_up(source, stored)
        return stored

    # -- forwarding processes (see _ingest) ---------------------------------------------

    async def _ingest(self, request: web.Request) -> web.StreamResponse:
        """One forwarding process: the handshake, then its batches into the hand-off.

        Untrusting: every frame is bounded (:data:`_ingest.MAX_FRAME`) and checked; a
        malformed one is answered with an ``error`` frame and changes nothing, and after
        :data:`_ingest.MAX_ERRORS` of them the connection is closed with 1008. Records that
        find the queue full are dropped and counted (``records_dropped``); reading never
        waits for anything but the socket, so a forwarder cannot stall the server.
        """
        secret = self._ingest_secret
        assert secret is not None
        try:
            nonce = _ingest.check_nonce(request.query.get("nonce"))
        except IngestError as exc:
            return _bad_request(str(exc))
        if len(self._ingest_sockets) >= MAX_FORWARDERS:
            return _error(503, "unavailable", "too many forwarding processes")
        ws = web.WebSocketResponse(
            autoping=True, compress=False, max_msg_size=_ingest.MAX_FRAME + 1024
        )
        stats: ForwarderStats | None = None
        orderly = False
        try:
            await ws.prepare(request)
            challenge = _ingest.new_nonce()
            await ws.send_str(
                _ingest.challenge_message(
                    challenge, os.getpid(), _ingest.server_proof(secret, nonce)
                )
            )
            frame = await ws.receive(timeout=_ingest.HANDSHAKE_TIMEOUT)
            if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return ws  # a forwarder that found our proof wrong (a stale file) goes away
            try:
                if frame.type is not WSMsgType.TEXT:
                    raise IngestError("expected an 'auth' message")
                auth = _ingest.parse_auth(frame.data)
                if not _ingest.proof_matches(
                    auth.proof, _ingest.forwarder_proof(secret, challenge)
                ):
                    raise IngestError("invalid ingest secret")
            except IngestError as exc:
                await ws.close(code=4401, message=str(exc).encode())
                return ws
            # Counted against MAX_FORWARDERS once proven: a handshake nobody finishes
            # (anyone may start one) must not take a forwarder's place.
            self._authenticated(request)
            self._ingest_sockets.add(ws)
            stats = self._forwarder_stats(auth.pid)
            await ws.send_str(_ingest.ACCEPTED)
            orderly = await self._ingest_frames(ws, stats)
        except (ConnectionError, TimeoutError, RuntimeError):
            pass  # the forwarder went away, or never finished its handshake
        finally:
            self._ingest_sockets.discard(ws)
            if stats is not None:
                stats.connected = False
                if not orderly and self.state is ServerState.RUNNING:
                    # What it still held (and how much it dropped since it last said) is
                    # lost with it.
                    self._handoff.lost(None, "source")  # type: ignore[union-attr]
        return ws

    async def _ingest_frames(self, ws: web.WebSocketResponse, stats: ForwarderStats) -> bool:
        """Take one forwarder's batches and drop counts until its connection ends; whether it
        ended in order (the forwarder's close frame, or ours).

        Records the forwarder reports it dropped are told to clients as ``gap(source)`` at this
        place in the stream; so is a connection that ends without the forwarder's close (its
        process killed, say), with the count unknown: what it still held is lost.
        """
        handoff = self._handoff
        assert handoff is not None
        put = handoff.put
        errors = 0
        while True:
            frame = await ws.receive()
            try:
                if frame.type is WSMsgType.BINARY:
                    entries, bad = _wire.unpack_entries(frame.data)
                    for entry in entries:
                        if put(entry):
                            stats.records_received += 1
                        else:
                            self.ingest_dropped += 1
                    if bad:
                        self.hub.records_failed += bad  # counted as records_failed
                        raise IngestError(f"{bad} malformed record(s) skipped")
                elif frame.type is WSMsgType.TEXT:
                    count = _ingest.parse_dropped(frame.data)
                    if count > stats.records_dropped:
                        handoff.lost(count - stats.records_dropped, "source")
                        stats.records_dropped = count
                elif frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING):
                    return True
                elif frame.type in (WSMsgType.CLOSED, WSMsgType.ERROR):
                    return False  # the end of the stream without a close frame, or garbage
                else:
                    raise IngestError("expected a batch (binary) or a 'dropped' message")
            except (IngestError, ValueError, RecursionError) as exc:
                errors += 1
                if errors > _ingest.MAX_ERRORS:
                    await ws.close(code=1008, message=b"too many malformed frames")
                    return True
                await ws.send_str(_ingest.error_message(str(exc)[:200]))

    def _forwarder_stats(self, pid: int) -> ForwarderStats:
        """The stats entry for ``pid``, made anew (a pid reconnecting after a takeover
        keeps its counts), newest last; only the latest :data:`FORWARDER_STATS` are kept."""
        stats = self._forwarders.pop(pid, None) or ForwarderStats(pid)
        stats.connected = True
        self._forwarders[pid] = stats
        while len(self._forwarders) > FORWARDER_STATS:
            self._forwarders.popitem(last=False)
        return stats

    @staticmethod
    async def _close_ingest(ws: web.WebSocketResponse, restarting: bool = False) -> None:
        with contextlib.suppress(Exception):
            if restarting:
                await ws.close(code=RESTARTING, message=b"server restarting")
            else:
                await ws.close(code=1001, message=b"server shutting down")

    def abandon_after_fork(self) -> None:
        """In a process forked from this one: let go of the sockets inherited from it (the
        listening one, and every connection), so that the port is freed, and the clients
        see the close, when the parent goes; and never serve or touch the loop here.

        Each socket's file descriptor is pointed at ``/dev/null`` rather than closed: the
        socket objects (and the parent's event loop that owns them) stay behind untouched,
        and a number they may close one day is never one this process has reused. The
        loop itself is never closed here: its epoll instance is shared with the parent.
        """
        self.state = ServerState.CLOSED
        self._handoff = None
        descriptors = [c.fileno for c in self._table.connections()]
        if self._sock is not None:
            descriptors.append(self._sock.fileno())
        release_descriptors(descriptors)

    def _position(self) -> dict[str, Any]:
        """How far the stream has been examined for a client that is all caught up: every
        record up to ``last_id`` was sent to it or did not match its filter, so it resumes
        after that (SPEC §5), and a gap it hears later counts nothing it has passed."""
        return {"type": "position", "last_id": self._ids.wire_id(self.hub.history.last_id)}

    def _hello(self, flt: Filter) -> dict[str, Any]:
        return {
            "type": "hello",
            "server": f"wslogging/{__version__}",
            "epoch": self.hub.epoch,
            "last_id": self._ids.wire_id(self.hub.history.last_id),
            "filter": flt.to_json(),
        }

    async def _ws_writer(
        self, ws: web.WebSocketResponse, client: Client, transport: asyncio.Transport | None
    ) -> None:
        """The one task that writes to this socket: records, gaps and replies, in order.

        Liveness (see :class:`Liveness`): it pings once a heartbeat; a peer that has neither
        answered nor taken any bytes two heartbeats later is gone (a half-open connection)
        and is cut off. A write that makes no progress for :data:`STALL_HEARTBEATS`
        heartbeats (a peer that stopped reading altogether) cuts it off too. A client that
        reads slowly but reads is never cut off: it loses its oldest records per
        ``slow_client`` instead. Progress is read from the kernel's send queue on Linux;
        elsewhere only the pong counts.
        """
        heartbeat = self.options.heartbeat
        loop = asyncio.get_running_loop()
        liveness = client.liveness = Liveness(heartbeat, loop.time())
        if transport is not None:
            client.write_now = _writer_now(ws, transport)
        try:
            while True:
                items = await client.next_batch(heartbeat)
                if items is None:
                    break
                if not items and client.filter.filtering:
                    items.append(self._position())
                now = loop.time()
                if liveness.gone(now, lambda: _unsent(transport)):
                    client.cut_off()
                    return
                if liveness.due(now):
                    liveness.pinged(now, _unsent(transport))
                    items.append(SendPing())  # after the batch, so it measures the backlog
                await self._ws_send(ws, items, STALL_HEARTBEATS * heartbeat)
            await ws.close(code=client.close_code, message=client.close_reason.encode())
        except TimeoutError:
            client.cut_off()
        except (ConnectionError, RuntimeError):
            pass  # the peer is gone; the reading side notices and cleans up

    @staticmethod
    async def _ws_send(ws: web.WebSocketResponse, items: list[Item], stall: float) -> None:
        """Send ``items`` in order, the text frames of a batch in one write.

        One write (one system call) per batch rather than per record: each system call lets
        the app's threads take the GIL, and a writer that makes one per record is starved by
        an app that logs in a tight loop. The frames are framed here (RFC 6455 §5.2: a server
        does not mask, so a frame is its header and the record's bytes) and written through
        the response's own stream, which waits (drains) as aiohttp's writes do. Raises
        ``TimeoutError`` if the peer takes nothing for ``stall`` seconds.
        """

        async def write(data: bytes | memoryview) -> None:
            # StreamResponse.write: WebSocketResponse.write refuses raw bytes on purpose.
            await web.StreamResponse.write(ws, data)

        frames: list[bytes] = []
        for item in items:
            if isinstance(item, SendPing | SendPong):
                if frames:
                    await _write_in_slices(write, b"".join(frames), stall)
                    frames = []
                async with asyncio.timeout(stall):
                    await (ws.ping() if isinstance(item, SendPing) else ws.pong(item.data))
                continue
            data = item.data if isinstance(item, _wire.LogEntry | LossMark) else _message(item)
            frames += (_wire.ws_text_frame_header(len(data)), data)
        if frames:
            await _write_in_slices(write, b"".join(frames), stall)

    def _on_message(self, client: Client, message: ClientMessage) -> None:
        """Act on one well-formed client message (SPEC §5)."""
        if isinstance(message, Ping):
            client.send_control({"type": "pong"})
        elif isinstance(message, Subscribe):
            client.set_filter(message.filter)
            client.send_control({"type": "subscribed", "filter": message.filter.to_json()})
        elif client.client_id is None:
            raise ProtocolError("ack needs a client_id in the connection URL")
        else:
            try:
                self.hub.ack(client.client_id, message.id)
            except ValueError as exc:
                raise ProtocolError(str(exc)) from None
            if self._source is not None:
                acked = self.hub.acked(client.client_id)
                assert acked is not None
                self._source.ack(client.client_id, self._ids.wire_id(acked))

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


def _writer_now(ws: web.WebSocketResponse, transport: asyncio.Transport) -> Callable[[Batch], bool]:
    """:attr:`Client.write_now` for a WebSocket: the batch's frames, in one write straight
    to the transport, only while it has nothing buffered (the peer keeps up) and the socket
    is open; otherwise ``False``, and the writer (with its deadlines) takes over.

    Called only while the connection's writer is idle, so nothing else is being written: the
    frames go out whole and in order. This is how one record reaches a thousand clients
    without a thousand task switches.
    """

    def write_now(batch: Batch) -> bool:
        if ws.closed or transport.is_closing() or transport.get_write_buffer_size():
            return False
        transport.write(batch.ws_frames())  # joined once for every client that gets it all
        return True

    return write_now


def _mark(lost: Lost) -> LossMark:
    """The loss mark that tells clients of ``lost``, at its place in the stream."""
    return LossMark(lost.count, lost.reason, lost.levels)


def _soft_nofile() -> int | None:
    """The process's soft limit on open descriptors; ``None`` where unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def release_descriptors(descriptors: list[int]) -> None:
    """Point each of ``descriptors`` at ``/dev/null`` (see :meth:`LogServer.abandon_after_fork`)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in descriptors:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


async def _caught_up(source: RecordSource, wire_id: str) -> None:
    """Wait, at most :data:`SOURCE_WAIT` seconds, until ``source`` has read as far as
    ``wire_id`` (a client coming from a server of the source that is further ahead), so that
    it is sent nothing twice; after that, go on regardless."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SOURCE_WAIT):
            await source.reached(wire_id)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The server's loop: uvloop's when ``WSLOGGING_UVLOOP=1`` is set and uvloop is installed
    (the ``fast`` extra does not install it), else asyncio's own.

    Opt-in: uvloop cuts the server's own CPU per client, but it is another C extension in
    someone else's process, and asyncio's loop is what every test runs on by default.
    """
    if os.environ.get("WSLOGGING_UVLOOP", "").strip() == "1":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _unsent(transport: asyncio.BaseTransport | None) -> int | None:
    """Bytes written to ``transport`` that the peer has not taken yet: asyncio's buffer plus
    the kernel's send queue (Linux's SIOCOUTQ); ``None`` where that cannot be known."""
    if transport is None or not hasattr(termios, "TIOCOUTQ"):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        buffered = transport.get_write_buffer_size()  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return None
    return int(struct.unpack("i", queued)[0]) + int(buffered)


async def _write_in_slices(
    write: Callable[[bytes | memoryview], Awaitable[None]], data: bytes, stall: float
) -> None:
    """Write ``data`` in slices of :data:`WRITE_SLICE` bytes, each within ``stall`` seconds.

    The deadline is per slice, so it measures progress: a reader that takes nothing for
    ``stall`` seconds is gone (``TimeoutError``), one that reads slowly is not.
    """
    view = memoryview(data)
    for start in range(0, len(view), WRITE_SLICE):
        async with asyncio.timeout(stall):
            await write(view[start : start + WRITE_SLICE])


_servers: weakref.WeakSet[LogServer] = weakref.WeakSet()
# How long a new server waits for a closing one of this process to let go of its port.
_RELEASE_WAIT = 2.0


def _wait_for_release(options: ServerOptions) -> bool:
    """Wait (bounded) for a server of this process on the same address that is closing to
    release the port; whether there was one.

    ``dictConfig`` closes the handlers it replaces without waiting for them (it holds
    logging's lock), then builds the new ones: on a fixed port the new one would find the
    old one still listening.
    """
    closing = [
        server
        for server in list(_servers)
        if server.state is not ServerState.RUNNING
        and (server.options.host, server.port) == (options.host, options.port)
    ]
    for server in closing:
        server._released.wait(_RELEASE_WAIT)
    return bool(closing)


def holds_logging_lock() -> bool:
    """Whether this thread holds logging's module lock (an RLock, which knows its owner)."""
    is_owned = getattr(getattr(logging, "_lock", None), "_is_owned", None)
    return bool(is_owned is not None and is_owned())
