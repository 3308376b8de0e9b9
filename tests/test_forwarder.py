"""Several processes on one port: forwarding, its authentication, takeover, fork, gunicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import gunicorn.config
import pytest
import trustme
from conftest import (
    AUTH,
    KEY,
    TIMEOUT,
    connect,
    receive_json,
    wait_until,
)

import wslogging
import wslogging.server._forwarders
import wslogging.sinks._ingest_client
from wslogging import _ingest, _rendezvous
from wslogging._belonging import describe
from wslogging._filters import Filter
from wslogging.handler import CLOSE_TIMEOUT

WORKER = str(Path(__file__).with_name("_worker.py"))
log = logging.getLogger("app")
SECOND = Filter(loggers=("app.second",))

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


async def test_a_program_with_other_keys_does_not_join(
    configure: Callable[..., wslogging.WebSocketHandler],
    session: aiohttp.ClientSession,
    spawn: Spawn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another program on the port with other keys does not merge into its stream: one line
    names the process holding the port and why, and its records are dropped and counted."""
    port = free_port()
    other, role = worker(spawn, port)
    assert "serving" == role
    handler = configure(port=port, api_keys="my-key")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"wslogging: cannot serve on 127.0.0.1:{port} (Address already in use): "
        f"process {other.pid} (_worker.py) holds it, a wslogging server with other API keys; "
        f"process {os.getpid()} ("
    )
    assert line.endswith(
        "does not join its stream, and records for this handler are dropped and counted "
        "(configure another port for this program, or the same api_keys to share one stream)"
    )
    log.info("mine")
    assert ("failed", 1) == (handler.role, handler.records_dropped)
    data = await stats(session, f"http://127.0.0.1:{port}")
    assert [] == data["forwarders"]


async def test_a_child_with_other_options_joins_its_parent_and_says_so(
    configure: Callable[..., wslogging.WebSocketHandler], spawn: Spawn
) -> None:
    """A process the server started (a reloader's child, after the keys were edited) joins
    it whatever its keys, and its one line says which of its options the server does not
    use, and what to do: once, though it configures logging twice (as Django's does)."""
    handler = configure()
    config = {
        "version": 1,
        "handlers": {
            "live": {
                "class": "wslogging.WebSocketHandler",
                "port": handler.port,
                "api_keys": "edited",
                "history": 500,
            }
        },
        "loggers": {"app": {"level": "INFO", "handlers": ["live"]}},
    }
    child = spawn(
        "-c",
        "import logging, logging.config\n"
        f"logging.config.dictConfig({config!r})\nlogging.config.dictConfig({config!r})\n"
        "logging.getLogger('app').info('from the child')\n"
        "print(logging.getLogger('app').handlers[0].role, flush=True)\nlogging.shutdown()",
    )
    out, err = child.communicate(timeout=TIMEOUT)
    assert "forwarding" == out.strip()
    holder = describe(os.getpid(), _rendezvous.this_program())
    assert [
        f"wslogging: process {child.pid} (-c) forwards its records to {handler.url}/, served by "
        f"{holder}, whose api_keys and history differ from this process's; restart {holder} "
        "to use these api_keys and history"
    ] == err.splitlines()
    history = handler._server.hub.history
    wait_until(lambda: any(e.pid == child.pid for e in history.latest(Filter(), 5)))


async def test_another_program_with_the_same_keys_joins_and_says_so(spawn: Spawn) -> None:
    """Another program with the same keys joins the stream, never silently: one line names
    both processes."""
    port = free_port()
    first, role = worker(spawn, port)
    assert "serving" == role
    second = spawn(
        "-c",
        f"from wslogging import WebSocketHandler\nh = WebSocketHandler(port={port}, "
        f"api_keys={KEY!r})\nprint(h.role, flush=True)\nh.close()",
    )
    out, err = second.communicate(timeout=TIMEOUT)
    assert "forwarding" == out.strip()
    assert [
        f"wslogging: process {second.pid} (-c) forwards its records to http://127.0.0.1:"
        f"{port}/, the stream of process {first.pid} (_worker.py)"
    ] == err.splitlines()


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


# A forwarding process whose threads log numbered records in bursts, some written by the
# threads themselves (while the connection is idle), the rest through the queue.
THREADED = """
import logging, logging.config, sys, threading, time
logging.config.dictConfig({"version": 1, "handlers": {"live": {
    "class": "wslogging.WebSocketHandler", "port": int(sys.argv[1]), "api_keys": "k"}},
    "loggers": {"threads": {"level": "INFO", "handlers": ["live"]}}})
(handler,) = logging.getLogger("threads").handlers
deadline = time.monotonic() + 10
while handler.serving_pid is None and time.monotonic() < deadline:
    time.sleep(0.01)
log = logging.getLogger("threads")
def run(t):
    for i in range(2000):
        log.info("record", extra={"t": t, "i": i})
        if i % 150 == 0:
            time.sleep(0.005)
threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(handler.records_dropped, flush=True)
logging.shutdown()
"""


async def test_each_thread_s_records_arrive_in_order(
    configure: Callable[..., wslogging.WebSocketHandler],
    session: aiohttp.ClientSession,
    spawn: Spawn,
) -> None:
    """Four threads of a forwarding process log in bursts, each record written either by
    its own thread or through the queue: every record arrives, each thread's in order."""
    handler = configure(history=20_000)
    child = spawn("-c", THREADED, str(handler.port))
    out, err = child.communicate(timeout=TIMEOUT)
    assert 0 == child.returncode, err
    assert "0" == out.strip()
    query = f"since=0&limit=10000&pid={child.pid}"
    async with session.get(f"{handler.url}/api/logs?{query}", headers=AUTH) as response:
        records = (await response.json())["records"]
    for t in range(4):
        assert list(range(2000)) == [r["fields"]["i"] for r in records if r["fields"]["t"] == t]


async def ingest(
    session: aiohttp.ClientSession, url: str, secret: str, *, right: bool = True
) -> aiohttp.ClientWebSocketResponse:
    """A hand-made forwarder connection, through the handshake with ``secret`` (``right``:
    the server's, whose proof of it is checked too)."""
    nonce = _ingest.new_nonce()
    ws = await session.ws_connect(f"{url}{_ingest.INGEST_PATH}?nonce={nonce}")
    challenge = _ingest.parse_challenge((await ws.receive(timeout=TIMEOUT)).data)
    if right:
        assert _ingest.proof_matches(challenge.proof, _ingest.server_proof(secret, nonce))
    proof = _ingest.forwarder_proof(secret, challenge.nonce)
    await ws.send_str(_ingest.auth_message(4242, proof))
    return ws


def secret_of(handler: wslogging.WebSocketHandler) -> str:
    found = _rendezvous.read("127.0.0.1", handler.port)
    assert found is not None
    return found.secret


async def test_wrong_secret_is_refused(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """A forwarder that cannot prove it knows the secret is closed with 4401 and changes
    nothing: no record, no forwarder in the stats."""
    ws = await ingest(session, handler.url, "not the secret at all", right=False)
    message = await ws.receive(timeout=TIMEOUT)
    assert (aiohttp.WSMsgType.CLOSE, 4401, "invalid ingest secret") == (
        message.type,
        message.data,
        message.extra,
    )
    data = await stats(session, handler.url)
    assert ([], 0) == (data["forwarders"], data["history_size"])


async def test_api_key_is_no_ingest_secret(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """The API key lets a client read, not write: as the ingest secret it is refused."""
    ws = await ingest(session, handler.url, KEY, right=False)
    assert 4401 == (await ws.receive(timeout=TIMEOUT)).data


async def test_ingest_needs_a_nonce(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """No (or a malformed) nonce is a 400 that says what is wrong."""
    async with session.get(f"{handler.url}{_ingest.INGEST_PATH}?nonce=xyz") as response:
        assert 400 == response.status
        assert "nonce must be" in (await response.json())["detail"]


async def test_malformed_frames_get_errors_and_change_nothing(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """Bad batches and control messages are answered with ``error`` and the connection stays;
    good records next to bad ones still arrive; an oversized frame closes it (1009)."""
    ws = await ingest(session, handler.url, secret_of(handler))
    assert "accepted" == (await receive_json(ws))["type"]
    record = ["hi", 20, "INFO", "app", "app", time.time(), {}, None, 4242]
    bad_frames: list[str | bytes] = [
        b"not json",
        b'{"a": 1}',
        json.dumps([record, [1, 2]]).encode(),
        "not json",
        '{"type": "dropped", "count": -1}',
    ]
    errors = []
    for frame in bad_frames:
        await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        errors.append((await receive_json(ws))["type"])
    assert ["error"] * 5 == errors
    with contextlib.suppress(ConnectionError):  # the server may close while we still send
        await ws.send_bytes(b"[" + b" " * (_ingest.MAX_FRAME + 4096) + b"]")
    message = await ws.receive(timeout=TIMEOUT)
    if message.type is aiohttp.WSMsgType.CLOSE:
        assert 1009 == message.data
    else:
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    async with session.get(f"{handler.url}/api/logs?since=0", headers=AUTH) as response:
        records = (await response.json())["records"]
    assert [("hi", 4242)] == [(r["log"], r["pid"]) for r in records]
    assert 1 == (await stats(session, handler.url))["records_failed"]


async def test_emit_never_blocks_when_the_server_stalls(
    configure: Callable[..., wslogging.WebSocketHandler],
    session: aiohttp.ClientSession,
    spawn: Spawn,
) -> None:
    """The serving process stopped (SIGSTOP): logging in the forwarding one stays fast, the
    records that do not fit are dropped and counted, and the count reaches the server's
    stats once it runs again."""
    port = free_port()
    server, role = worker(spawn, port, interval=1.0)
    assert "serving" == role
    handler = configure(port=port, queue_size=100)
    assert handler._forwarder is not None
    assert handler._forwarder.wait_connected(TIMEOUT)
    assert server.pid == handler.serving_pid
    server.send_signal(signal.SIGSTOP)
    try:
        longest = 0.0
        for n in range(20000):
            began = time.perf_counter()
            log.info("record %d with some padding %s", n, "x" * 200)
            longest = max(longest, time.perf_counter() - began)
    finally:
        server.send_signal(signal.SIGCONT)
    assert longest < 0.05
    dropped = handler.records_dropped
    assert dropped > 0
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: handler._forwarder is not None and handler._forwarder.connected)
    log.info("after")

    async def reported() -> int:
        data = await stats(session, url)
        return int(data["records_dropped"])

    async with asyncio.timeout(TIMEOUT):
        while await reported() < dropped:
            await asyncio.sleep(0.05)


async def reconnect(
    session: aiohttp.ClientSession, url: str, since: str
) -> aiohttp.ClientWebSocketResponse:
    """Connect to ``url``'s stream with ``since`` as a client does, retrying while nobody
    serves; the ``hello`` has been read."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                ws = await session.ws_connect(f"{url}/ws/logs?since={since}", headers=AUTH)
            except aiohttp.ClientError:
                await asyncio.sleep(0.02)
                continue
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.TEXT:
                assert "hello" == json.loads(message.data)["type"]
                return ws
            await asyncio.sleep(0.02)  # the old server closing: not yet the new one


async def last_id_before_close(
    ws: aiohttp.ClientWebSocketResponse, frames: list[dict[str, Any]]
) -> str:
    """Read until the server closes; the last record id seen (in ``frames`` if none since)."""
    last = [f["id"] for f in frames if f["type"] == "log"][-1]
    async with asyncio.timeout(TIMEOUT):
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                frame = json.loads(message.data)
                if frame["type"] == "log":
                    last = frame["id"]
    return last


async def test_takeover_after_the_serving_process_is_killed(
    session: aiohttp.ClientSession, spawn: Spawn
) -> None:
    """SIGKILL the serving process: another takes the port over within a few seconds, and a
    client (and ``wslogging tail``) reconnecting with its last id gets ``gap(restart)``,
    then the survivor's new records."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first, role = worker(spawn, port)
    assert "serving" == role
    second, role = worker(spawn, port)
    assert "forwarding" == role
    tail = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "wslogging", "tail", url, "--key", KEY, "--json", "-n", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert tail.stdout is not None

    async def tail_until(done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(TIMEOUT):
            while not done(seen):
                seen.append(json.loads(await tail.stdout.readline()))  # type: ignore[union-attr]
        return seen

    try:
        ws = await session.ws_connect(f"{url}/ws/logs", headers=AUTH)
        frames = await logs_until(ws, lambda fs: pids_of(fs) == {first.pid, second.pid})
        await tail_until(lambda seen: first.pid in pids_of(seen))
        kill(first)
        killed = time.monotonic()
        since = await last_id_before_close(ws, frames)
        ws = await reconnect(session, url, since)
        took = time.monotonic() - killed
        frames = await logs_until(ws, lambda fs: bool(pids_of(fs)))
        assert {"type": "gap", "missed": None, "reason": "restart"} == frames[0]
        assert {second.pid} == pids_of(frames)
        assert took < 3.0
        assert second.pid == (await stats(session, url))["pid"]
        await ws.close()
        # The tail went through the same: a gap, then the survivor's records.
        seen = await tail_until(
            lambda seen: any(f["type"] == "gap" for f in seen) and seen[-1]["type"] == "log"
        )
        gap = next(i for i, f in enumerate(seen) if f["type"] == "gap")
        assert "restart" == seen[gap]["reason"]
        assert all(f["pid"] == second.pid for f in seen[gap + 1 :])
    finally:
        tail.kill()
        await tail.wait()


FORKING_APP = """\
import json, logging, os, sys, time
from wslogging import WebSocketHandler
handler = WebSocketHandler(port=int(sys.argv[1]), api_keys="test-key")
log = logging.getLogger("app")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.info("before the fork")
child = os.fork()  # as gunicorn --preload does: after the handler exists
if child == 0:
    print(json.dumps({"child": os.getpid(), "role": handler.role}), flush=True)
while True:
    log.info("tick")
    time.sleep(0.02)
"""


async def test_forked_child_forwards_and_frees_the_port(
    session: aiohttp.ClientSession, spawn: Spawn
) -> None:
    """A child forked after the handler exists (gunicorn ``--preload``) forwards to its
    parent; it keeps none of the parent's sockets, so when the parent is killed its clients
    see the close at once and the child takes the port over."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    parent = spawn("-c", FORKING_APP, str(port))
    assert parent.stdout is not None
    started = json.loads(parent.stdout.readline())
    child = started["child"]
    try:
        assert "forwarding" == started["role"]
        ws = await reconnect(session, url, "0")
        frames = await logs_until(ws, lambda fs: pids_of(fs) == {parent.pid, child})
        assert "before the fork" in [f["log"] for f in frames]
        kill(parent)
        since = await last_id_before_close(ws, frames)  # a held socket would never close
        ws = await reconnect(session, url, since)
        frames = await logs_until(ws, lambda fs: bool(pids_of(fs)))
        assert "restart" == frames[0]["reason"]
        assert {child} == pids_of(frames)
        await ws.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


# The logging configuration of the gunicorn tests, as Python source: the handler on the
# "app" logger only, so that gunicorn's own records are not counted among the workers'.
GUNICORN_LOGGING = """{
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"live": {
        "class": "wslogging.WebSocketHandler",
        "port": int(os.environ["LOG_PORT"]),
        "api_keys": "test-key",
    }},
    "loggers": {"app": {"level": "INFO", "handlers": ["live"]}},
    # gunicorn merges logconfig_dict over its own defaults key by key: its root logger names
    # a handler of its "handlers", replaced above.
    "root": {"level": "INFO", "handlers": []},
}"""

# An app thread logging "tick N" every 50 ms until `stop` is set.
TICKER = """\
stop = threading.Event()


def ticks():
    n = 0
    while not stop.wait(0.05):
        log.info("tick %d", n)
        n += 1
"""

GUNICORN_APP = f"""\
import atexit, logging, logging.config, os, threading, time

if os.environ.get("CONFIGURE_IN_APP"):
    logging.config.dictConfig({GUNICORN_LOGGING})
log = logging.getLogger("app")
{TICKER}

ticker = threading.Thread(target=ticks, daemon=True)
ticker.start()


@atexit.register  # before logging.shutdown(): a record logged after it is dropped (counted)
def stop_ticking():
    stop.set()
    ticker.join()


def app(environ, start_response):
    log.info("request %s", environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\\n"]
"""

GUNICORN_CONF = f"import os\n\nlogconfig_dict = {GUNICORN_LOGGING}\n"


# The gunicorn configuration of docs/configuration.rst: gunicorn's own records go to the
# stream too.
GUNICORN_DOCS_CONF = """\
import os

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        "live": {
            "class": "wslogging.WebSocketHandler",
            "port": int(os.environ["LOG_PORT"]),
            "api_keys": "test-key",
        },
    },
    "root": {"level": "INFO", "handlers": ["console", "live"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}
"""

RunGunicorn = Callable[..., tuple[subprocess.Popen[bytes], str]]


@pytest.fixture
def run_gunicorn(tmp_path: Path) -> Iterator[RunGunicorn]:
    """Start a real gunicorn with ``workers`` workers (4 by default) serving
    ``GUNICORN_APP``, its stderr in ``gunicorn.err``; stopped gracefully (SIGTERM, as a
    deployment stops it) at the end of the test, killed if it does not stop."""
    (tmp_path / "app.py").write_text(GUNICORN_APP)
    (tmp_path / "conf.py").write_text(GUNICORN_CONF)
    (tmp_path / "docs_conf.py").write_text(GUNICORN_DOCS_CONF)
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str, workers: int = 4, **env: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        command = [sys.executable, "-m", "gunicorn", "-w", str(workers)]
        command += ["--chdir", str(tmp_path), "-b", f"127.0.0.1:{free_port()}", *options]
        command.append("app:app")
        if hasattr(gunicorn.config, "ControlSocketDisable"):  # gunicorn 25 on: not in $HOME
            command.insert(-1, "--no-control-socket")
        with (tmp_path / "gunicorn.err").open("ab") as err:
            proc = subprocess.Popen(
                command,
                env={**os.environ, "LOG_PORT": str(port), **env},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        started.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_gunicorn_workers_configured_in_the_app(
    session: aiohttp.ClientSession, run_gunicorn: RunGunicorn
) -> None:
    """gunicorn with 4 workers, each configuring logging with dictConfig in the app module:
    one serves, every worker's records arrive; kill the serving worker and the stream goes
    on from another one, with a gap."""
    _, url = run_gunicorn(CONFIGURE_IN_APP="1")
    ws = await reconnect(session, url, "0")
    frames = await logs_until(ws, lambda fs: len(pids_of(fs)) == 4)
    workers = pids_of(frames)
    serving = (await stats(session, url))["pid"]
    assert serving in workers
    os.kill(serving, signal.SIGKILL)
    since = await last_id_before_close(ws, frames)
    ws = await reconnect(session, url, since)
    frames = await logs_until(ws, lambda fs: len(pids_of(fs) - {serving}) >= 3)
    assert "restart" == frames[0]["reason"]
    assert serving not in pids_of(frames)
    assert (await stats(session, url))["pid"] in workers - {serving}
    await ws.close()


async def test_gunicorn_logconfig_dict(
    session: aiohttp.ClientSession, run_gunicorn: RunGunicorn, tmp_path: Path
) -> None:
    """gunicorn's ``logconfig_dict`` configures logging in the arbiter, which then serves;
    its forked workers forward, and records of all four arrive."""
    arbiter, url = run_gunicorn("-c", str(tmp_path / "conf.py"))
    ws = await reconnect(session, url, "0")
    frames = await logs_until(ws, lambda fs: len(pids_of(fs)) == 4)
    assert arbiter.pid not in pids_of(frames)
    data = await stats(session, url)
    assert arbiter.pid == data["pid"]
    assert pids_of(frames) == {f["pid"] for f in data["forwarders"] if f["connected"]}
    await ws.close()


async def test_gunicorn_hup_and_recycle_are_invisible_to_clients(
    session: aiohttp.ClientSession, run_gunicorn: RunGunicorn, tmp_path: Path
) -> None:
    """gunicorn, 3 workers, the documented ``logconfig_dict``: two HUPs (each re-runs
    dictConfig in the master and replaces every worker) and a worker recycled, under a
    connected client. The master serves throughout: the client's connection stays, with no
    gap, one epoch, every worker's ticks without a hole, gunicorn's own lines all there, and
    the history whole; nothing of wslogging's on stderr."""
    master, url = run_gunicorn("-c", str(tmp_path / "docs_conf.py"), workers=3)
    ws = await reconnect(session, url, "0")
    frames: list[dict[str, Any]] = []

    async def read() -> None:
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                frames.append(json.loads(message.data))

    reader = asyncio.create_task(read())

    def lines(text: str) -> list[str]:
        return [f["log"] for f in frames if f["type"] == "log" and text in f["log"]]

    def ticking() -> set[int]:
        return {f["pid"] for f in frames if f["type"] == "log" and f["log"].startswith("tick")}

    async def until(condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                assert not reader.done(), "the client's connection ended"
                await asyncio.sleep(0.02)

    def replaced(old: set[int], seen: set[int], new: int) -> Callable[[], bool]:
        """Whether the workers ``old`` have exited and ``new`` others than ``seen`` tick."""
        return lambda: (
            all(lines(f"Worker exiting (pid: {pid})") for pid in old)
            and (len(ticking() - seen) == new)
        )

    await until(lambda: len(ticking()) == 3)
    epoch = (await stats(session, url))["epoch"]
    workers = ticking()
    for _ in range(2):
        seen = ticking()
        master.send_signal(signal.SIGHUP)
        await until(replaced(workers, seen, 3))
        workers = ticking() - seen
    recycled = min(workers)
    os.kill(recycled, signal.SIGTERM)
    await until(replaced({recycled}, ticking(), 1))
    data = await stats(session, url)
    assert (master.pid, epoch) == (data["pid"], data["epoch"])
    assert [] == [f for f in frames if f["type"] != "log"]
    assert 2 == len(lines("Hang up: Master"))
    assert 3 + 3 + 3 + 1 == len(lines("Booting worker with pid"))
    for pid in ticking():
        ticks = [int(f["log"].split()[1]) for f in frames if f["pid"] == pid and "tick" in f["log"]]
        assert list(range(len(ticks))) == sorted(ticks), pid
    async with session.get(f"{url}/api/logs?since=0&limit=10000", headers=AUTH) as response:
        history = (await response.json())["records"]
    assert [f["id"] for f in frames] == [r["id"] for r in history][: len(frames)]
    await ws.close()
    await reader
    err = (tmp_path / "gunicorn.err").read_text()
    assert [] == [line for line in err.splitlines() if "wslogging" in line]


RESTARTING_PARENT = """
import json, logging, os, signal, socket, sys, time
from wslogging import WebSocketHandler
from wslogging._filters import Filter
port = int(sys.argv[1])
handler = WebSocketHandler(port=port, api_keys="k")
log = logging.getLogger("app")
log.addHandler(handler)
log.setLevel(logging.INFO)
parent = os.getpid()
child = os.fork()
if child == 0:
    while os.getppid() == parent:  # ends with its parent, whatever happens to it
        log.info("child tick")
        time.sleep(0.02)
    os._exit(0)
def wait(condition):
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)
wait(lambda: any(f.connected for f in handler._server._forwarders.values()))
# A restart of the master's server (a reconfiguration that could not keep it) that takes a
# second: the server says so to its forwarders as it closes.
log.removeHandler(handler)
handler._server.close(2.0, restarting=True)
taken = False
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:  # the port stays free for the master's new server
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        taken = True
    except OSError:  # refused: nobody serves
        time.sleep(0.02)
handler = WebSocketHandler(port=port, api_keys="k")
history = handler._server.hub.history if handler._server else None
wait(lambda: history is None or any(e.pid == child for e in history.latest(Filter(), 5)))
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
print(json.dumps({"taken": taken, "role": handler.role}))
handler.close()
"""


def test_forked_workers_leave_the_port_to_their_live_parent() -> None:
    """A master whose server restarts (closed saying so, then a new handler a second later)
    gets its port back: its forked worker does not take it meanwhile, and forwards to the
    new server."""
    result = subprocess.run(
        [sys.executable, "-c", RESTARTING_PARENT, str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert {"taken": False, "role": "serving"} == json.loads(result.stdout)


UVICORN_APP = f"""\
import logging, threading

log = logging.getLogger("app")
{TICKER}

threading.Thread(target=ticks, daemon=True).start()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                stop.set()
                await send({{"type": "lifespan.shutdown.complete"}})
                return
"""


async def test_uvicorn_workers_join_the_main_process_without_a_key(
    session: aiohttp.ClientSession, spawn: Spawn, tmp_path: Path
) -> None:
    """uvicorn ``--workers 2 --log-config`` with no key configured: the main process serves
    with its made-up key, and the workers it spawned (each made up a key of its own) join it,
    silently; their records arrive. Stopped with SIGTERM, each worker's last lines (uvicorn's
    shutdown, logged right before it re-raises the signal and dies by it, without
    ``logging.shutdown()``) reach a connected client, and its end is a ``gap(source)``."""
    pytest.importorskip("uvicorn")
    port = free_port()
    (tmp_path / "app.py").write_text(UVICORN_APP)
    handler = {"class": "wslogging.WebSocketHandler", "port": port, "api_key_env": None}
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"live": handler},
        "loggers": {
            "app": {"level": "INFO", "handlers": ["live"]},
            "uvicorn": {"level": "INFO", "handlers": ["live"]},
        },
    }
    (tmp_path / "log.json").write_text(json.dumps(config))
    # A session of its own: its workers, which outlive a killed main process, are killed
    # with it at the end, whatever happens.
    main = spawn(
        *("-m", "uvicorn", "--workers", "2", "--port", str(free_port())),
        *("--log-config", "log.json", "app:app"),
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        assert main.stderr is not None
        line = main.stderr.readline()
        assert line.startswith(f"wslogging: streaming logs at http://127.0.0.1:{port}/ with API")
        key = re.search(r"with API key (\S+)", line)
        assert key is not None, line
        headers = {"Authorization": f"Bearer {key.group(1)}"}

        async def workers() -> dict[int, int]:
            url = f"http://127.0.0.1:{port}/api/stats"
            async with session.get(url, headers=headers) as response:
                data = await response.json()
            assert main.pid == data["pid"]
            return {f["pid"]: f["records_received"] for f in data["forwarders"] if f["connected"]}

        async with asyncio.timeout(TIMEOUT):
            while not (len(seen := await workers()) == 2 and all(seen.values())):
                await asyncio.sleep(0.05)
        frames: list[dict[str, Any]] = []
        url = f"http://127.0.0.1:{port}/ws/logs?since=0"
        async with session.ws_connect(url, headers=headers) as ws:
            assert "hello" == json.loads(await ws.receive_str(timeout=TIMEOUT))["type"]
            main.terminate()
            async with asyncio.timeout(TIMEOUT):
                async for message in ws:  # until the main process closes the stream
                    if message.type is aiohttp.WSMsgType.TEXT:
                        frames.append(json.loads(message.data))
        _, err = await asyncio.to_thread(main.communicate, timeout=TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(main.pid, signal.SIGKILL)
    assert [] == [line for line in err.splitlines() if "wslogging" in line]
    last = ("Waiting for application shutdown.", "Application shutdown complete.", "Finished")
    for pid in seen:
        mine = [n for n, f in enumerate(frames) if f["type"] == "log" and f["pid"] == pid]
        logged = [frames[n]["log"] for n in mine]
        missing = [text for text in last if not any(line.startswith(text) for line in logged)]
        assert [] == missing, (pid, logged[-5:], [f for f in frames if f["type"] == "gap"])
        # The end of its connection, without a close, is told after its last record (the
        # ends of both workers may be told in one gap: losses in a row are told as one).
        assert any(f["type"] == "gap" and f["reason"] == "source" for f in frames[mine[-1] :]), (
            frames[mine[-1] :]
        )


def test_a_server_out_of_reach_is_told_once_and_only_when_it_lasts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serving process that cannot be reached (here: the port's holder hangs up on every
    connection) is told in one line, once it has lasted REPORT_AFTER, saying what to
    check; the failed tries before and after it say nothing."""
    monkeypatch.setattr(wslogging.sinks._ingest_client, "REPORT_AFTER", 0.5)
    tries = 0
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        found = _rendezvous.Rendezvous(
            os.getpid(), _rendezvous.new_secret(), keys=_rendezvous.keys_fingerprint([KEY])
        )
        _rendezvous.write("127.0.0.1", port, found)

        def hang_up() -> None:
            nonlocal tries
            with contextlib.suppress(OSError):
                while True:
                    holder.accept()[0].close()
                    tries += 1

        threading.Thread(target=hang_up, daemon=True).start()
        began = time.monotonic()  # the forwarder counts from its start, in the constructor
        handler = wslogging.WebSocketHandler(port=port, api_keys=KEY)
        assert "forwarding" == handler.role
        said: list[str] = []
        wait_until(lambda: said.extend(capsys.readouterr().err.splitlines()) or len(said) > 1)
        assert time.monotonic() - began >= 0.5
        seen = tries
        wait_until(lambda: tries >= seen + 2)
        said.extend(capsys.readouterr().err.splitlines())
        handler.close()
    (line,) = said[1:]
    pid = os.getpid()
    assert line.startswith(
        f"wslogging: process {pid} has not reached process {pid}, which serves "
        f"http://127.0.0.1:{port}/, for 0.5 s ("
    )
    assert line.endswith(
        "); its records wait in its queue (10000 at most), then are dropped and counted. "
        f"Is process {pid} stopped, or too busy?"
    )
    _rendezvous.remove("127.0.0.1", port, found.secret)


def test_rendezvous_dir_open_to_others_is_never_used(
    configure: Callable[..., wslogging.WebSocketHandler],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a rendezvous directory others can reach, the serving process says so and serves
    on; a second handler on its port says why it cannot forward, and counts its drops."""
    bad = tmp_path / "shared"
    bad.mkdir()
    bad.chmod(0o755)
    monkeypatch.setenv(_rendezvous.RUNTIME_DIR_ENV, str(bad))
    handler = configure()
    assert handler.serving
    (line,) = capsys.readouterr().err.splitlines()
    assert "other processes cannot forward their records to this one" in line
    assert "is open to other users (mode 755)" in line
    second = wslogging.WebSocketHandler(port=handler.port, api_keys=KEY)
    (line,) = capsys.readouterr().err.splitlines()
    assert "(Address already in use) nor forward to the process serving it" in line
    assert "is open to other users" in line
    assert line.endswith("records for this handler are dropped and counted")
    second.handle(logging.makeLogRecord({"name": "app", "msg": "lost"}))
    assert ("failed", 1, []) == (second.role, second.records_dropped, list(bad.iterdir()))
    second.close()


def test_forwarder_close_is_bounded_when_the_server_stalls(
    configure: Callable[..., wslogging.WebSocketHandler], spawn: Spawn
) -> None:
    """close() of a forwarder whose server has stopped returns within its bound, and what it
    could not deliver is counted as dropped."""
    port = free_port()
    server, _ = worker(spawn, port, interval=1.0)
    handler = configure(port=port, queue_size=1000)
    assert handler._forwarder is not None
    assert handler._forwarder.wait_connected(TIMEOUT)
    server.send_signal(signal.SIGSTOP)
    try:
        for n in range(20000):
            log.info("record %d with some padding %s", n, "x" * 200)
        began = time.monotonic()
        handler.close()
        took = time.monotonic() - began
    finally:
        server.send_signal(signal.SIGCONT)
    assert took < CLOSE_TIMEOUT + 1.5
    assert ("closed", True) == (handler.role, handler.records_dropped > 0)


def test_forwarding_over_tls(
    configure: Callable[..., wslogging.WebSocketHandler], tmp_path: Path
) -> None:
    """A server with TLS takes forwarders over TLS (a second handler in this same process
    here); the secret, not the certificate, tells the forwarder who serves."""
    certificate = trustme.CA().issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(certfile)
    certificate.private_key_pem.write_to_path(keyfile)
    tls = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    handler = configure(**tls)
    second = wslogging.WebSocketHandler(port=handler.port, api_keys=KEY, **tls)
    assert ("forwarding", handler.url) == (second.role, second.url)
    second.handle(logging.makeLogRecord({"name": "app.second", "msg": "via ingest"}))
    second.close()
    history = handler._server.hub.history
    wait_until(lambda: ["via ingest"] == [e.log for e in history.latest(SECOND, 5)])


async def test_bad_keys_and_proofs_never_lock_forwarders_out(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession, spawn: Spawn
) -> None:
    """Failed logins from 127.0.0.1 (a stale key in a local script, wrong ingest proofs) get
    that address's failures throttled, never /ws/ingest: forwarders share the address, and
    an HMAC proof cannot be guessed anyway."""
    for _ in range(31):
        async with session.get(f"{handler.url}/api/stats", headers={"Authorization": "Bearer x"}):
            pass
    for _ in range(35):
        ws = await ingest(session, handler.url, "not the secret at all", right=False)
        assert 4401 == (await ws.receive(timeout=TIMEOUT)).data
    bad = {"Authorization": "Bearer x"}
    async with session.get(f"{handler.url}/api/stats", headers=bad) as response:
        assert 429 == response.status  # failures from this address are throttled
    proc, role = worker(spawn, handler.port)
    assert "forwarding" == role
    history = handler._server.hub.history
    await asyncio.to_thread(
        wait_until, lambda: any(e.pid == proc.pid for e in history.latest(Filter(), 50))
    )


async def test_unproven_handshakes_hold_no_forwarder_place(
    handler: wslogging.WebSocketHandler,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Handshakes that never prove anything do not take the places of forwarders (anyone
    who reaches the port can start one)."""
    monkeypatch.setattr(wslogging.server._forwarders, "MAX_FORWARDERS", 2)
    idle = []
    for _ in range(4):
        nonce = _ingest.new_nonce()
        idle.append(await session.ws_connect(f"{handler.url}{_ingest.INGEST_PATH}?nonce={nonce}"))
    ws = await ingest(session, handler.url, secret_of(handler))
    assert _ingest.ACCEPTED == (await ws.receive(timeout=TIMEOUT)).data
    for sock in idle:
        await sock.close()


FORK_PORT_0 = """
import json, logging, os, sys, time
from wslogging import WebSocketHandler
handler = WebSocketHandler(port=0, api_keys="k", queue_size=1)
log = logging.getLogger("app")
log.addHandler(handler)
log.setLevel(logging.INFO)
for n in range(2000):  # some of these find the queue full: the parent's drops
    log.info("burst %d", n)
while handler._server.hub.stats()["records_accepted"] + handler.records_dropped < 2000:
    time.sleep(0.01)
parent_dropped = handler.records_dropped
pid = os.fork()
if pid == 0:
    log.info("from the child")
    handler.close()
    os._exit(0 if handler.role == "closed" and handler.records_dropped == 0 else 1)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
history = handler._server.hub.history
deadline = time.monotonic() + 10
def child_records():
    return [e.log for e in history.latest(Filter(), 10) if getattr(e, "pid", None) == pid]
while not child_records() and time.monotonic() < deadline:
    time.sleep(0.01)
import urllib.request
request = urllib.request.Request(handler.url + "/api/stats", headers={"Authorization": "Bearer k"})
stats = json.load(urllib.request.urlopen(request))
print(json.dumps({
    "code": code,
    "child_record": child_records(),
    "parent_dropped": parent_dropped,
    "stats_dropped": stats["records_dropped"],
    "serving_port": handler.port,
}))
handler.close()
"""


def test_forked_child_of_a_port_0_server_forwards_to_it() -> None:
    """A child forked from a server on port=0 forwards to the port its parent serves (not
    to a port of its own), and does not report its parent's drops as its own."""
    script = FORK_PORT_0.replace(
        "from wslogging import WebSocketHandler",
        "from wslogging import WebSocketHandler\nfrom wslogging._filters import Filter",
    )
    result = subprocess.run(
        [sys.executable, "-c", script, ""],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    got = json.loads(result.stdout)
    assert 0 < got["parent_dropped"]
    assert (0, ["from the child"], got["parent_dropped"]) == (
        got["code"],
        got["child_record"],
        got["stats_dropped"],
    ), result.stderr


async def test_keys_set_on_a_forwarder_are_served_after_it_takes_over(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    """A forwarder whose keys were replaced (set_api_keys) serves with them once it takes
    the port over, even where both had made their keys up: never with the old made-up key."""
    port = free_port()
    handler = wslogging.WebSocketHandler(port=port, api_key_env=None)
    made_up = handler._options.keys[0]
    child = spawn(
        "-c",
        f"import sys\nfrom wslogging import WebSocketHandler\n"
        f"h = WebSocketHandler(port={port}, api_key_env=None)\n"
        "h.set_api_keys(['rotated-key'])\nprint(h.role, flush=True)\nsys.stdin.read()",
    )
    assert child.stdout is not None
    assert "forwarding" == child.stdout.readline().strip()
    handler.close()

    async def status(key: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        async with session.get(f"http://127.0.0.1:{port}/api/stats", headers=headers) as got:
            return got.status

    async with asyncio.timeout(TIMEOUT):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                if await status("rotated-key") == 200:
                    break
            await asyncio.sleep(0.02)
    assert 401 == await status(made_up)
