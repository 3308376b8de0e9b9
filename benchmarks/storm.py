"""Error storm: an app logging as fast as it can while clients read; what reaches them.

The app (this process) logs ``--records`` records in a tight loop (INFO, with a WARNING every
100th) through a ``WebSocketHandler`` with its defaults, while reader processes count every
``log`` frame (per level) and every ``gap`` frame (its ``missed``, per reason). A client that
counts is exact when received + announced == logged. The same loop with no client gives the
app's own pace; the stdlib ``QueueHandler`` + ``QueueListener`` writing each line to a socket
read by another process is the same delivery done by the standard library (its queue is
unbounded, so it loses nothing, at a memory cost).
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import multiprocessing
import time
from typing import Any

from _common import AUTH, KEY, environment, print_table, ratio
from emit import queue_socket_case, wait_until

import wslogging

WARNING_EVERY = 100
# Seconds without a frame after which a reader is taken to have got all it will get.
SETTLE = 5.0


def counting_readers(url: str, readers: int, counts: Any, ready: Any, done: Any) -> None:
    """``readers`` WebSocket clients in one process; the first one's counts go to ``counts``
    (INFO, WARNING, announced), the others only read. Runs until ``done`` is set."""
    import asyncio

    import aiohttp

    async def read(session: aiohttp.ClientSession, first: bool, greeted: list[int]) -> None:
        async with session.ws_connect(f"{url}/ws/logs", headers=AUTH, max_msg_size=0) as ws:
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = message.data
                if data.startswith('{"type":"log"'):
                    if first:
                        counts[1 if '"level":"WARNING"' in data else 0] += 1
                elif data.startswith('{"type":"gap"'):
                    if first:
                        counts[2] += json.loads(data)["missed"] or 0
                elif data.startswith('{"type":"hello"'):
                    greeted[0] += 1
                    if greeted[0] == readers:
                        ready.set()

    async def main() -> None:
        greeted = [0]
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(read(session, i == 0, greeted)) for i in range(readers)]
            # ``done`` is a multiprocessing event: wait for it off the loop.
            await asyncio.to_thread(done.wait)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def storm(logger: logging.Logger, records: int) -> float:
    """Log ``records`` records as fast as possible; the loop's seconds."""
    info, warning = logger.info, logger.warning
    began = time.perf_counter()
    for n in range(records):
        if n % WARNING_EVERY:
            info("request %d served", n, extra={"n": n, "path": "/api/items"})
        else:
            warning("request %d slow", n, extra={"n": n, "path": "/api/items"})
    return time.perf_counter() - began


def configure(name: str, **options: Any) -> tuple[logging.Logger, wslogging.WebSocketHandler]:
    """A logger whose only handler is a ``WebSocketHandler`` built through ``dictConfig``."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                name: {"class": "wslogging.WebSocketHandler", "port": 0, "api_keys": [KEY]}
                | options
            },
            "loggers": {f"storm.{name}": {"level": "INFO", "handlers": [name], "propagate": False}},
        }
    )
    logger = logging.getLogger(f"storm.{name}")
    handler = logger.handlers[0]
    assert isinstance(handler, wslogging.WebSocketHandler)
    return logger, handler


def wsl_run(records: int, readers: int, **options: Any) -> dict[str, Any]:
    """One storm through a ``WebSocketHandler`` with ``readers`` clients (0: none)."""
    logger, handler = configure(f"r{readers}", **options)
    ctx = multiprocessing.get_context("spawn")
    counts = ctx.Array("q", 3, lock=False)
    ready, done = ctx.Event(), ctx.Event()
    process = None
    if readers:
        process = ctx.Process(
            target=counting_readers, args=(handler.url, readers, counts, ready, done)
        )
        process.start()
        if not ready.wait(60):
            raise RuntimeError("the readers did not connect")
    seconds = storm(logger, records)
    result: dict[str, Any] = {"loop_s": seconds}
    if readers:
        # Settled once nothing more arrives for SETTLE seconds (or all is accounted for).
        last, still = -1, time.monotonic()
        while sum(counts) < records and time.monotonic() - still < SETTLE:
            if sum(counts) != last:
                last, still = sum(counts), time.monotonic()
            time.sleep(0.01)
        result.update(info=counts[0], warning=counts[1], announced=counts[2])
    else:
        hub = handler._server.hub  # type: ignore[union-attr]
        wait_until(
            lambda: hub.stats()["records_accepted"] + handler.records_dropped >= records,
            60,
            "the server",
        )
    result["dropped"] = handler.records_dropped
    done.set()
    handler.close()
    if process is not None:
        process.join(10)
    return result


def queue_run(records: int) -> dict[str, Any]:
    """The same storm through the stdlib's ``QueueHandler`` delivering to one reader."""
    case, process = queue_socket_case(records)
    seconds = storm(case.logger, records)
    case.drain(records)
    case.close()
    process.join(10)
    return {
        "loop_s": seconds,
        "info": records - records // WARNING_EVERY,
        "warning": records // WARNING_EVERY,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20,000 records, one round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    records = 20_000 if args.quick else args.records
    rounds = 1 if args.quick else args.rounds
    print(environment())
    warnings = records // WARNING_EVERY
    rows = []
    cases: list[tuple[str, Any]] = [
        ("WebSocketHandler, no client", lambda: wsl_run(records, 0)),
        ("WebSocketHandler, 1 reader", lambda: wsl_run(records, 1)),
        ("WebSocketHandler, 100 readers", lambda: wsl_run(records, 100)),
        ("WebSocketHandler, 1 reader, queue_size=256", lambda: wsl_run(records, 1, queue_size=256)),
        ("QueueHandler+QueueListener(socket, 1 reader)", lambda: queue_run(records)),
    ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in cases}
    for _ in range(rounds):
        for name, run in cases:
            results[name].append(run())
    base = min(r["loop_s"] for r in results["WebSocketHandler, no client"])
    for name, runs in results.items():
        best = min(runs, key=lambda r: r["loop_s"])
        worst = min(runs, key=lambda r: r.get("info", 0) + r.get("warning", 0))
        delivered = worst.get("info", 0) + worst.get("warning", 0)
        rows.append(
            [
                name,
                f"{records / best['loop_s']:,.0f}",
                ratio(best["loop_s"], base),
                f"{100 * delivered / records:.1f}" if "info" in worst else "-",
                f"{100 * worst['warning'] / warnings:.1f}" if "warning" in worst else "-",
                worst.get("announced", "-"),
                worst.get("dropped", 0),
                "yes"
                if "info" not in worst or delivered + worst.get("announced", 0) == records
                else "NO",
            ]
        )
    print_table(
        f"Error storm: {records:,} records logged in a tight loop (defaults unless named; "
        f"worst of {rounds} for delivery, best for pace)",
        [
            "handler",
            "records/s logged",
            "loop vs no client",
            "delivered %",
            "WARNING %",
            "announced (gap)",
            "dropped",
            "exact",
        ],
        rows,
        notes=["exact: records received + records announced in gaps == records logged"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
