"""Stress, end to end: many threads and clients at once, connections cut every way, signals."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import aiohttp
from conftest import AUTH, TIMEOUT, async_wait_until

import wslogging
from wslogging._filters import Filter

Configure = Callable[..., wslogging.WebSocketHandler]

# The storm: app threads, records each, and clients that come and go meanwhile.
THREADS = 16
RECORDS_PER_THREAD = 10_000
CLIENTS = 50


# The storm's clients run in a process of their own (tests/_storm_clients.py), as real
# clients do: in this one, every record the server got to them would be parsed under the app
# threads' GIL, and the faster the server drained, the slower the app would look.
STORM_CLIENTS = str(Path(__file__).with_name("_storm_clients.py"))


async def test_storm_of_threads_and_clients(configure: Configure) -> None:
    """16 threads log 10,000 records each while 50 clients connect, read, disconnect and
    reconnect at random (resuming or afresh): every client's ids strictly increase, every id
    it skipped is covered by a gap, the app's threads finish, and every record is either
    accepted or counted as dropped."""
    # A queue that holds the whole storm, so that every record reaches the clients' side.
    total = THREADS * RECORDS_PER_THREAD
    handler = configure(client_queue_size=200, history=2000, queue_size=total, keep_level=None)
    log = logging.getLogger("app.storm")
    # Not asyncio's subprocesses: its child watcher logs (at WARNING, to the root logger,
    # so into the stream under test) about children other tests have reaped.
    clients = subprocess.Popen(  # noqa: ASYNC220 - its pipes are read in threads
        [sys.executable, STORM_CLIENTS, handler.url, str(CLIENTS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert clients.stdin is not None
    assert clients.stdout is not None
    try:
        # Every client has been greeted once before the app logs: one that first connected
        # after the app was done would have nothing to read.
        async with asyncio.timeout(TIMEOUT):
            assert "ready\n" == await asyncio.to_thread(clients.stdout.readline)

        def app(n: int) -> None:
            for i in range(RECORDS_PER_THREAD):
                log.info("thread %d record %d", n, i)

        threads = [threading.Thread(target=app, args=(n,)) for n in range(THREADS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()

        def join_all() -> bool:
            deadline = time.monotonic() + 60
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            return not any(thread.is_alive() for thread in threads)

        assert await asyncio.to_thread(join_all)
        elapsed = time.monotonic() - started
        clients.stdin.write("stop\n")
        clients.stdin.flush()
        async with asyncio.timeout(6 * TIMEOUT):
            result = json.loads(await asyncio.to_thread(clients.stdout.read))
    finally:
        if clients.poll() is None:
            clients.kill()
        clients.communicate(timeout=TIMEOUT)  # closes its pipes

    await async_wait_until(
        lambda: handler._server.hub.stats()["records_accepted"] + handler.records_dropped >= total
    )
    stats = handler._server.hub.stats()
    others = [
        (e.logger, e.log)
        for e in handler._server.hub.history.latest(Filter(), 2000)
        if getattr(e, "logger", "app.storm") != "app.storm"
    ]
    assert total == stats["records_accepted"] + handler.records_dropped, others
    assert [] == result["errors"]
    assert sum(result["records"]), result
    assert all(result["connections"]), result
    print(  # the numbers, for -s
        f"storm: {total} records in {elapsed:.1f}s, {stats['records_accepted']} accepted, "
        f"{handler.records_dropped} dropped at the queue; {sum(result['connections'])} "
        f"connections, {sum(result['records'])} records and {sum(result['gaps'])} gaps received"
    )


# Connections cut with a reset, of every kind; the first WARMUP are not measured.
CYCLES = 1000
WARMUP = 200
_UPGRADE = (
    b"GET /ws/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer test-key\r\n\r\n"
)
_EVENT_STREAM = (
    b"GET /api/get-logs-stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Authorization: Bearer test-key\r\n\r\n"
)


def _reset_cycle(port: int, kind: int) -> None:
    """One connection, cut with a TCP reset (SO_LINGER 0): right after connecting, halfway
    through a request, before the answer, after a WebSocket upgrade, or while an SSE
    stream is open."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if kind == 5:
            sock.sendall(_UPGRADE)
        elif kind == 6:
            sock.sendall(_EVENT_STREAM)
        elif kind == 1:
            sock.sendall(_UPGRADE[:50])
        elif kind == 2:
            sock.sendall(_EVENT_STREAM[:-3])
        elif kind in (3, 4):
            sock.sendall(_UPGRADE if kind == 3 else _EVENT_STREAM)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, head
                head += chunk
            assert head.startswith(b"HTTP/1.1 101" if kind == 3 else b"HTTP/1.1 200"), head


def _reset_cycles(port: int, start: int, stop: int) -> None:
    for n in range(start, stop):
        _reset_cycle(port, n % 7)


def _traced_after_settling(handler: wslogging.WebSocketHandler) -> int:
    """Bytes traced once every connection is gone (waiting for that) and garbage collected."""
    deadline = time.monotonic() + TIMEOUT
    while handler._server.hub.stats()["clients"] or len(handler._server._connections):
        assert time.monotonic() < deadline, handler._server.hub.stats()
        time.sleep(0.01)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_connections_reset_every_way_leave_nothing_behind(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """1,000 connections reset at every stage (raw sockets with SO_LINGER 0: after connecting,
    mid-request, before the answer, after the upgrade, with an SSE stream open): afterwards
    /api/stats shows no client, memory traced after the warm-up does not grow with the rest,
    and nothing was logged at WARNING or above."""
    handler = configure()
    logging.getLogger().setLevel(logging.WARNING)  # the server's DEBUG lines are not the point
    complaints: list[logging.LogRecord] = []
    watch = logging.Handler(logging.WARNING)
    watch.emit = complaints.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(watch)
    tracemalloc.start()
    try:
        await asyncio.to_thread(_reset_cycles, handler.port, 0, WARMUP)
        before = await asyncio.to_thread(_traced_after_settling, handler)
        await asyncio.to_thread(_reset_cycles, handler.port, WARMUP, CYCLES)
        after = await asyncio.to_thread(_traced_after_settling, handler)
    finally:
        tracemalloc.stop()
    async with session.get(f"{handler.url}/api/stats", headers=AUTH) as response:
        assert 0 == (await response.json())["clients"]
    print(f"reset cycles: traced {before} bytes after warm-up, {after} after {CYCLES}")
    assert after - before < 64 * 1024
    assert [] == [f"{r.name}: {r.getMessage()}" for r in complaints]


def test_signal_storm_while_threads_log() -> None:
    """A storm of SIGUSR1 whose handler logs, while five threads log, never deadlocks (a
    subprocess under faulthandler, so a deadlock is a traceback and exit, not a hung suite):
    every record is streamed, none dropped, and close() twice plus logging.shutdown() at
    exit are harmless."""
    script = textwrap.dedent(
        """\
        import faulthandler, logging, os, signal, threading, time
        from wslogging import WebSocketHandler
        faulthandler.dump_traceback_later(30, exit=True)
        handler = WebSocketHandler(port=0, api_keys="k", history=500_000, queue_size=500_000)
        log = logging.getLogger("app")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        handled = 0
        def on_signal(*_):
            global handled
            handled += 1
            log.warning("signal %d", handled)
        signal.signal(signal.SIGUSR1, on_signal)
        stop = threading.Event()
        sent = 0
        def storm():
            global sent
            while not stop.is_set():
                for _ in range(50):
                    os.kill(os.getpid(), signal.SIGUSR1)
                sent += 50
                time.sleep(0.0005)
        def app(n):
            for i in range(20_000):
                log.info("thread %d record %d", n, i)
        kicker = threading.Thread(target=storm)
        kicker.start()
        threads = [threading.Thread(target=app, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        app(4)  # the main thread, where the signal handler runs, logs too
        for thread in threads:
            thread.join()
        stop.set()
        kicker.join()
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        log.info("end")
        history = handler._server.hub.history
        deadline = time.monotonic() + 20
        while history.get(history.last_id) is None or history.get(history.last_id).log != "end":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        streamed = len(history)
        handler.close()
        handler.close()
        print(handled, streamed, handler.records_dropped, sent)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=90, check=False
    )
    assert (0, "") == (result.returncode, result.stderr)
    handled, streamed, dropped, sent = map(int, result.stdout.split())
    # Signals that arrive while one is pending are merged into it: fewer are handled than sent.
    print(f"signal storm: {sent} signals sent, {handled} handled, {streamed} records streamed")
    assert (5 * 20_000 + handled + 1, 0) == (streamed, dropped)
    assert handled > 20
