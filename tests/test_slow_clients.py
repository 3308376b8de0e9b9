"""A client that stops reading never slows the app or the other clients (SPEC §6)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable

import aiohttp
from conftest import KEY, TIMEOUT, async_wait_until, connect, receive_logs

import wslogging

log = logging.getLogger("app.burst")
Configure = Callable[..., wslogging.WebSocketHandler]
BURST = 3000
PADDING = "x" * 2000  # 3000 records of 2 KB: far more than a stalled socket's buffers hold


def stalled_websocket(handler: wslogging.WebSocketHandler) -> socket.socket:
    """A WebSocket opened by hand whose reader then never reads (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", handler.port))
    sock.sendall(
        b"GET /ws/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def read_until(sock: socket.socket, needle: bytes | None) -> bytes:
    """Read until ``needle`` shows up (or, for ``None``, until the server closes)."""
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            if needle is None:
                return data
            break
        data += chunk
        if needle is not None and needle in data:
            return data
    raise AssertionError(f"{needle!r} not received within {TIMEOUT}s")


def log_burst_in_thread() -> threading.Event:
    """Log the burst from an app thread; the event is set when every call has returned."""
    done = threading.Event()

    def app() -> None:
        for n in range(BURST):
            log.info("n=%d %s", n, PADDING)
        done.set()

    threading.Thread(target=app, daemon=True).start()
    return done


async def test_stalled_client_loses_its_oldest_and_is_told(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """With slow_client="drop", a reader that stalls loses its own oldest records (counted in
    client_drops, then a gap(slow_client) when it reads again); the app's logging calls all
    return and a reading client gets every record, in order."""
    handler = configure(client_queue_size=50)
    stalled = stalled_websocket(handler)
    good = await connect(session, handler)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 2)

    done = log_burst_in_thread()
    logs = await receive_logs(good, BURST)
    assert [f"n={n} {PADDING}" for n in range(BURST)] == [r["log"] for r in logs]
    assert await asyncio.to_thread(done.wait, TIMEOUT)
    stats = handler._server.hub.stats()
    assert (2, 0) == (stats["clients"], handler.records_dropped)
    assert stats["client_drops"] > 0

    tail = await asyncio.to_thread(read_until, stalled, f"n={BURST - 1} ".encode())
    assert b'"type":"gap"' in tail
    assert b'"reason":"slow_client"' in tail
    stalled.close()
    await good.close()


async def test_stalled_client_is_disconnected(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """With slow_client="disconnect", a reader that stalls is closed; others go on."""
    handler = configure(client_queue_size=50, slow_client="disconnect")
    stalled = stalled_websocket(handler)
    good = await connect(session, handler)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 2)

    done = log_burst_in_thread()
    logs = await receive_logs(good, BURST)
    assert BURST == len(logs)
    assert await asyncio.to_thread(done.wait, TIMEOUT)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 1)
    await asyncio.to_thread(read_until, stalled, None)  # the server closed it
    stalled.close()
    await good.close()


async def test_stalled_sse_client_does_not_hold_others(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """An SSE reader that stalls loses its oldest; a WebSocket reader gets everything."""
    handler = configure(client_queue_size=50)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.settimeout(TIMEOUT)
    stalled.connect(("127.0.0.1", handler.port))
    stalled.sendall(
        b"GET /api/get-logs-stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n"
    )
    good = await connect(session, handler)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 2)
    done = log_burst_in_thread()
    assert BURST == len(await receive_logs(good, BURST))
    assert await asyncio.to_thread(done.wait, TIMEOUT)
    assert handler._server.hub.stats()["client_drops"] > 0
    tail = await asyncio.to_thread(read_until, stalled, f"n={BURST - 1} ".encode())
    assert b"event: gap\ndata: " in tail
    stalled.close()
    await good.close()
