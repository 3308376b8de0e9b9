"""The server: :class:`LogServer` joins its parts and owns its lifecycle in a daemon thread
with its own loop, and the consumer that moves records from the app into the hub.

The app's threads reach the server only through :meth:`LogServer.submit` (a bounded janus
queue, see :class:`Handoff`); nothing else crosses between the two sides."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
import ssl
import time
import weakref
from collections.abc import Callable, Sequence

from aiohttp import web

from .. import _wire
from .._auth import (
    KeyRing,
)
from .._connections import connection_bound
from .._handoff import Handoff, Lost
from .._history import Held, LossMark
from .._ingest import INGEST_PATH
from .._redact import DEFAULT_MASK
from .._stderr import say
from ._accepting import Accepting
from ._api import JsonApi
from ._forwarders import Ingest
from ._options import ServerOptions, ServerState, base_url, bind_socket
from ._sockets import (
    HANDLER_OPTIONS,
    http_log,
    release_descriptors,
    soft_nofile,
)
from ._source import RecordSource
from ._sse import EventStreams
from ._websocket import REVOKED, WebSockets

# What _consume takes from the queue at once: everything waiting, up to a quarter of the queue
# and MAX_BATCH (one batch's work, and the bytes joined for it, hold the GIL and the clients'
# attention in one go), and never fewer than MIN_BATCH.
MIN_BATCH = 1000


MAX_BATCH = 5000


# Longest rest of the consumer between two batches (see _consume).
MAX_REST = 0.01


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


class LogServer(Accepting, JsonApi, EventStreams, WebSockets, Ingest):
    """Serves one :class:`Hub` over HTTP, SSE and WebSocket from a daemon thread.

    Lifecycle: :meth:`start` binds the socket on the caller's thread (so a port in use raises
    ``OSError`` there, at once) and starts the thread, without waiting for it: the caller may
    hold logging's module lock (``dictConfig`` does), which the new thread's asyncio may need.
    :meth:`close` is idempotent and bounded in time.
    """

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
        # Made here, on the caller's thread (see LoopThread).
        self._loop = self._loop_thread.make_loop()
        if self._source is None:
            self._handoff = Handoff(
                self.options.queue_size,
                self._loop,
                keep_level=self.options.keep_level,
                mark=True,
            )
        self.state = ServerState.RUNNING

        def finish() -> None:  # once the loop is closed
            sock.close()
            self._released.set()

        self._loop_thread.start(lambda: self._main(sock, ssl_context), finish)

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
        if self.state is ServerState.RUNNING:
            self._loop_thread.call(self._close_revoked)

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
        self._table.bound = connection_bound(soft_nofile(), options.max_clients)
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
        # thread may be waiting for that lock to log, so this thread does not wait for it
        # (see LoopThread.wait): delivery then goes on after we return.
        if not self._loop_thread.call(self._begin_shutdown, timeout):
            return
        # The budget covers delivery; closing the sockets afterwards takes up to a second more.
        if self._loop_thread.may_wait() and not self._loop_thread.wait(timeout + 2.0):
            say("the server did not stop in time")

    @property
    def thread_id(self) -> int | None:
        """The server thread's id while it runs: records logged on it are never streamed."""
        return self._loop_thread.thread_id

    async def _main(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        """The server thread's work: serve on ``sock`` until :meth:`_shutdown` is over (see
        :class:`LoopThread` for what follows: leftovers cancelled, the loop closed, then the
        listening socket)."""
        self._done = asyncio.get_running_loop().create_future()
        try:
            await self._serve(sock, ssl_context)
        except Exception as exc:
            say(f"the server could not start: {exc!r}")
            self.state = ServerState.CLOSED  # later records are counted as dropped
            return
        self._served = True
        if self.state is not ServerState.RUNNING:  # closed while we were starting
            self._begin_shutdown(self._close_budget)
        await self._done

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
            logger=http_log,
            shutdown_timeout=1.0,
            handler_cancellation=True,
            **HANDLER_OPTIONS,
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
            if not self._done.done():
                self._done.set_result(None)  # _main is over

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
        self._loop_thread.forget()
        descriptors = [c.fileno for c in self._table.connections()]
        if self._sock is not None:
            descriptors.append(self._sock.fileno())
        release_descriptors(descriptors)


def _mark(lost: Lost) -> LossMark:
    """The loss mark that tells clients of ``lost``, at its place in the stream."""
    return LossMark(lost.count, lost.reason, lost.levels)


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
