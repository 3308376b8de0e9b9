"""Several processes on one port: forwarding, its authentication, takeover, fork, gunicorn."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import wslogging
from wslogging import _ingest, _rendezvous
from wslogging._rendezvous import RendezvousError

from conftest import (
    AUTH,
    KEY,
    TIMEOUT,
    async_wait_until,
    connect,
    receive_json,
    wait_until,
)

WORKER = str(Path(__file__).with_name("_worker.py"))
log = logging.getLogger("app")

Spawn = Callable[..., subprocess.Popen[str]]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start processes (killed at the end of the test, by pid, if still running)."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


def worker(spawn: Spawn, port: int, interval: float = 0.02) -> tuple[subprocess.Popen[str], str]:
    """A ``tests/_worker.py`` process on ``port``, and the role it took."""
    proc = spawn(WORKER, str(port), str(interval))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate(timeout=TIMEOUT)[1]
    state = json.loads(line)
    assert proc.pid == state["pid"]
    return proc, str(state["role"])


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL, and reap it: a zombie still holds nothing, but is still a pid."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)


async def stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/api/stats", headers=AUTH) as response:
        assert 200 == response.status
        data: dict[str, Any] = await response.json()
        return data


async def logs_until(
    ws: aiohttp.ClientWebSocketResponse, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Frames (of every type) until ``done(frames)``; fails after :data:`TIMEOUT`."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while not done(frames):
            frames.append(await receive_json(ws))
    return frames


def pids_of(frames: list[dict[str, Any]]) -> set[int]:
    return {f["pid"] for f in frames if f["type"] == "log"}


async def test_two_processes_share_one_port(
    configure: Callable[..., wslogging.WebSocketHandler],
    session: aiohttp.ClientSession,
    spawn: Spawn,
) -> None:
    """A second process on the port forwards: records of both pids arrive, in strictly
    increasing ids, and a ``pid`` filter keeps one process's records only."""
    handler = configure()
    child, role = worker(spawn, handler.port)
    assert "forwarding" == role
    ws = await connect(session, handler)
    only_child = await connect(session, handler, f"?pid={child.pid}")
    log.info("from the serving process")
    frames = await logs_until(ws, lambda fs: pids_of(fs) == {os.getpid(), child.pid})
    ids = [int(f["id"]) for f in frames if f["type"] == "log"]
    assert sorted(set(ids)) == ids
    filtered = await logs_until(only_child, lambda fs: len(fs) >= 5)
    assert {child.pid} == pids_of(filtered)
    forwarders = (await stats(session, handler.url))["forwarders"]
    assert [child.pid] == [f["pid"] for f in forwarders if f["connected"]]
    await ws.close()
    await only_child.close()


async def test_forwarder_closes_cleanly_and_delivers(
    configure: Callable[..., wslogging.WebSocketHandler],
    session: aiohttp.ClientSession,
    spawn: Spawn,
) -> None:
    """A forwarding process that exits through logging.shutdown() delivers what it logged,
    and the server's stats show it as gone, with nothing dropped."""
    handler = configure()
    child, _ = worker(spawn, handler.port, interval=0.001)
    assert child.stdin is not None
    history = handler._server.hub.history
    wait_until(lambda: len(history) >= 50)
    _, err = child.communicate("", timeout=TIMEOUT)
    assert 0 == child.returncode, err
    data = await stats(session, handler.url)
    (entry,) = data["forwarders"]
    assert (child.pid, False, 0) == (entry["pid"], entry["connected"], entry["records_dropped"])
    query = f"since=0&limit=10000&pid={child.pid}"
    async with session.get(f"{handler.url}/api/logs?{query}", headers=AUTH) as response:
        ticks = [r["log"] for r in (await response.json())["records"]]
    assert [f"tick {n}" for n in range(len(ticks))] == ticks
    assert len(ticks) == entry["records_received"]
