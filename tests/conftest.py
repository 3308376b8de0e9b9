"""Shared fixtures: a real handler built through dictConfig on port 0, and clients for it."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

import wslogging

# The one timeout every wait in the suite uses: generous, since CI machines are noisy.
TIMEOUT = 10.0
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(autouse=True, scope="session")
def _private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Rendezvous files (see wslogging._rendezvous) go to a directory of the test run's own,
    for this process and every process it starts, never to the user's real one."""
    path = tmp_path_factory.mktemp("runtime")
    path.chmod(0o700)
    saved = os.environ.get("WSLOGGING_RUNTIME_DIR")
    os.environ["WSLOGGING_RUNTIME_DIR"] = str(path)
    yield
    if saved is None:
        del os.environ["WSLOGGING_RUNTIME_DIR"]
    else:
        os.environ["WSLOGGING_RUNTIME_DIR"] = saved


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put the logging tree back as it was, closing any handler a test added."""
    root = logging.getLogger()
    saved_root = (root.level, root.handlers[:], root.disabled)
    saved = {
        name: (lg.level, lg.handlers[:], lg.propagate, lg.disabled)
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    yield
    for handler in set(root.handlers) - set(saved_root[1]):
        handler.close()
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    root.disabled = saved_root[2]
    for name, lg in list(logging.root.manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger):
            continue
        for handler in lg.handlers:
            if name not in saved or handler not in saved[name][1]:
                handler.close()
        if name in saved:
            lg.level, lg.handlers[:], lg.propagate, lg.disabled = saved[name]
        else:
            lg.handlers.clear()
            lg.setLevel(logging.NOTSET)
            lg.propagate = True
            lg.disabled = False


def dict_config(**options: Any) -> dict[str, Any]:
    """The dictConfig a user would write: one WebSocketHandler on the root logger."""
    handler: dict[str, Any] = {"class": "wslogging.WebSocketHandler", "port": 0}
    handler.update(options)
    handler.setdefault("api_keys", [KEY])
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"live": handler},
        "root": {"level": "DEBUG", "handlers": ["live"]},
        # The test's own event loop logs "Using selector" at DEBUG, and the websockets client
        # every frame it gets (which, streamed back to it, would never end): keep them out.
        # asyncio's child watcher may warn, at any moment, of a child another test's process
        # handling reaped first: a stray record in a stream a test counts exactly.
        "loggers": {"asyncio": {"level": "ERROR"}, "websockets": {"level": "WARNING"}},
    }


def live_handler() -> wslogging.WebSocketHandler:
    """The WebSocketHandler on the root logger."""
    (handler,) = [
        h for h in logging.getLogger().handlers if isinstance(h, wslogging.WebSocketHandler)
    ]
    return handler


@pytest.fixture
def configure() -> Callable[..., wslogging.WebSocketHandler]:
    """Configure logging through dictConfig with the given handler options; returns it."""

    def make(**options: Any) -> wslogging.WebSocketHandler:
        logging.config.dictConfig(dict_config(**options))
        return live_handler()

    return make


@pytest.fixture
def handler(configure: Callable[..., wslogging.WebSocketHandler]) -> wslogging.WebSocketHandler:
    """A handler with the default options, on port 0, key :data:`KEY`."""
    return configure()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


def wait_until(condition: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.005)


async def async_wait_until(condition: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    """:func:`wait_until` for async tests: yields to the loop between polls."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame as JSON; fails on close or after :data:`TIMEOUT`."""
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is aiohttp.WSMsgType.TEXT, (message.type, message.data, message.extra)
    frame: dict[str, Any] = json.loads(message.data)
    return frame


async def receive_logs(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next ``count`` ``log`` frames (other frame types are skipped)."""
    logs: list[dict[str, Any]] = []
    while len(logs) < count:
        frame = await receive_json(ws)
        if frame["type"] == "log":
            logs.append(frame)
    return logs


async def connect(
    session: aiohttp.ClientSession, handler: wslogging.WebSocketHandler, query: str = ""
) -> aiohttp.ClientWebSocketResponse:
    """An authenticated WebSocket whose ``hello`` has been read."""
    ws = await session.ws_connect(f"{handler.url}/ws/logs{query}", headers=AUTH)
    hello = await receive_json(ws)
    assert hello["type"] == "hello"
    return ws


async def read_sse(response: aiohttp.ClientResponse) -> list[dict[str, str]]:
    """Parse a whole (finite) SSE body into its events (blocks with data): field → value."""
    text = (await response.read()).decode()
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value
        if "data" in event:
            events.append(event)
    return events


def raw_http(port: int, request: bytes, *, end_writing: bool = False) -> bytes:
    """Send ``request`` as is on a fresh connection and read the answer's head (``b""`` if
    the server closed without one). ``end_writing`` ends our side after the request, so that
    a server waiting for more (a body announced, never sent) is not left waiting."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        if end_writing:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data
