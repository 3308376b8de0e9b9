"""Emit cost: µs per ``logger.info("msg %d", n, extra={"k": n})`` call on the app thread.

Four handlers are measured side by side, their runs interleaved repetition after repetition:
a ``NullHandler`` (the cost of logging itself), the stdlib ``QueueHandler`` +
``QueueListener`` (whose handler is a ``NullHandler``), and ``wslogging.WebSocketHandler``
with no client and with one WebSocket client (an aiohttp client in another process) reading
everything. The time after the loop until the background side has handled every record
("drain") is measured too, since that work competes with the app for the GIL.
"""

from __future__ import annotations

import argparse
import gc
import logging
import logging.handlers
import multiprocessing
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _common import AUTH, KEY, environment, median, print_table, ratio

import wslogging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_PREFIX = '{"type":"log"'


def reader_process(url: str, received: Any, ready: Any) -> None:
    """A WebSocket client process: read ``/ws/logs`` and count records until closed."""
    import asyncio

    import aiohttp

    async def read() -> None:
        """Connect with the bearer key and count every ``log`` frame."""
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{url}/ws/logs", headers=AUTH) as ws,
        ):
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                if message.data.startswith(LOG_PREFIX):
                    received.value += 1
                elif message.data.startswith('{"type":"hello"'):
                    ready.set()

    asyncio.run(read())


@dataclass
class Case:
    """One handler under test: its logger, how to wait for its background side, its drops."""

    name: str
    logger: logging.Logger
    drain: Callable[[int], None]
    dropped: Callable[[], object] = lambda: "-"
    client_drops: Callable[[], object] = lambda: "-"
    close: Callable[[], None] = lambda: None
    handler: logging.Handler | None = None
    loop_us: list[float] = field(default_factory=list)
    total_us: list[float] = field(default_factory=list)
    logged: int = 0


def make_logger(name: str, handler: logging.Handler) -> logging.Logger:
    """A logger of its own that sends INFO and above to ``handler`` only."""
    handler.setFormatter(logging.Formatter(FORMAT))
    logger = logging.getLogger(f"bench.emit.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every millisecond, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {timeout:g} s")
        time.sleep(0.001)


def null_case() -> Case:
    """A ``NullHandler``: what the logging call costs with no handler work at all."""
    return Case("NullHandler", make_logger("null", logging.NullHandler()), drain=lambda n: None)


def queue_case(calls: int) -> Case:
    """``QueueHandler`` on a roomy ``queue.Queue``, drained by a ``QueueListener(NullHandler)``."""
    q: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=2 * calls)
    handler = logging.handlers.QueueHandler(q)
    errors = []
    handler.handleError = lambda record: errors.append(record)  # type: ignore[method-assign]
    listener = logging.handlers.QueueListener(q, logging.NullHandler())
    listener.start()
    return Case(
        "QueueHandler+QueueListener(NullHandler)",
        make_logger("queue", handler),
        drain=lambda n: q.join(),
        dropped=lambda: len(errors),
        close=listener.stop,
    )


def wsl_case(calls: int, with_client: bool) -> tuple[Case, multiprocessing.Process | None]:
    """``WebSocketHandler`` with roomy queues, optionally with one client process reading."""
    handler = wslogging.WebSocketHandler(
        port=0, api_keys=[KEY], queue_size=2 * calls, client_queue_size=2 * calls
    )
    logger = make_logger("wsl_client" if with_client else "wsl", handler)
    process = None
    if with_client:
        ctx = multiprocessing.get_context("spawn")
        received = ctx.Value("q", 0, lock=False)
        ready = ctx.Event()
        process = ctx.Process(target=reader_process, args=(handler.url, received, ready))
        process.start()
        if not ready.wait(30):
            raise RuntimeError("the reader process did not connect")

        def drain(n: int) -> None:
            """Wait until the client has read all ``n`` records logged so far."""
            wait_until(lambda: received.value >= n, 60, "the client")

    else:

        def drain(n: int) -> None:
            """Wait until the server has accepted all ``n`` records (``/api/stats``)."""
            wait_until(lambda: _stats(handler)["records_accepted"] >= n, 60, "the server")

    name = "WebSocketHandler, 1 client reading" if with_client else "WebSocketHandler, no client"
    return Case(
        name,
        logger,
        drain=drain,
        dropped=lambda: handler.records_dropped,
        client_drops=lambda: _stats(handler)["client_drops"],
        close=handler.close,
        handler=handler,
    ), process


class PrepareOnly(logging.Handler):
    """Only a ``WebSocketHandler``'s ``prepare()``: its app-thread rendering, with no hand-off."""

    def __init__(self, target: wslogging.WebSocketHandler) -> None:
        """Render with ``target``'s ``prepare()`` (and so its formatter)."""
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        """Render only."""
        self.target.prepare(record)


def _stats(handler: wslogging.WebSocketHandler) -> dict[str, Any]:
    """``GET /api/stats`` from the handler's own server."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{handler.url}/api/stats", headers=AUTH)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        stats: dict[str, Any] = json.load(response)
    return stats


def run_case(case: Case, calls: int, timed: bool) -> None:
    """One timed loop of ``calls`` logging calls, then wait for the background side."""
    gc.collect()
    info = case.logger.info
    start = time.perf_counter_ns()
    for n in range(calls):
        info("msg %d", n, extra={"k": n})
    end = time.perf_counter_ns()
    case.logged += calls
    case.drain(case.logged)
    drained = time.perf_counter_ns()
    if timed:
        case.loop_us.append((end - start) / calls / 1000)
        case.total_us.append((drained - start) / calls / 1000)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the interleaved repetitions, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repetitions")
    parser.add_argument("--calls", type=int, default=None, help="logging calls per run")
    parser.add_argument("--reps", type=int, default=None, help="runs per handler")
    args = parser.parse_args(argv)
    calls = args.calls or (5000 if args.quick else 20000)
    reps = args.reps or (5 if args.quick else 9)
    print(f"emit.py: {environment()}")
    print(f"{calls} calls per run, {reps} runs per handler (interleaved), median reported")

    # Every queue holds two runs' worth of records, so nothing can be dropped for lack of room.
    cases = [null_case(), queue_case(calls)]
    wsl, _ = wsl_case(calls, with_client=False)
    wsl_client, process = wsl_case(calls, with_client=True)
    assert isinstance(wsl.handler, wslogging.WebSocketHandler)
    prepare_only = make_logger("prepare", PrepareOnly(wsl.handler))
    prepare = Case("WebSocketHandler.prepare() only", prepare_only, drain=lambda n: None)
    cases += [prepare, wsl, wsl_client]
    try:
        for case in cases:
            run_case(case, min(calls, 2000), timed=False)  # warm-up
        for rep in range(reps):
            shift = rep % len(cases)
            for case in cases[shift:] + cases[:shift]:
                run_case(case, calls, timed=True)
        rows = []
        null_us = median(cases[0].loop_us)
        queue_us = median(cases[1].loop_us)
        for case in cases:
            us = median(case.loop_us)
            rows.append(
                [
                    case.name,
                    us,
                    ratio(us, queue_us),
                    us - null_us,
                    median(case.total_us),
                    case.dropped(),
                    case.client_drops(),
                ]
            )
    finally:
        for case in cases:
            case.close()
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.kill()
    print_table(
        'µs per logger.info("msg %d", n, extra={"k": n}) call on the app thread '
        f"(median of {reps} runs of {calls} calls)",
        [
            "handler",
            "µs/call",
            "vs QueueHandler",
            "µs above Null",
            "µs/call incl. drain",
            "records_dropped",
            "client_drops",
        ],
        rows,
        [
            f"formatter for all: {FORMAT!r}",
            "QueueListener's handler is a NullHandler; its queue.Queue holds two runs",
            "prepare() only: the rendering WebSocketHandler does on the app thread, with no "
            "hand-off and no server thread involved",
            "incl. drain: until the background side has handled every record "
            "(listener done / server accepted it / client received it)",
            "records_dropped: records the handler could not queue (app->server queue full); "
            "client_drops: records dropped for the slow client (GET /api/stats)",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
