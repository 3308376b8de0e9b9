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
import asyncio
import collections
import gc
import logging
import logging.handlers
import multiprocessing
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import janus
from _common import AUTH, KEY, environment, median, print_table, ratio

import wslogging
from wslogging._handoff import Handoff

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
    cpu_us: list[float] = field(default_factory=list)
    total_us: list[float] = field(default_factory=list)
    # The background thread (the listener's, or wslogging's server): its CPU per record.
    background: Callable[[], int | None] = lambda: None
    background_us: list[float] = field(default_factory=list)
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


def thread_cpu(thread: threading.Thread | None) -> Callable[[], int | None]:
    """A function giving the CPU time (ns) ``thread`` has used so far, read from another
    thread through its CPU-time clock; ``None`` once it has ended."""

    def cpu() -> int | None:
        if thread is None or thread.ident is None or not thread.is_alive():
            return None
        try:
            return time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
        except OSError:
            return None

    return cpu


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
        background=thread_cpu(listener._thread),  # type: ignore[attr-defined]
    )


def line_reader_process(port: int, received: Any, ready: Any) -> None:
    """A client process for the stdlib's delivery: read lines from a TCP socket and count
    them until it closes."""
    import socket

    with socket.create_connection(("127.0.0.1", port)) as sock:
        ready.set()
        while chunk := sock.recv(1 << 16):
            received.value += chunk.count(b"\n")


def queue_socket_case(calls: int) -> tuple[Case, multiprocessing.Process]:
    """``QueueHandler`` + ``QueueListener`` whose handler writes each formatted line to a
    TCP socket read by another process: the stdlib delivering the same records to one reader,
    as ``WebSocketHandler`` does to its one client."""
    import socket

    q: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=2 * calls)
    handler = logging.handlers.QueueHandler(q)
    errors = []
    handler.handleError = lambda record: errors.append(record)  # type: ignore[method-assign]
    server = socket.create_server(("127.0.0.1", 0))
    ctx = multiprocessing.get_context("spawn")
    received = ctx.Value("q", 0, lock=False)
    ready = ctx.Event()
    process = ctx.Process(
        target=line_reader_process, args=(server.getsockname()[1], received, ready)
    )
    process.start()
    conn, _ = server.accept()
    server.close()
    if not ready.wait(30):
        raise RuntimeError("the reader process did not connect")
    stream = conn.makefile("w", encoding="utf-8")
    # QueueHandler.prepare() has formatted the message already: write it as it is.
    target = logging.StreamHandler(stream)
    target.setFormatter(logging.Formatter("%(message)s"))
    listener = logging.handlers.QueueListener(q, target)
    listener.start()

    def close() -> None:
        listener.stop()
        stream.close()
        conn.close()

    return Case(
        "QueueHandler+QueueListener(socket, 1 reader)",
        make_logger("queue_socket", handler),
        drain=lambda n: wait_until(lambda: received.value >= n, 60, "the line reader"),
        dropped=lambda: len(errors),
        close=close,
        background=thread_cpu(listener._thread),  # type: ignore[attr-defined]
    ), process


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
            """Wait until the server has accepted all ``n`` records (its hub's count, read
            directly: polling ``/api/stats`` would add the server's work of answering)."""
            hub = handler._server.hub
            wait_until(lambda: hub.stats()["records_accepted"] >= n, 60, "the server")

    name = "WebSocketHandler, 1 client reading" if with_client else "WebSocketHandler, no client"
    return Case(
        name,
        logger,
        drain=drain,
        dropped=lambda: handler.records_dropped,
        client_drops=lambda: _stats(handler)["client_drops"],
        close=handler.close,
        handler=handler,
        background=thread_cpu(handler._server._loop_thread.thread),
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
    background = case.background()
    cpu = time.thread_time_ns()
    start = time.perf_counter_ns()
    for n in range(calls):
        info("msg %d", n, extra={"k": n})
    end = time.perf_counter_ns()
    cpu = time.thread_time_ns() - cpu
    case.logged += calls
    case.drain(case.logged)
    drained = time.perf_counter_ns()
    background_end = case.background()
    if timed:
        if background is not None and background_end is not None:
            case.background_us.append((background_end - background) / calls / 1000)
        case.loop_us.append((end - start) / calls / 1000)
        case.cpu_us.append(cpu / calls / 1000)
        case.total_us.append((drained - start) / calls / 1000)


# -- the hand-off alone ----------------------------------------------------------------------


class LoopThread:
    """An asyncio loop in a daemon thread, as wslogging's server has."""

    def __init__(self) -> None:
        """Start the loop."""
        self.loop = asyncio.new_event_loop()
        self.wakeups = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        real = self.loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            """Count every wakeup the app's thread asks of the loop."""
            self.wakeups += 1
            return real(callback, *args, **kwargs)

        self.loop.call_soon_threadsafe = counting  # type: ignore[method-assign]

    def run(self, coro: Any) -> Any:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        """Cancel the loop's tasks, then stop it (bounded)."""

        async def cancel_all() -> None:
            """Cancel every other task and wait for them."""
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


def handoff_cases(loops: list[LoopThread]) -> list[tuple[str, Callable[[Any], Any], LoopThread]]:
    """Ways to pass an object from the app's thread to a consumer: each is a put function, and
    the loop (whose wakeups are counted) on which its consumer runs, if any."""
    idle, awaiting, wsl = LoopThread(), LoopThread(), LoopThread()
    loops += [idle, awaiting, wsl]

    async def make_janus() -> janus.Queue[Any]:
        """A janus queue bound to the running loop."""
        return janus.Queue(maxsize=10_000_000)

    janus_idle = idle.run(make_janus())
    janus_awaited = awaiting.run(make_janus())

    async def consume_janus() -> None:
        """janus's own way: ``await async_q.get()`` for every item."""
        while True:
            await janus_awaited.async_q.get()

    awaiting.loop.call_soon_threadsafe(lambda: awaiting.loop.create_task(consume_janus()))
    handoff: Handoff[Any] = Handoff(10_000_000, wsl.loop)

    async def consume_handoff() -> None:
        """wslogging's way: batches, waking only when idle."""
        while True:
            await handoff.get_batch(1000)

    wsl.loop.call_soon_threadsafe(lambda: wsl.loop.create_task(consume_handoff()))
    plain = LoopThread.__new__(LoopThread)  # no loop involved: a zero wakeup count
    plain.wakeups = 0
    return [
        ("collections.deque.append", collections.deque().append, plain),
        ("queue.SimpleQueue.put", queue.SimpleQueue().put, plain),
        ("queue.Queue.put_nowait (nobody waiting)", queue.Queue().put_nowait, plain),
        ("janus sync_q.put_nowait, consumer not waiting", janus_idle.sync_q.put_nowait, idle),
        (
            "janus sync_q.put_nowait, consumer awaiting async_q.get()",
            janus_awaited.sync_q.put_nowait,
            awaiting,
        ),
        ("wslogging Handoff.put (janus; wakes an idle consumer)", handoff.put, wsl),
    ]


def handoff_table(calls: int, reps: int) -> None:
    """µs per put for each way of handing an object over, with its loop wakeups."""
    loops: list[LoopThread] = []
    cases = handoff_cases(loops)
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    wakeups: dict[str, int] = dict.fromkeys(times, 0)
    item = object()
    try:
        for rep in range(reps + 1):  # the first round warms up
            for name, put, loop in cases[rep % len(cases) :] + cases[: rep % len(cases)]:
                before = loop.wakeups
                start = time.perf_counter_ns()
                for _ in range(calls):
                    put(item)
                elapsed = time.perf_counter_ns() - start
                if rep:
                    times[name].append(elapsed / calls / 1000)
                    wakeups[name] += loop.wakeups - before
    finally:
        for loop in loops:
            loop.close()
    print_table(
        f"The hand-off alone: µs per put from the app's thread (median of {reps} runs of "
        f"{calls} puts)",
        ["put", "µs/put", "loop wakeups per 1,000 puts"],
        [[name, median(times[name]), 1000 * wakeups[name] / (reps * calls)] for name in times],
        [
            "a consumer that runs shares the GIL with the app's thread: its work shows up in "
            "the wall time of the puts, as it does for a logging call",
            "loop wakeups: call_soon_threadsafe calls (a write to the loop's self-pipe, and "
            "a GIL handoff) that the puts caused",
        ],
    )


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
    queue_socket, line_process = queue_socket_case(calls)
    wsl, _ = wsl_case(calls, with_client=False)
    wsl_client, process = wsl_case(calls, with_client=True)
    assert isinstance(wsl.handler, wslogging.WebSocketHandler)
    prepare_only = make_logger("prepare", PrepareOnly(wsl.handler))
    prepare = Case("WebSocketHandler.prepare() only", prepare_only, drain=lambda n: None)
    cases += [queue_socket, prepare, wsl, wsl_client]
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
                    median(case.cpu_us),
                    median(case.background_us) if case.background_us else "-",
                    median(case.total_us),
                    case.dropped(),
                    case.client_drops(),
                ]
            )
    finally:
        for case in cases:
            case.close()
        for child in (process, line_process):
            if child is not None:
                child.join(10)
                if child.is_alive():
                    child.kill()
    print_table(
        'µs per logger.info("msg %d", n, extra={"k": n}) call on the app thread '
        f"(median of {reps} runs of {calls} calls)",
        [
            "handler",
            "µs/call",
            "vs QueueHandler",
            "µs above Null",
            "app-thread CPU µs",
            "background CPU µs",
            "µs/call incl. drain",
            "records_dropped",
            "client_drops",
        ],
        rows,
        [
            f"formatter for all: {FORMAT!r}",
            "QueueListener's handler is a NullHandler; its queue.Queue holds two runs",
            "(socket, 1 reader): the listener's handler is a StreamHandler writing each line to "
            "a TCP socket read by another process, like wslogging's 1 client",
            "prepare() only: the rendering WebSocketHandler does on the app thread, with no "
            "hand-off and no server thread involved",
            "app-thread CPU: the logging thread's own CPU time (time.thread_time) per call, "
            "without the time it waits for the GIL while the background thread runs",
            "background CPU: the CPU time per record of the thread that takes the records off "
            "the queue (the QueueListener's, or wslogging's server thread), read through its "
            "CPU-time clock; it runs under the same GIL as the app",
            "incl. drain: until the background side has handled every record "
            "(listener done / server accepted it / client received it)",
            "records_dropped: records the handler could not queue (app->server queue full); "
            "client_drops: records dropped for the slow client (GET /api/stats)",
        ],
    )
    handoff_table(calls, reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
