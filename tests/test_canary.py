"""The canary (after loki-canary): a real app process logs numbered records, a real client
counts every record and every gap, and the two must add up: received + announced == logged.

Every scenario is one where records are lost on purpose (an error storm, a tiny queue, a
client that reads slowly, a forwarding worker that drops, one that is killed): what is
checked is that nothing is lost without a word, not how much gets through (that is
``benchmarks/storm.py``'s business).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from conftest import AUTH, KEY, TIMEOUT

import wslogging
from wslogging.sinks._ingest_client import DIRECT_BURST

Configure = Callable[..., wslogging.WebSocketHandler]

# Every WARNING_EVERY-th record is a WARNING, the others INFO.
WARNING_EVERY = 100

# An app that configures logging through dictConfig (handler options as JSON in argv[1]),
# prints its handler's URL (once connected, if it forwards), logs argv[2] numbered records in
# a tight loop once it reads a line, prints "done", and shuts logging down when its stdin
# closes. Further arguments: "padded" adds 1,000 bytes to every message; "sigterm" has it
# raise SIGTERM on itself right after the loop, as uvicorn does once it has logged its
# shutdown: logging.shutdown() never runs.
APP = """
import json, logging, logging.config, signal, sys, time
options = json.loads(sys.argv[1])
count = int(sys.argv[2])
logging.config.dictConfig({
    "version": 1,
    "handlers": {"live": {"class": "wslogging.WebSocketHandler", **options}},
    "loggers": {"canary": {"level": "INFO", "handlers": ["live"], "propagate": False}},
})
(handler,) = logging.getLogger("canary").handlers
deadline = time.monotonic() + 10
while handler.serving_pid is None and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({"url": handler.url, "role": handler.role}), flush=True)
sys.stdin.readline()
log = logging.getLogger("canary")
pad = " " + "x" * 1000 if "padded" in sys.argv[3:] else ""
for n in range(count):
    if n % %(every)d:
        log.info("record %%d%%s", n, pad, extra={"n": n})
    else:
        log.warning("record %%d%%s", n, pad, extra={"n": n})
if "sigterm" in sys.argv[3:]:
    signal.raise_signal(signal.SIGTERM)
print(json.dumps({"done": True, "dropped": handler.records_dropped}), flush=True)
sys.stdin.read()
logging.shutdown()
""".replace("%(every)d", str(WARNING_EVERY)).replace("%%", "%")


@dataclass
class Canary:
    """One client's count: records received (per level, by number) and gaps announced."""

    received: Counter[str] = field(default_factory=Counter)
    numbers: set[int] = field(default_factory=set)
    announced: int = 0
    unknown: int = 0  # gaps whose missed was null
    by_level: Counter[str] = field(default_factory=Counter)  # gaps that said their levels
    unattributed: int = 0  # gaps that did not
    reasons: Counter[str] = field(default_factory=Counter)
    last_id: int | None = None
    last_n: int = -1

    def frame(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "log":
            record_id = int(frame["id"])
            assert self.last_id is None or record_id > self.last_id, (self.last_id, record_id)
            self.last_id = record_id
            n = frame["fields"]["n"]
            assert n not in self.numbers, f"record {n} received twice"
            # The app logs from one thread: its records arrive in the order it logged them.
            assert n > self.last_n, f"record {n} came after record {self.last_n}"
            self.last_n = n
            self.numbers.add(n)
            self.received[frame["level"]] += 1
        elif frame["type"] == "gap":
            self.reasons[frame["reason"]] += 1
            if frame["missed"] is None:
                self.unknown += 1
                return
            self.announced += frame["missed"]
            levels = frame.get("levels") or {}
            self.by_level.update(levels)
            self.unattributed += frame["missed"] - sum(levels.values())

    @property
    def total(self) -> int:
        return sum(self.received.values()) + self.announced

    def check(self, logged: int) -> None:
        """Exact: every record received once, or counted in a gap; per level too, where the
        gaps said which levels they lost."""
        warnings = logged // WARNING_EVERY + (logged % WARNING_EVERY > 0)
        expected = Counter({"INFO": logged - warnings, "WARNING": warnings})
        assert logged == self.total, self
        if not self.unattributed:
            assert expected == self.received + self.by_level, self


async def read_into(ws: aiohttp.ClientWebSocketResponse, canary: Canary) -> None:
    """Count every frame until the connection ends."""
    async for message in ws:
        if message.type is aiohttp.WSMsgType.TEXT:
            canary.frame(json.loads(message.data))


async def until(condition: Callable[[], bool], what: Callable[[], object]) -> None:
    """Wait for ``condition`` (the suite's timeout, scaled: a storm has much to read)."""
    try:
        async with asyncio.timeout(6 * TIMEOUT):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not accounted for in time: {what()}") from None


class App:
    """The app subprocess of :data:`APP`."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str, role: str) -> None:
        self.proc, self.url, self.role = proc, url, role

    async def storm(self) -> int:
        """Let it log; returns how many records it dropped, by its own count."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(6 * TIMEOUT):
            line = await self.proc.stdout.readline()
        assert line, "the app ended before it was done"
        dropped: int = json.loads(line)["dropped"]
        return dropped

    async def finish(self) -> None:
        """Close its stdin: it shuts logging down and exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        async with asyncio.timeout(TIMEOUT):
            assert 0 == await self.proc.wait()


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[..., Any]]:
    started: list[asyncio.subprocess.Process] = []

    async def start(count: int, *then: str, **options: Any) -> App:
        options = {"port": 0, "api_keys": [KEY], **options}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            APP,
            json.dumps(options),
            str(count),
            *then,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        started.append(proc)
        assert proc.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = await proc.stdout.readline()
        assert line, "the app did not start"
        state = json.loads(line)
        return App(proc, state["url"], state["role"])

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # No total timeout: a storm's stream is read for as long as it takes.
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.mark.parametrize(
    ("records", "options"),
    [
        pytest.param(50_000, {}, id="tight-loop-defaults"),
        pytest.param(20_000, {"queue_size": 64}, id="tiny-queue"),
    ],
)
async def test_error_storm_is_accounted_for(
    start_app: Callable[..., Any],
    session: aiohttp.ClientSession,
    records: int,
    options: dict[str, Any],
) -> None:
    """An app logs as fast as it can while one client reads: every record is received, or
    counted in a gap (``overflow``, with its levels), at its place in the stream."""
    app = await start_app(records, **options)
    canary = Canary()
    async with session.ws_connect(f"{app.url}/ws/logs", headers=AUTH, max_msg_size=0) as ws:
        assert "hello" == json.loads(await ws.receive_str(timeout=TIMEOUT))["type"]
        reader = asyncio.create_task(read_into(ws, canary))
        dropped = await app.storm()
        await until(lambda: canary.total >= records, lambda: canary)
        reader.cancel()
    await app.finish()
    canary.check(records)
    assert dropped == canary.announced
    if dropped:
        assert {"overflow"} == set(canary.reasons)
        # Shed first: a smaller share of the WARNING records is lost than of the INFO ones.
        warnings = records // WARNING_EVERY
        lost = canary.by_level
        assert lost["WARNING"] / warnings <= lost["INFO"] / (records - warnings), canary


async def test_stalled_reader_is_accounted_for(
    start_app: Callable[..., Any], session: aiohttp.ClientSession
) -> None:
    """A client that reads nothing while the app logs more than the socket buffers hold,
    with a small queue of its own, loses its oldest records (``slow_client``) and is told
    how many once it reads again."""
    records = 50_000
    app = await start_app(records, client_queue_size=50, slow_client="drop")
    canary = Canary()
    async with session.ws_connect(f"{app.url}/ws/logs", headers=AUTH, max_msg_size=0) as ws:
        assert "hello" == json.loads(await ws.receive_str(timeout=TIMEOUT))["type"]
        await app.storm()  # not reading meanwhile
        reader = asyncio.create_task(read_into(ws, canary))
        await until(lambda: canary.total >= records, lambda: canary)
        reader.cancel()
    await app.finish()
    canary.check(records)
    assert canary.reasons["slow_client"], canary


async def test_forwarding_worker_that_drops_is_accounted_for(
    start_app: Callable[..., Any], session: aiohttp.ClientSession
) -> None:
    """A worker process forwarding to another, with a tiny queue of its own, drops most of
    a storm logged while the serving process is stopped (SIGSTOP: nothing reads the
    connection, so records cannot be written onto it either): the serving side announces
    them as ``gap(source)``, the last ones included (sent as it closes), so the count is
    exact."""
    serving = await start_app(0, history=100_000)
    records = 20_000
    port = int(serving.url.rsplit(":", 1)[1])
    # Padded, so that the storm is more than the connection's buffers hold.
    app = await start_app(records, "padded", port=port, queue_size=32)
    assert "forwarding" == app.role
    canary = Canary()
    pid = app.proc.pid
    async with session.ws_connect(
        f"{serving.url}/ws/logs?pid={pid}", headers=AUTH, max_msg_size=0
    ) as ws:
        assert "hello" == json.loads(await ws.receive_str(timeout=TIMEOUT))["type"]
        reader = asyncio.create_task(read_into(ws, canary))
        serving.proc.send_signal(signal.SIGSTOP)
        try:
            dropped = await app.storm()
        finally:
            serving.proc.send_signal(signal.SIGCONT)
        await app.finish()  # its handler's close reports the last drops
        await until(lambda: canary.total >= records, lambda: canary)
        reader.cancel()
    await serving.finish()
    assert 0 < dropped
    canary.check(records)
    assert dropped == canary.announced
    assert {"source"} == set(canary.reasons)


async def test_killed_forwarding_worker_is_announced(
    configure: Configure, start_app: Callable[..., Any], session: aiohttp.ClientSession
) -> None:
    """A worker killed outright (no logging.shutdown) takes what it held with it: the
    serving side says so with ``gap(source)``, its count unknown."""
    serving = configure()
    app = await start_app(10, port=serving.port)
    canary = Canary()
    async with session.ws_connect(f"{serving.url}/ws/logs", headers=AUTH) as ws:
        assert "hello" == json.loads(await ws.receive_str(timeout=TIMEOUT))["type"]
        reader = asyncio.create_task(read_into(ws, canary))
        await app.storm()
        await until(lambda: sum(canary.received.values()) == 10, lambda: canary)
        os.kill(app.proc.pid, signal.SIGKILL)
        await app.proc.wait()
        await until(lambda: canary.unknown == 1, lambda: canary)
        reader.cancel()
    assert {"source": 1} == dict(canary.reasons)


async def test_worker_that_dies_by_a_signal_right_after_logging_loses_nothing(
    configure: Configure, start_app: Callable[..., Any], session: aiohttp.ClientSession
) -> None:
    """A forwarding worker logs a burst and at once raises SIGTERM on itself, as uvicorn's
    workers do when they stop: every record it logged arrives (its thread wrote them onto
    the idle connection itself), and the connection's end without a close is announced,
    count unknown. (A storm past DIRECT_BURST goes through the queue, and what a death
    takes of it is told by that same gap.)"""
    serving = configure(history=100_000)
    records = DIRECT_BURST
    app = await start_app(records, "sigterm", port=serving.port)
    assert "forwarding" == app.role
    canary = Canary()
    async with session.ws_connect(f"{serving.url}/ws/logs", headers=AUTH) as ws:
        assert "hello" == json.loads(await ws.receive_str(timeout=TIMEOUT))["type"]
        reader = asyncio.create_task(read_into(ws, canary))
        assert app.proc.stdin is not None
        app.proc.stdin.write(b"go\n")
        async with asyncio.timeout(TIMEOUT):
            assert -signal.SIGTERM == await app.proc.wait()
        await until(lambda: canary.unknown == 1, lambda: canary)
        reader.cancel()
    assert records == sum(canary.received.values()), canary
    assert {"source": 1} == dict(canary.reasons)


async def test_resume_under_a_filter_counts_only_what_it_would_have_had(
    configure: Configure, session: aiohttp.ClientSession
) -> None:
    """A client filtering for WARNING resumes from the position it was last told (not from
    its last matching record); history has since forgotten records, of which it is told
    only those it would have been sent (the WARNINGs, not the INFOs), then gets the rest:
    received + announced == the WARNINGs logged while it was away. With ``grep`` (the
    message of a forgotten record is not kept) the count is unknown."""
    handler = configure(history=50, heartbeat=0.05)
    log = logging.getLogger("canary.resume")
    for n in range(30):
        log.info("before %d", n, extra={"n": n})
    url = f"{handler.url}/ws/logs?level=WARNING"
    async with session.ws_connect(url, headers=AUTH) as ws:
        hello = json.loads(await ws.receive_str(timeout=TIMEOUT))
        log.warning("the only match", extra={"n": 30})
        for n in range(31, 40):
            log.info("skipped %d", n, extra={"n": n})
        position = None
        while position is None or int(position) < int(hello["last_id"]) + 10:
            frame = json.loads(await ws.receive_str(timeout=TIMEOUT))
            if frame["type"] == "position":
                position = frame["last_id"]
    # 100 more, every 10th a WARNING: history (50) forgets the first 50, 5 WARNINGs among them.
    for n in range(40, 140):
        (log.warning if n % 10 == 0 else log.info)("while away %d", n, extra={"n": n})
    canary = Canary()
    async with session.ws_connect(f"{url}&since={position}", headers=AUTH) as ws:
        assert "hello" == json.loads(await ws.receive_str(timeout=TIMEOUT))["type"]
        reader = asyncio.create_task(read_into(ws, canary))
        await until(lambda: canary.total >= 10, lambda: canary)
        reader.cancel()
    assert {"history": 1} == dict(canary.reasons)
    assert (5, {90, 100, 110, 120, 130}) == (canary.announced, canary.numbers)
    async with session.ws_connect(f"{url}&grep=away&since={position}", headers=AUTH) as ws:
        assert "hello" == json.loads(await ws.receive_str(timeout=TIMEOUT))["type"]
        gap = json.loads(await ws.receive_str(timeout=TIMEOUT))
    assert {"type": "gap", "missed": None, "reason": "history"} == gap
