"""Fuzzing a live server: random queries, headers and WebSocket messages, and schemathesis
against /openapi.json. Nothing may answer 5xx or log a traceback, and a well-behaved client
alongside must go on getting every record, in order."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
import websockets.sync.client
from conftest import AUTH, KEY, TIMEOUT, raw_http, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

import wslogging

log = logging.getLogger("app.fuzz")
Configure = Callable[..., wslogging.WebSocketHandler]
EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_NAMES = [
    "level",
    "logger",
    "category",
    "grep",
    "since",
    "limit",
    "timeout",
    "client_id",
    "access_token",
    "ticket",
    "field.status",
    "field.",
]
_PATHS = ["/api/logs", "/api/get-logs-stream", "/api/stats", "/ws/logs", "/api/ticket", "/"]
_UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
_HEADER_NAMES = [
    "Authorization",
    "Last-Event-ID",
    "Origin",
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Accept",
    "Content-Length",
    "Transfer-Encoding",
    "X-Anything",
]

values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "0", "-1", "1e9", "nan", "INFO", "debug", "99999999999", "%00", "\x00"]),
)
queries = st.one_of(
    st.lists(st.tuples(st.one_of(st.sampled_from(_NAMES), st.text(max_size=10)), values)).map(
        urllib.parse.urlencode
    ),
    st.text(max_size=60).map(lambda t: urllib.parse.quote(t, safe="=&;%+")),
)
header_values = st.one_of(
    values,
    st.binary(max_size=40).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b"").decode("latin-1")
    ),
    st.sampled_from(
        [f"Bearer {KEY}", "Bearer", "Bearer ", "bearer x y", "Basic a2V5", "localhost"]
    ),
)
headers = st.dictionaries(
    st.one_of(st.sampled_from(_HEADER_NAMES), st.from_regex(r"\A[A-Za-z0-9-]{1,20}\Z")),
    header_values,
    max_size=6,
)


class WellBehavedClient:
    """A WebSocket client reading every frame in a thread of its own."""

    def __init__(self, handler: wslogging.WebSocketHandler) -> None:
        self.frames: list[dict[str, Any]] = []
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(
            websockets.sync.client.connect(
                f"ws://127.0.0.1:{handler.port}/ws/logs", additional_headers=AUTH
            )
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._ws:
                self.frames.append(json.loads(message))
        except ConnectionClosed:
            pass

    def logs(self) -> list[str]:
        return [f["log"] for f in self.frames if f["type"] == "log"]

    def close(self) -> None:
        self._stack.close()
        self._thread.join(TIMEOUT)


class Watch(logging.Handler):
    """Every record of aiohttp, asyncio and wslogging at WARNING or above, or with a
    traceback: a fuzzed server must produce none."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in ("aiohttp", "asyncio", "wslogging") and (
            record.levelno >= logging.WARNING or record.exc_info
        ):
            self.bad.append(
                f"{record.name} {record.levelname} {record.getMessage()} {record.exc_text}"
            )


@pytest.fixture
def fuzzed(
    configure: Configure, capfd: pytest.CaptureFixture[str]
) -> Iterator[tuple[wslogging.WebSocketHandler, WellBehavedClient]]:
    """A live server with a well-behaved client connected; afterwards, checks that the
    server logged and printed nothing wrong and that the client got every record."""
    handler = configure()
    handler._server._throttle.limit = 10**9  # fuzzed keys must not lock every test out
    watch = Watch()
    logging.getLogger().addHandler(watch)
    client = WellBehavedClient(handler)
    wait_until(lambda: client.frames)  # hello
    yield handler, client
    log.info("the end")
    wait_until(lambda: "the end" in client.logs())
    client.close()
    expected = [r for r in client.logs() if r.startswith("fuzz ")]
    assert [f"fuzz {n}" for n in range(len(expected))] == expected
    assert [] == [f for f in client.frames if f["type"] not in ("hello", "log")]
    ids = [int(f["id"]) for f in client.frames if f["type"] == "log"]
    assert list(range(ids[0], ids[0] + len(ids))) == ids
    assert [] == watch.bad
    written = capfd.readouterr()
    assert ("", "") == (written.out, written.err)


def _status(port: int, request: bytes) -> int | None:
    """The status code the server answers ``request`` with (``None`` if it closed without
    answering, as it may when a body is announced and never sent)."""
    lowered = request.lower()
    half_close = b"\r\ncontent-length:" in lowered or b"\r\ntransfer-encoding" in lowered
    head = raw_http(port, request, end_writing=half_close)
    if not head:
        return None
    assert head.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), head
    return int(head[9:12])


def _request(path: str, query: str, extra: dict[str, str], upgrade: bool = False) -> bytes:
    if path == "/api/get-logs-stream":
        query = "timeout=0.01&" + query  # the first value wins: the stream ends by itself
    lines = [f"{'POST' if path == '/api/ticket' else 'GET'} {path}?{query} HTTP/1.1"]
    all_headers = {"Host": "127.0.0.1", **AUTH, **(_UPGRADE if upgrade else {}), **extra}
    lines += [f"{name}: {value}" for name, value in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def test_fuzzed_queries(fuzzed: tuple[wslogging.WebSocketHandler, WellBehavedClient]) -> None:
    """Random query strings on every endpoint, plain and as WebSocket handshakes: never 5xx."""
    handler, _ = fuzzed
    count = iter(range(10**6))

    @EXAMPLES
    @given(path=st.sampled_from(_PATHS), query=queries, upgrade=st.booleans())
    def check(path: str, query: str, upgrade: bool) -> None:
        log.info("fuzz %d", next(count))
        status = _status(handler.port, _request(path, query, {}, upgrade))
        assert status is None or status < 500, (path, query, status)

    check()


def test_fuzzed_headers(fuzzed: tuple[wslogging.WebSocketHandler, WellBehavedClient]) -> None:
    """Random headers (names, values, raw bytes) on every endpoint: never 5xx."""
    handler, _ = fuzzed
    count = iter(range(10**6))

    @EXAMPLES
    @given(path=st.sampled_from(_PATHS), extra=headers, upgrade=st.booleans())
    def check(path: str, extra: dict[str, str], upgrade: bool) -> None:
        log.info("fuzz %d", next(count))
        status = _status(handler.port, _request(path, "", extra, upgrade))
        assert status is None or status < 500, (path, extra, status)

    check()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
filters = st.fixed_dictionaries(
    {},
    optional={
        "level": json_values | st.sampled_from(["INFO", "error", "5"]),
        "logger": json_values,
        "category": json_values,
        "grep": json_values,
        "fields": json_values,
    },
)
messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["subscribe", "ack", "ping"]) | st.text(max_size=8)},
        optional={"filter": filters | json_values, "id": json_values | st.integers().map(str)},
    ).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=100),
    st.binary(max_size=100),
)


def test_fuzzed_websocket_messages(
    fuzzed: tuple[wslogging.WebSocketHandler, WellBehavedClient],
) -> None:
    """Random WebSocket messages get answers of known types, or a 1008 close for a client
    that keeps sending garbage; the connection never breaks otherwise."""
    handler, _ = fuzzed
    count = iter(range(10**6))
    connection: list[websockets.sync.client.ClientConnection] = []
    stack = contextlib.ExitStack()

    def ws() -> websockets.sync.client.ClientConnection:
        if not connection:
            connection.append(
                stack.enter_context(
                    websockets.sync.client.connect(
                        f"ws://127.0.0.1:{handler.port}/ws/logs?client_id=fuzz",
                        additional_headers=AUTH,
                        # Unbounded: with a full queue, the client would stop reading and
                        # miss the server's close, and a send would wait out close_timeout.
                        max_queue=None,
                    )
                )
            )
        return connection[0]

    @EXAMPLES
    @given(message=messages)
    def check(message: str | bytes) -> None:
        log.info("fuzz %d", next(count))
        conn = ws()
        try:
            conn.send(message)
            conn.send('{"type": "ping"}')
            while True:
                frame = json.loads(conn.recv(timeout=TIMEOUT))
                assert frame["type"] in ("hello", "log", "gap", "error", "subscribed", "pong")
                if frame["type"] == "pong":
                    return
        except ConnectionClosed:
            connection.clear()
        # Closed: only ever for a client that kept sending garbage, or too fast.
        assert conn.close_code == 1008, (conn.close_code, conn.close_reason)

    with stack:
        check()


def test_schemathesis(fuzzed: tuple[wslogging.WebSocketHandler, WellBehavedClient]) -> None:
    """Every operation of /openapi.json, fuzzed by schemathesis with its default checks
    (no 5xx, responses as documented, valid data accepted)."""
    handler, _ = fuzzed
    schema = schemathesis.openapi.from_url(f"{handler.url}/openapi.json")
    count = iter(range(10**6))
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(EXAMPLES, max_examples=40)
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            log.info("fuzz %d", next(count))
            if case.operation.path == "/api/get-logs-stream":
                case.query = {**(case.query or {}), "timeout": "0.01"}
            case.call_and_validate(headers=AUTH, timeout=TIMEOUT)

        check()
