"""A process that does not hold the port sends its records to the one that does, and takes
the port over when that one goes.

One daemon thread with its own loop, fed by the same bounded hand-off as the server
(:class:`Handoff`), connected to the serving process's ``/ws/ingest`` over loopback (the
protocol is in :mod:`wslogging._ingest`).

While that connection is idle, a record is written to it by the thread that logs it, at once
(:class:`_Writer`): a worker that dies by a signal right after logging (uvicorn re-raises the
SIGTERM it handled, so ``logging.shutdown()`` never runs) has its last records on their way
already, instead of in a queue its thread had no turn to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import os
import socket
import threading
import time
from collections.abc import Callable

import aiohttp

from .. import _ingest, _rendezvous, _wire
from .._backoff import Backoff
from .._handoff import Handoff
from .._loop_thread import LoopThread
from .._rendezvous import Rendezvous, RendezvousError
from ..server import (
    LogServer,
    ServerOptions,
    base_url,
    bind_socket,
    release_descriptors,
)
from ._ingest_client import IngestConnection, _Writer

# Reconnect delays while the serving process cannot be reached: short, since a takeover is
# over in milliseconds; doubling up to the cap, with jitter so that workers do not march in
# step.
FIRST_RETRY = 0.05
MAX_RETRY = 1.0
# How long a stopping forwarder lets its TLS connection finish closing.
TLS_SHUTDOWN = 0.25
# How long a forwarder leaves the port to its parent process, when that is the one that
# served it, is still alive and said it restarts its server (a reconfiguration that could not
# keep it): a master (gunicorn's, a reloader) binds the port again in a moment, and its
# workers must not take it from it meanwhile.
PARENT_GRACE = 5.0
# Called on the forwarder's thread with the socket it has just bound, and the rendezvous last
# read (``None`` if never): returns the server now serving on it, or ``None`` if the handler
# is closed meanwhile (the socket is then closed).
TakeOver = Callable[[socket.socket, Rendezvous | None], LogServer | None]
# Called on the forwarder's thread with the rendezvous of the process serving the port now and
# the one of the server it joined last: ``None`` if it may forward there, else a line saying
# why not (see wslogging._belonging).
MayForwardTo = Callable[[Rendezvous, Rendezvous | None], str | None]


class ForwarderState(enum.Enum):
    """``NEW`` until the first record (or :meth:`Forwarder.start`); ``RUNNING`` while it
    forwards; ``HANDED_OVER`` once this process serves the port itself; ``CLOSED``."""

    NEW = "new"
    RUNNING = "running"
    HANDED_OVER = "handed_over"
    CLOSED = "closed"


class Forwarder(IngestConnection):
    """Sends this process's records to the process serving ``options.host:port``.

    App side, :meth:`submit`: never blocks (one bounded hand-off of ``queue_size`` records);
    ``False`` when the queue is full or the forwarder is closed, and the caller counts the
    drop. A forwarder made after a fork starts its thread on its first record.

    Its thread: reads the rendezvous file, connects, proves it knows the secret and has the
    server prove it too, then sends batches (at most :data:`_ingest.MAX_BATCH` records and
    :data:`_ingest.MAX_FRAME` bytes each; a single record larger than that is dropped and
    counted) and its drop count. While the connection is plain (not TLS) and idle, a record
    is written by the thread that logs it instead, without waiting (see :class:`_Writer`),
    so that it is on its way even if the process dies by a signal the next moment. While
    the connection is down, records wait in the queue (up to its bound). Whenever the
    connection is down it tries to bind the port first: the one that binds it calls
    ``take_over`` and becomes the server, moving the records still queued here (and the
    batch whose send failed) into it; the others connect to it. A forwarder whose server
    was its parent process, and closed the connection saying it restarts, leaves the port to
    that parent while it lives, for up to :data:`PARENT_GRACE` seconds.

    Records already written to a connection that then breaks may be lost with the process
    that was serving, as its own queue and history are.
    """

    def __init__(
        self,
        options: ServerOptions,
        dropped: Callable[[], int],
        count_drops: Callable[[int], None],
        take_over: TakeOver,
        say: Callable[[str], None],
        may_forward_to: MayForwardTo,
    ) -> None:
        self.options = options
        self.port = options.port
        self.state = ForwarderState.NEW
        # Its thread and loop (see LoopThread), made by start().
        self._loop_thread = LoopThread("wslogging-forwarder")
        # The pid of the process served by, once connected (None while not connected).
        self.server_pid: int | None = None
        self.rendezvous: Rendezvous | None = None
        # The rendezvous of the server it was made to forward to, or last accepted.
        self.joined: Rendezvous | None = None
        self._may_forward_to = may_forward_to
        self.successor: LogServer | None = None
        self._dropped = dropped
        self._count_drops = count_drops
        self._take_over = take_over
        self._say = say
        self._start_lock = threading.RLock()
        self._handoff: Handoff[_wire.LogEntry] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._pending: list[_wire.LogEntry] = []
        self._connected = threading.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        # The write side while the connection is plain (see _Writer); None otherwise.
        self._writer: _Writer | None = None
        # The drop count last sent to the server, on this connection.
        self._reported = -1
        self._pong = asyncio.Event()
        self._problem = ""
        # When the last connection to the serving process ended, and whether that process
        # said it restarts its server.
        self._disconnected_at = time.monotonic()
        self._restarting = False

    @property
    def url(self) -> str:
        return base_url(self.options, self.port)

    @property
    def connected(self) -> bool:
        """Whether records are being sent to the serving process right now."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait (bounded) until connected; whether it is."""
        return self._connected.wait(timeout)

    # -- app side -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (once; any thread). Idempotent."""
        with self._start_lock:
            if self.state is not ForwarderState.NEW:
                return
            # Made here, on the caller's thread (see LoopThread).
            self._loop = self._loop_thread.make_loop()
            self._handoff = Handoff(
                self.options.queue_size, self._loop, keep_level=self.options.keep_level
            )
            self.state = ForwarderState.RUNNING
            # A closed TLS connection waits for the server's close_notify before its socket is
            # closed: it is given that moment (aiohttp's own advice), bounded.
            settle = TLS_SHUTDOWN if self.options.ssl_certfile else 0.0
            self._loop_thread.start(self._main_task, self._connected.clear, settle)

    def submit(self, entry: _wire.LogEntry) -> bool:
        """Queue ``entry`` without waiting (any thread); ``False`` when full or closed."""
        handoff = self._handoff
        if handoff is None:
            if self.state is not ForwarderState.NEW:
                return False
            self.start()
            handoff = self._handoff
            assert handoff is not None
        writer = self._writer
        if (
            writer is not None
            and self._dropped() == self._reported  # else the queue, which reports them first
            and writer.write_now(entry, handoff.qsize, handoff.take_now)
        ):
            return True
        if handoff.put(entry):
            return True
        # Handed over while this record was on its way: the new server takes it.
        successor = self.successor
        return successor is not None and successor.submit(entry)

    def close(self, timeout: float) -> None:
        """Send what is queued, within about ``timeout`` seconds, then stop. Idempotent;
        what could not be sent is counted as dropped."""
        with self._start_lock:
            state, self.state = self.state, ForwarderState.CLOSED
        if state is not ForwarderState.RUNNING:
            return
        # Under logging's module lock (dictConfig replacing its handlers) our thread may be
        # waiting for that lock to log: delivery then goes on after we return (as a server's).
        if self._loop_thread.call(self._begin_close, timeout):
            self._loop_thread.wait(timeout + 1.0)

    @property
    def thread_id(self) -> int | None:
        """The forwarder thread's id while it runs: records logged on it are never sent."""
        return self._loop_thread.thread_id

    def abandon_after_fork(self) -> None:
        """In a process forked from this one: never use the parent's thread, loop or
        connection (whose socket is pointed at ``/dev/null``, see
        :func:`wslogging.server.release_descriptors`)."""
        self.state = ForwarderState.CLOSED
        self._handoff = None
        self._loop_thread.forget()
        ws, writer, self._writer = self._ws, self._writer, None
        with contextlib.suppress(Exception):
            sock = ws.get_extra_info("socket") if ws is not None else None
            descriptors = [sock.fileno()] if sock is not None else []
            if writer is not None:
                descriptors.append(writer.fileno())
            release_descriptors(descriptors)

    # -- forwarder thread -----------------------------------------------------------------

    async def _main_task(self) -> None:
        """The thread's work: forward until closed (see :meth:`_forward`)."""
        self._main = asyncio.current_task()
        await self._forward()

    def _begin_close(self, timeout: float) -> None:
        """Stop taking records, send what is left, and give up after ``timeout``."""
        assert self._handoff is not None
        assert self._loop is not None
        self._handoff.shutdown()
        self._loop.call_later(timeout, self._give_up)

    def _give_up(self) -> None:
        """Stop sending: shut the connection down (a send waiting for a server that takes
        nothing fails at once, and the socket is closed, not left behind), then stop."""
        self._cut(self._ws)
        if self._main is not None:
            self._main.cancel()

    async def _forward(self) -> None:
        assert self._handoff is not None
        backoff = Backoff(FIRST_RETRY, MAX_RETRY)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=_ingest.HANDSHAKE_TIMEOUT)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    if self.state is ForwarderState.CLOSED and not self._unsent():
                        return  # closing, and nothing (more) to send
                    if self._try_take_over():
                        return
                    try:
                        found = _rendezvous.read(self.options.host, self.port)
                    except RendezvousError as exc:
                        self._report(f"cannot find the serving process: {exc}")
                        found = None
                    refused = found and self._may_forward_to(found, self.joined)
                    if refused:
                        self._report(refused)
                    elif found is not None:
                        self.rendezvous = self.joined = found
                        if await self._session(session, found):
                            backoff.reset()
                            continue  # the server went: try the port at once
                    await asyncio.sleep(backoff.next())
        finally:
            left = self._unsent()
            if left and self.state is not ForwarderState.HANDED_OVER:
                self._count_drops(left)
                self._report(f"{left} record(s) could not be forwarded before closing")

    def _unsent(self) -> int:
        assert self._handoff is not None
        return len(self._pending) + self._handoff.qsize()

    def _try_take_over(self) -> bool:
        """Bind the port if it is free, and serve it; whether this process now does."""
        if self.state is ForwarderState.CLOSED:
            return False  # closing: deliver or give up, never start serving
        if self._leave_to_parent():
            return False
        try:
            sock = bind_socket(self.options.host, self.port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                self._report(f"cannot bind {self.options.host}:{self.port}: {exc.strerror}")
            return False
        server = self._take_over(sock, self.rendezvous)
        if server is None:
            return False
        assert self._handoff is not None
        # Records logged from now on go to the server; what is queued here follows them in
        # (see submit): none is lost.
        self.successor = server
        self.state = ForwarderState.HANDED_OVER
        self._handoff.shutdown()
        for entry in self._pending + self._handoff.drain():
            if not server.submit(entry):
                self._count_drops(1)
        self._pending = []
        return True

    def _leave_to_parent(self) -> bool:
        """Whether the port is left to the parent process for now (see :data:`PARENT_GRACE`):
        it served the port, said it restarts, still lives (a parent that exits makes this
        process a child of another), and the grace since the connection ended is not over."""
        found = self.rendezvous
        return (
            self._restarting
            and found is not None
            and found.pid == os.getppid()
            and time.monotonic() - self._disconnected_at < PARENT_GRACE
        )
