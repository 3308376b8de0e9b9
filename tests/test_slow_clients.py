"""A client that stops reading never slows the app or the other clients (SPEC §6)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable

import aiohttp
import pytest
import websockets
from conftest import AUTH, KEY, TIMEOUT, async_wait_until, connect, receive_logs, wait_until

import wslogging
import wslogging.server._app
from wslogging.server import WRITE_SLICE

log = logging.getLogger("app.burst")
Configure = Callable[..., wslogging.WebSocketHandler]
BURST = 3000
PADDING = "x" * 2000  # 3000 records of 2 KB: far more than a stalled socket's buffers hold


@pytest.fixture(autouse=True)
def _small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches smaller than the clients' queues here: a batch always fits a client's queue
    whole, and what is under test is what happens to a client that falls behind by many."""
    monkeypatch.setattr(wslogging.server._app, "MIN_BATCH", 25)
    monkeypatch.setattr(wslogging.server._app, "MAX_BATCH", 25)


def stalled_socket(handler: wslogging.WebSocketHandler) -> socket.socket:
    """A connection to the handler with a tiny receive buffer, for a reader that stalls."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", handler.port))
    return sock


def stalled_event_stream(handler: wslogging.WebSocketHandler) -> socket.socket:
    """An SSE request sent by hand whose reader then never reads."""
    sock = stalled_socket(handler)
    sock.sendall(
        b"GET /api/get-logs-stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n"
    )
    return sock


def stalled_websocket(handler: wslogging.WebSocketHandler) -> socket.socket:
    """A WebSocket opened by hand whose reader then never reads."""
    sock = stalled_socket(handler)
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
    stalled = stalled_event_stream(handler)
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


async def test_slow_reader_is_not_taken_for_dead(configure: Configure) -> None:
    """A client that reads slowly, many heartbeats behind, keeps its connection and every
    record: liveness pings wait until the server has nothing else to send."""
    handler = configure(heartbeat=0.3, client_queue_size=BURST)
    async with websockets.connect(
        f"ws://127.0.0.1:{handler.port}/ws/logs",
        additional_headers=AUTH,
    ) as ws:
        assert "hello" == json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"]
        done = log_burst_in_thread()
        received = 0
        started = time.monotonic()
        while received < BURST:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert "log" == frame["type"], frame
            received += 1
            if received % 100 == 0:
                await asyncio.sleep(0.06)  # about 1,700 records a second at most
        assert await asyncio.to_thread(done.wait, TIMEOUT)
        assert time.monotonic() - started > 5 * 0.3  # it really was several heartbeats


async def test_idle_client_that_answers_pings_stays(configure: Configure) -> None:
    """An idle client whose library answers the server's pings is kept."""
    handler = configure(heartbeat=0.2)
    async with websockets.connect(
        f"ws://127.0.0.1:{handler.port}/ws/logs",
        additional_headers=AUTH,
    ) as ws:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
        await asyncio.sleep(6 * 0.2)
        log.info("still here")
        assert "still here" == json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["log"]


async def test_half_open_client_is_dropped(configure: Configure) -> None:
    """A connected peer that never answers pings (half-open) is dropped a few heartbeats on."""
    handler = configure(heartbeat=0.05)
    silent = stalled_websocket(handler)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 1)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 0)
    await asyncio.to_thread(read_until, silent, None)  # the server has closed it
    silent.close()


async def test_reader_that_stops_for_good_is_cut_off(configure: Configure) -> None:
    """A peer whose socket stays full for several heartbeats is cut off, WebSocket and SSE;
    a reading client is unaffected."""
    handler = configure(heartbeat=0.3)
    stalled = stalled_websocket(handler)
    stalled_sse = stalled_event_stream(handler)
    # A client with a reader of its own, so that it answers pings while the test waits.
    async with websockets.connect(
        f"ws://127.0.0.1:{handler.port}/ws/logs", additional_headers=AUTH
    ) as good:
        await asyncio.wait_for(good.recv(), TIMEOUT)  # hello
        await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 3)
        done = log_burst_in_thread()
        frames = [json.loads(await asyncio.wait_for(good.recv(), TIMEOUT)) for _ in range(BURST)]
        assert [] == [f for f in frames if f["type"] != "log"]
        assert await asyncio.to_thread(done.wait, TIMEOUT)
        await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 1)
        log.info("still here")
        assert "still here" == json.loads(await asyncio.wait_for(good.recv(), TIMEOUT))["log"]
    stalled.close()
    stalled_sse.close()


async def test_half_open_client_is_dropped_while_records_flow(configure: Configure) -> None:
    """A peer that never answers pings is dropped even while records keep coming more often
    than once a heartbeat (which kept it from ever being idle)."""
    handler = configure(heartbeat=0.1)
    silent = stalled_websocket(handler)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 1)
    async with asyncio.timeout(TIMEOUT):
        while handler._server.hub.stats()["clients"]:
            log.info("trickle %s", PADDING)
            await asyncio.sleep(0.05)
    silent.close()


async def test_memory_with_stalled_clients_stays_within_the_bounds(configure: Configure) -> None:
    """Four readers that never read (three WebSocket, one SSE) while far more is logged than
    the bounds hold: the process's memory grows by what the app's queue, history, the clients'
    queues and their write buffers may hold, not with what was logged (traced with
    tracemalloc, which sees every thread's allocations)."""
    queue_size, history, client_queue = 200, 100, 50
    handler = configure(queue_size=queue_size, history=history, client_queue_size=client_queue)

    def accepted() -> int:
        return int(handler._server.hub.stats()["records_accepted"])

    stalled = [stalled_websocket(handler) for _ in range(3)] + [stalled_event_stream(handler)]
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == len(stalled))
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]

        def app() -> None:
            # In steps the app's queue can hold, so that every record goes through the hub.
            for n in range(BURST):
                log.info("n=%d %s", n, PADDING)
                if n % 100 == 99:
                    wait_until(lambda: accepted() > n)  # noqa: B023 - called at once

        await asyncio.to_thread(app)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()

    # A record of 2 KB is held at most three times over (its message, JSON and frame); each
    # client has a queue and a batch being written, plus what one write slice leaves buffered.
    record = 3 * (len(PADDING) + 500)
    per_client = 2 * client_queue * record + 2 * WRITE_SLICE
    bound = (queue_size + history) * record + len(stalled) * per_client
    logged = BURST * (len(PADDING) + 500)
    assert peak < bound < len(stalled) * logged / 2, (peak, bound)
    assert 0 == handler.records_dropped
    assert handler._server.hub.client_drops > 0
    for sock in stalled:
        sock.close()
