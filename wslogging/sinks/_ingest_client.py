"""The forwarder's connection to the serving process's ``/ws/ingest`` (the protocol is in
:mod:`wslogging._ingest`): the handshake, batches and drop counts, heartbeats, and the
records app threads write themselves while the connection is idle (:class:`_Writer`).

:class:`IngestConnection` is that part of :class:`~wslogging.sinks._forwarder.Forwarder`, which
owns the lifecycle, the queue and the takeover of the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

import aiohttp

from .. import _ingest, _wire
from .._handoff import Handoff
from .._rendezvous import Rendezvous
from ..server import RESTARTING, ServerOptions

# How long a connection may go without a pong before it is given up (a server stopped with
# SIGSTOP, say; one that exits closes it at once).
HEARTBEAT = 5.0
# No SIGPIPE from a write to a connection the server has closed (an app may have restored
# the signal's default, which would kill it): the write fails with EPIPE instead.
_NO_SIGPIPE = getattr(socket, "MSG_NOSIGNAL", 0)
# How many records a second app threads may write themselves, at most DIRECT_BURST at once (a
# token bucket): room for an app's everyday logging and for the records of an exit, at a
# system call each, while a storm goes through the queue in batches (a system call for up to
# _ingest.MAX_BATCH records, on the forwarder's thread).
DIRECT_RATE = 2000.0
DIRECT_BURST = 200
# How long the serving process may stay out of reach before the forwarder says so: less is a
# server going away or restarting, which another one (or this process) takes over at once.
REPORT_AFTER = 3.0
# Longest wait of an app thread for the writer's lock, which another thread holds only to
# take from the queue and make a non-blocking send: a bound in case, never reached in practice.
LOCK_WAIT = 0.02


class _Writer:
    """The write side of a plain (not TLS) ingest connection, shared by the forwarder's
    thread and the app's threads: every frame goes onto the socket whole and in order.

    A thread that logs writes its record itself (:meth:`write_now`) while the connection is
    idle (no batch taken from the queue and not yet written, nothing left of an earlier
    frame) and records come no faster than :data:`DIRECT_RATE`, together with whatever is
    queued before it (a record of another thread that found the lock taken, say): so the
    last records a process logs are on their way even if they came from several threads at
    once. It never waits for the socket or the server: the lock is held only for work that
    never blocks (as the queue's own lock is; see :data:`LOCK_WAIT`), the socket never
    blocks, and the rest of what the socket took only part of is written by the forwarder's
    thread. That thread
    writes with :meth:`write`, waiting on its loop for the socket to take each frame.

    The socket is a duplicate of the connection's: aiohttp's transport still reads from the
    connection and makes its closing handshake, and never writes while this is in use.
    """

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        pack: Callable[[list[_wire.LogEntry]], list[bytes]],
    ) -> None:
        self.lock = threading.Lock()
        # Under the lock: a batch is out of the queue and not yet written.
        self.taken = False
        # Under the lock: records an app thread took from the queue and could not write
        # (the connection broke); the forwarder's thread sends them first on the next one.
        self.returned: list[_wire.LogEntry] = []
        self._pack = pack
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

    @property
    def pending(self) -> bool:
        """Whether something written earlier is still to be sent, or the socket is gone."""
        return bool(self._rest) or not self._open

    def frame(self, opcode: int, payload: bytes) -> bytes:
        return _ingest.client_frame(opcode, payload, os.urandom(4))

    def write_now(
        self,
        entry: _wire.LogEntry,
        queued: Callable[[], int],
        take: Callable[[int], list[_wire.LogEntry] | None],
    ) -> bool:
        """Any thread: write ``entry`` at once, after whatever is queued (``take``), if the
        connection is idle and the rate allows them all; whether it did (if not, nothing of
        it was written, and the caller queues ``entry``)."""
        if (
            self.taken
            or self._rest
            or not self._open
            or (self._tokens < 1 and (time.monotonic() - self._filled) * DIRECT_RATE < 1)
            or queued() >= DIRECT_BURST
        ):
            return False  # a look without the lock, to spare the work (and wait) below
        # Another thread may be writing: its hold of the lock is a few microseconds of work
        # that never waits (as with the queue's own lock), but under the GIL it may be
        # paused in the middle, and a record that then went to the queue would wait there
        # for the forwarder's thread. Waiting lets the holder finish (bounded, in case).
        if not self.lock.acquire(timeout=LOCK_WAIT):
            return False
        try:
            if self.taken or self._rest or not self._open:
                return False
            now = time.monotonic()
            tokens = min(DIRECT_BURST, self._tokens + (now - self._filled) * DIRECT_RATE)
            self._filled = now
            waiting = queued()
            if tokens < waiting + 1:
                self._tokens = tokens
                return False  # a storm: the queue's way, in batches
            entries = take(waiting) if waiting else []
            if entries is None or len(entries) < waiting:
                self._tokens = tokens
                return False  # closing: the forwarder's thread sends what is left
            entries.append(entry)
            self._tokens = tokens - len(entries)
            if not self.write_locked(entries):
                # Broken: what was taken goes first on the next connection.
                self.returned += entries[:-1]
                return False
            return True
        finally:
            self.lock.release()

    def write_locked(self, entries: list[_wire.LogEntry]) -> bool:
        """With the lock held and nothing left of an earlier write: put ``entries`` on the
        socket, as much as it takes now, the rest for the forwarder's thread to finish;
        ``False`` (nothing written) if the connection is broken."""
        data = b"".join(self.frame(_ingest.OP_BINARY, p) for p in self._pack(entries))
        sent = self._send(data) if data else 0
        if not self._open:
            return False
        if sent < len(data):
            self._rest = memoryview(data)[sent:]
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._finish)
        return True

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


class IngestConnection:
    """One connection at a time to the serving process, and what is sent on it. The state
    it shares with the forwarder is made by :class:`~wslogging.sinks._forwarder.Forwarder`."""

    options: ServerOptions
    # The pid of the process served by, once connected (None while not connected).
    server_pid: int | None
    _handoff: Handoff[_wire.LogEntry] | None
    _loop: asyncio.AbstractEventLoop | None
    # A batch taken from the queue and not yet sent (a broken connection leaves it here).
    _pending: list[_wire.LogEntry]
    _dropped: Callable[[], int]
    _count_drops: Callable[[int], None]
    _say: Callable[[str], None]
    _connected: threading.Event
    _ws: aiohttp.ClientWebSocketResponse | None
    # The write side while the connection is plain (see _Writer); None otherwise.
    _writer: _Writer | None
    # The drop count last sent to the server, on this connection.
    _reported: int
    _pong: asyncio.Event
    _problem: str
    # When the last connection to the serving process ended, and whether that process
    # said it restarts its server.
    _disconnected_at: float
    _restarting: bool

    @property
    def url(self) -> str:
        raise NotImplementedError

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
        writer = _Writer(socket.socket(fileno=os.dup(sock.fileno())), self._loop, self._frames)
        writer.taken = bool(self._pending)  # a batch a broken connection left goes first
        self._writer = writer

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            # Taken by app threads before any batch now pending (see _Writer.write_now).
            self._pending = writer.returned + self._pending

    def _take(self, limit: int) -> list[_wire.LogEntry] | None:
        """Records from the queue; while app threads may write, noted as taken in the same
        hold of the writer's lock, so that none writes ahead of them. While the connection is
        idle they are written there and then, in that same hold, and none is returned."""
        assert self._handoff is not None
        writer = self._writer
        if writer is None:
            return self._handoff.take(limit)
        with writer.lock:
            entries = self._handoff.take(limit)
            if (
                entries
                and len(entries) <= DIRECT_BURST  # a storm's batches are packed unlocked
                and not writer.pending
                and self._dropped() == self._reported  # else the drops are told first
                and writer.write_locked(entries)
            ):
                # On their way at once, as an app thread's own records are: a process that
                # dies the next moment (a signal) has them in the kernel already.
                return []
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
