"""Fan-out: time from the first log call until N WebSocket clients all have a 1,000-record burst.

Three designs run side by side in this process (see ``_designs.py``); the N clients of each
are real sockets in one separate process (``_clients.py``), so their work does not share the
servers' GIL. Bursts alternate between the designs, repetition after repetition, and the
table reports medians and the ratio of wslogging's time to each other design's.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import _designs
from _clients import client_process
from _common import HOST, environment, median, print_table, raise_nofile, ratio

# Records in the untimed warm-up burst each design gets first.
WARMUP = 100


def expect_reply(conn: Connection, kind: str, timeout: float) -> tuple[Any, ...]:
    """The next ``kind`` message from the client process, skipping stale ``done`` reports."""
    deadline = time.monotonic() + timeout
    while conn.poll(max(0.0, deadline - time.monotonic())):
        message: tuple[Any, ...] = conn.recv()
        if message[0] == kind:
            return message
        if message[0] != "done":  # a late report of a burst that already timed out
            raise RuntimeError(f"expected {kind!r} from the client process, got {message!r}")
    raise TimeoutError(f"no {kind!r} from the client process within {timeout:g} s")


def burst(
    design: _designs.Design, conn: Connection, total: int, size: int, timeout: float
) -> tuple[float, float, dict[str, Any]]:
    """Log a burst and wait for every client; return wall ms (NaN: timeout), CPU ms, counts."""
    conn.send(("expect", design.name, total))
    info = design.logger.info
    cpu = time.process_time()
    start = time.perf_counter()
    for n in range(size):
        info("burst record %d", n, extra={"k": n})
    if not conn.poll(timeout):
        conn.send(("status", design.name))
        _, _, totals = expect_reply(conn, "status", 30)
        return math.nan, math.nan, totals
    message = conn.recv()
    elapsed = (time.perf_counter() - start) * 1000
    cpu_ms = (time.process_time() - cpu) * 1000
    if message[0] != "done" or message[1] != design.name or message[2] != total:
        raise RuntimeError(f"unexpected message from the client process: {message!r}")
    return elapsed, cpu_ms, message[3]


def wait_clients(designs: list[_designs.Design], count: int, timeout: float) -> None:
    """Wait (bounded) until every design sees ``count`` clients."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(d.client_count() == count for d in designs):
            return
        time.sleep(0.05)
    counts = {d.name: d.client_count() for d in designs}
    print(f"  (clients did not settle at {count}: {counts})")


def run_size(
    designs: list[_designs.Design], clients: int, args: argparse.Namespace
) -> dict[str, Any]:
    """All repetitions for one client count: wall and CPU ms per design, and loss notes."""
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    process = ctx.Process(target=client_process, args=(child_conn, args.client), daemon=True)
    process.start()
    result: dict[str, Any] = {
        key: {d.name: [] for d in designs} for key in ("ms", "server_cpu", "client_cpu")
    }
    result["notes"] = []
    try:
        for design in designs:
            conn.send(
                ("connect", design.name, HOST, design.port, design.path, design.headers, clients)
            )
            _, _, error = expect_reply(conn, "connected", 120)
            if error:
                raise RuntimeError(f"{design.name}: connecting {clients} clients failed: {error}")
        wait_clients(designs, clients, 30)
        before = {d.name: d.stats() for d in designs}
        totals = dict.fromkeys((d.name for d in designs), 0)
        timeout = 20 + clients * 0.1
        reps = args.reps if clients < 1000 else max(1, args.reps_1000)
        client_cpu = 0
        last: dict[str, dict[str, Any]] = {}
        # One small untimed warm-up burst each, then the timed ones, alternating designs.
        for rep in range(-1, reps):
            order = designs[rep % len(designs) :] + designs[: rep % len(designs)]
            for design in order:
                size = args.burst if rep >= 0 else min(args.burst, WARMUP)
                totals[design.name] += size
                ms, cpu_ms, counts = burst(design, conn, totals[design.name], size, timeout)
                if rep >= 0:
                    result["ms"][design.name].append(ms)
                    result["server_cpu"][design.name].append(cpu_ms)
                    result["client_cpu"][design.name].append(counts["cpu_ms"] - client_cpu)
                client_cpu = counts["cpu_ms"]
                last[design.name] = counts
                if math.isnan(ms):
                    result["notes"].append(
                        f"N={clients} {design.name}: burst {rep + 1} incomplete after "
                        f"{timeout:g} s: least-served client had {counts['min_logs']} of "
                        f"{totals[design.name]} records"
                    )
                    # The clients' counts no longer line up with the totals; resync them.
                    totals[design.name] = counts["min_logs"]
        for name, counts in last.items():
            if counts["missed"] or counts["closed"]:
                result["notes"].append(
                    f"N={clients} {name}: {counts['missed']} records announced missed by gap "
                    f"frames, {counts['closed']} of {clients} clients closed by the server"
                )
        for design in designs:
            stats, start = design.stats(), before[design.name]
            drops = {
                k: stats[k] - start[k] for k in ("records_dropped", "client_drops") if k in stats
            }
            if any(drops.values()):
                result["notes"].append(
                    f"N={clients} {design.name}: "
                    + ", ".join(f"{k}={v}" for k, v in drops.items())
                    + " during these bursts"
                )
    finally:
        try:
            conn.send(("close",))
            expect_reply(conn, "closed", 30)
        except (OSError, TimeoutError, RuntimeError) as exc:
            print(f"  (client process did not close cleanly: {exc})")
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)
        wait_clients(designs, 0, 30)
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every client count, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 10, 100 and 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (N < 1000)")
    parser.add_argument("--reps-1000", type=int, default=3, help="repetitions for N = 1000")
    parser.add_argument("--burst", type=int, default=1000, help="records per burst")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="client counts")
    parser.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="client implementation in the client process (default raw)",
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    sizes = args.sizes or ([1, 10, 100] if args.quick else [1, 10, 100, 1000])
    print(f"fanout.py: {environment()}")
    print(
        f"burst={args.burst} records, client={args.client}, reps={args.reps} "
        f"(N=1000: {args.reps_1000}), median reported"
    )

    notes: list[str] = []
    # Both ends of every connection live on this machine: 3 designs x N sockets in the client
    # process and as many here, plus some slack for the rest.
    needed = 3 * max(sizes) + 256
    limit = raise_nofile(needed)
    if limit < needed:
        skipped = [n for n in sizes if 3 * n + 256 > limit]
        sizes = [n for n in sizes if 3 * n + 256 <= limit]
        notes.append(f"skipped N={skipped}: ulimit -n is {limit} and cannot be raised")

    designs = [_designs.start(name) for name in _designs.NAMES]
    rows, cpu_rows = [], []
    try:
        for clients in sizes:
            result = run_size(designs, clients, args)
            notes.extend(result["notes"])
            ms = {name: median(t) for name, t in result["ms"].items()}
            rows.append(
                [
                    f"{clients}",
                    ms["wslogging"],
                    ms["simple"],
                    ms["websockets"],
                    ratio(ms["wslogging"], ms["simple"]),
                    ratio(ms["wslogging"], ms["websockets"]),
                    len(result["ms"]["wslogging"]),
                ]
            )
            cpu_rows.append(
                [f"{clients}"]
                + [
                    median(result[key][name])
                    for name in _designs.NAMES
                    for key in ("server_cpu", "client_cpu")
                ]
            )
            print(
                f"  N={clients}: "
                + "; ".join(
                    f"{name} " + " ".join(f"{t:.1f}" for t in times)
                    for name, times in result["ms"].items()
                ),
                flush=True,
            )
    finally:
        for design in designs:
            design.close()
    print_table(
        f"Fan-out of a {args.burst}-record burst to N WebSocket clients "
        "(ms from the first log call until every client has every record; median)",
        [
            "N clients",
            "wslogging ms",
            "simple ms",
            "websockets ms",
            "wsl/simple",
            "wsl/websockets",
            "runs",
        ],
        rows,
        [
            *notes,
            "simple = aiohttp server thread; emit() does run_coroutine_threadsafe(broadcast) "
            "and broadcast awaits ws.send_str on each connection in turn",
            "websockets = websockets.asyncio.server.serve + broadcast(server.connections), "
            "fed by loop.call_soon_threadsafe",
            "ratio < 1.00x: wslogging faster",
        ],
    )
    print_table(
        "CPU time per burst (median ms): server process (app thread + server thread) and "
        "client process",
        [
            "N clients",
            "wsl server",
            "wsl clients",
            "simple server",
            "simple clients",
            "websockets server",
            "websockets clients",
        ],
        cpu_rows,
        [
            "2 cores: when server + clients CPU is near 2x the wall time, the machine is the "
            "limit; when the server's CPU is near the wall time, the server (its GIL) is",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
