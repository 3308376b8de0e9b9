"""Tests for wslogging._connections: the connection bound and the deadline to authenticate,
on their own and in the real server against real sockets and processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import selectors
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import AUTH, KEY, TIMEOUT, connect, raw_http, receive_logs

import wslogging
from wslogging._connections import AUTH_DEADLINE, ConnectionTable, connection_bound
from wslogging.server import KEEPALIVE_IDLE

Configure = Callable[..., wslogging.WebSocketHandler]
APP = str(Path(__file__).with_name("_fd_app.py"))
log = logging.getLogger("app")


# -- connection_bound / ConnectionTable --------------------------------------------------------


@pytest.mark.parametrize(
    ("soft", "max_clients", "bound"),
    [(1024, 1000, 256), (65536, 1000, 1064), (None, 1000, 1064), (1024, 10, 74), (2, 10, 1)],
)
def test_bound_is_a_quarter_of_the_descriptors_at_most(
    soft: int | None, max_clients: int, bound: int
) -> None:
    """A quarter of the soft limit, never more than max_clients + 64, at least 1."""
    assert bound == connection_bound(soft, max_clients)


class Peer:
    """A connection's close(), recording that it was called."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_full_table_closes_the_oldest_unauthenticated_connection() -> None:
    """At the bound, a new connection takes the place of the oldest one that has not
    authenticated; authenticated ones keep theirs; both count as refused."""
    table = ConnectionTable(bound=3)
    peers = [Peer() for _ in range(4)]
    first = table.opened(0.0, peers[0].close)
    assert first is not None
    table.authenticated(first)
    for peer in peers[1:3]:
        table.opened(0.0, peer.close)
    assert table.opened(1.0, peers[3].close) is not None
    assert ([False, True, False, False], 3, 1) == (
        [p.closed for p in peers],
        len(table),
        table.refused,
    )


def test_full_table_of_authenticated_connections_refuses_the_new_one() -> None:
    """When every connection held has authenticated, the new one is refused (the caller
    closes it)."""
    table = ConnectionTable(bound=1)
    held = table.opened(0.0, Peer().close)
    assert held is not None
    table.authenticated(held)
    assert (None, 1, 1) == (table.opened(0.0, Peer().close), len(table), table.refused)


def test_sweep_closes_connections_past_their_deadline_only() -> None:
    """Unauthenticated connections are closed at their deadline; authenticated ones never."""
    table = ConnectionTable(bound=10, deadline=5.0)
    late, authed, early = Peer(), Peer(), Peer()
    table.opened(0.0, late.close)
    connection = table.opened(0.0, authed.close)
    assert connection is not None
    table.authenticated(connection)
    table.opened(3.0, early.close)
    table.sweep(5.0)
    assert ((True, False, False), 1, 2) == (
        (late.closed, authed.closed, early.closed),
        table.timed_out,
        len(table),
    )


def test_closed_is_idempotent_and_close_all_closes_everything() -> None:
    """A connection gone is counted off once; close_all closes whatever is left."""
    table = ConnectionTable(bound=10)
    gone, left = Peer(), Peer()
    connection = table.opened(0.0, gone.close)
    assert connection is not None
    table.closed(connection)
    table.closed(connection)
    table.opened(0.0, left.close)
    table.close_all()
    assert (False, True, 0) == (gone.closed, left.closed, len(table))


# -- in the server ---------------------------------------------------------------------------


def _stats(handler: wslogging.WebSocketHandler) -> dict[str, int]:
    return _get_stats(handler.port)


def _get_stats(port: int) -> dict[str, int]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/stats", headers=AUTH)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
        stats: dict[str, int] = json.load(response)
    return stats


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_slow_and_idle_peers_are_closed_at_the_deadline_streams_are_not(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """A peer that sends nothing, and one that sends a request's head a byte a second
    (slowloris), are closed within a second or two of the deadline from accept; a WebSocket
    with the key opened at the same time keeps streaming; /api/stats counts them."""
    began = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", handler.port)) as idle,
        socket.create_connection(("127.0.0.1", handler.port)) as slow,
    ):
        ws = await connect(session, handler)
        slow.sendall(b"GET /api/stats HTTP/1.1\r\n")
        head = iter(b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 100)
        while time.monotonic() - began < AUTH_DEADLINE + 1.5:
            with contextlib.suppress(OSError):  # closed by the server: that is the point
                slow.send(bytes([next(head)]))  # a byte a second, never the end of the head
            await asyncio.sleep(1.0)
        log.warning("still here")
        assert ["still here"] == [r["log"] for r in await receive_logs(ws, 1)]
        await ws.close()
        assert await asyncio.to_thread(_closed_by_server, idle, TIMEOUT)
        assert await asyncio.to_thread(_closed_by_server, slow, TIMEOUT)
        waited = time.monotonic() - began
    assert AUTH_DEADLINE <= waited < AUTH_DEADLINE + 3.0, waited
    stats = await asyncio.to_thread(_stats, handler)
    assert (2, 0) == (stats["connections_timed_out"], stats["connections_refused"])


def test_idle_keep_alive_connection_is_closed(handler: wslogging.WebSocketHandler) -> None:
    """After an answered request with the key, a keep-alive connection idle for
    KEEPALIVE_IDLE seconds is closed by the server."""
    with socket.create_connection(("127.0.0.1", handler.port)) as sock:
        sock.sendall(
            b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {KEY}\r\n\r\n".encode()
        )
        answered = time.monotonic()
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert _closed_by_server(sock, KEEPALIVE_IDLE + TIMEOUT)
        assert KEEPALIVE_IDLE - 0.5 <= time.monotonic() - answered < KEEPALIVE_IDLE + 2.0


def test_malformed_request_gets_the_servers_own_json_error(
    handler: wslogging.WebSocketHandler,
) -> None:
    """A request aiohttp cannot parse gets a short JSON 400 that quotes nothing of it."""
    answer = raw_http(
        handler.port,
        f"GET /api/logs?access_token={KEY}\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
    )
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer
    assert KEY.encode() not in answer
    with socket.create_connection(("127.0.0.1", handler.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x00garbage\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert {"error": "bad_request", "detail": "malformed HTTP request"} == json.loads(
        data.partition(b"\r\n\r\n")[2]
    )


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """This process may open 4096 descriptors (its peers hold 1,100 connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the hard limit on open files ({hard}) is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("many_descriptors")
def test_idle_connections_never_starve_the_app_of_descriptors() -> None:
    """An app with a soft limit of 1024 open files, 1,100 idle connections to its handler:
    its own open() and socket() never fail, the server holds at most a quarter of the
    limit, a client with the key is served meanwhile, and every idle connection is closed
    by the server within 20 s."""
    app = subprocess.Popen(
        [sys.executable, APP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert app.stdout is not None
    try:
        port = json.loads(app.stdout.readline())["port"]
        began = time.monotonic()
        peers = [socket.create_connection(("127.0.0.1", port)) for _ in range(1100)]
        during = _get_stats(port)
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            held = set(peers)
            while held and time.monotonic() - began < 20.0:
                for key, _ in selector.select(timeout=1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    if data == b"":
                        selector.unregister(sock)
                        held.discard(sock)
            closed_after = time.monotonic() - began
        for sock in peers:
            sock.close()
        assert (set(), True) == (held, closed_after < 20.0), closed_after
        after = _get_stats(port)
    finally:
        report_text, _ = app.communicate(timeout=TIMEOUT)
    report = json.loads(report_text)
    assert ([], True) == (report["failures"], report["attempts"] > 100), report
    assert 256 == during["connections_limit"]
    assert during["connections_open"] <= 256
    assert after["connections_refused"] >= 1100 - 256
    assert after["connections_refused"] + after["connections_timed_out"] >= 1100


def test_app_out_of_descriptors_pauses_accepting_then_serves() -> None:
    """When the app has taken every descriptor, accept() fails (EMFILE): the server pauses
    accepting without spinning, and serves the waiting client once the app lets go."""
    script = textwrap.dedent(
        f"""
        import json, logging, resource, socket, time, urllib.request
        import wslogging
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        handler = wslogging.WebSocketHandler(port=0, api_keys=["k"])
        peer = socket.socket()  # its descriptor now; connected once the app has taken the rest
        taken = []
        try:
            while True:
                taken.append(open("/dev/null"))
        except OSError:
            pass
        peer.connect(("127.0.0.1", handler.port))
        peer.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
        cpu = time.thread_time(), time.process_time()
        time.sleep(1.5)  # the server meets EMFILE meanwhile
        spent = time.process_time() - cpu[1] - (time.thread_time() - cpu[0])
        for f in taken:
            f.close()
        peer.settimeout({TIMEOUT})
        answer = peer.recv(4096)
        print(json.dumps({{"answer": answer.decode()[:12], "cpu": spent}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == result.returncode, result.stderr
    report = json.loads(result.stdout)
    assert ("HTTP/1.1 200", True) == (report["answer"], report["cpu"] < 0.5), report
