"""WebSocket clients for the benchmarks, meant to run in a process apart from the servers.

:class:`RawClient` speaks just enough RFC 6455 to count records cheaply (no JSON decoding
except for ``gap`` frames), so that one client process can keep up with a thousand sockets on
a two-core machine; :class:`AiohttpClient` does the same count through ``aiohttp``'s client.
Both answer pings, as any real client does. :func:`client_process` runs groups of them on
command from the benchmark driver over a ``multiprocessing`` pipe.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

LOG_PREFIX = b'{"type":"log"'
GAP_PREFIX = b'{"type":"gap"'
# How a latency benchmark's message starts: the log call's time.time_ns() follows.
STAMP = b'"log":"t='
# How many connections are opened at once (the servers listen with a backlog of 128).
CONNECT_CONCURRENCY = 50


def handshake_request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    """The HTTP/1.1 upgrade request that opens a WebSocket."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (the mask is all zeroes, which RFC 6455 allows)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


class Group:
    """Clients of one server counting records (received or announced missed) to a target."""

    def __init__(self, report: Callable[[Group], None]) -> None:
        """``report`` is called when every client has reached the target."""
        self.clients: list[RawClient | AiohttpClient] = []
        self.target: int | None = None
        self.reached = 0
        self.report = report

    def expect(self, target: int) -> None:
        """Set a new cumulative target and check the clients against it."""
        self.target = target
        self.reached = 0
        for client in self.clients:
            client.reached = False
            client.check()

    def client_reached(self) -> None:
        """One more client reached the target."""
        self.reached += 1
        if self.reached == len(self.clients):
            self.report(self)

    def totals(self) -> dict[str, int]:
        """Counts across clients: records received (min and sum), missed (per gaps)."""
        logs = [c.logs for c in self.clients] or [0]
        return {
            "clients": len(self.clients),
            "min_logs": min(logs),
            "sum_logs": sum(logs),
            "missed": sum(c.missed for c in self.clients),
            "gaps": sum(c.gaps for c in self.clients),
            "closed": sum(1 for c in self.clients if c.closed),
            "cpu_ms": int(time.process_time() * 1000),
        }


class _Counting:
    """What both client kinds count, and the target check."""

    def __init__(self, group: Group | None) -> None:
        """Start with nothing received."""
        self.group = group
        self.logs = 0
        self.missed = 0
        self.gaps = 0
        self.reached = False
        self.closed = False

    def on_text(self, payload: bytes) -> None:
        """Count one text frame: a record, or a ``gap`` with how many records it stands for."""
        if payload.startswith(LOG_PREFIX):
            self.logs += 1
        elif payload.startswith(GAP_PREFIX):
            self.gaps += 1
            missed = json.loads(payload).get("missed")
            self.missed += missed if isinstance(missed, int) else 0

    def check(self) -> None:
        """Tell the group once records received plus missed reach its target."""
        group = self.group
        if (
            not self.reached
            and group is not None
            and group.target is not None
            and self.logs + self.missed >= group.target
        ):
            self.reached = True
            group.client_reached()


class RawClient(_Counting, asyncio.Protocol):
    """A minimal RFC 6455 client that counts records from frame headers and answers pings.

    With :attr:`latencies` set to a list, it also keeps each stamped record's delivery latency.
    """

    latencies: list[int] | None = None

    def __init__(self, request: bytes, group: Group | None) -> None:
        """``request`` is the handshake to send once connected."""
        _Counting.__init__(self, group)
        self.request = request
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        """Note the close; fail the handshake if it had not completed."""
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        """Parse the handshake response, then as many whole frames as have arrived."""
        buf = self._buffer
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self._upgraded = True
            self.opened.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode, length = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            if opcode == 0x1:
                prefix = buf[pos + head : pos + head + len(LOG_PREFIX)]
                if prefix == LOG_PREFIX:
                    self.logs += 1
                    if self.latencies is not None:
                        self._stamp(buf, pos + head, end)
                elif prefix == GAP_PREFIX:
                    self.on_text(bytes(buf[pos + head : end]))
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(_client_frame(0xA, bytes(buf[pos + head : end])))
            elif opcode == 0x8 and self.transport is not None:
                self.transport.close()
            pos = end
        del buf[:pos]
        self.check()

    def _stamp(self, buf: bytearray, start: int, end: int) -> None:
        """Keep log call -> receipt (ns) of a record whose message starts with
        ``t=<time.time_ns() of the log call>`` (see latency.py)."""
        assert self.latencies is not None
        at = buf.find(STAMP, start, min(end, start + 96))
        if at >= 0:
            self.latencies.append(time.time_ns() - int(buf[at + len(STAMP) : at + len(STAMP) + 19]))

    def close(self) -> None:
        """Drop the connection."""
        if self.transport is not None:
            self.transport.close()


class AiohttpClient(_Counting):
    """The same count through ``aiohttp.ClientSession.ws_connect``."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str], group: Group | None
    ) -> None:
        """Remember where to connect; :meth:`start` connects."""
        super().__init__(group)
        self.session, self.url, self.headers = session, url, headers
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect and read in a task of its own."""
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        """Read every frame until the server closes."""
        try:
            async with self.session.ws_connect(self.url, headers=self.headers) as ws:
                self.opened.set_result(None)
                async for message in ws:
                    if message.type is aiohttp.WSMsgType.TEXT:
                        self.on_text(message.data.encode())
                        self.check()
        except Exception as exc:
            if not self.opened.done():
                self.opened.set_exception(exc)
        finally:
            self.closed = True

    def close(self) -> None:
        """Stop reading."""
        if self.task is not None:
            self.task.cancel()


async def open_clients(
    kind: str,
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    count: int,
    group: Group | None,
    session: aiohttp.ClientSession | None = None,
) -> list[RawClient | AiohttpClient]:
    """Open ``count`` clients of ``kind`` (``raw``/``aiohttp``); raise if a handshake fails."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> RawClient | AiohttpClient:
        """Open one client and wait for its handshake."""
        async with gate:
            client: RawClient | AiohttpClient
            if kind == "raw":
                request = handshake_request(host, port, path, headers)
                _, client = await loop.create_connection(
                    lambda: RawClient(request, group), host, port
                )
            else:
                assert session is not None
                client = AiohttpClient(session, f"http://{host}:{port}{path}", headers, group)
                client.start()
            await asyncio.wait_for(client.opened, 30)
            return client

    clients = list(await asyncio.gather(*(one() for _ in range(count))))
    if group is not None:
        group.clients.extend(clients)
    return clients


def client_process(conn: Connection, kind: str) -> None:
    """Entry point of a client process: obey the driver's commands until ``close``."""
    asyncio.run(_serve_commands(conn, kind))


async def _serve_commands(conn: Connection, kind: str) -> None:
    """Obey ``connect``, ``expect``, ``status`` and ``close`` commands from the driver."""
    # connect name host port path headers n -> ("connected", name, error or None)
    # expect name total -> ("done", name, total, counts) once every client has total records
    # status name -> ("status", name, counts); close -> closes everything, ("closed",)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    groups: dict[str, Group] = {}
    session = (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) if kind != "raw" else None
    )

    def report(group: Group) -> None:
        """Tell the driver that a group reached its target."""
        name = next(n for n, g in groups.items() if g is group)
        conn.send(("done", name, group.target, group.totals()))

    try:
        while True:
            command, *args = await inbox.get()
            if command == "connect":
                name, host, port, path, headers, count = args
                group = groups[name] = Group(report)
                try:
                    await open_clients(kind, host, port, path, headers, count, group, session)
                except Exception as exc:
                    conn.send(("connected", name, f"{type(exc).__name__}: {exc}"))
                else:
                    conn.send(("connected", name, None))
            elif command == "expect":
                name, total = args
                groups[name].expect(total)
            elif command == "status":
                conn.send(("status", args[0], groups[args[0]].totals()))
            elif command == "close":
                break
    finally:
        loop.remove_reader(conn.fileno())
        for group in groups.values():
            for client in group.clients:
                client.close()
        if session is not None:
            await session.close()
        await asyncio.sleep(0.1)
        conn.send(("closed",))


def raw_stalled_socket(host: str, port: int, path: str, headers: dict[str, str]) -> socket.socket:
    """A socket (4 KiB receive buffer) that completes the WebSocket handshake, then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, port))
    sock.sendall(handshake_request(host, port, path, headers))
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        received += chunk
    if b" 101 " not in received.split(b"\r\n", 1)[0]:
        raise ConnectionError(received.split(b"\r\n", 1)[0].decode(errors="replace"))
    return sock
