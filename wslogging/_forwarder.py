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

from . import _ingest, _rendezvous, _wire
from ._backoff import Backoff
from ._handoff import Handoff
from ._rendezvous import Rendezvous, RendezvousError
from .server import (
    RESTARTING,
    LogServer,
    ServerOptions,
    base_url,
    bind_socket,
    holds_logging_lock,
    new_event_loop,
    release_descriptors,
)

# Reconnect delays while the serving process cannot be reached: short, since a takeover is
# over in milliseconds; doubling up to the cap, with jitter so that workers do not march in
# step.
FIRST_RETRY = 0.05
MAX_RETRY = 1.0
# How long a connection may go without a pong before it is given up (a server stopped with
# SIGSTOP, say; one that exits closes it at once).
HEARTBEAT = 5.0
# How long a stopping forwarder lets its TLS connection finish closing.
TLS_SHUTDOWN = 0.25
# No SIGPIPE from a write to a connection the server has closed (an app may have restored
# the signal's default, which would kill it): the write fails with EPIPE instead.
_NO_SIGPIPE = getattr(socket, "MSG_NOSIGNAL", 0)
# How many records a second app threads may write themselves, at most DIRECT_BURST at once (a
# token bucket): room for an app's everyday logging and for the records of an exit, at a
# system call each, while a storm goes through the queue in batches (a system call for up to
# _ingest.MAX_BATCH records, on the forwarder's thread).
DIRECT_RATE = 2000.0
DIRECT_BURST = 200
# How long a forwarder leaves the port to its parent process, when that is the one that
# served it, is still alive and said it restarts its server (a reconfiguration that could not
# keep it): a master (gunicorn's, a reloader) binds the port again in a moment, and its
# workers must not take it from it meanwhile.
PARENT_GRACE = 5.0
# How long the serving process may stay out of reach before the forwarder says so: less is a
# server going away or restarting, which another one (or this process) takes over at once.
REPORT_AFTER = 3.0

# Called on the forwarder's thread with the socket it has just bound, and the rendezvous last
# read (``None`` if never): returns the server now serving on it, or ``None`` if the handler
# is closed meanwhile (the socket is then closed).
TakeOver = Callable[[socket.socket, Rendezvous | None], LogServer | None]
# Called on the forwarder's thread with the rendezvous of the process serving the port now and
# the one of the server it joined last: ``None`` if it may forward there, else a line saying
# why not (see wslogging._belonging).
MayForwardTo = Callable[[Rendezvous, Rendezvous | None], str | None]


class _Writer:
    """The write side of a plain (not TLS) ingest connection, shared by the forwarder's
    thread and the app's threads: every frame goes onto the socket whole and in order.

    A thread that logs writes its record itself (:meth:`write_now`) while the connection is
    idle (nothing queued, no batch taken from the queue and not yet written, nothing left of
    an earlier frame) and records come no faster than :data:`DIRECT_RATE`. It never waits:
    the lock is only tried, the socket never blocks (a socket too full to take a byte leaves
    the record to the queue), and the rest of a frame the socket took only part of is
    written by the forwarder's thread. That thread writes with :meth:`write`, waiting on its
    loop for the socket to take each frame.

    The socket is a duplicate of the connection's: aiohttp's transport still reads from the
    connection and makes its closing handshake, and never writes while this is in use.
    """

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.lock = threading.Lock()
        # Under the lock: a batch is out of the queue and not yet written.
        self.taken = False
        self._sock = sock
        self._loop = loop
        self._rest: bytes | memoryview = b""  # under the lock: what the socket has yet to take
        self._open = True
        # The token bucket (see DIRECT_RATE): changed under the lock, read without.
        self._tokens = float(DIRECT_BURST)
        self._filled = time.monotonic()
        self._writable: asyncio.Future[None] | None = None
        self._finishing: asyncio.Task[None] | None = None

    def fileno(self) -> int:
        return self._sock.fileno()

    def frame(self, opcode: int, payload: bytes) -> bytes:
        return _ingest.client_frame(opcode, payload, os.urandom(4))

    def write_now(self, entry: _wire.LogEntry, queued: Callable[[], int]) -> bool:
        """Any thread: write ``entry`` at once if the connection is idle and takes it;
        whether it did (if not, nothing was written, and the caller queues ``entry``)."""
        if (
            self.taken
            or self._rest
            or not self._open
            or (self._tokens < 1 and (time.monotonic() - self._filled) * DIRECT_RATE < 1)
            or queued()
        ):
            return False  # a look without the lock, to spare the work below
        payload = _wire.pack_entries((entry,))
        if len(payload) > _ingest.MAX_FRAME:
            return False  # the forwarder's thread drops (and counts) it
        frame = self.frame(_ingest.OP_BINARY, payload)
        if not self.lock.acquire(blocking=False):
            return False  # another thread is writing: never wait for it
        try:
            if self.taken or self._rest or not self._open or queued():
                return False
            now = time.monotonic()
            tokens = min(DIRECT_BURST, self._tokens + (now - self._filled) * DIRECT_RATE)
            self._filled = now
            if tokens < 1:
                self._tokens = tokens
                return False
            sent = self._send(frame)
            if not sent:
                self._tokens = tokens
                return False
            self._tokens = tokens - 1
            if sent < len(frame):
                self._rest = memoryview(frame)[sent:]
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self._loop.call_soon_threadsafe(self._finish)
            return True
        finally:
            self.lock.release()

    def _send(self, data: bytes | memoryview) -> int:
        """Write what the socket takes of ``data`` now (the lock held); how much."""
        try:
            return self._sock.send(data, _NO_SIGPIPE)
        except BlockingIOError:
            return 0
        except OSError:
            self._open = False  # the reader sees the connection end, and the session ends
            return 0

    async def write(self, frame: bytes) -> None:
        """Loop side: write ``frame`` after everything before it, waiting as long as the
        socket takes; ``ConnectionResetError`` once the connection is broken."""
        while True:
            await self.flush()
            with self.lock:
                if not self._rest:
                    if self._open:
                        self._rest = memoryview(frame)[self._send(frame) :]
                    break
        await self.flush()

    async def flush(self) -> None:
        """Loop side: until the socket has taken every frame written so far."""
        while True:
            with self.lock:
                if self._rest and self._open:
                    self._rest = self._rest[self._send(self._rest) :]
                if not self._open:
                    raise ConnectionResetError("the connection to the serving process broke")
                if not self._rest:
                    return
            await self._until_writable()

    async def _until_writable(self) -> None:
        writable = self._writable
        if writable is None:
            writable = self._writable = self._loop.create_future()
            fd = self.fileno()

            def ready() -> None:
                self._loop.remove_writer(fd)
                self._writable = None
                if not writable.done():
                    writable.set_result(None)

            self._loop.add_writer(fd, ready)
        await asyncio.shield(writable)

    def _finish(self) -> None:
        """Loop side: write the rest of a frame an app thread began."""
        if self._finishing is None or self._finishing.done():
            self._finishing = self._loop.create_task(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(ConnectionError):  # the session sees it and ends
            await self.flush()

    def close(self) -> None:
        """Loop side: no more writes from anyone; what is not written is given up."""
        with self.lock:
            self._open = False
            self._rest = b""
        if self._writable is not None:
            self._loop.remove_writer(self.fileno())
            self._writable.cancel()
            self._writable = None
        if self._finishing is not None:
            self._finishing.cancel()
        self._sock.close()


class ForwarderState(enum.Enum):
    """``NEW`` until the first record (or :meth:`Forwarder.start`); ``RUNNING`` while it
    forwards; ``HANDED_OVER`` once this process serves the port itself; ``CLOSED``."""

    NEW = "new"
    RUNNING = "running"
    HANDED_OVER = "handed_over"
    CLOSED = "closed"


class Forwarder:
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
        self.thread_id: int | None = None
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
        self._stopped = threading.Event()
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
            # Made here, on the caller's thread, as LogServer.start does (see there).
            self._loop = new_event_loop()
            self._handoff = Handoff(
                self.options.queue_size, self._loop, keep_level=self.options.keep_level
            )
            self.state = ForwarderState.RUNNING
            threading.Thread(target=self._run, name="wslogging-forwarder", daemon=True).start()

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
            and writer.write_now(entry, handoff.qsize)
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
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(self._begin_close, timeout)
        # Under logging's module lock (dictConfig replacing its handlers) our thread may be
        # waiting for that lock to log: delivery then goes on after we return (as a server's).
        if threading.get_ident() != self.thread_id and not holds_logging_lock():
            self._stopped.wait(timeout + 1.0)

    def abandon_after_fork(self) -> None:
        """In a process forked from this one: never use the parent's thread, loop or
        connection (whose socket is pointed at ``/dev/null``, see
        :func:`wslogging.server.release_descriptors`)."""
        self.state = ForwarderState.CLOSED
        self._handoff = None
        ws, writer, self._writer = self._ws, self._writer, None
        with contextlib.suppress(Exception):
            sock = ws.get_extra_info("socket") if ws is not None else None
            descriptors = [sock.fileno()] if sock is not None else []
            if writer is not None:
                descriptors.append(writer.fileno())
            release_descriptors(descriptors)

    # -- forwarder thread -----------------------------------------------------------------

    def _run(self) -> None:
        self.thread_id = threading.get_ident()
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            self._main = loop.create_task(self._forward())
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._main)
        finally:
            try:
                # What the client left running (a connection attempt cut short by a cancel,
                # say) ends here, closing its socket, as asyncio.run() does it.
                left = asyncio.all_tasks(loop)
                for task in left:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
                if self.options.ssl_certfile:
                    # A closed TLS connection waits for the server's close_notify before its
                    # socket is closed: give it that moment (aiohttp's own advice), bounded.
                    loop.run_until_complete(asyncio.sleep(TLS_SHUTDOWN))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._connected.clear()
                self._stopped.set()

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

    async def _session(self, session: aiohttp.ClientSession, found: Rendezvous) -> bool:
        """Connect, authenticate and send until the connection ends; whether it was
        accepted (and so is worth retrying at once)."""
        nonce = _ingest.new_nonce()
        scheme = "wss" if self.options.ssl_certfile else "ws"
        host = self.url.split("://", 1)[1]
        url = f"{scheme}://{host}{_ingest.INGEST_PATH}?nonce={nonce}"
        try:
            # The certificate is not checked: the peer proves itself with the secret instead.
            # Pings, pongs and the closing handshake are ours (see _read and _beat): aiohttp
            # must not write on its own while app threads write (see _Writer).
            async with session.ws_connect(
                url,
                ssl=False,
                autoping=False,
                autoclose=False,
                compress=0,
                max_msg_size=_ingest.MAX_CONTROL * 4,
            ) as ws:
                challenge = _ingest.parse_challenge(await self._text(ws))
                if not _ingest.proof_matches(
                    challenge.proof, _ingest.server_proof(found.secret, nonce)
                ):
                    raise _ingest.IngestError(
                        "the process holding the port could not prove it knows the secret"
                    )
                proof = _ingest.forwarder_proof(found.secret, challenge.nonce)
                await ws.send_str(_ingest.auth_message(os.getpid(), proof))
                if await self._text(ws) != _ingest.ACCEPTED:
                    raise _ingest.IngestError("not accepted")
                self._ws = ws
                self.server_pid = challenge.pid
                self._connected.set()
                self._problem = ""
                try:
                    await self._pump(ws)
                finally:
                    self._connected.clear()
                    self._disconnected_at = time.monotonic()
                    self._restarting = ws.close_code == RESTARTING
                    self.server_pid = None
                    self._ws = None
                    self._close_writer()
                return True
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            if time.monotonic() - self._disconnected_at < REPORT_AFTER:
                return False  # a server going away or restarting: nothing to do about it
            # Not str(exc) for a refused handshake: it quotes the URL, whose nonce is new on
            # every try, and _report would then say it again on every retry.
            reason = (
                f"HTTP {exc.status}"
                if isinstance(exc, aiohttp.WSServerHandshakeError)
                else str(exc) or type(exc).__name__
            )
            self._report(
                f"process {os.getpid()} has not reached process {found.pid}, which serves "
                f"{self.url}/, for {REPORT_AFTER:g} s ({reason}); its records wait in its "
                f"queue ({self.options.queue_size} at most), then are dropped and counted. "
                f"Is process {found.pid} stopped, or too busy?",
                topic=f"unreachable {found.pid}",
            )
            return False

    @staticmethod
    async def _text(ws: aiohttp.ClientWebSocketResponse) -> str:
        message = await ws.receive(timeout=_ingest.HANDSHAKE_TIMEOUT)
        if message.type is not aiohttp.WSMsgType.TEXT:
            reason = message.extra or message.type.name
            raise _ingest.IngestError(f"refused ({ws.close_code}: {reason})")
        return str(message.data)

    def _open_writer(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Let app threads write to a plain connection (see :class:`_Writer`)."""
        sock = ws.get_extra_info("socket")
        if self.options.ssl_certfile or sock is None:
            return  # TLS: only the loop's transport can write
        assert self._loop is not None
        writer = _Writer(socket.socket(fileno=os.dup(sock.fileno())), self._loop)
        writer.taken = bool(self._pending)  # a batch a broken connection left goes first
        self._writer = writer

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _take(self, limit: int) -> list[_wire.LogEntry] | None:
        """Records from the queue; while app threads may write, noted as taken in the same
        hold of the writer's lock, so that none writes ahead of them."""
        assert self._handoff is not None
        writer = self._writer
        if writer is None:
            return self._handoff.take(limit)
        with writer.lock:
            entries = self._handoff.take(limit)
            writer.taken = bool(entries)
        return entries

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, opcode: int, data: bytes) -> None:
        """One frame, through the writer when there is one, else through aiohttp."""
        writer = self._writer
        if writer is not None:
            await writer.write(writer.frame(opcode, data))
        elif opcode == _ingest.OP_BINARY:
            await ws.send_bytes(data)
        elif opcode == _ingest.OP_TEXT:
            await ws.send_str(data.decode())
        elif opcode == _ingest.OP_PING:
            await ws.ping(data)
        else:
            await ws.pong(data)

    async def _report_dropped(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        dropped = self._dropped()
        if dropped != self._reported:
            await self._send(ws, _ingest.OP_TEXT, _ingest.dropped_message(dropped).encode())
            self._reported = dropped

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send batches until the queue is shut and empty or the connection ends."""
        assert self._handoff is not None
        self._reported = -1
        self._open_writer(ws)
        reader = asyncio.ensure_future(self._read(ws))
        beat = asyncio.ensure_future(self._beat(ws))
        try:
            await self._report_dropped(ws)
            while True:
                if not self._pending:
                    getter = asyncio.ensure_future(
                        self._handoff.get_batch(_ingest.MAX_BATCH, self._take)
                    )
                    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()  # it holds no records while it waits
                        return
                    self._pending = getter.result()
                    if not self._pending:
                        # Closing, and everything is sent: the last drops, then the close
                        # that tells the server nothing more was lost.
                        await self._report_dropped(ws)
                        if self._writer is not None:
                            await self._writer.flush()
                            self._close_writer()
                        await ws.close()
                        return
                await self._report_dropped(ws)
                for frame in self._frames(self._pending):
                    await self._send(ws, _ingest.OP_BINARY, frame)
                self._pending = []
                if self._writer is not None:
                    with self._writer.lock:
                        self._writer.taken = False
        finally:
            reader.cancel()
            beat.cancel()

    def _frames(self, entries: list[_wire.LogEntry]) -> list[bytes]:
        """``entries`` packed in frames of at most :data:`_ingest.MAX_FRAME` bytes."""
        data = _wire.pack_entries(entries)
        if len(data) <= _ingest.MAX_FRAME:
            return [data]
        if len(entries) == 1:
            self._count_drops(1)
            return []
        half = len(entries) // 2
        return self._frames(entries[:half]) + self._frames(entries[half:])

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read until the connection ends (or the server closes it); the server's ``error``
        frames go to stderr."""
        while True:
            message = await ws.receive()
            kind = message.type
            if kind is aiohttp.WSMsgType.TEXT:
                self._report(f"the serving process says: {str(message.data)[:300]}")
            elif kind is aiohttp.WSMsgType.PONG:
                self._pong.set()
            elif kind is aiohttp.WSMsgType.PING:
                with contextlib.suppress(ConnectionError):
                    await self._send(ws, _ingest.OP_PONG, message.data)
            elif kind is not aiohttp.WSMsgType.BINARY:
                return  # closed, closing, or broken

    async def _beat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Ping every :data:`HEARTBEAT` seconds; a server that does not answer within half
        of that is given up (the connection is shut, and the session ends)."""
        while True:
            await asyncio.sleep(HEARTBEAT)
            self._pong.clear()
            try:
                await self._send(ws, _ingest.OP_PING, b"")
                async with asyncio.timeout(HEARTBEAT / 2):
                    await self._pong.wait()
            except (ConnectionError, TimeoutError):
                self._cut(ws)
                return

    @staticmethod
    def _cut(ws: aiohttp.ClientWebSocketResponse | None) -> None:
        """Shut the connection down, both ways, at once (its reader then ends)."""
        sock = ws.get_extra_info("socket") if ws is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _report(self, line: str, topic: str | None = None) -> None:
        """Say ``line`` on stderr, once until the next connection succeeds (once per
        ``topic``, when given: one outage is one line, whatever its reasons)."""
        if (topic or line) != self._problem:
            self._problem = topic or line
            self._say(line)
