"""Delivery latency at 1,000 WebSocket clients, sustained, and what 10 stalled clients change.

wslogging serves from this process, which logs at a steady rate (100 records/s by default),
each message stamped with ``time.time_ns()`` of the log call. The readers (raw RFC 6455
clients, ``_clients.RawClient``) live in one other process and take ``time.time_ns()`` when a
record arrives, so latency is log call to receipt on the same machine's wall clock, for every
record at every reader. Scenarios alternate: no stalled client, then 10 stalled clients
(sockets that complete the handshake and never read again), repetition after repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from _clients import open_clients, raw_stalled_socket
from _common import (
    AUTH,
    HOST,
    KEY,
    LATENCY_COLUMNS,
    environment,
    median,
    print_table,
    quantile,
    raise_nofile,
    ratio,
    rss_bytes,
)

import wslogging

MiB = 1024 * 1024
PATH = "/ws/logs"


# -- the client process -------------------------------------------------------------------


def client_process(conn: Connection, port: int, readers: int) -> None:
    """Entry point of the client process: connect the readers, then obey the driver."""
    asyncio.run(_clients(conn, port, readers))


async def _clients(conn: Connection, port: int, readers: int) -> None:
    """``stall n`` opens n stalled sockets; ``unstall`` closes them; ``start`` clears the
    latencies; ``stop expected`` waits (bounded) for every reader to have ``expected`` records
    since ``start`` and replies with the latencies' summary."""
    latencies: list[int] = []
    clients = await open_clients("raw", HOST, port, PATH, AUTH, readers, None)
    for client in clients:
        client.latencies = latencies  # type: ignore[union-attr]
    # The readers' own objects are long-lived: keep the collector from walking them over and
    # over, so that the measuring side adds as little to the latencies as it can.
    gc.freeze()
    stalled: list[Any] = []
    conn.send(("connected",))
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    base = [0] * len(clients)
    cpu = time.process_time()
    try:
        while True:
            command, *args = await inbox.get()
            if command == "stall":
                for _ in range(args[0]):
                    stalled.append(
                        await asyncio.to_thread(raw_stalled_socket, HOST, port, PATH, AUTH)
                    )
                conn.send(("stalled",))
            elif command == "unstall":
                for sock in stalled:
                    sock.close()
                stalled.clear()
                conn.send(("unstalled",))
            elif command == "start":
                latencies.clear()
                base = [c.logs for c in clients]
                cpu = time.process_time()
                conn.send(("started",))
            elif command == "stop":
                expected, within = args
                deadline = time.monotonic() + within
                # Polls counters that the protocols keep: there is no event to wait on.
                while time.monotonic() < deadline and any(  # noqa: ASYNC110
                    c.logs - b < expected for c, b in zip(clients, base, strict=True)
                ):
                    await asyncio.sleep(0.05)
                least = min(c.logs - b for c, b in zip(clients, base, strict=True))
                ms = [ns / 1e6 for ns in latencies]
                conn.send(
                    (
                        "stopped",
                        {
                            "least": least,
                            "samples": len(ms),
                            "p50": median(ms),
                            "p99": quantile(ms, 0.99),
                            "max": max(ms, default=float("nan")),
                            "closed": sum(1 for c in clients if c.closed),
                            "cpu": time.process_time() - cpu,
                        },
                    )
                )
            elif command == "close":
                break
    finally:
        loop.remove_reader(conn.fileno())
        for sock in stalled:
            sock.close()
        for client in clients:
            client.close()
        await asyncio.sleep(0.1)
        conn.send(("closed",))


# -- the driver (the app, with wslogging serving from it) ---------------------------------


def ask(conn: Connection, command: tuple[Any, ...] | None, reply: str, within: float) -> Any:
    """Send ``command`` (if any) to the client process and wait (bounded) for ``reply``."""
    if command is not None:
        conn.send(command)
    if not conn.poll(within):
        raise TimeoutError(f"no {reply!r} from the client process within {within:g} s")
    message: tuple[Any, ...] = conn.recv()
    if message[0] != reply:
        raise RuntimeError(f"expected {reply!r} from the client process, got {message!r}")
    return message[1] if len(message) > 1 else None


def paced(logger: logging.Logger, rate: float, duration: float) -> dict[str, float]:
    """Log ``rate`` stamped records per second for ``duration`` s; sample RSS every 100 ms."""
    start = time.monotonic()
    cpu = time.process_time()
    sent = 0
    rss_start = rss_max = rss_bytes()
    next_sample = start
    while (now := time.monotonic()) - start < duration:
        for _ in range(int((now - start) * rate) + 1 - sent):
            logger.info("t=%d n=%d", time.time_ns(), sent, extra={"n": sent})
            sent += 1
        if now >= next_sample:
            rss_max = max(rss_max, rss_bytes())
            next_sample += 0.1
        time.sleep(0.0005)
    return {
        "sent": sent,
        "rss_growth": (max(rss_max, rss_bytes()) - rss_start) / MiB,
        "server_cpu": (time.process_time() - cpu) / (time.monotonic() - start),
    }


def _scenario(readers: int, stalled: int, settle: float) -> str:
    """A scenario's name in the table."""
    name = f"{readers} readers + {stalled} stalled"
    return f"{name}, settled {settle:g} s" if settle else name


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the scenarios, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 clients, shorter runs")
    parser.add_argument("--clients", type=int, default=None, help="reading clients (1000)")
    parser.add_argument("--rate", type=float, default=100.0, help="records per second")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run (5)")
    parser.add_argument("--stalled", type=int, default=10, help="stalled clients")
    parser.add_argument("--reps", type=int, default=None, help="runs per scenario (2)")
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds logged untimed after stalling, for the 'settled' scenario (3; 0: skip it)",
    )
    args = parser.parse_args(argv)
    readers = args.clients or (200 if args.quick else 1000)
    duration = args.duration or (2.0 if args.quick else 5.0)
    reps = args.reps or (1 if args.quick else 2)
    if args.settle is None:
        args.settle = 1.0 if args.quick else 3.0
    print(f"latency.py: {environment()}")
    print(f"{readers} reading clients, {args.rate:g} records/s for {duration:g} s per run")
    notes = []
    needed = 2 * (readers + args.stalled) + 256
    if raise_nofile(needed) < needed:
        notes.append(f"ulimit -n could not be raised to {needed}; connections may fail")

    handler = wslogging.WebSocketHandler(port=0, api_keys=[KEY], max_clients=readers + 100)
    handler.setFormatter(logging.Formatter("%(message)s"))  # the stamp must lead the message
    logger = logging.getLogger("bench.latency")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    process = ctx.Process(target=client_process, args=(child, handler.port, readers), daemon=True)
    process.start()
    # (stalled clients, seconds logged before the timed run): with none, the stalled sockets
    # still take writes while their buffers fill, like readers; settled, they have stopped.
    scenarios = [(0, 0.0), (args.stalled, 0.0)]
    if args.settle > 0:
        scenarios.append((args.stalled, args.settle))
    results: dict[tuple[int, float], list[dict[str, Any]]] = {s: [] for s in scenarios}
    try:
        ask(conn, None, "connected", 120)
        # One untimed second first: new connections and a cold process are slower at first.
        ask(conn, ("start",), "started", 30)
        warm = paced(logger, args.rate, 1.0)
        ask(conn, ("stop", warm["sent"], 5.0), "stopped", 30)
        for rep in range(reps):
            for stalled, settle in scenarios if rep % 2 == 0 else scenarios[::-1]:
                if stalled:
                    ask(conn, ("stall", stalled), "stalled", 60)
                if settle:
                    ask(conn, ("start",), "started", 30)
                    settled = paced(logger, args.rate, settle)
                    ask(conn, ("stop", settled["sent"], 5.0), "stopped", 30)
                drops = handler._server.hub.client_drops
                ask(conn, ("start",), "started", 30)
                ran = paced(logger, args.rate, duration)
                got = ask(conn, ("stop", ran["sent"], 5.0), "stopped", 30)
                got |= ran
                got["client_cpu"] = got["cpu"] / duration
                got["client_drops"] = handler._server.hub.client_drops - drops
                results[stalled, settle].append(got)
                if stalled:
                    ask(conn, ("unstall",), "unstalled", 30)
                print(
                    f"  run {rep + 1}, {_scenario(readers, stalled, settle)}: sent {ran['sent']}, "
                    f"p50 {got['p50']:.2f} ms, p99 {got['p99']:.2f} ms, "
                    f"RSS +{ran['rss_growth']:.2f} MiB, CPU: server {ran['server_cpu']:.0%}, "
                    f"clients {got['client_cpu']:.0%}",
                    flush=True,
                )
    finally:
        try:
            conn.send(("close",))
            if conn.poll(30):
                conn.recv()
        except OSError:
            pass
        process.join(10)
        if process.is_alive():
            process.kill()
        handler.close()

    rows = []
    p99_base = median(r["p99"] for r in results[0, 0.0])
    for (stalled, settle), runs in results.items():
        p99 = median(r["p99"] for r in runs)
        rows.append(
            [
                _scenario(readers, stalled, settle),
                sum(int(r["sent"]) for r in runs),
                f"{100 * min(r['least'] / max(1, r['sent']) for r in runs):.1f}%",
                median(r["p50"] for r in runs),
                p99,
                max(r["max"] for r in runs),
                ratio(p99, p99_base),
                max(r["rss_growth"] for r in runs),
                sum(r["client_drops"] for r in runs),
            ]
        )
    print_table(
        f"Delivery latency (log call -> receipt) at {readers} WebSocket clients, "
        f"{args.rate:g} records/s for {duration:g} s, {reps} run(s) per scenario",
        [
            "scenario",
            "sent",
            "least reader got",
            *LATENCY_COLUMNS,
        ],
        rows,
        [
            *notes,
            "every record at every reader is a sample; p50/p99: median over the runs of each "
            "run's percentile; max: over all runs",
            "stalled = raw sockets (SO_RCVBUF 4 KiB) that complete the handshake and never read; "
            "timed from the moment they stop, while the kernel still takes writes for them, "
            "and (settled) after logging for --settle seconds more, once their buffers are full",
            "RSS growth: this process (app + wslogging), highest sample during a run minus its "
            "start; client_drops: records dropped for slow clients during the runs",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
