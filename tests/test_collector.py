"""``wslogging serve`` without Redis: this machine's collector, with real processes.

A collector subprocess holds a fixed port; short-lived programs configured on that port (by
dictConfig only, each with an API key of its own) forward their records to it and exit; a
real WebSocket client connected throughout counts what arrives.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from conftest import AUTH, KEY, TIMEOUT

# A program that configures logging on argv[1]'s port, logs argv[3] records of run argv[2],
# prints its handler's role and pid and exits (logging.shutdown() at exit delivers).
PROGRAM = """
import json, logging, logging.config, os, sys
port, run, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
logging.config.dictConfig({
    "version": 1,
    "handlers": {"live": {"class": "wslogging.WebSocketHandler", "port": port,
                          "api_keys": "the-program-s-own-key"}},
    "loggers": {"script": {"level": "INFO", "handlers": ["live"]}},
})
(handler,) = logging.getLogger("script").handlers
log = logging.getLogger("script")
for n in range(count):
    log.info("run %d record %d", run, n, extra={"run": run, "n": n})
print(json.dumps({"role": handler.role, "pid": os.getpid()}), flush=True)
"""
COLLECTING = re.compile(r"collecting .* at (http://\S+)/")


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


def environment() -> dict[str, str]:
    """This environment without a Redis URL or a key (the runtime directory is kept)."""
    return {
        k: v for k, v in os.environ.items() if k not in ("WSLOGGING_REDIS_URL", "WSLOGGING_API_KEY")
    }


class Collector:
    """``wslogging serve --port PORT --api-key KEY``, without Redis."""

    def __init__(self, port: int) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "wslogging", "serve", "--port", str(port), "--api-key", KEY],
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        assert self.popen.stderr is not None
        self.first_line = self.popen.stderr.readline()
        found = COLLECTING.search(self.first_line)
        assert found, self.first_line
        self.url = found.group(1)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(TIMEOUT)


@pytest.fixture
def collector() -> Iterator[Collector]:
    started = Collector(free_port())
    yield started
    if started.popen.poll() is None:
        started.popen.kill()
    started.popen.wait(TIMEOUT)
    assert started.popen.stderr is not None
    started.popen.stderr.close()


def run_program(port: int, run: int, count: int) -> tuple[dict[str, Any], str, float]:
    """Run :data:`PROGRAM` to its end: what it printed, its stderr, and how long it took."""
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(port), str(run), str(count)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
        env=environment(),
    )
    return json.loads(done.stdout), done.stderr, time.monotonic() - began


async def test_a_program_restarted_three_times_is_one_stream(collector: Collector) -> None:
    """Three runs of a script that logs 1,000 records and exits: each is done within a
    moment, a client connected throughout gets all 3,000 in order, one epoch, no gap, and
    they are all in the collector's history."""
    port = int(collector.url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{collector.url}/ws/logs", headers=AUTH) as ws:
            hello = json.loads(await ws.receive_str(timeout=TIMEOUT))
            pids = set()
            for run in range(3):
                said, stderr, took = run_program(port, run, 1000)
                assert "forwarding" == said["role"]
                assert "collector" in stderr, stderr
                assert took < 5.0, f"run {run} took {took:.1f} s"
                pids.add(said["pid"])
            frames: list[dict[str, Any]] = []
            while sum(f["type"] == "log" for f in frames) < 3000:
                frames.append(json.loads(await ws.receive_str(timeout=TIMEOUT)))
        assert [] == [f for f in frames if f["type"] != "log"]
        assert [(r, n) for r in range(3) for n in range(1000)] == [
            (f["fields"]["run"], f["fields"]["n"]) for f in frames
        ]
        ids = [int(f["id"]) for f in frames]
        assert ids == sorted(set(ids))
        assert 3 == len(pids) == len({f["pid"] for f in frames})
        async with session.get(
            f"{collector.url}/api/logs?since=0&limit=5000", headers=AUTH
        ) as response:
            page = await response.json()
        async with session.ws_connect(f"{collector.url}/ws/logs", headers=AUTH) as ws:
            again = json.loads(await ws.receive_str(timeout=TIMEOUT))
        async with session.get(f"{collector.url}/api/stats", headers=AUTH) as response:
            stats = await response.json()
    assert 3000 == len(page["records"])
    assert ("collector", 3000, 0) == (
        stats["backend"],
        sum(f["records_received"] for f in stats["forwarders"]),
        stats["records_dropped"],
    )
    assert hello["epoch"] == again["epoch"]


def test_without_a_collector_the_first_program_serves() -> None:
    """No collector on the port: a program serves it itself, as it always has; a collector
    started while a program serves the port says which process holds it and ends with 1."""
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "tests/_worker.py", str(port), "1.0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment(),
    )
    try:
        assert holder.stdout is not None
        assert "serving" == json.loads(holder.stdout.readline())["role"]
        done = subprocess.run(
            [sys.executable, "-m", "wslogging", "serve", "--port", str(port), "--api-key", KEY],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            env=environment(),
        )
        assert 1 == done.returncode
        assert f"process {holder.pid} serves it; stop it first" in done.stderr
    finally:
        holder.kill()
        holder.communicate(timeout=TIMEOUT)


def test_a_stopped_collector_leaves_the_port_to_programs(collector: Collector) -> None:
    """SIGTERM ends the collector with status 0; the next program serves the port itself."""
    port = int(collector.url.rsplit(":", 1)[1])
    assert 0 == collector.stop()
    said, _, _ = run_program(port, 0, 10)
    assert "serving" == said["role"]
