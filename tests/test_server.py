"""End to end: the real server on port 0, configured through dictConfig, with real clients."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import websockets
from conftest import (
    AUTH,
    KEY,
    TIMEOUT,
    async_wait_until,
    connect,
    raw_http,
    read_sse,
    receive_json,
    receive_logs,
)
from openapi_spec_validator import validate

import wslogging
from wslogging._hub import BATCH
from wslogging.server import new_event_loop
from wslogging.server._websocket import HANDSHAKE_HEADERS

log = logging.getLogger("app.worker")
Configure = Callable[..., wslogging.WebSocketHandler]


# -- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing API key"), ({"Authorization": "Bearer nope"}, "invalid API key")],
)
async def test_ws_without_valid_key_is_closed_4401(
    handler: wslogging.WebSocketHandler,
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    reason: str,
) -> None:
    """A WebSocket without a valid key is accepted, then closed 4401 with a reason naming the
    problem; no record is sent, though one is waiting for since=0."""
    log.info("secret record")
    async with session.ws_connect(f"{handler.url}/ws/logs?since=0", headers=headers) as ws:
        message = await ws.receive(timeout=TIMEOUT)
        assert (aiohttp.WSMsgType.CLOSE, 4401, reason) == (
            message.type,
            message.data,
            message.extra,
        )


async def test_ws_accepts_header_and_query_token(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """Both the Bearer header and ?access_token= authenticate a WebSocket."""
    async with session.ws_connect(f"{handler.url}/ws/logs", headers=AUTH) as ws:
        assert "hello" == (await receive_json(ws))["type"]
    async with session.ws_connect(f"{handler.url}/ws/logs?access_token={KEY}") as ws:
        assert "hello" == (await receive_json(ws))["type"]


async def test_query_token_can_be_refused(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """With allow_query_token=False, ?access_token= is not a key."""
    handler = configure(allow_query_token=False)
    async with session.get(f"{handler.url}/api/logs?access_token={KEY}") as response:
        assert 401 == response.status
    async with session.ws_connect(f"{handler.url}/ws/logs?access_token={KEY}") as ws:
        message = await ws.receive(timeout=TIMEOUT)
        assert (4401, "missing API key") == (message.data, message.extra)


@pytest.mark.parametrize("path", ["/api/logs", "/api/get-logs-stream", "/api/stats"])
async def test_http_without_key_is_401(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession, path: str
) -> None:
    """HTTP endpoints answer 401 with WWW-Authenticate: Bearer and a JSON body."""
    async with session.get(handler.url + path, headers={"Authorization": "Bearer x"}) as response:
        body = await response.json()
        assert (401, "Bearer") == (response.status, response.headers["WWW-Authenticate"])
        assert {"error": "unauthorized", "detail": "invalid API key"} == body


async def test_healthz_needs_no_key(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """/healthz is public."""
    async with session.get(f"{handler.url}/healthz") as response:
        assert {"status": "ok"} == await response.json()


def _raw_http(handler: wslogging.WebSocketHandler, request: bytes) -> bytes:
    return raw_http(handler.port, request)


def test_non_ascii_key_is_401_not_500(handler: wslogging.WebSocketHandler) -> None:
    """A key with non-ASCII (even non-UTF-8) bytes is compared as bytes: 401, never 500."""
    for token in ("clé-ünïcode".encode(), b"\xff\xfe\x80"):
        request = (
            b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + token
            + b"\r\nConnection: close\r\n\r\n"
        )
        assert _raw_http(handler, request).startswith(b"HTTP/1.1 401")


async def test_non_ascii_configured_key_works(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """A configured key with any characters authenticates when sent as UTF-8."""
    handler = configure(api_keys=["ключ-🔑"])
    async with session.get(
        f"{handler.url}/api/stats", params={"access_token": "ключ-🔑"}
    ) as response:
        assert 200 == response.status


def test_foreign_host_header_is_refused(handler: wslogging.WebSocketHandler) -> None:
    """While bound to loopback, a request naming another Host gets 403 (DNS rebinding)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    assert _raw_http(handler, request).startswith(b"HTTP/1.1 403")


async def test_disallowed_origin_is_refused(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """With allowed_origins set, a WebSocket handshake from another Origin gets 403."""
    handler = configure(allowed_origins="http://good.example")
    with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
        await session.ws_connect(
            f"{handler.url}/ws/logs", headers={**AUTH, "Origin": "http://evil.example"}
        )
    assert 403 == excinfo.value.status
    ws = await session.ws_connect(
        f"{handler.url}/ws/logs", headers={**AUTH, "Origin": "http://good.example"}
    )
    assert "hello" == (await receive_json(ws))["type"]
    await ws.close()


class _Capture(logging.Handler):
    """Keeps every record it gets, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_credentials_never_reach_any_output(
    configure: Configure, session: aiohttp.ClientSession, capfd: pytest.CaptureFixture[str]
) -> None:
    """Keys and tickets, right or wrong, in headers or URLs, through failed handshakes, bad
    requests and throttling, appear in no log record of any logger (aiohttp's and asyncio's
    at DEBUG, the server's loop in debug mode), on neither stdout nor stderr, and in no error
    the server sends."""
    good, wrong = "good-key-7f3a9c", "wrong-key-5d1e8b"
    handler = configure(api_keys=[good])
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    for name in ("aiohttp", "asyncio", "wslogging"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    loop = handler._server._loop
    assert loop is not None
    loop.call_soon_threadsafe(loop.set_debug, True)
    async with session.post(f"{handler.url}/api/ticket", headers=_bearer(good)) as response:
        ticket = (await response.json())["ticket"]
    sent: list[bytes] = []
    base = handler.url
    # Browsers often carry a token as a WebSocket subprotocol; aiohttp warns, quoting it.
    async with session.ws_connect(
        f"{base}/ws/logs?access_token={good}", protocols=("bearer", good)
    ) as ws:
        assert "hello" == (await receive_json(ws))["type"]
    for url in (
        f"{base}/ws/logs?access_token={wrong}",
        f"{base}/ws/logs?ticket={ticket}",  # used once here, refused the second time
        f"{base}/ws/logs?ticket={ticket}",
        f"{base}/ws/logs?ticket={wrong}",
    ):
        async with session.ws_connect(url) as ws:
            message = await ws.receive(timeout=TIMEOUT)
            sent.append(str((message.data, message.extra)).encode())
    for url, headers in (
        (f"{base}/api/logs?access_token={wrong}", {}),
        (f"{base}/api/logs?ticket={wrong}&since=x", {}),
        (f"{base}/api/stats", _bearer(wrong)),
        (f"{base}/api/logs?access_token={good}&level=nonsense", {}),
        (f"{base}/api/logs?since=nonsense", _bearer(good)),
        (f"{base}/api/get-logs-stream?access_token={good}&limit=nonsense", {}),
        (f"{base}/ws/logs?access_token={good}&client_id={'c' * 200}", {}),
    ):
        async with session.get(url, headers=headers) as response:
            sent.append(await response.read())
    ws = await session.ws_connect(f"{base}/ws/logs?access_token={good}")
    await ws.send_str('{"type": "ack", "id": "nonsense"}')
    await ws.send_str('{"type": "subscribe", "filter": {"level": "nonsense"}}')
    await ws.send_str("nonsense")
    for _ in range(4):
        sent.append(str((await ws.receive(timeout=TIMEOUT)).data).encode())
    await ws.close()
    sent.append(
        await asyncio.to_thread(
            _raw_http,
            handler,
            f"GET /api/logs?access_token={good} HTTP/1.1\r\nHost: evil.example\r\n\r\n".encode(),
        )
    )
    for request in (
        f"GET /api/logs?access_token={good} HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
        f"GET /api/logs?access_token={good}\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        f"GET /api/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {wrong}\x7f\r\n\r\n",
    ):
        # Requests aiohttp cannot parse: its 400 may quote the request line back to the
        # sender on the same connection, but nothing of it is logged.
        answer = await asyncio.to_thread(_raw_http, handler, request.encode())
        assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer
    for _ in range(40):  # into the 429s
        async with session.get(f"{base}/api/stats", headers=_bearer(wrong)) as response:
            sent.append(await response.read())
    assert 429 == response.status
    async with session.get(f"{base}/healthz") as response:  # the server is still serving
        assert 200 == response.status

    written = capfd.readouterr()
    outputs = [*capture.lines, written.out, written.err, *(b.decode("latin-1") for b in sent)]
    for secret in (good, wrong, ticket):
        assert [] == [text for text in outputs if secret in text]
    # The requests aiohttp could not parse were logged, at DEBUG, by the class of error only.
    assert 3 == sum("wslogging.http DEBUG Error handling request" in x for x in capture.lines)


@pytest.mark.parametrize("name", HANDSHAKE_HEADERS)
def test_handshake_header_with_bytes_beyond_ascii_is_400(
    handler: wslogging.WebSocketHandler, name: str
) -> None:
    """A WebSocket handshake header holding bytes beyond ASCII gets 400 naming it (aiohttp
    alone would answer 500 and log a traceback)."""
    headers = {
        "Host": "127.0.0.1",
        "Authorization": f"Bearer {KEY}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        name: "a\xff\xfeb",
    }
    request = "GET /ws/logs HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    answer = _raw_http(handler, (request + "Connection: close\r\n\r\n").encode("latin-1"))
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert f'"detail": "{name} must be ASCII"'.encode() in answer


# -- the WebSocket stream ----------------------------------------------------------------------


async def test_hello_then_records_in_order(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """hello comes first, then every record in order, shaped as SPEC §4."""
    ws = await session.ws_connect(f"{handler.url}/ws/logs", headers=AUTH)
    hello = await receive_json(ws)
    assert ["epoch", "filter", "last_id", "server", "type"] == sorted(hello)
    assert hello["server"] == f"wslogging/{wslogging.__version__}"
    for n in range(50):
        log.info("record %d", n, extra={"job": n, "category": "jobs" if n % 2 else None})
    logs = await receive_logs(ws, 50)
    assert [f"record {n}" for n in range(50)] == [r["log"] for r in logs]
    ids = [int(r["id"]) for r in logs]
    assert ids == sorted(ids)
    assert len(set(ids)) == 50
    first = logs[1]
    assert {
        "type",
        "id",
        "log",
        "level",
        "levelno",
        "logger",
        "category",
        "pid",
        "time",
        "fields",
        "exc",
    } == set(first)
    assert ("INFO", 20, "app.worker", "jobs", {"job": 1}, None) == (
        first["level"],
        first["levelno"],
        first["logger"],
        first["category"],
        first["fields"],
        first["exc"],
    )
    assert "app.worker" == logs[0]["category"]
    await ws.close()


async def test_traceback_goes_to_exc(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """log.exception() sends the message as log and the traceback as exc."""
    ws = await connect(session, handler)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    (record,) = await receive_logs(ws, 1)
    assert "it failed" == record["log"]
    assert "ValueError: boom" in record["exc"]
    assert "Traceback" in record["exc"]
    await ws.close()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("level=warning", ["db warn", "billing error"]),
        ("level=40", ["billing error"]),
        ("logger=app", ["app info", "db warn"]),
        ("logger=app.db&logger=billing", ["db warn", "billing error"]),
        ("category=payments", ["billing error"]),
        ("grep=info", ["app info"]),
        ("field.status=500", ["billing error"]),
        ("field.user=ann&level=INFO", ["app info"]),
    ],
)
async def test_ws_filters(
    handler: wslogging.WebSocketHandler,
    session: aiohttp.ClientSession,
    query: str,
    expected: list[str],
) -> None:
    """Each query filter selects exactly the records it names."""
    ws = await connect(session, handler, "?" + query)
    _log_filter_sample()
    assert expected == [r["log"] for r in await _logs_until_marker(ws)]
    await ws.close()


def _log_filter_sample() -> None:
    logging.getLogger("app").info("app info", extra={"user": "ann", "status": 200})
    logging.getLogger("app.db").warning("db warn", extra={"user": "bob"})
    logging.getLogger("application").debug("application debug")
    logging.getLogger("billing").error(
        "billing error", extra={"category": "payments", "status": 500}
    )
    # Matches every filter above, so the reader knows the sample is over.
    logging.getLogger("app.db").critical(
        "end info", extra={"category": "payments", "status": 500, "user": "ann"}
    )


async def _logs_until_marker(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, object]]:
    logs = []
    while True:
        (record,) = await receive_logs(ws, 1)
        if record["log"] == "end info":
            return logs
        logs.append(record)


async def test_bad_filter_is_400(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """A malformed filter or since is refused with 400 and a reason, before any stream."""
    for query in ("level=loud", "since=yesterday"):
        async with session.get(
            f"{handler.url}/api/get-logs-stream?{query}", headers=AUTH
        ) as response:
            assert 400 == response.status
            assert "bad_request" == (await response.json())["error"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
            await session.ws_connect(f"{handler.url}/ws/logs?{query}", headers=AUTH)
        assert 400 == excinfo.value.status


async def test_ws_since_replays_exactly_what_followed(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """Reconnecting with since=<last id seen> gets every later record once, then live ones."""
    ws = await connect(session, handler)
    for n in range(10):
        log.info("r%d", n)
    seen = await receive_logs(ws, 5)
    await ws.close()
    for n in range(10, 15):
        log.info("r%d", n)
    ws = await connect(session, handler, f"?since={seen[-1]['id']}")
    replay = await receive_logs(ws, 10)
    log.info("r15")
    (live,) = await receive_logs(ws, 1)
    assert [f"r{n}" for n in range(5, 16)] == [r["log"] for r in [*replay, live]]
    await ws.close()


async def test_since_zero_replays_all_history(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """since=0 replays everything still held, with no gap."""
    for n in range(3):
        log.info("early %d", n)
    ws = await session.ws_connect(f"{handler.url}/ws/logs?since=0", headers=AUTH)
    frames = [await receive_json(ws) for _ in range(4)]
    assert ["hello", "log", "log", "log"] == [f["type"] for f in frames]
    await ws.close()


async def test_forgotten_since_gets_gap_then_oldest(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """An id already gone from history gets gap(history) with the count, then what is left."""
    handler = configure(history=5)
    ws = await connect(session, handler)
    log.info("first")
    (first,) = await receive_logs(ws, 1)
    await ws.close()
    for n in range(10):
        log.info("n%d", n)
    # All of them in history (and half of them gone from it) before the client comes back.
    await async_wait_until(lambda: handler._server.hub.stats()["records_accepted"] == 11)
    ws = await connect(session, handler, f"?since={first['id']}")
    assert {"type": "gap", "missed": 5, "reason": "history"} == await receive_json(ws)
    assert [f"n{n}" for n in range(5, 10)] == [r["log"] for r in await receive_logs(ws, 5)]
    await ws.close()


async def test_id_from_an_earlier_run_gets_restart_gap(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """An id issued by a previous run of the server gets gap(restart), then history."""
    handler = configure()
    ws = await connect(session, handler)
    log.info("old run")
    (old,) = await receive_logs(ws, 1)
    await ws.close()
    handler = configure()  # a fresh server: dictConfig closes the old handler
    log.info("new run")
    ws = await connect(session, handler, f"?since={old['id']}")
    assert {"type": "gap", "missed": None, "reason": "restart"} == await receive_json(ws)
    assert ["new run"] == [r["log"] for r in await receive_logs(ws, 1)]
    await ws.close()


async def test_ping_subscribe_and_errors(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """ping → pong; subscribe replaces the filter live; malformed input → error, stream stays."""
    ws = await connect(session, handler)
    await ws.send_str('{"type": "ping"}')
    assert {"type": "pong"} == await receive_json(ws)
    for bad in ("not json", "[]", '{"type": "dance"}', '{"type": "subscribe", "filter": 3}'):
        await ws.send_str(bad)
        assert "error" == (await receive_json(ws))["type"]
    await ws.send_bytes(b"\x00")
    assert "error" == (await receive_json(ws))["type"]
    await ws.send_str("x" * 100_000)
    assert "error" == (await receive_json(ws))["type"]
    await ws.send_json({"type": "subscribe", "filter": {"level": "ERROR", "logger": "app"}})
    subscribed = await receive_json(ws)
    assert ("subscribed", 40, ["app"]) == (
        subscribed["type"],
        subscribed["filter"]["level"],
        subscribed["filter"]["logger"],
    )
    log.info("filtered out")
    log.error("kept")
    assert ["kept"] == [r["log"] for r in await receive_logs(ws, 1)]
    await ws.close()


async def test_independent_websockets_client(
    handler: wslogging.WebSocketHandler,
) -> None:
    """The `websockets` library, a second implementation of RFC 6455, reads the stream."""
    async with websockets.connect(
        f"ws://127.0.0.1:{handler.port}/ws/logs?level=INFO", additional_headers=AUTH
    ) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert "hello" == hello["type"]
        log.debug("skipped")
        log.info("héllo wörld", extra={"n": 1})
        record = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert ("héllo wörld", {"n": 1}) == (record["log"], record["fields"])


async def test_broadcast_reaches_every_client(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """Five WebSocket clients and one SSE client each get all records and broadcasts."""
    sockets = [await connect(session, handler) for _ in range(5)]
    sse = await session.get(f"{handler.url}/api/get-logs-stream?limit=101", headers=AUTH)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 6)
    for n in range(100):
        log.info("m%d", n)
    await wslogging.broadcast_log("to all", level="WARNING", category="ops", deploy=42)
    expected = [f"m{n}" for n in range(100)] + ["to all"]
    for ws in sockets:
        logs = await receive_logs(ws, 101)
        assert expected == [r["log"] for r in logs]
        assert ("WARNING", "ops", {"deploy": 42}) == (
            logs[-1]["level"],
            logs[-1]["category"],
            logs[-1]["fields"],
        )
        await ws.close()
    events = await read_sse(sse)
    assert expected == [json.loads(e["data"])["log"] for e in events]


async def test_max_clients_gives_503(configure: Configure, session: aiohttp.ClientSession) -> None:
    """Connections beyond max_clients get 503."""
    handler = configure(max_clients=1)
    ws = await connect(session, handler)
    async with session.get(f"{handler.url}/api/get-logs-stream", headers=AUTH) as response:
        assert 503 == response.status
    await ws.close()
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 0)
    async with session.get(
        f"{handler.url}/api/get-logs-stream?timeout=0.05", headers=AUTH
    ) as response:
        assert 200 == response.status


# -- Server-Sent Events -------------------------------------------------------------------------


async def test_sse_framing_and_headers(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """SSE starts with retry:, each record is id: + one data: line; headers per SPEC §5."""
    log.info("line one\n\nid: forged\r\ndata: evil")
    async with session.get(
        f"{handler.url}/api/get-logs-stream?since=0&limit=1", headers=AUTH
    ) as response:
        assert "text/event-stream" == response.headers["Content-Type"]
        assert "no-cache" == response.headers["Cache-Control"]
        assert "no" == response.headers["X-Accel-Buffering"]
        body = await response.read()
    assert body.startswith(b"retry: ")
    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert 2 == len(events)
    id_line, data_line = events[1].split(b"\n")
    record = json.loads(data_line.removeprefix(b"data: "))
    assert (id_line, "line one\n\nid: forged\r\ndata: evil") == (
        b"id: " + record["id"].encode(),
        record["log"],
    )


async def test_sse_last_event_id_resumes_exactly(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """Last-Event-ID (which wins over ?since=) gives exactly the records after it."""
    for n in range(20):
        log.info("s%d", n)
    async with session.get(
        f"{handler.url}/api/get-logs-stream?since=0&limit=7", headers=AUTH
    ) as response:
        first = await read_sse(response)
    async with session.get(
        f"{handler.url}/api/get-logs-stream?since=0&limit=13",
        headers={**AUTH, "Last-Event-ID": first[-1]["id"]},
    ) as response:
        second = await read_sse(response)
    logs = [json.loads(e["data"])["log"] for e in first + second]
    assert [f"s{n}" for n in range(20)] == logs


async def test_sse_filters(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """The query filters apply to SSE."""
    _log_filter_sample()
    async with session.get(
        f"{handler.url}/api/get-logs-stream?since=0&field.status=500&limit=2",
        headers=AUTH,
    ) as response:
        events = await read_sse(response)
    assert ["billing error", "end info"] == [json.loads(e["data"])["log"] for e in events]


async def test_sse_heartbeat_comments(configure: Configure, session: aiohttp.ClientSession) -> None:
    """An idle SSE stream sends ': ping' comment lines every heartbeat, each with the id the
    stream has been examined up to (here: the server's last id, since nothing was logged)."""
    handler = configure(heartbeat=0.05)
    async with session.get(
        f"{handler.url}/api/get-logs-stream?timeout=0.5", headers=AUTH
    ) as response:
        body = await response.read()
    last = handler._server.hub.history.last_id
    assert body.count(f": ping\nid: {last}\n\n".encode()) >= 2


# -- JSON endpoints -------------------------------------------------------------------------


async def test_api_logs_pages(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """/api/logs gives the newest records, or those after since, with last_id to go on from."""
    for n in range(30):
        log.log(logging.WARNING if n % 3 == 0 else logging.INFO, "p%d", n)
    async with session.get(f"{handler.url}/api/logs?limit=5", headers=AUTH) as response:
        newest = await response.json()
    assert [f"p{n}" for n in range(25, 30)] == [r["log"] for r in newest["records"]]
    async with session.get(
        f"{handler.url}/api/logs?since=0&limit=4&level=WARNING", headers=AUTH
    ) as response:
        page = await response.json()
    assert ["p0", "p3", "p6", "p9"] == [r["log"] for r in page["records"]]
    assert page["records"][-1]["id"] == page["last_id"]
    async with session.get(
        f"{handler.url}/api/logs?since={page['last_id']}&level=WARNING", headers=AUTH
    ) as response:
        rest = await response.json()
    assert [f"p{n}" for n in range(12, 30, 3)] == [r["log"] for r in rest["records"]]
    assert (newest["last_id"], None) == (rest["last_id"], rest["gap"])


async def test_stats(handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession) -> None:
    """/api/stats counts clients, accepted and dropped records and history."""
    ws = await connect(session, handler)
    for n in range(3):
        log.info("x%d", n)
    await receive_logs(ws, 3)
    async with session.get(f"{handler.url}/api/stats", headers=AUTH) as response:
        stats = await response.json()
    assert {
        "clients": 1,
        "records_accepted": 3,
        "records_dropped": 0,
        "client_drops": 0,
        "history_size": 3,
    }.items() <= stats.items()
    await ws.close()


# -- tickets and throttling -------------------------------------------------------------------


async def _ticket(session: aiohttp.ClientSession, handler: wslogging.WebSocketHandler) -> str:
    async with session.post(f"{handler.url}/api/ticket", headers=AUTH) as response:
        body = await response.json()
    assert 30 == body["expires_in"]
    ticket: str = body["ticket"]
    return ticket


async def test_ticket_works_once_for_ws_and_sse(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """POST /api/ticket (with the key) gives a ticket that opens one WS or SSE stream, once."""
    ticket = await _ticket(session, handler)
    async with session.ws_connect(f"{handler.url}/ws/logs?ticket={ticket}") as ws:
        assert "hello" == (await receive_json(ws))["type"]
    async with session.ws_connect(f"{handler.url}/ws/logs?ticket={ticket}") as ws:
        message = await ws.receive(timeout=TIMEOUT)
        assert (4401, "invalid or expired ticket") == (message.data, message.extra)
    ticket = await _ticket(session, handler)
    url = f"{handler.url}/api/get-logs-stream?ticket={ticket}&timeout=0.05"
    async with session.get(url) as response:
        assert 200 == response.status
    async with session.get(url) as response:
        assert 401 == response.status


async def test_ticket_needs_the_key(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """No ticket without the key, and a ticket cannot mint another."""
    async with session.post(f"{handler.url}/api/ticket") as response:
        assert 401 == response.status
    ticket = await _ticket(session, handler)
    async with session.post(f"{handler.url}/api/ticket?ticket={ticket}") as response:
        assert 401 == response.status


async def test_wrong_keys_never_lock_out_the_right_key(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """After 30 failures from one address its further failures get 429 with Retry-After (a
    WebSocket before the upgrade), but the right key from the same address is served."""
    bad = {"Authorization": "Bearer wrong"}
    for _ in range(30):
        async with session.get(f"{handler.url}/api/stats", headers=bad) as response:
            assert 401 == response.status
    async with session.get(f"{handler.url}/api/stats", headers=AUTH) as response:
        assert 200 == response.status
    ws = await connect(session, handler)
    await ws.close()
    async with session.get(f"{handler.url}/api/stats", headers=bad) as response:
        assert 429 == response.status
        assert 0 < int(response.headers["Retry-After"]) <= 60
        assert "too_many_requests" == (await response.json())["error"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
        await session.ws_connect(f"{handler.url}/ws/logs", headers=bad)
    assert 429 == excinfo.value.status
    async with session.get(f"{handler.url}/healthz") as response:
        assert 200 == response.status


async def test_guessing_past_the_budget_is_slowed_one_at_a_time(
    handler: wslogging.WebSocketHandler,
) -> None:
    """Past the budget, wrong keys sent at once (each on its own connection) are answered
    one at a time after growing delays (0.05 s, 0.1 s, ... up to 0.5 s), while a right key
    sent meanwhile is answered at once."""
    loop = asyncio.get_running_loop()
    url = f"{handler.url}/api/stats"
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
    ) as session:

        async def status(headers: dict[str, str]) -> tuple[int, float]:
            async with session.get(url, headers=headers) as response:
                return response.status, loop.time()

        for _ in range(30):
            assert 401 == (await status({"Authorization": "Bearer wrong"}))[0]
        began = loop.time()
        guesses = [
            asyncio.create_task(status({"Authorization": f"Bearer guess{n}"})) for n in range(10)
        ]
        await asyncio.sleep(0.2)  # the guesses are waiting by now (not needed to pass)
        right, answered = await status(AUTH)
        results = await asyncio.gather(*guesses)
    assert (200, True) == (right, answered - began < 1.0)
    assert [429] * 10 == [code for code, _ in results]
    # 0.05 + 0.1 + ... + 0.5 = 2.75 s in all, one after another.
    times = sorted(at - began for _, at in results)
    assert times[-1] >= 2.7, times
    assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(times)), times


async def test_failure_budget_is_shared_by_all_loopback_addresses(
    handler: wslogging.WebSocketHandler,
) -> None:
    """Wrong keys from 20 loopback addresses (127.0.0.2 to 127.0.0.21) draw on one budget:
    the 31st failure gets 429, whichever address it comes from."""
    statuses = []
    for n in range(31):
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{2 + n % 20}", 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"{handler.url}/api/stats"
            async with session.get(url, headers={"Authorization": "Bearer wrong"}) as response:
                statuses.append(response.status)
    assert [401] * 30 + [429] == statuses


async def test_ack_then_reconnect_resumes_after_it(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """With a client_id, a reconnect without since resumes right after the last ack:
    nothing lost, nothing twice."""
    ws = await connect(session, handler, "?client_id=tab-1")
    for n in range(5):
        log.info("a%d", n)
    logs = await receive_logs(ws, 5)
    await ws.send_json({"type": "ack", "id": logs[2]["id"]})
    await ws.send_json({"type": "ping"})  # answered after the ack was handled
    assert {"type": "pong"} == await receive_json(ws)
    await ws.close()
    log.info("a5")
    ws = await connect(session, handler, "?client_id=tab-1")
    assert ["a3", "a4", "a5"] == [r["log"] for r in await receive_logs(ws, 3)]
    await ws.close()


async def test_bad_acks_get_errors(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """An ack without client_id, with a malformed id, or ahead of the server gets error."""
    ws = await connect(session, handler)
    await ws.send_json({"type": "ack", "id": "1"})
    assert "ack needs a client_id" in (await receive_json(ws))["detail"]
    await ws.close()
    ws = await connect(session, handler, "?client_id=c")
    for bad in (7, "seven", str(10**20)):
        await ws.send_json({"type": "ack", "id": bad})
        assert "error" == (await receive_json(ws))["type"]
    await ws.close()


async def test_openapi_document_is_valid(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """/openapi.json (public) is a valid OpenAPI 3.1 document with a bearer scheme, naming
    the server as the client reached it."""
    async with session.get(f"{handler.url}/openapi.json") as response:
        document = await response.json()
    validate(document)
    assert "3.1.0" == document["openapi"]
    assert [{"url": handler.url}] == document["servers"]
    assert {"type": "http", "scheme": "bearer"} == document["components"]["securitySchemes"][
        "bearerAuth"
    ]
    assert {"/api/logs", "/api/get-logs-stream", "/api/stats", "/api/ticket", "/healthz"} == set(
        document["paths"]
    )


async def test_vanished_sse_client_is_freed_at_once(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """An SSE client that disconnects is forgotten at once, not at the next heartbeat."""
    response = await session.get(f"{handler.url}/api/get-logs-stream", headers=AUTH)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 1)
    response.close()
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 0, timeout=2.0)


async def test_garbage_sender_is_closed_1008(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """A client that keeps sending malformed messages is closed with 1008."""
    ws = await connect(session, handler)
    for _ in range(25):
        await ws.send_str("garbage")
    frames = []
    while (message := await ws.receive(timeout=TIMEOUT)).type is aiohttp.WSMsgType.TEXT:
        frames.append(json.loads(message.data)["type"])
    assert (["error"] * 20, 1008, "too many malformed messages") == (
        frames,
        message.data,
        message.extra,
    )


async def test_flooding_client_is_closed_1008(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """A client that sends messages far faster than any viewer would is closed with 1008."""
    ws = await connect(session, handler)
    try:
        for _ in range(2000):
            await ws.send_str('{"type": "ping"}')
    except ConnectionResetError:
        # The server closed while pings were still arriving: its kernel may then reset the
        # connection, and the close frame can be lost with the reset. The server's side of
        # it is checked below all the same.
        pass
    while (message := await ws.receive(timeout=TIMEOUT)).type is aiohttp.WSMsgType.TEXT:
        pass
    if message.type is aiohttp.WSMsgType.CLOSE:
        assert (1008, "too many messages") == (message.data, message.extra)
    else:  # the reset described above
        assert message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED), message
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 0)


async def test_max_clients_holds_under_concurrent_connects(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """However many streams are opened at once, max_clients are served and the rest get 503."""
    handler = configure(max_clients=5)
    url = f"{handler.url}/api/get-logs-stream"
    responses = await asyncio.gather(*(session.get(url, headers=AUTH) for _ in range(20)))
    assert (5, 15) == (
        sum(r.status == 200 for r in responses),
        sum(r.status == 503 for r in responses),
    )
    assert 5 == handler._server.hub.stats()["clients"]
    for response in responses:
        response.close()


async def test_too_long_client_id_is_400(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """A client_id over 128 characters is refused before the upgrade."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
        await session.ws_connect(f"{handler.url}/ws/logs?client_id={'c' * 129}", headers=AUTH)
    assert 400 == excinfo.value.status


@pytest.mark.parametrize("size", [10, 125, 126, 65_535, 65_536, 300_000])
async def test_records_of_every_frame_size_arrive_intact(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession, size: int
) -> None:
    """Records whose frames need each length encoding reach both client libraries intact."""
    ws = await connect(session, handler)
    async with websockets.connect(
        f"ws://127.0.0.1:{handler.port}/ws/logs", additional_headers=AUTH, max_size=None
    ) as other:
        await asyncio.wait_for(other.recv(), TIMEOUT)  # hello
        # The JSON around the message takes some of the frame: aim the frame at `size` bytes.
        for text in ("é" * 3, "x" * max(0, size - 240), "tail"):
            log.info(text)
        expected = ["é" * 3, "x" * max(0, size - 240), "tail"]
        assert expected == [r["log"] for r in await receive_logs(ws, 3)]
        received = [json.loads(await asyncio.wait_for(other.recv(), TIMEOUT)) for _ in range(3)]
        assert expected == [r["log"] for r in received]
    await ws.close()


# -- per-key caps and keys changed at run time -------------------------------------------------


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_streams_per_key_are_capped(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """With max_clients_per_key, a key's streams beyond it get 503 (a WebSocket before the
    upgrade), tickets counting for the key that got them; other keys are unaffected."""
    handler = configure(api_keys=["a", "b"], max_clients_per_key=2)
    ws = await session.ws_connect(f"{handler.url}/ws/logs", headers=_bearer("a"))
    sse = await session.get(f"{handler.url}/api/get-logs-stream", headers=_bearer("a"))
    assert 200 == sse.status
    with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
        await session.ws_connect(f"{handler.url}/ws/logs", headers=_bearer("a"))
    assert 503 == excinfo.value.status
    async with session.post(f"{handler.url}/api/ticket", headers=_bearer("a")) as response:
        ticket = (await response.json())["ticket"]
    url = f"{handler.url}/api/get-logs-stream?ticket={ticket}"
    async with session.get(url) as response:
        assert (503, {"error": "unavailable", "detail": "too many streams for this API key"}) == (
            response.status,
            await response.json(),
        )
    other = await session.ws_connect(f"{handler.url}/ws/logs", headers=_bearer("b"))
    assert "hello" == (await receive_json(other))["type"]
    sse.close()
    await async_wait_until(lambda: handler._server.hub.clients_of(key_id(handler, "a")) == 1)
    again = await session.ws_connect(f"{handler.url}/ws/logs", headers=_bearer("a"))
    assert "hello" == (await receive_json(again))["type"]
    for socket_ in (ws, other, again):
        await socket_.close()


def key_id(handler: wslogging.WebSocketHandler, key: str) -> bytes | None:
    """The id under which the server counts ``key``'s streams."""
    return handler._server._keys.match(key)


async def test_removed_key_closes_its_streams_4401(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """set_api_keys() closes the WebSockets opened with a removed key (or with a ticket it
    got) with 4401 and ends its SSE streams; other keys' streams go on, and the removed key
    and its unused tickets are refused from then on."""
    handler = configure(api_keys=["old", "kept"])
    tickets = []
    for _ in range(2):
        async with session.post(f"{handler.url}/api/ticket", headers=_bearer("old")) as response:
            tickets.append((await response.json())["ticket"])
    by_key = await session.ws_connect(f"{handler.url}/ws/logs", headers=_bearer("old"))
    by_ticket = await session.ws_connect(f"{handler.url}/ws/logs?ticket={tickets[0]}")
    sse = await session.get(f"{handler.url}/api/get-logs-stream", headers=_bearer("old"))
    kept = await session.ws_connect(f"{handler.url}/ws/logs", headers=_bearer("kept"))
    for ws in (by_key, by_ticket, kept):
        assert "hello" == (await receive_json(ws))["type"]

    handler.set_api_keys("kept, new")

    for ws in (by_key, by_ticket):
        message = await ws.receive(timeout=TIMEOUT)
        while message.type is aiohttp.WSMsgType.TEXT:
            message = await ws.receive(timeout=TIMEOUT)
        assert (aiohttp.WSMsgType.CLOSE, 4401, "API key revoked") == (
            message.type,
            message.data,
            message.extra,
        )
    await asyncio.wait_for(sse.read(), TIMEOUT)  # returns only because the stream ended
    log.info("after the change")
    assert ["after the change"] == [r["log"] for r in await receive_logs(kept, 1)]
    async with session.get(f"{handler.url}/api/stats", headers=_bearer("old")) as response:
        assert 401 == response.status
    async with session.get(f"{handler.url}/api/logs?ticket={tickets[1]}") as response:
        assert 401 == response.status
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 1)
    async with session.get(f"{handler.url}/api/stats", headers=_bearer("new")) as response:
        assert 200 == response.status
    await kept.close()


@pytest.mark.parametrize(
    ("keys", "error"), [([], ValueError), (" , ", ValueError), (["ok", 7], TypeError)]
)
async def test_bad_new_keys_change_nothing(
    handler: wslogging.WebSocketHandler,
    session: aiohttp.ClientSession,
    keys: object,
    error: type[Exception],
) -> None:
    """set_api_keys() with no keys, or keys that are not strings, raises and keeps the old
    keys and their streams."""
    ws = await connect(session, handler)
    with pytest.raises(error):
        handler.set_api_keys(keys)  # type: ignore[arg-type]
    log.info("still here")
    assert ["still here"] == [r["log"] for r in await receive_logs(ws, 1)]
    await ws.close()


async def test_oversized_messages_are_refused(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """A message over 64 KiB gets an error frame and the connection stays; one over aiohttp's
    1 MiB frame limit closes it with 1009, and the server is none the worse."""
    ws = await connect(session, handler)
    await ws.send_str("x" * (64 * 1024 + 1))
    await ws.send_str('{"type": "ping"}')
    assert [("error", "message over 65536 bytes"), ("pong", None)] == [
        (frame["type"], frame.get("detail")) for frame in [await receive_json(ws) for _ in "ab"]
    ]
    try:
        await ws.send_str("x" * (2 * 1024 * 1024))
    except ConnectionError:
        # The server closed (1009) before it had read the whole frame: the kernel answered
        # the rest with a reset. Only the server's side can be checked then.
        pass
    else:
        message = await ws.receive(timeout=TIMEOUT)
        assert (aiohttp.WSMsgType.CLOSE, 1009) == (message.type, message.data)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 0)
    other = await connect(session, handler)
    await other.close()


async def test_batched_writes_deliver_every_record_in_order(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """Records taken from the app's queue, fanned out and written in batches reach a WebSocket
    and an SSE client all, in order, with consecutive ids, across many batch boundaries (more
    records than a batch, logged by three threads at once, each thread's in its order)."""
    per_thread, threads = 2 * BATCH + 123, 3
    total = per_thread * threads
    handler = configure(client_queue_size=total, queue_size=total, keep_level=None)
    ws = await connect(session, handler)
    sse = await session.get(f"{handler.url}/api/get-logs-stream?limit={total}", headers=AUTH)
    await async_wait_until(lambda: handler._server.hub.stats()["clients"] == 2)

    def app(thread: int) -> None:
        for n in range(per_thread):
            log.info("t%d n%d", thread, n)

    await asyncio.gather(*(asyncio.to_thread(app, t) for t in range(threads)))
    by_ws = await receive_logs(ws, total)
    by_sse = [json.loads(e["data"]) for e in await read_sse(sse)]

    first = int(by_ws[0]["id"])
    assert [str(first + n) for n in range(total)] == [r["id"] for r in by_ws]
    assert by_ws == by_sse
    for t in range(threads):
        mine = [r["log"] for r in by_ws if r["log"].startswith(f"t{t} ")]
        assert [f"t{t} n{n}" for n in range(per_thread)] == mine
    await ws.close()


@pytest.mark.parametrize(("setting", "uvloop_expected"), [("1", True), ("0", False), ("", False)])
def test_uvloop_only_when_asked(
    setting: str, uvloop_expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server runs on uvloop's loop only with ``WSLOGGING_UVLOOP=1`` (and uvloop there)."""
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setenv("WSLOGGING_UVLOOP", setting)

    loop = new_event_loop()
    try:
        assert uvloop_expected == isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


# -- losses that stand in the stream ----------------------------------------------------------


def storm_against_a_frozen_server(handler: wslogging.WebSocketHandler, count: int) -> None:
    """Log ``count`` INFO records while the server's loop is frozen, so that the queue
    overflows at a known point; then let it run again."""
    loop = handler._server._loop
    assert loop is not None
    release = threading.Event()
    frozen = threading.Event()
    loop.call_soon_threadsafe(lambda: (frozen.set(), release.wait(TIMEOUT)))
    assert frozen.wait(TIMEOUT)
    try:
        for n in range(count):
            log.info("r%d", n)
    finally:
        release.set()


async def test_overflow_is_announced_at_its_place_and_kept_in_history(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """Records the app's queue had no room for reach every client as one ``gap(overflow)``
    with an id of its own, between the records around it, over WebSocket, SSE and the JSON
    page; resuming before it tells it again, resuming at its id does not."""
    handler = configure(queue_size=10)
    ws = await connect(session, handler)
    storm_against_a_frozen_server(handler, 20)  # 8 fit (INFO is shed past 80%), 12 do not
    await async_wait_until(lambda: handler._server.hub.history.marks == 1)
    log.info("after")
    frames = [await receive_json(ws) for _ in range(10)]
    await ws.close()
    gap = frames[8]
    gap_id = int(gap["id"])

    assert [f"r{n}" for n in range(8)] + ["after"] == [f["log"] for f in frames if "log" in f]
    assert {"type": "gap", "missed": 12, "reason": "overflow", "id": str(gap_id)} | {
        "levels": {"INFO": 12}
    } == gap
    assert int(frames[7]["id"]) + 1 == gap_id == int(frames[9]["id"]) - 1
    async with session.get(
        f"{handler.url}/api/get-logs-stream?since=0&limit=9", headers=AUTH
    ) as response:
        events = await read_sse(response)
    assert ("gap", str(gap_id), gap) == (
        events[8].get("event"),
        events[8].get("id"),
        json.loads(events[8]["data"]),
    )
    before = await connect(session, handler, f"?since={gap_id - 1}")
    assert [gap, frames[9]] == [await receive_json(before) for _ in range(2)]
    await before.close()
    at = await connect(session, handler, f"?since={gap_id}")
    assert frames[9] == await receive_json(at)
    await at.close()
    async with session.get(f"{handler.url}/api/logs?since=0", headers=AUTH) as response:
        page = await response.json()
    assert (9, [gap]) == (len(page["records"]), page["gaps"])
    stats = handler._server.hub.stats()
    assert (9, 12) == (stats["records_accepted"], handler.records_dropped)


async def test_a_filtered_client_is_told_how_far_the_stream_was_examined(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """A caught-up WebSocket whose filter skipped records gets a ``position`` frame at its
    heartbeat, naming the last id examined for it; one without a filter needs none."""
    handler = configure(heartbeat=0.05)
    filtered = await connect(session, handler, "?level=ERROR")
    unfiltered = await connect(session, handler)
    log.info("skipped by the filter")
    record = (await receive_logs(unfiltered, 1))[0]
    others: list[dict[str, Any]] = []
    reader = asyncio.create_task(collect(unfiltered, others))
    positions = []
    while len(positions) < 3:  # three heartbeats
        if (frame := await receive_json(filtered))["type"] == "position":
            positions.append(frame)
    reader.cancel()
    assert [{"type": "position", "last_id": record["id"]}] * 3 == positions
    assert [] == others
    await filtered.close()
    await unfiltered.close()


async def collect(ws: aiohttp.ClientWebSocketResponse, into: list[dict[str, Any]]) -> None:
    """Append every text frame ``ws`` gets to ``into`` until cancelled."""
    async for message in ws:
        if message.type is aiohttp.WSMsgType.TEXT:
            into.append(json.loads(message.data))
