"""WebSocketHandler as users configure it: options, keys, failures, close, structlog, broadcast."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog
import trustme
from conftest import (
    AUTH,
    TIMEOUT,
    connect,
    dict_config,
    live_handler,
    receive_json,
    receive_logs,
    wait_until,
)

import wslogging
from wslogging._filters import Filter
from wslogging._history import LossMark
from wslogging._wire import LogEntry
from wslogging.handler import REENTRANT_PARKED, HandlerState

log = logging.getLogger("app")
Configure = Callable[..., wslogging.WebSocketHandler]


# -- construction ----------------------------------------------------------------------------


def test_port_zero_exposes_port_and_url(handler: wslogging.WebSocketHandler) -> None:
    """port=0 picks a free port, shown as handler.port and in handler.url."""
    assert handler.port > 0
    assert f"http://127.0.0.1:{handler.port}" == handler.url


def test_file_config(tmp_path: Path) -> None:
    """logging.config.fileConfig builds the handler from kwargs."""
    ini = tmp_path / "logging.ini"
    ini.write_text(
        textwrap.dedent(
            """\
            [loggers]
            keys=root
            [handlers]
            keys=live
            [formatters]
            keys=plain
            [formatter_plain]
            format=%(levelname)s %(message)s
            [logger_root]
            level=INFO
            handlers=live
            [handler_live]
            class=wslogging.WebSocketHandler
            formatter=plain
            kwargs={"port": "0", "api_keys": "a, b", "history": "50"}
            """
        )
    )
    logging.config.fileConfig(ini, disable_existing_loggers=False)
    handler = live_handler()
    log.warning("from ini")
    wait_until(lambda: handler._server.hub.stats()["records_accepted"] == 1)
    entry = handler._server.hub.history.get(handler._server.hub.history.last_id)
    assert entry is not None
    assert ("WARNING from ini", 50) == (entry.log, handler._server.hub.history.maxlen)


async def test_keys_from_comma_string_and_env(
    configure: Configure, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api_keys as a comma string; without api_keys, WSLOGGING_API_KEY (comma-separated)."""
    handler = configure(api_keys="one, two")
    for key, status in (("one", 200), ("two", 200), ("one, two", 401)):
        async with session.get(
            f"{handler.url}/api/stats", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            assert status == response.status
    monkeypatch.setenv("WSLOGGING_API_KEY", "env1,env2")
    handler = configure(api_keys=None)
    async with session.get(
        f"{handler.url}/api/stats", headers={"Authorization": "Bearer env2"}
    ) as response:
        assert 200 == response.status


async def test_generated_key_is_printed_once(
    configure: Configure,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no key anywhere, one stderr line gives the URL and a random key that works."""
    monkeypatch.delenv("WSLOGGING_API_KEY", raising=False)
    handler = configure(api_keys=None)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"wslogging: streaming logs at {handler.url}/ with API key ")
    key = line.rsplit(" ", 1)[1]
    async with session.get(
        f"{handler.url}/api/stats", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert 200 == response.status


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"slow_client": "wait"}, "slow_client must be 'drop' or 'disconnect'"),
        ({"port": "http"}, "port must be a number"),
        ({"port": 70000}, "port must be 0 to 65535"),
        ({"queue_size": 0}, "queue_size must be at least 1"),
        ({"max_clients_per_key": 0}, "max_clients_per_key must be at least 1"),
        ({"max_clients_per_key": "many"}, "max_clients_per_key must be a number"),
        ({"allow_query_token": "maybe"}, "allow_query_token must be true or false"),
        ({"backend": "mysql://localhost/logs"}, "not a Redis URL"),
        ({"backend": "redis://localhost:6379/0", "stream": ""}, "stream must be a non-empty"),
    ],
)
def test_bad_options_raise_clearly(options: dict[str, object], message: str) -> None:
    """A bad option is a configuration error naming the option."""
    with pytest.raises(ValueError, match="Unable to configure handler") as excinfo:
        logging.config.dictConfig(dict_config(**options))
    assert message in str(excinfo.value.__cause__)


def test_port_in_use_becomes_counting_noop(
    configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port in use gives one clear stderr line; logging goes on and drops are counted."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        handler = configure(port=port)
        (line,) = capsys.readouterr().err.splitlines()
        assert f"wslogging: cannot serve on 127.0.0.1:{port} (Address already in use)" in line
        assert HandlerState.FAILED is handler.state
        for n in range(5):
            log.error("lost %d", n)
        assert 5 == handler.records_dropped
        handler.close()


def test_public_host_without_key_is_refused(
    configure: Configure, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binding beyond loopback with no key configured refuses to serve, and says so."""
    monkeypatch.delenv("WSLOGGING_API_KEY", raising=False)
    handler = configure(host="0.0.0.0", api_keys=None)
    assert HandlerState.FAILED is handler.state
    assert "refusing to serve on 0.0.0.0" in capsys.readouterr().err


def test_reconfiguring_does_not_deadlock() -> None:
    """dictConfig three times in a row (each closes the last handler under logging's lock)
    finishes: the constructor never waits for the server thread."""

    def configure_thrice() -> None:
        for _ in range(3):
            logging.config.dictConfig(dict_config())
            logging.getLogger("asyncio").setLevel(logging.DEBUG)
            log.debug("configured")

    thread = threading.Thread(target=configure_thrice, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert HandlerState.SERVING is live_handler().state


# -- the logging path never hurts the app -----------------------------------------------------


def test_emit_never_waits_for_a_stalled_server(configure: Configure) -> None:
    """With the server's loop frozen, 10,000 records are logged at once; the ones that did not
    fit the queue are counted as dropped and reported in stats."""
    handler = configure(queue_size=100)
    with urllib.request.urlopen(f"{handler.url}/healthz", timeout=TIMEOUT):  # noqa: S310
        pass  # the server is up, its consumer waiting for records
    loop = handler._server._loop
    assert loop is not None
    release = threading.Event()
    loop.call_soon_threadsafe(release.wait, TIMEOUT)  # blocks the server thread
    done = threading.Event()

    def app() -> None:
        for n in range(10_000):
            log.info("n=%d", n)
        done.set()

    threading.Thread(target=app, daemon=True).start()
    try:
        assert done.wait(TIMEOUT)
    finally:
        release.set()
    # INFO records are shed once 80% of the queue is taken (see keep_level).
    assert 10_000 - 80 == handler.records_dropped
    wait_until(lambda: handler._server.hub.stats()["records_accepted"] >= 80)


async def test_server_records_are_never_streamed(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """Records logged on the server's thread, or by wslogging.* loggers, are not streamed."""
    ws = await connect(session, handler)  # the loop is running once the server answers
    loop = handler._server._loop
    assert loop is not None
    logged = threading.Event()

    def inside() -> None:
        logging.getLogger("app.inside").error("from the server thread")
        logged.set()

    loop.call_soon_threadsafe(inside)
    assert await asyncio.to_thread(logged.wait, TIMEOUT)  # logged before the marker below
    logging.getLogger("wslogging.server").error("our own")
    logging.getLogger("aiohttp.access").info("GET /ws/logs?access_token=secret")
    log.info("marker")
    logs = await receive_logs(ws, 2)
    assert ["GET /ws/logs?access_token=secret", "marker"] == [r["log"] for r in logs]
    await ws.close()


async def test_bad_records_never_raise(
    handler: wslogging.WebSocketHandler,
    session: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Unencodable extras are repr()'d; a record that cannot be formatted goes to handleError
    and is counted; the app goes on."""

    class Opaque:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    ws = await connect(session, handler)
    log.info("odd", extra={"obj": Opaque(), "nan": float("nan"), "key": {1: {2, 3}}})
    # Wrong number of arguments: straight to our handler, as other handlers may raise on it.
    handler.handle(logging.makeLogRecord({"msg": "%s and %s", "args": ("one",)}))
    log.info("after")
    odd, after = await receive_logs(ws, 2)
    assert {"obj": "<unrepresentable Opaque>", "nan": "nan", "key": {"1": [2, 3]}} == odd["fields"]
    assert "after" == after["log"]
    assert 1 == handler.records_dropped
    assert "--- Logging error ---" in capsys.readouterr().err
    await ws.close()


def test_formatter_that_raises_is_contained(
    handler: wslogging.WebSocketHandler, capsys: pytest.CaptureFixture[str]
) -> None:
    """A formatter that raises costs that record only."""

    class Broken(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            raise RuntimeError("formatter bug")

    handler.setFormatter(Broken())
    log.info("lost")
    assert 1 == handler.records_dropped
    assert "formatter bug" in capsys.readouterr().err


async def test_formatter_output_is_log(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """With a formatter set, log is its output."""
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    ws = await connect(session, handler)
    log.warning("formatted")
    assert ["WARNING:app:formatted"] == [r["log"] for r in await receive_logs(ws, 1)]
    await ws.close()


# -- close --------------------------------------------------------------------------------------


async def test_close_delivers_queued_then_1001(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """close() delivers every record logged before it, closes WebSockets with 1001, ends SSE."""
    ws = await connect(session, handler)
    sse = await session.get(f"{handler.url}/api/get-logs-stream", headers=AUTH)
    await asyncio.to_thread(wait_until, lambda: handler._server.hub.stats()["clients"] == 2)
    for n in range(2000):
        log.info("c%d", n)
    closing_thread = asyncio.create_task(asyncio.to_thread(handler.close))
    logs = await receive_logs(ws, 2000)
    assert [f"c{n}" for n in range(2000)] == [r["log"] for r in logs]
    closing = await ws.receive(timeout=TIMEOUT)
    assert (aiohttp.WSMsgType.CLOSE, 1001) == (closing.type, closing.data)
    body = await sse.read()  # returns only because the stream ended
    assert 2000 == body.count(b"\ndata: ")
    await closing_thread
    handler.close()  # idempotent
    log.info("after close")
    assert 1 == handler.records_dropped
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(f"{handler.url}/healthz")


async def test_exit_with_clients_connected(session: aiohttp.ClientSession) -> None:
    """A script that logs and exits delivers everything to a connected client, then 1001."""
    script = textwrap.dedent(
        """\
        import logging, logging.config, sys
        logging.config.dictConfig({
            "version": 1,
            "handlers": {"live": {"class": "wslogging.WebSocketHandler", "port": 0,
                                  "api_keys": "test-key"}},
            "root": {"level": "INFO", "handlers": ["live"]},
        })
        print(logging.getLogger().handlers[0].port, flush=True)
        sys.stdin.readline()
        for n in range(500):
            logging.getLogger("app").info("exit %d", n)
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    port = int(await asyncio.wait_for(process.stdout.readline(), TIMEOUT))
    ws = await session.ws_connect(f"ws://127.0.0.1:{port}/ws/logs", headers=AUTH)
    assert "hello" == (await receive_json(ws))["type"]
    process.stdin.write(b"go\n")
    await process.stdin.drain()
    logs = await receive_logs(ws, 500)
    assert [f"exit {n}" for n in range(500)] == [r["log"] for r in logs]
    assert 1001 == (await ws.receive(timeout=TIMEOUT)).data
    assert 0 == await asyncio.wait_for(process.wait(), TIMEOUT)


# -- broadcast ------------------------------------------------------------------------------------


async def test_broadcast_log_sync_from_a_thread(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """broadcast_log_sync works from any thread and skips loggers and their levels."""
    logging.getLogger().setLevel(logging.CRITICAL)
    ws = await connect(session, handler)
    await asyncio.to_thread(wslogging.broadcast_log_sync, "deploying", level="INFO", version=3)
    (record,) = await receive_logs(ws, 1)
    assert ("deploying", "INFO", "broadcast", {"version": 3}) == (
        record["log"],
        record["level"],
        record["category"],
        record["fields"],
    )
    await ws.close()


async def test_broadcast_without_handler_raises() -> None:
    """broadcast_log with no serving handler says what to do."""
    with pytest.raises(RuntimeError, match="no WebSocketHandler is serving"):
        await wslogging.broadcast_log("nobody")


# -- structlog --------------------------------------------------------------------------------


@pytest.fixture
def _structlog_reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("_structlog_reset")
async def test_structlog_render_to_log_kwargs(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """structlog through the stdlib with render_to_log_kwargs keeps key/values in fields."""
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.stdlib.render_to_log_kwargs],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    ws = await connect(session, handler)
    structlog.get_logger("app.sl").bind(request_id="abc").warning("paid", amount=12.5)
    (record,) = await receive_logs(ws, 1)
    assert ("paid", "WARNING", "app.sl") == (record["log"], record["level"], record["logger"])
    assert {"request_id": "abc", "amount": 12.5}.items() <= record["fields"].items()
    await ws.close()


@pytest.mark.usefixtures("_structlog_reset")
async def test_structlog_processor_formatter(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """structlog's wrap_for_formatter with a ProcessorFormatter on the handler: log is the
    rendered line, fields keep the pairs."""
    config = dict_config()
    config["formatters"] = {
        "structlog": {
            "()": structlog.stdlib.ProcessorFormatter,
            "processor": structlog.processors.KeyValueRenderer(key_order=["event"]),
        }
    }
    config["handlers"]["live"]["formatter"] = "structlog"
    logging.config.dictConfig(config)
    handler = live_handler()
    structlog.configure(
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    ws = await connect(session, handler)
    structlog.get_logger("app.sl").info("login", user="ann", attempt=2)
    try:
        raise KeyError("card")
    except KeyError:
        structlog.get_logger("app.sl").exception("payment failed", order=9)
    login, failed = await receive_logs(ws, 2)
    assert ("event='login' user='ann' attempt=2", {"user": "ann", "attempt": 2}) == (
        login["log"],
        login["fields"],
    )
    assert ({"order": 9}, "ERROR") == (failed["fields"], failed["level"])
    assert "KeyError: 'card'" in failed["exc"]
    await ws.close()


@pytest.mark.usefixtures("_structlog_reset")
async def test_structlog_processor_without_stdlib(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """StructlogProcessor streams a structlog chain that never touches logging."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            wslogging.StructlogProcessor(handler),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    ws = await connect(session, handler)
    rendered = structlog.get_logger().error("disk full", free_mb=3)
    assert {"event": "disk full", "free_mb": 3, "level": "error"} == json.loads(rendered)
    (record,) = await receive_logs(ws, 1)
    assert ("disk full", "ERROR", "structlog", {"free_mb": 3}) == (
        record["log"],
        record["level"],
        record["logger"],
        record["fields"],
    )
    await ws.close()


async def test_tls(configure: Configure, tmp_path: Path) -> None:
    """With ssl_certfile and ssl_keyfile the server speaks https and wss only."""
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(certfile)
    certificate.private_key_pem.write_to_path(keyfile)
    handler = configure(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
    assert handler.url.startswith("https://127.0.0.1:")
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    connector = aiohttp.TCPConnector(ssl=client_context)
    async with aiohttp.ClientSession(connector=connector) as session:
        ws = await session.ws_connect(f"wss://127.0.0.1:{handler.port}/ws/logs", headers=AUTH)
        assert "hello" == (await receive_json(ws))["type"]
        log.info("over tls")
        assert ["over tls"] == [r["log"] for r in await receive_logs(ws, 1)]
        await ws.close()
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            await plain.get(f"http://127.0.0.1:{handler.port}/healthz")


def _close_leaves_no_socket_open(tmp_path: Path, peers: str, ready: str) -> None:
    """Run a TLS handler in a process under ``-X dev`` (where a socket left open is a
    ResourceWarning on stderr), open ``peers`` (code that makes a list ``peers`` of sockets
    to it), wait until ``ready`` (an expression) is true, close the handler, and check that
    each peer sees the end and that no socket was left open."""
    script = textwrap.dedent(
        f"""
        import gc, os, socket, ssl, time
        import trustme, wslogging
        authority = trustme.CA()
        certificate = authority.issue_cert("127.0.0.1")
        certificate.cert_chain_pems[0].write_to_path({str(tmp_path / "cert.pem")!r})
        certificate.private_key_pem.write_to_path({str(tmp_path / "key.pem")!r})
        handler = wslogging.WebSocketHandler(
            port=0, api_keys=["k"],
            ssl_certfile={str(tmp_path / "cert.pem")!r}, ssl_keyfile={str(tmp_path / "key.pem")!r},
        )
        context = ssl.create_default_context()
        authority.configure_trust(context)

        def sockets():
            count = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    count += os.readlink(f"/proc/self/fd/{{fd}}").startswith("socket:")
                except OSError:
                    pass  # closed meanwhile (the listing's own, say)
            return count

        before = sockets()
        """
    )
    script += textwrap.dedent(peers)
    script += textwrap.dedent(
        f"""
        deadline = time.monotonic() + {TIMEOUT}
        while not ({ready}):
            assert time.monotonic() < deadline, "the server never accepted the connections"
            time.sleep(0.01)
        handler.close()
        gc.collect()
        for sock in peers:
            sock.settimeout({TIMEOUT})
            try:
                assert sock.recv(1) == b""
            except (ConnectionResetError, ssl.SSLError):
                pass
            sock.close()
        print("closed")
        """
    )
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (0, "closed") == (result.returncode, result.stdout.strip()), result.stderr
    assert "ResourceWarning" not in result.stderr, result.stderr


def test_close_leaves_no_idle_tls_connection_open(tmp_path: Path) -> None:
    """Idle TLS connections (as a browser preconnects) are closed by close(), not left waiting
    for the peer's close_notify with their sockets open."""
    _close_leaves_no_socket_open(
        tmp_path,
        """
        peers = [
            context.wrap_socket(
                socket.create_connection(("127.0.0.1", handler.port)), server_hostname="127.0.0.1"
            )
            for _ in range(3)
        ]
        """,
        "len(handler._server._runner.server.connections) == 3",
    )


def test_close_closes_tls_connections_caught_in_their_handshake(tmp_path: Path) -> None:
    """Connections still in their TLS handshake when the handler closes are closed by it."""
    _close_leaves_no_socket_open(
        tmp_path,
        """
        peers = [socket.create_connection(("127.0.0.1", handler.port)) for _ in range(3)]
        """,
        "sockets() >= before + 6",  # both ends of each
    )


def test_unusable_certificate_is_reported(
    configure: Configure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate file that cannot be loaded is one stderr line and a counting no-op."""
    missing = str(tmp_path / "missing.pem")
    handler = configure(ssl_certfile=missing, ssl_keyfile=missing)
    assert not handler.serving
    assert "wslogging: cannot serve on 127.0.0.1:0" in capsys.readouterr().err


async def test_record_with_impossible_time_is_streamed(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """A record made by hand with a time that cannot be printed gets the time it was
    rendered, and history stays servable."""
    ws = await connect(session, handler)
    for created in (float("inf"), float("nan"), 1e20, -5.0):
        handler.handle(logging.makeLogRecord({"name": "app", "msg": "odd", "created": created}))
    records = await receive_logs(ws, 4)
    assert 4 * ["odd"] == [r["log"] for r in records]
    async with session.get(f"{handler.url}/api/logs?since=0", headers=AUTH) as response:
        assert 200 == response.status
        assert 4 == len((await response.json())["records"])
    await ws.close()


def test_extras_with_repeated_references_stay_cheap(handler: wslogging.WebSocketHandler) -> None:
    """An extra that repeats references costs a bounded amount of work on the app thread."""
    loop: list[object] = []
    loop.extend([loop] * 200)
    entry = handler.prepare(logging.makeLogRecord({"msg": "m", "nest": loop, "more": [loop]}))
    assert len(json.dumps(entry.fields)) < 200_000


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
    return port


def test_reconfiguring_on_a_fixed_port_keeps_serving(configure: Configure) -> None:
    """dictConfig run again with the same fixed port (a settings reload) serves on it: the new
    handler waits for the one it replaces to let go of the port."""
    port = _free_port()
    first = configure(port=port)
    second = configure(port=port)
    assert (False, True, port) == (first.serving, second.serving, second.port)
    with urllib.request.urlopen(f"{second.url}/healthz", timeout=TIMEOUT) as response:  # noqa: S310
        assert 200 == response.status


async def test_reconfiguring_keeps_the_server_and_its_clients(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """dictConfig run again on the same fixed port adopts the server: the client's stream
    goes on with no gap, one epoch and the history whole, and the new handler's records
    follow the old one's."""
    port = _free_port()
    first = configure(port=port)
    ws = await connect(session, first, "?since=0")
    log.info("before")
    second = configure(port=port)
    log.info("after")
    assert ["before", "after"] == [r["log"] for r in await receive_logs(ws, 2)]
    assert ("closed", "serving", first._server) == (first.role, second.role, second._server)
    async with session.get(f"{second.url}/api/logs?since=0", headers=AUTH) as response:
        assert ["before", "after"] == [r["log"] for r in (await response.json())["records"]]
    second.close()
    assert 1001 == (await ws.receive(timeout=TIMEOUT)).data


async def test_reconfiguring_applies_new_keys_and_says_what_waits(
    configure: Configure, session: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    """An adopted server takes the new configuration's keys at once (streams of the old key
    are closed with 4401); a new ``history`` waits for a restart, and one line says so."""
    port = _free_port()
    first = configure(port=port)
    ws = await connect(session, first)
    second = configure(port=port, api_keys=["new-key"], history=50)
    message = await ws.receive(timeout=TIMEOUT)
    assert (aiohttp.WSMsgType.CLOSE, 4401) == (message.type, message.data)
    headers = {"Authorization": "Bearer new-key"}
    async with session.get(f"{second.url}/api/stats", headers=headers) as response:
        assert 200 == response.status
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        f"wslogging: {second.url}/ kept serving through the reconfiguration with "
        "history=10000; the new value applies when the process restarts"
    ) == line


def test_a_parked_server_nobody_adopts_stops_after_the_reconfiguration(
    configure: Configure,
) -> None:
    """Reconfigured without a handler on its port, the server stops once dictConfig is
    done, and the port is free."""
    port = _free_port()
    first = configure(port=port)
    second = configure(port=0)
    assert (first.state, second.serving) == (HandlerState.PARKED, True)
    wait_until(lambda: first.state is HandlerState.CLOSED)
    wait_until(lambda: first._server._released.is_set())
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_close_while_starting(
    configure: Configure, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """close() right after construction, while the server thread is still starting up,
    stops it promptly and frees the port."""
    setup = aiohttp.web.AppRunner.setup

    async def slow_setup(self: aiohttp.web.AppRunner) -> None:
        await asyncio.sleep(0.2)  # widens the window between start and serving
        await setup(self)

    monkeypatch.setattr(aiohttp.web.AppRunner, "setup", slow_setup)
    handler = configure()
    handler.close()
    wait_until(lambda: handler._server._stopped.is_set(), timeout=3.0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", handler.port), timeout=TIMEOUT).close()
    assert "" == capsys.readouterr().err


def test_forked_child_never_deadlocks() -> None:
    """A child forked while other threads are logging forwards to its parent, and its
    logging calls and close() return (a subprocess, so a deadlock is a timeout, not a hung
    suite)."""
    script = textwrap.dedent(
        """\
        import faulthandler, logging, os, threading
        from wslogging import WebSocketHandler
        faulthandler.dump_traceback_later(20, exit=True)
        handler = WebSocketHandler(port=0, api_keys="k")
        log = logging.getLogger("app")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        stop = threading.Event()
        def busy():
            while not stop.is_set():
                log.info("from a thread")
        threads = [threading.Thread(target=busy) for _ in range(4)]
        for thread in threads:
            thread.start()
        children = []
        for _ in range(20):  # some forks land while a thread holds the queue's lock
            pid = os.fork()
            if pid == 0:
                forwarding = handler.role == "forwarding" and not handler.serving
                for n in range(100):
                    log.info("child %d", n)
                handler.close()
                os._exit(0 if forwarding else 1)
            children.append(pid)
        codes = [os.waitpid(pid, 0)[1] for pid in children]
        stop.set()
        for thread in threads:
            thread.join()
        print(codes.count(0), handler.serving)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == result.returncode, result.stderr
    assert "20 True" == result.stdout.strip()
    assert "Traceback" not in result.stderr


def test_reentrant_record_follows_the_one_it_interrupted(
    handler: wslogging.WebSocketHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record logged while this thread is inside the hand-off (as a signal handler would)
    is sent right after the record it interrupted, in order, and nothing is dropped."""
    sent: list[str] = []
    submit = handler._server.submit

    def interrupted_submit(entry: LogEntry) -> bool:
        sent.append(entry.log)
        if entry.log in ("outer", "first signal"):
            log.warning("first signal" if entry.log == "outer" else "second signal")
        return submit(entry)

    monkeypatch.setattr(handler._server, "submit", interrupted_submit)
    log.info("outer")
    log.info("next")
    assert (["outer", "first signal", "second signal", "next"], 0) == (
        sent,
        handler.records_dropped,
    )


async def test_record_with_impossible_numbers_is_streamed(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """A hand-made record whose level and pid no JSON can hold still streams, and history
    stays valid JSON."""
    ws = await connect(session, handler)
    handler.handle(
        logging.makeLogRecord({"name": "app", "msg": "odd", "levelno": 10**5000, "process": 2**70})
    )
    (record,) = await receive_logs(ws, 1)
    assert ("odd", 0, os.getpid()) == (record["log"], record["levelno"], record["pid"])
    async with session.get(f"{handler.url}/api/logs?since=0", headers=AUTH) as response:
        assert ["odd"] == [r["log"] for r in (await response.json())["records"]]
    await ws.close()


def test_a_record_lost_inside_the_hand_off_is_told_without_waiting_for_its_lock(
    handler: wslogging.WebSocketHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records a signal handler loses while its thread holds the hand-off's lock (more than
    can be parked, and one that cannot be rendered) are counted and told to clients as one
    gap(overflow) once the interrupted call is out: the thread never waits on its own lock."""
    queue = handler._server._handoff._queue
    put = queue._put
    prepare = handler.prepare
    interrupted = []

    def put_under_the_lock(item: object) -> None:
        put(item)
        if getattr(item, "log", None) == "outer" and not interrupted:
            interrupted.append(True)
            for n in range(REENTRANT_PARKED + 1):  # one more than can be parked
                log.warning("signal %d", n)
            log.warning("unrenderable")

    def failing_prepare(record: logging.LogRecord) -> LogEntry:
        if record.msg == "unrenderable":
            raise ValueError("cannot render")
        return prepare(record)

    monkeypatch.setattr(queue, "_put", put_under_the_lock)
    monkeypatch.setattr(handler, "prepare", failing_prepare)
    monkeypatch.setattr(handler, "handleError", lambda record: None)
    done = threading.Event()

    def app() -> None:
        log.info("outer")
        done.set()

    threading.Thread(target=app, daemon=True).start()
    assert done.wait(TIMEOUT)
    history = handler._server.hub.history
    wait_until(lambda: history.marks == 1)
    (mark,) = [e for e in history.latest(Filter(), 200) if type(e) is LossMark]
    assert (2, 2) == (mark.count, handler.records_dropped)


def test_a_made_up_key_survives_a_restart(tmp_path: Path) -> None:
    """With no key configured on a fixed port, a restarted app serves with the key its first
    run made up and printed (a browser or tail that has it keeps working); the one stderr
    line says where the key is kept."""
    port = _free_port()
    app = textwrap.dedent(
        f"""
        import logging.config, sys, urllib.error, urllib.request
        logging.config.dictConfig({{
            "version": 1,
            "handlers": {{"live": {{"class": "wslogging.WebSocketHandler", "port": {port}}}}},
            "root": {{"handlers": ["live"]}},
        }})
        key = sys.stdin.readline().strip()
        request = urllib.request.Request(
            "http://127.0.0.1:{port}/api/stats", headers={{"Authorization": "Bearer " + key}}
        )
        try:
            print(urllib.request.urlopen(request, timeout=10).status)
        except urllib.error.HTTPError as refused:
            print(refused.code)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "WSLOGGING_API_KEY"}
    env["WSLOGGING_RUNTIME_DIR"] = str(tmp_path / "run")
    kept = tmp_path / "run" / f"127.0.0.1-{port}.key"
    lines, statuses = [], []
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-c", app],
            input=kept.read_text() if kept.exists() else "none\n",
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
            check=False,
        )
        lines.append(run.stderr.strip())
        statuses.append(run.stdout.strip())
    key = kept.read_text().strip()
    url = f"http://127.0.0.1:{port}/"
    assert [
        f"wslogging: streaming logs at {url} with API key {key} (kept in {kept})",
        f"wslogging: streaming logs at {url} with API key {key} (reused from {kept})",
    ] == lines
    assert ["401", "200"] == statuses  # the second run accepts the key the first printed
