"""Records per second from ``logger.info`` to a WebSocket client: embedded vs. through Redis.

Two paths are measured side by side, their runs interleaved repetition after repetition:

- embedded: ``WebSocketHandler(port=0)`` serves from this process; one aiohttp WebSocket
  client in another process reads ``/ws/logs``.
- Redis: ``WebSocketHandler(backend=...)`` in this process appends to a Redis stream; a
  ``wslogging serve --redis`` process reads it; the same client reads that serve's
  ``/ws/logs``.

Each run logs N records as fast as the app thread can and ends when the client has received
all N: records/s is N over that time. "emit µs" is the app thread's time per call. A
``redis-server`` of its own is started on a free port (``--redis URL`` uses another instead);
without ``redis-server`` on the PATH the script says so and exits 0.

(Not named ``redis.py``: run as a script, that would hide redis-py from ``import redis``.)
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from _common import KEY, environment, median, print_table, ratio
from emit import reader_process, wait_until

import wslogging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SERVING = re.compile(r" at (https?://\S+)/")
WAIT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server without persistence on a free port, answering."""
    port = free_port()
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(answers, WAIT, "redis-server answering")
    client.close()
    return process, f"redis://127.0.0.1:{port}/0"


def start_serve(url: str, stream: str, history: int) -> tuple[subprocess.Popen[str], str]:
    """``wslogging serve`` on a free port; its process and base URL."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "wslogging", "serve", "--redis", url, "--stream", stream),
            *("--port", "0", "--api-key", KEY, "--history", str(history)),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        found = SERVING.search(line)
        if found:
            return process, found.group(1)
    raise SystemExit(f"redis_mode.py: wslogging serve ended with {process.wait()}")


class Route:
    """One way from the app to a client: a logger with its handler and a reading client."""

    def __init__(self, name: str, handler: wslogging.WebSocketHandler, client_url: str) -> None:
        self.name = name
        self.handler = handler
        handler.setFormatter(logging.Formatter(FORMAT))
        self.logger = logging.getLogger(f"bench.{name}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(handler)
        ctx = multiprocessing.get_context("spawn")
        self.received: Any = ctx.Value("q", 0, lock=False)
        ready = ctx.Event()
        self.client = ctx.Process(target=reader_process, args=(client_url, self.received, ready))
        self.client.start()
        if not ready.wait(WAIT):
            raise SystemExit(f"redis_mode.py: the {name} client did not connect")
        self.rates: list[float] = []
        self.emit_us: list[float] = []

    def run(self, count: int) -> None:
        """Log ``count`` records and wait for the client to have them all."""
        info = self.logger.info
        target = self.received.value + count
        began = time.perf_counter()
        for n in range(count):
            info("msg %d", n, extra={"k": n})
        logged = time.perf_counter()
        wait_until(lambda: self.received.value >= target, WAIT, f"{self.name}: the client")
        done = time.perf_counter()
        self.rates.append(count / (done - began))
        self.emit_us.append((logged - began) / count * 1e6)

    def close(self) -> None:
        self.handler.close()
        self.client.terminate()
        self.client.join(WAIT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 records, 3 repetitions")
    parser.add_argument("--records", type=int, default=None, help="records per run (20,000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (5)")
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of starting one")
    args = parser.parse_args(argv)
    count = args.records or (5000 if args.quick else 20000)
    reps = args.reps or (3 if args.quick else 5)
    print(f"redis_mode.py: {environment()}", flush=True)
    if args.redis is None and shutil.which("redis-server") is None:
        print("redis_mode.py: skipped: no redis-server on the PATH (apt-get install redis-server)")
        return 0
    # Every record of a run fits in the queues and in the stream: nothing is dropped.
    bound = count * 2
    with tempfile.TemporaryDirectory(prefix="wslogging-bench-") as workdir:
        redis_process, url = (None, args.redis) if args.redis else start_redis(workdir)
        stream = f"bench-{uuid.uuid4().hex[:8]}"
        serve, serve_url = start_serve(url, stream, bound)
        try:
            embedded = wslogging.WebSocketHandler(
                port=0, api_keys=KEY, queue_size=bound, client_queue_size=bound
            )
            appender = wslogging.WebSocketHandler(
                backend=url, stream=stream, queue_size=bound, history=bound
            )
            paths = [Route("embedded", embedded, embedded.url), Route("redis", appender, serve_url)]
            paths[0].run(min(count, 1000))  # warm up both
            paths[1].run(min(count, 1000))
            for rep in range(reps):
                for path in paths[rep % 2 :] + paths[: rep % 2]:
                    path.run(count)
            dropped = [path.handler.records_dropped for path in paths]
            for path in paths:
                path.close()
        finally:
            serve.terminate()
            serve.wait(WAIT)
            if redis_process is not None:
                redis_process.terminate()
                redis_process.wait(WAIT)
    base = median(paths[0].rates)
    print_table(
        f"Records/s from logger.info to one WebSocket client (median of {reps} runs of "
        f"{count:,} records)",
        ["path", "records/s", "vs embedded", "emit µs/call", "records_dropped"],
        [
            [
                path.name,
                median(path.rates),
                ratio(median(path.rates), base),
                median(path.emit_us),
                drops,
            ]
            for path, drops in zip(paths, dropped, strict=True)
        ],
        [
            "embedded: WebSocketHandler(port=0) serving from this process",
            "redis: WebSocketHandler(backend=redis://...) -> a script of XADDs per batch -> "
            "redis-server -> XREAD in `wslogging serve` -> client",
            "records/s: from the first call until the client has every record of the run",
            "emit µs/call: the app thread's time per logging call (not waiting for delivery)",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
