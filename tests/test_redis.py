"""Redis mode end to end: producer processes append to a real ``redis-server``, real
``wslogging serve`` processes serve the stream, real clients read it.

Without ``redis-server`` on the PATH these tests are skipped, except under CI (``CI=true``),
where its absence fails them (``.ci/run`` installs Debian's redis-server package).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis
from _records import make_entry
from conftest import AUTH, KEY, TIMEOUT, read_sse, receive_json, wait_until

import wslogging
from wslogging._history import LossMark
from wslogging._streamids import stream_fields

# A producer: logs COUNT records at RATE per second (0: as fast as it can) through a handler
# with backend=URL built by dictConfig, then prints what it measured as one JSON line.
PRODUCER = """
import json, logging, logging.config, sys, time
url, stream, name, count, rate, queue_size = sys.argv[1:]
count, rate = int(count), float(rate)
logging.config.dictConfig({
    "version": 1,
    "handlers": {"redis": {"class": "wslogging.WebSocketHandler", "backend": url,
                           "stream": stream, "queue_size": queue_size}},
    "root": {"level": "INFO", "handlers": ["redis"]},
})
handler = logging.getLogger().handlers[0]
log = logging.getLogger("app")
longest = 0.0
began = time.perf_counter()
for n in range(count):
    before = time.perf_counter()
    log.info("record %d of %s", n, name, extra={"producer": name, "n": n})
    longest = max(longest, time.perf_counter() - before)
    if rate:
        delay = began + (n + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
logging.shutdown()
print(json.dumps({"dropped": handler.records_dropped, "longest_emit": longest}), flush=True)
"""
# What a serve process prints once it listens.
SERVING = re.compile(r" at (https?://\S+)/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RedisServer:
    """A ``redis-server`` of the tests' own, on a free port, without persistence; it may be
    stopped and started again on the same port."""

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(port=self.port, socket_timeout=TIMEOUT)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._answers)

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(TIMEOUT)
        self.client.connection_pool.disconnect()

    def ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no redis-server on the PATH: .ci/run installs Debian's redis-server")
        pytest.skip("no redis-server on the PATH (apt-get install redis-server); CI=true fails")
    with tempfile.TemporaryDirectory(prefix="wslogging-redis-") as workdir:
        server = RedisServer(binary, workdir)
        server.start()
        yield server
        server.stop()


@pytest.fixture
def rds(redis_server: RedisServer) -> RedisServer:
    """The Redis server, running (a test before may have stopped it)."""
    redis_server.ensure_running()
    return redis_server


@pytest.fixture
def stream() -> str:
    """A stream key of this test's own."""
    return f"test-{uuid.uuid4().hex[:12]}"


class Process:
    """A subprocess whose stderr lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WSLOGGING_")},
            **(env or {}),
        }
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        assert self.popen.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.popen.stderr,), daemon=True)
        self._reader.start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        status = self.popen.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        return status

    def close(self) -> None:
        """Kill it if still running, and close its pipes."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.stop()
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


class Serve(Process):
    """``wslogging serve --redis``, on a free port of its choosing."""

    def __init__(
        self,
        url: str | None,
        stream: str,
        env: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        """Reads ``url``, or with ``None`` the URL ``env`` gives it; ``extra`` options."""
        super().__init__(
            [
                *("-m", "wslogging", "serve", "--stream", stream, "--port", "0"),
                *("--api-key", KEY, *(("--redis", url) if url else ()), *extra),
            ],
            env,
        )
        wait_until(lambda: self.url is not None or self.popen.poll() is not None)
        assert self.url is not None, self.lines

    @property
    def url(self) -> str | None:
        for line in list(self.lines):
            found = SERVING.search(line)
            if found:
                return found.group(1)
        return None


class Producer(Process):
    """A producer process (see :data:`PRODUCER`)."""

    def __init__(
        self, url: str, stream: str, name: str, count: int, rate: float = 0, queue_size: int = 10000
    ) -> None:
        super().__init__(
            ["-c", PRODUCER, url, stream, name, str(count), str(rate), str(queue_size)]
        )

    def result(self) -> dict[str, Any]:
        """What it measured, once it has ended (successfully)."""
        assert 0 == self.popen.wait(TIMEOUT * 2), self.lines
        self._reader.join(TIMEOUT)  # every line it wrote is in self.lines
        assert self.popen.stdout is not None
        result: dict[str, Any] = json.loads(self.popen.stdout.read())
        return result


@pytest.fixture
def processes() -> Iterator[Callable[[Process], Any]]:
    """Track processes; any left running at the end are killed."""
    started: list[Process] = []

    def track(process: Process) -> Any:
        started.append(process)
        return process

    yield track
    for process in started:
        process.close()


async def read_records(
    ws: aiohttp.ClientWebSocketResponse,
    until: Callable[[list[dict[str, Any]]], bool],
    gaps: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """``log`` frames until ``until`` holds for those read; no gap may come, unless a list
    ``gaps`` is given to collect them."""
    logs: list[dict[str, Any]] = []
    while not until(logs):
        frame = await receive_json(ws)
        if gaps is not None and frame["type"] == "gap":
            gaps.append(frame)
            continue
        assert frame["type"] == "log", frame
        logs.append(frame)
    return logs


def stream_ids(rds: RedisServer, stream: str) -> list[str]:
    return [raw.decode() for raw, _fields in rds.client.xrange(stream)]


def app_records(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [log for log in logs if log["logger"] == "app"]


async def test_three_producers_two_serves(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """Three producers, two serve processes: a client of either gets every record once, in
    the stream's order, with the stream's ids."""
    count = 300
    serves = [processes(Serve(rds.url, stream)) for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        clients = []
        for serve in serves:
            ws = await session.ws_connect(f"{serve.url}/ws/logs?since=0", headers=AUTH)
            assert "hello" == (await receive_json(ws))["type"]
            clients.append(ws)
        producers = [processes(Producer(rds.url, stream, f"p{i}", count)) for i in range(3)]
        results = [producer.result() for producer in producers]
        assert [0, 0, 0] == [result["dropped"] for result in results]
        expected_ids = stream_ids(rds, stream)
        assert 3 * count == len(expected_ids)
        for ws in clients:
            logs = await read_records(ws, lambda logs: len(logs) >= 3 * count)
            assert expected_ids == [log["id"] for log in logs]
            assert {(f"p{i}", n) for i in range(3) for n in range(count)} == {
                (log["fields"]["producer"], log["fields"]["n"]) for log in logs
            }
            await ws.close()
    for serve in serves:
        assert 0 == serve.stop()
        assert not serve.said("Traceback"), serve.lines


async def test_resume_after_serve_restart(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """SSE's Last-Event-ID and WebSocket's since, sent to a serve process restarted (and
    records logged while it was down), resume with nothing lost and nothing twice."""
    processes(Producer(rds.url, stream, "a", 200)).result()
    serve = processes(Serve(rds.url, stream))
    async with aiohttp.ClientSession() as session:
        url = f"{serve.url}/api/get-logs-stream?since=0&limit=120"
        async with session.get(url, headers=AUTH) as response:
            first = await read_sse(response)
        ws = await session.ws_connect(f"{serve.url}/ws/logs?since=0", headers=AUTH)
        hello = await receive_json(ws)
        seen = await read_records(ws, lambda logs: len(logs) >= 80)
        await ws.close()
        serve.stop(signal.SIGKILL)
        processes(Producer(rds.url, stream, "b", 200)).result()
        expected = stream_ids(rds, stream)
        serve = processes(Serve(rds.url, stream))

        headers = {**AUTH, "Last-Event-ID": first[-1]["id"]}
        url = f"{serve.url}/api/get-logs-stream?limit={400 - 120}"
        async with session.get(url, headers=headers) as response:
            rest = await read_sse(response)
        assert expected == [event["id"] for event in first + rest]
        assert all(event.get("event") is None for event in rest)  # no gap

        ws = await session.ws_connect(f"{serve.url}/ws/logs?since={seen[-1]['id']}", headers=AUTH)
        again = await receive_json(ws)
        assert (hello["epoch"], expected[-1]) == (again["epoch"], again["last_id"])
        more = await read_records(ws, lambda logs: len(logs) >= 400 - 80)
        assert expected == [log["id"] for log in seen + more]
        await ws.close()


async def test_since_older_than_held(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """An id older than what serve holds (--history) gets gap(history), its count unknown,
    then the oldest records held; on SSE too, as an ``event: gap``."""
    processes(Producer(rds.url, stream, "a", 100)).result()
    expected = stream_ids(rds, stream)
    serve = processes(Serve(rds.url, stream, extra=("--history", "50")))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{serve.url}/ws/logs?since={expected[10]}", headers=AUTH)
        await receive_json(ws)
        assert {"type": "gap", "missed": None, "reason": "history"} == await receive_json(ws)
        logs = await read_records(ws, lambda logs: len(logs) >= 50)
        assert expected[50:] == [log["id"] for log in logs]
        await ws.close()
        url = f"{serve.url}/api/get-logs-stream?since={expected[10]}&limit=1"
        async with session.get(url, headers=AUTH) as response:
            gap, first = await read_sse(response)
        assert ("gap", expected[50]) == (gap["event"], first["id"])


async def test_ack_resumes_on_any_serve(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """A client_id's last ack is kept in Redis: reconnecting without since, to a restarted
    serve process or to another one, resumes right after it."""
    processes(Producer(rds.url, stream, "a", 100)).result()
    expected = stream_ids(rds, stream)
    serve = processes(Serve(rds.url, stream))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{serve.url}/ws/logs?since=0&client_id=c1", headers=AUTH)
        await receive_json(ws)
        logs = await read_records(ws, lambda logs: len(logs) >= 40)
        await ws.send_json({"type": "ack", "id": logs[29]["id"]})
        wait_until(lambda: rds.client.get(f"{stream}:ack:c1") == expected[29].encode())
        await ws.close()
        serve.stop(signal.SIGKILL)
        for again in (processes(Serve(rds.url, stream)), processes(Serve(rds.url, stream))):
            ws = await session.ws_connect(f"{again.url}/ws/logs?client_id=c1", headers=AUTH)
            await receive_json(ws)
            rest = await read_records(ws, lambda logs: len(logs) >= 70)
            assert expected[30:] == [log["id"] for log in rest]
            await ws.close()


async def test_since_from_a_serve_further_ahead(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """A client that comes from a serve process further ahead than this one gets nothing
    twice: this one catches up to its since first."""
    ahead, behind = processes(Serve(rds.url, stream)), processes(Serve(rds.url, stream))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{ahead.url}/ws/logs", headers=AUTH)
        await receive_json(ws)
        behind.popen.send_signal(signal.SIGSTOP)
        try:
            processes(Producer(rds.url, stream, "a", 200)).result()
            logs = await read_records(ws, lambda logs: len(logs) >= 200)
            await ws.close()
            # Asked while the other process is stopped: it answers once it runs again.
            url = f"{behind.url}/ws/logs?since={logs[-1]['id']}"
            connecting = asyncio.ensure_future(session.ws_connect(url, headers=AUTH))
            await asyncio.sleep(0.2)  # the request is on its way
        finally:
            behind.popen.send_signal(signal.SIGCONT)
        ws = await connecting
        assert logs[-1]["id"] == (await receive_json(ws))["last_id"]
        processes(Producer(rds.url, stream, "b", 10)).result()
        more = await read_records(ws, lambda logs: len(logs) >= 10)
        assert ["b"] * 10 == [log["fields"]["producer"] for log in more]
        await ws.close()


async def test_redis_stalled(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """Redis stopped (SIGSTOP) for a second while a producer logs: its logging calls never
    wait, and once Redis runs again every record arrives, once, in order."""
    serve = processes(Serve(rds.url, stream))
    count = 1000
    producer = processes(Producer(rds.url, stream, "p", count, rate=500))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{serve.url}/ws/logs?since=0", headers=AUTH)
        await receive_json(ws)
        logs = await read_records(ws, lambda logs: len(logs) >= 50)
        assert rds.process is not None
        rds.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.0)  # the stall: Redis takes connections and answers nothing
        finally:
            rds.process.send_signal(signal.SIGCONT)
        result = producer.result()
        logs += await read_records(ws, lambda more: len(logs) + len(more) >= count)
        await ws.close()
    # See test_redis_outage for the bound; here a call that waited would have waited for
    # the stall itself (a second).
    assert result["longest_emit"] < 0.05
    assert 0 == result["dropped"]
    assert list(range(count)) == [log["fields"]["n"] for log in logs]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_redis_outage(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any], sig: int
) -> None:
    """Redis killed (or stopped) and started again while a producer logs: its logging calls
    never wait, what it could not append is counted (and announced by a record, and a
    gap(source) for every client), and delivery resumes."""
    serve = processes(Serve(rds.url, stream))
    count = 1500
    producer = processes(Producer(rds.url, stream, "p", count, rate=500, queue_size=100))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{serve.url}/ws/logs", headers=AUTH)
        assert "hello" == (await receive_json(ws))["type"]
        logs = await read_records(ws, lambda logs: len(logs) >= 100)
        rds.stop(sig)
        wait_until(lambda: producer.said("cannot append to Redis"))
        wait_until(lambda: serve.said("cannot read the stream"))
        # The outage lasts long enough for the producer's queue of 100 to overflow at 500
        # records per second: records are dropped for sure.
        await asyncio.sleep(0.5)
        rds.start()
        result = producer.result()
        gaps: list[dict[str, Any]] = []
        logs += await read_records(
            ws, lambda logs: any(log["fields"].get("n") == count - 1 for log in logs), gaps
        )
        await ws.close()
    # A logging call renders the record and puts it on a queue: microseconds. Had it waited
    # for Redis even once, it would have taken a connection attempt or a reply timeout
    # (seconds): 50 ms tells the two apart with room for a slow CI machine.
    assert result["longest_emit"] < 0.05
    # The notice counts the drops until Redis was back; a few more may come while the
    # queue that filled meanwhile drains.
    (notice,) = [log for log in logs if log["logger"] == "wslogging.redis"]
    announced = notice["fields"]["dropped"]
    assert 0 < announced <= result["dropped"] <= announced + 100
    assert producer.said(f"is back; {announced} record(s) dropped"), producer.lines
    # Every client is also told with gap(source), at the place: the drops until Redis was
    # back, and any since, before the records appended after them.
    assert {"source"} == {gap["reason"] for gap in gaps}
    assert announced <= sum(gap["missed"] for gap in gaps) <= result["dropped"]
    numbers = [log["fields"]["n"] for log in app_records(logs)]
    assert sorted(set(numbers)) == numbers  # in order, none twice
    # Lost: what was dropped, and what Redis had not handed to serve when it was killed
    # (it keeps nothing across a restart here).
    assert len(numbers) <= count - result["dropped"]
    assert 2 == sum("reading the stream" in line for line in serve.lines)


async def test_stream_isolation(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """A serve process serves its --stream only."""
    processes(Producer(rds.url, stream + "-other", "other", 20)).result()
    processes(Producer(rds.url, stream, "mine", 20)).result()
    serve = processes(Serve(rds.url, stream))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{serve.url}/api/logs", headers=AUTH) as response,
    ):
        page = await response.json()
    assert {"mine"} == {log["fields"]["producer"] for log in page["records"]}
    assert 20 == len(page["records"])


async def test_malformed_entries(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """Entries that are not records are counted and skipped; serve goes on."""
    serve = processes(Serve(rds.url, stream))
    processes(Producer(rds.url, stream, "before", 5)).result()
    for fields in ({"x": "1"}, {"r": "not json"}, {"r": "[1, 2, 3]"}, {"r": "[" * 10000}):
        rds.client.xadd(stream, fields)  # type: ignore[arg-type]
    processes(Producer(rds.url, stream, "after", 5)).result()
    async with aiohttp.ClientSession() as session:

        async def stats() -> dict[str, Any]:
            async with session.get(f"{serve.url}/api/stats", headers=AUTH) as response:
                result: dict[str, Any] = await response.json()
                return result

        deadline = time.monotonic() + TIMEOUT
        while (current := await stats())["records_accepted"] < 10:
            assert time.monotonic() < deadline, current
        async with session.get(f"{serve.url}/api/logs", headers=AUTH) as response:
            page = await response.json()
    assert 4 == current["records_failed"]
    assert ("redis", "connected") == (current["backend"], current["redis"]["state"])
    assert ["before"] * 5 + ["after"] * 5 == [r["fields"]["producer"] for r in page["records"]]
    assert stream_ids(rds, stream)[-1] == page["last_id"]


async def test_bad_since(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """A since that is no id gets 400 on every endpoint, as from an embedded server."""
    serve = processes(Serve(rds.url, stream))
    async with aiohttp.ClientSession() as session:
        for path in ("/api/logs", "/api/get-logs-stream", "/ws/logs"):
            async with session.get(f"{serve.url}{path}?since=12-x", headers=AUTH) as response:
                assert 400 == response.status
                assert "not a record id" in (await response.json())["detail"]


async def test_serve_endpoints(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """serve has every endpoint of the embedded server: the viewer, health, the OpenAPI
    document, tickets, and keys checked as there."""
    processes(Producer(rds.url, stream, "a", 3)).result()
    serve = processes(Serve(rds.url, stream))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{serve.url}/") as response:
            assert (200, "text/html") == (response.status, response.content_type)
        async with session.get(f"{serve.url}/openapi.json") as response:
            assert "/api/logs" in (await response.json())["paths"]
        async with session.get(f"{serve.url}/api/logs") as response:
            assert 401 == response.status
        async with session.post(f"{serve.url}/api/ticket", headers=AUTH) as response:
            ticket = (await response.json())["ticket"]
        url = f"{serve.url}/api/get-logs-stream?ticket={ticket}&since=0&limit=3"
        async with session.get(url) as response:
            assert 3 == len(await read_sse(response))
        ws = await session.ws_connect(f"{serve.url}/ws/logs", headers={"Authorization": "x"})
        message = await ws.receive(timeout=TIMEOUT)
        assert (aiohttp.WSMsgType.CLOSE, 4401) == (message.type, message.data)


async def test_serve_without_redis_retries(processes: Callable[[Process], Any]) -> None:
    """An unreachable Redis is said once and retried; meanwhile the server answers, with 503
    where it needs the stream, and Ctrl-C ends it with 130, without a traceback."""
    url = f"redis://:secret-pw@127.0.0.1:{free_port()}/0"
    serve = processes(Serve(None, "s", {"WSLOGGING_REDIS_URL": url}))
    wait_until(lambda: serve.said("cannot read the stream"))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{serve.url}/healthz") as response:
            assert 200 == response.status
        async with session.get(f"{serve.url}/api/logs", headers=AUTH) as response:
            assert 503 == response.status
        async with session.get(f"{serve.url}/api/stats", headers=AUTH) as response:
            assert "down" == (await response.json())["redis"]["state"]
    assert not any("secret-pw" in line for line in serve.lines)
    assert 130 == serve.stop(signal.SIGINT)
    assert 1 == sum("cannot read the stream" in line for line in serve.lines)
    assert not serve.said("Traceback")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--redis", "http://localhost/"], "not a Redis URL"),
        (["--redis", "redis://host:notaport/0"], "not a Redis URL"),
    ],
)
def test_serve_bad_url(args: list[str], said: str) -> None:
    """A URL that is no Redis URL ends serve at once with status 2 and says why. (No URL at
    all is the collector: see test_collector.py.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSLOGGING_")}
    done = subprocess.run(
        [sys.executable, "-m", "wslogging", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
    )
    assert (2, "") == (done.returncode, done.stdout)
    assert said in done.stderr


# -- the handler with backend= --------------------------------------------------------------


def configure_backend(url: str, stream: str, **options: Any) -> wslogging.WebSocketHandler:
    handler = wslogging.WebSocketHandler(backend=url, stream=stream, **options)
    logging.getLogger().addHandler(handler)
    return handler


def log_and_close(
    handler: wslogging.WebSocketHandler, rds: RedisServer, stream: str, count: int
) -> tuple[int, int]:
    """Log ``count`` records through ``handler`` and close it: the stream's length then,
    and the records the handler dropped."""
    log = logging.getLogger("app.backend")
    log.setLevel(logging.INFO)
    for n in range(count):
        log.info("record %d", n)
    handler.close()
    return rds.client.xlen(stream), handler.records_dropped


def test_backend_handler_serves_nothing(rds: RedisServer, stream: str) -> None:
    """With backend=, the handler binds no port, and close() leaves every record in the
    stream."""
    handler = configure_backend(rds.url, stream)
    assert 0 == handler.port
    assert (50, 0) == log_and_close(handler, rds, stream, 50)
    with pytest.raises(RuntimeError, match="wslogging serve"):
        handler.set_api_keys("k")


def test_backend_handler_in_a_forked_child(rds: RedisServer, stream: str) -> None:
    """A child forked after the handler exists (gunicorn's --preload) appends its records
    from a thread of its own, as the parent does (a subprocess, so a hang is a timeout)."""
    script = f"""
import faulthandler, json, logging, os
import wslogging
faulthandler.dump_traceback_later(20, exit=True)
handler = wslogging.WebSocketHandler(backend={rds.url!r}, stream={stream!r})
log = logging.getLogger("app")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.info("parent before")
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        ok = handler.role == "appending"
        for n in range(50):
            log.info("child %d", n)
        handler.close()
        os._exit(0 if ok and handler.records_dropped == 0 else 1)
    children.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
log.info("parent after")
handler.close()
print(json.dumps([codes, handler.records_dropped, children]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == result.returncode, result.stderr
    codes, dropped, child_pids = json.loads(result.stdout)
    assert ([0, 0], 0) == (codes, dropped), result.stderr
    entries = rds.client.xrange(stream)
    pids: dict[int, int] = {}
    for _, fields in entries:
        pid = json.loads(fields[b"r"])[8]
        pids[pid] = pids.get(pid, 0) + 1
    assert {pid: 50 for pid in child_pids} == {p: n for p, n in pids.items() if p in child_pids}
    assert 2 == sum(n for p, n in pids.items() if p not in child_pids)


def test_backend_handler_without_scripts(rds: RedisServer, stream: str) -> None:
    """Where Redis refuses scripts (here an ACL user without them), records are appended
    with plain XADDs instead, none lost."""
    rds.client.execute_command(
        "ACL", "SETUSER", "noscripts", "on", ">pw", "~*", "+@all", "-@scripting"
    )
    url = rds.url.replace("redis://", "redis://noscripts:pw@")
    handler = configure_backend(url, stream)
    assert (50, 0) == log_and_close(handler, rds, stream, 50)


def test_backend_handler_redis_unreachable(capfd: pytest.CaptureFixture[str]) -> None:
    """Redis unreachable: records are counted as dropped, the stderr line and the handler's
    URL keep the password masked, and close() returns in its bound."""
    url = f"redis://:not-the-password@127.0.0.1:{free_port()}/0"
    handler = configure_backend(url, "s")
    assert url.replace("not-the-password", "***") == handler.url
    logging.getLogger("app.backend").warning("lost")
    wait_until(lambda: handler.records_dropped == 1)
    began = time.monotonic()
    handler.close()
    assert time.monotonic() - began < 4.0
    err = capfd.readouterr().err
    assert "cannot append to Redis at redis://:***@127.0.0.1" in err
    assert "not-the-password" not in err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@localhost/0", "redis://:***@localhost/0"),
        ("rediss://user:p%40ss@h:1/2", "rediss://user:***@h:1/2"),
        ("redis://h/0?password=pw&db=1", "redis://h/0?password=%2A%2A%2A&db=1"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
        # An unescaped "/" or "#" in the password ends the authority for urlsplit.
        ("redis://:s3cr/et@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://u:a#b?c@h/0", "redis://u:***@h/0"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    """URLs are shown without their password, wherever it was put."""
    from wslogging.sinks._redis import mask_url

    assert shown == mask_url(url)


def test_a_bad_url_never_shows_its_password() -> None:
    """A URL that is not one (here a password with an unescaped "/") is refused without
    quoting the password, neither masked nor in redis-py's own words."""
    with pytest.raises(ValueError, match="not a Redis URL") as caught:
        wslogging.WebSocketHandler(backend="redis://:s3cr/et+pw@redis.internal:6379/0")
    assert "s3cr" not in str(caught.value)
    assert "et+pw" not in str(caught.value)


def test_close_under_the_logging_lock_does_not_wait(rds: RedisServer, stream: str) -> None:
    """close() while holding logging's module lock (as dictConfig does when it replaces the
    handler) returns at once: the appender's thread may be waiting for that lock (redis-py
    looks up a logger when it connects); the record queued is still appended afterwards."""
    handler = configure_backend(rds.url, stream)
    logging.getLogger("app.backend").warning("before the reconfiguration")
    # logging's module lock, as dictConfig holds it (_acquireLock is gone from 3.13 on).
    with logging._lock:  # type: ignore[attr-defined]
        began = time.monotonic()
        handler.close()
        took = time.monotonic() - began
    assert took < 1.0
    wait_until(lambda: rds.client.xlen(stream) == 1)


async def test_entries_trimmed_before_serve_read_them_are_announced(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """Entries Redis trimmed from the stream before serve got to read them (serve stopped
    while producers wrote more than the stream keeps) reach every client as a gap(source)
    that counts them, in front of the records that are left."""
    serve = processes(Serve(rds.url, stream))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{serve.url}/ws/logs", headers=AUTH)
        assert "hello" == (await receive_json(ws))["type"]
        rds.client.xadd(stream, stream_fields(make_entry("first", pid=1)))
        assert ["first"] == [r["log"] for r in await read_records(ws, lambda logs: logs)]
        serve.popen.send_signal(signal.SIGSTOP)
        try:
            for n in range(50):
                rds.client.xadd(
                    stream, stream_fields(make_entry(f"r{n}", pid=1)), maxlen=10, approximate=False
                )
        finally:
            serve.popen.send_signal(signal.SIGCONT)
        # A read that was waiting when serve stopped may have been answered with r0 already.
        frames = [await receive_json(ws)]
        while frames[-1]["type"] == "log":
            frames.append(await receive_json(ws))
        logs = await read_records(ws, lambda logs: len(logs) == 10)
        await ws.close()
    *before, gap = frames
    assert [r["log"] for r in before] in ([], ["r0"])
    assert ("gap", 50 - 10 - len(before), "source") == (
        gap["type"],
        gap["missed"],
        gap["reason"],
    ), gap
    assert [f"r{n}" for n in range(40, 50)] == [r["log"] for r in logs]
    assert gap["id"] < logs[0]["id"]  # its place: just before the first record left


async def test_a_gap_entry_in_the_stream_reaches_clients(
    rds: RedisServer, stream: str, processes: Callable[[Process], Any]
) -> None:
    """A producer's announced loss (a gap entry in the stream) is a gap(source) with its
    count and the entry's id, for live clients and in the JSON page."""
    serve = processes(Serve(rds.url, stream))
    mark = LossMark(7, "source", {})
    mark_id = rds.client.xadd(stream, stream_fields(mark)).decode()
    rds.client.xadd(stream, stream_fields(make_entry("after", pid=1)))
    async with aiohttp.ClientSession() as session:
        page: dict[str, Any] = {"records": []}
        async with asyncio.timeout(TIMEOUT):
            while not page["records"]:  # until serve has read both
                async with session.get(f"{serve.url}/api/logs", headers=AUTH) as response:
                    page = await response.json()
    assert ["after"] == [r["log"] for r in page["records"]]
    assert [{"type": "gap", "missed": 7, "reason": "source", "id": mark_id}] == page["gaps"]
