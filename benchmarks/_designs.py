"""The three server designs compared: wslogging, the simple aiohttp design and websockets.

Each one is a logging handler plus a WebSocket server on 127.0.0.1 in a daemon thread of its
own, behind the same small interface (:class:`Design`), so the benchmarks can drive them alike.
The simple designs send the same compact JSON object per record as wslogging (SPEC §4), so
every design puts the same bytes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import logging
import threading
import urllib.request
from typing import Any

from _common import AUTH, HOST, KEY
from aiohttp import web
from websockets.asyncio.server import ServerConnection, broadcast, serve

import wslogging

# Attributes every LogRecord has; anything else is an ``extra`` and goes to ``fields``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# How long closing a design may take before its daemon thread is left behind.
CLOSE_TIMEOUT = 5.0

NAMES = ("wslogging", "simple", "websockets")
TITLES = {
    "wslogging": "wslogging",
    "simple": "simple aiohttp (await send_str in turn)",
    "websockets": "websockets.broadcast()",
}


def bench_logger(name: str, handler: logging.Handler) -> logging.Logger:
    """A logger that sends INFO and above to ``handler`` only (no propagation)."""
    logger = logging.getLogger(f"bench.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


class JsonFormatter(logging.Formatter):
    """Renders a record as the compact JSON object wslogging sends, with a running id."""

    def __init__(self) -> None:
        """Start the id counter at 1."""
        super().__init__()
        self._ids = itertools.count(1)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of compact JSON."""
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        created = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        return json.dumps(
            {
                "type": "log",
                "id": str(next(self._ids)),
                "log": record.getMessage(),
                "level": record.levelname,
                "levelno": record.levelno,
                "logger": record.name,
                "category": record.name,
                "pid": record.process,
                "time": created.isoformat(timespec="microseconds"),
                "fields": fields,
                "exc": None,
            },
            separators=(",", ":"),
            ensure_ascii=False,
            default=repr,
        )


class Design:
    """A running server design: its logger, where clients connect, and how to stop it."""

    name = ""
    path = "/ws/logs"
    headers: dict[str, str] = AUTH
    port = 0
    logger: logging.Logger

    def client_count(self) -> int:
        """WebSocket clients connected now."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Design-specific counters (drops), for the tables."""
        return {}

    def read_history(self) -> None:
        """Read whatever history the design keeps, as a reconnecting client would."""

    def close(self) -> None:
        """Stop serving (bounded in time)."""
        raise NotImplementedError


class WslDesign(Design):
    """(a) ``wslogging.WebSocketHandler`` as a user would configure it."""

    name = "wslogging"

    def __init__(self, **options: Any) -> None:
        """Start a handler on a free port; ``options`` go to the handler."""
        options.setdefault("max_clients", 5000)
        self.handler = wslogging.WebSocketHandler(port=0, api_keys=[KEY], **options)
        self.port = self.handler.port
        self.logger = bench_logger(self.name, self.handler)

    def _get(self, path: str) -> Any:
        """``GET path`` from the handler's server, as JSON."""
        request = urllib.request.Request(f"{self.handler.url}{path}", headers=AUTH)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.load(response)

    def stats(self) -> dict[str, Any]:
        """``GET /api/stats`` (public), plus the handler's own drop count."""
        stats: dict[str, Any] = self._get("/api/stats")
        stats["records_dropped"] = self.handler.records_dropped
        return stats

    def read_history(self) -> None:
        """``GET /api/logs`` for all of the history (10,000 records at most by default)."""
        self._get("/api/logs?since=0&limit=10000")

    def client_count(self) -> int:
        """Connected clients as ``/api/stats`` reports them."""
        return int(self.stats()["clients"])

    def close(self) -> None:
        """``handler.close()``: deliver what is queued, then close every client."""
        self.handler.close()


class _ThreadLoop:
    """An asyncio loop running in a daemon thread of its own."""

    def __init__(self, name: str) -> None:
        """Start the thread and its loop."""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float = CLOSE_TIMEOUT) -> Any:
        """Run ``coro`` on the loop and wait (bounded) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop and wait (bounded) for the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(CLOSE_TIMEOUT)


class SimpleDesign(Design):
    """(b) aiohttp in a thread; ``emit`` schedules ``broadcast``, which awaits each send in turn.

    The handler's ``emit`` calls ``asyncio.run_coroutine_threadsafe(broadcast(text), loop)``;
    ``broadcast`` awaits ``ws.send_str(text)`` on each ``WebSocketResponse`` of a list.
    """

    name = "simple"

    def __init__(self) -> None:
        """Serve on a free port and attach the handler to this design's logger."""
        self.connections: list[web.WebSocketResponse] = []
        self._thread = _ThreadLoop("simple-server")
        self.port = self._thread.call(self._start())
        handler = _SimpleHandler(self)
        handler.setFormatter(JsonFormatter())
        self.logger = bench_logger(self.name, handler)

    async def _start(self) -> int:
        """Set up the aiohttp app (one WebSocket route) and return the bound port."""
        app = web.Application()
        app.router.add_get(self.path, self._ws)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, 0).start()
        port: int = self._runner.addresses[0][1]
        return port

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        """Keep the connection in the list until it closes."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections.append(ws)
        try:
            async for _ in ws:
                pass
        finally:
            self.connections.remove(ws)
        return ws

    async def broadcast(self, text: str) -> None:
        """Send ``text`` to every connection, one after the other."""
        for ws in list(self.connections):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(text)

    def client_count(self) -> int:
        """Connections in the list."""
        return len(self.connections)

    def close(self) -> None:
        """Clean up the runner (bounded), then stop the loop."""
        try:
            self._thread.call(self._runner.cleanup())
        except Exception as exc:  # a stuck broadcast must not hang the benchmark
            print(f"  (simple design did not close cleanly: {exc!r})")
        self._thread.stop()


class _SimpleHandler(logging.Handler):
    """Formats on the app thread and schedules the broadcast on the server's loop."""

    def __init__(self, design: SimpleDesign) -> None:
        """Remember the design whose loop and connections to use."""
        super().__init__()
        self.design = design

    def emit(self, record: logging.LogRecord) -> None:
        """``run_coroutine_threadsafe(broadcast(text), loop)``, not waiting for the result."""
        try:
            text = self.format(record)
            asyncio.run_coroutine_threadsafe(self.design.broadcast(text), self.design._thread.loop)
        except Exception:
            self.handleError(record)


class WebsocketsDesign(Design):
    """(c) ``websockets``' asyncio server and ``broadcast()``, fed by ``call_soon_threadsafe``."""

    name = "websockets"

    def __init__(self) -> None:
        """Serve on a free port and attach the handler to this design's logger."""
        self._thread = _ThreadLoop("websockets-server")
        self.port = self._thread.call(self._start())
        handler = _WebsocketsHandler(self)
        handler.setFormatter(JsonFormatter())
        self.logger = bench_logger(self.name, handler)

    async def _start(self) -> int:
        """Start ``serve()`` (no compression, as wslogging) and return the bound port."""
        self.server = await serve(self._connection, HOST, 0, compression=None)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _connection(self, ws: ServerConnection) -> None:
        """Hold the connection open until the client goes."""
        await ws.wait_closed()

    def send(self, text: str) -> None:
        """``broadcast(server.connections, text)`` on the server's loop."""
        broadcast(self.server.connections, text)

    def client_count(self) -> int:
        """Open connections."""
        return len(self.server.connections)

    def close(self) -> None:
        """Close the server and its connections (bounded), then stop the loop."""

        async def shut() -> None:
            """``server.close()`` and wait for it."""
            self.server.close()
            await self.server.wait_closed()

        try:
            self._thread.call(shut())
        except Exception as exc:
            print(f"  (websockets design did not close cleanly: {exc!r})")
        self._thread.stop()


class _WebsocketsHandler(logging.Handler):
    """Formats on the app thread and hands the text to the loop with ``call_soon_threadsafe``."""

    def __init__(self, design: WebsocketsDesign) -> None:
        """Remember the design whose loop to use."""
        super().__init__()
        self.design = design

    def emit(self, record: logging.LogRecord) -> None:
        """``loop.call_soon_threadsafe(send, text)``."""
        try:
            text = self.format(record)
            self.design._thread.loop.call_soon_threadsafe(self.design.send, text)
        except Exception:
            self.handleError(record)


def start(name: str, **options: Any) -> Design:
    """Start the design called ``name`` (``options`` apply to wslogging only)."""
    if name == "wslogging":
        return WslDesign(**options)
    if name == "simple":
        return SimpleDesign()
    if name == "websockets":
        return WebsocketsDesign()
    raise ValueError(f"unknown design {name!r}")
