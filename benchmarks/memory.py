"""Memory and slow clients: RSS per idle client, and what stalled clients do to everyone else.

Each scenario runs the server design in a fresh process of its own (so its RSS is its own);
the clients live in this process. Part 1 connects idle clients and reads the server's RSS
before and after. Part 2 logs at a steady rate, stamping each record with ``time.time_ns()``,
and measures the delivery latency (log call to receipt) at 10 reading clients, with and without
10 stalled clients (sockets that complete the handshake and then never read), plus the
server's RSS growth during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import socket
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import _designs
import aiohttp
from _clients import open_clients, raw_stalled_socket
from _common import (
    HOST,
    LATENCY_COLUMNS,
    environment,
    median,
    print_table,
    quantile,
    ratio,
    rss_bytes,
)

MiB = 1024 * 1024
READERS = 10
# Records logged before measuring, so that wslogging's history (10,000) is already full.
PREFILL = 10000


# -- the server process -------------------------------------------------------------------


def log_one(logger: logging.Logger, n: int, body: str) -> None:
    """One record like an HTTP access line with a request body, stamped with the wall clock."""
    logger.info(
        "GET /api/items/%d 200 in %.1f ms",
        n,
        12.5,
        extra={"t_ns": time.time_ns(), "n": n, "path": f"/api/items/{n}", "body": body},
    )


def paced_logging(
    logger: logging.Logger, rate: float, duration: float, body: str
) -> dict[str, int]:
    """Log ``rate`` records per second for ``duration`` seconds; sample RSS every 100 ms."""
    start = time.monotonic()
    sent = 0
    rss_start = rss_max = rss_bytes()
    next_sample = start
    while (now := time.monotonic()) - start < duration:
        due = int((now - start) * rate) + 1 - sent
        for _ in range(due):
            log_one(logger, sent, body)
            sent += 1
        if now >= next_sample:
            rss_max = max(rss_max, rss_bytes())
            next_sample += 0.1
        time.sleep(0.0005)
    rss_end = rss_bytes()
    return {
        "sent": sent,
        "rss_start": rss_start,
        "rss_max": max(rss_max, rss_end),
        "rss_end": rss_end,
    }


def server_main(conn: Connection, name: str, prefill: int, body_bytes: int) -> None:
    """Entry point of the server process: start design ``name``, then obey commands."""
    design = _designs.start(name)
    body = "x" * body_bytes
    for n in range(prefill):
        log_one(design.logger, -1 - n, body)
    time.sleep(0.5)
    # As a client reading the history would: wslogging encodes a record when it is first
    # read, and keeps the bytes, so only now is its history as large as it will stay.
    design.read_history()
    conn.send(("ready", design.port, design.path, design.headers))
    while True:
        command, *args = conn.recv()
        if command == "rss":
            gc.collect()
            conn.send(("rss", rss_bytes()))
        elif command == "clients":
            conn.send(("clients", design.client_count()))
        elif command == "run":
            conn.send(("ran", paced_logging(design.logger, *args, body)))
        elif command == "stats":
            conn.send(("stats", design.stats()))
        elif command == "stop":
            design.close()
            conn.send(("stopped",))
            return


# -- the driver (clients) -----------------------------------------------------------------


class Server:
    """A server design running in a process of its own, driven over a pipe."""

    def __init__(self, name: str, prefill: int = 0, body_bytes: int = 0) -> None:
        """Start the process; :meth:`ready` waits for it to serve."""
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=server_main, args=(child, name, prefill, body_bytes), daemon=True
        )
        self.process.start()

    async def ask(self, *command: Any, within: float = 30) -> Any:
        """Send ``command`` and return the reply's payload (waits in a worker thread)."""
        self.conn.send(command)

        def receive() -> tuple[Any, ...]:
            """The next reply, bounded by ``within`` seconds."""
            if not self.conn.poll(within):
                raise TimeoutError(f"{self.name} server: no reply to {command[0]!r}")
            reply: tuple[Any, ...] = self.conn.recv()
            return reply

        reply = await asyncio.to_thread(receive)
        return reply[1] if len(reply) == 2 else reply[1:]

    async def ready(self) -> None:
        """Wait for the server to listen; remember where."""

        def receive() -> tuple[Any, ...]:
            """The ``ready`` message."""
            if not self.conn.poll(60):
                raise TimeoutError(f"{self.name} server did not start")
            reply: tuple[Any, ...] = self.conn.recv()
            return reply

        _, self.port, self.path, self.headers = await asyncio.to_thread(receive)

    async def wait_clients(self, count: int, within: float = 30) -> None:
        """Wait (bounded) until the server sees ``count`` clients."""
        deadline = time.monotonic() + within
        while (seen := await self.ask("clients")) != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {seen} clients connected, not {count}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop the design and the process (bounded)."""
        try:
            await self.ask("stop", within=15)
        except (TimeoutError, OSError) as exc:
            print(f"  ({self.name} server did not stop cleanly: {exc})")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


async def idle_rss(name: str, clients: int) -> dict[str, Any]:
    """Server RSS before and after ``clients`` idle WebSocket clients connect."""
    server = Server(name)
    await server.ready()
    warm = await open_clients("raw", HOST, server.port, server.path, server.headers, 10, None)
    await server.wait_clients(10)
    before = await server.ask("rss")
    idle = await open_clients("raw", HOST, server.port, server.path, server.headers, clients, None)
    await server.wait_clients(10 + clients)
    await asyncio.sleep(0.5)
    after = await server.ask("rss")
    for client in warm + idle:
        client.close()
    await server.stop()
    return {"before": before, "after": after, "per_client": (after - before) / clients / 1024}


class Reader:
    """A reading client (aiohttp) that records each record's delivery latency."""

    def __init__(self) -> None:
        """Nothing received yet."""
        self.latencies_ms: list[float] = []
        self.missed = 0
        self.task: asyncio.Task[None] | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.target: int | None = None
        self.done = asyncio.Event()

    async def open(self, session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        """Connect, then read in a task of its own."""
        self.ws = await session.ws_connect(url, headers=headers)
        self.task = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Timestamp every record on arrival and keep log call → receipt in ms."""
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            now = time.time_ns()
            data = json.loads(message.data)
            if data.get("type") == "log":
                fields = data.get("fields") or {}
                if fields.get("n", -1) >= 0:
                    self.latencies_ms.append((now - fields["t_ns"]) / 1e6)
            elif data.get("type") == "gap" and isinstance(data.get("missed"), int):
                self.missed += data["missed"]
            self._check()

    def _check(self) -> None:
        """Set :attr:`done` once the target is reached."""
        if self.target is not None and len(self.latencies_ms) + self.missed >= self.target:
            self.done.set()

    async def expect(self, count: int) -> None:
        """Wait until ``count`` records were received or announced missed."""
        self.target = count
        self._check()
        await self.done.wait()

    async def close(self) -> None:
        """Stop reading and close the connection (bounded)."""
        if self.task is not None:
            self.task.cancel()
        if self.ws is not None:
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, ConnectionError):
                await asyncio.wait_for(self.ws.close(), 2)


async def latency(name: str, stalled: int, args: argparse.Namespace) -> dict[str, Any]:
    """One paced run to 10 readers and ``stalled`` stalled sockets: latencies, losses, RSS."""
    rate, duration = args.rate, args.duration
    server = Server(name, PREFILL, args.body_bytes)
    await server.ready()
    url = f"http://{HOST}:{server.port}{server.path}"
    readers = [Reader() for _ in range(READERS)]
    socks: list[socket.socket] = []
    async with aiohttp.ClientSession() as session:
        try:
            for i, reader in enumerate(readers):
                await reader.open(session, url, server.headers)
                if i < stalled:
                    socks.append(
                        await asyncio.to_thread(
                            raw_stalled_socket, HOST, server.port, server.path, server.headers
                        )
                    )
            await server.wait_clients(READERS + stalled)
            ran = await server.ask("run", rate, duration, within=duration + 60)
            sent = ran["sent"]
            # Give the readers up to 2 s more to receive what was sent.
            waits = [asyncio.create_task(r.expect(sent)) for r in readers]
            _, pending = await asyncio.wait(waits, timeout=2)
            for task in pending:
                task.cancel()
            stats = await server.ask("stats")
            # Counted now, before the stalled sockets go: closing them can release records
            # that a design had held back behind them.
            result = {
                "sent": sent,
                "received_min": min(len(r.latencies_ms) for r in readers),
                "missed": sum(r.missed for r in readers),
                "samples": [ms for r in readers for ms in r.latencies_ms],
                "rss_growth": (ran["rss_max"] - ran["rss_start"]) / MiB,
                "client_drops": stats.get("client_drops"),
            }
        finally:
            for sock in socks:
                sock.close()
            for reader in readers:
                await reader.close()
    await server.stop()
    return result


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool a scenario's runs: samples pooled, counts summed, worst share, largest growth."""
    samples = [ms for r in runs for ms in r["samples"]]
    drops = [r["client_drops"] for r in runs if r["client_drops"] is not None]
    return {
        "sent": sum(r["sent"] for r in runs),
        "received_min_share": min(r["received_min"] / max(1, r["sent"]) for r in runs),
        "missed": sum(r["missed"] for r in runs),
        "p50": median(samples),
        "p99": quantile(samples, 0.99),
        "max": max(samples, default=float("nan")),
        "rss_growth": max(r["rss_growth"] for r in runs),
        "client_drops": sum(drops) if drops else "-",
    }


async def amain(args: argparse.Namespace) -> None:
    """Run both parts for every design and print the two tables."""
    idle_rows = []
    idle = {}
    for name in _designs.NAMES:
        idle[name] = await idle_rss(name, args.idle_clients)
    for name in _designs.NAMES:
        r = idle[name]
        idle_rows.append(
            [
                _designs.TITLES[name],
                args.idle_clients,
                r["before"] / MiB,
                r["after"] / MiB,
                r["per_client"],
                ratio(r["per_client"], idle[_designs.NAMES[0]]["per_client"]),
            ]
        )
    print_table(
        f"Server RSS per idle WebSocket client ({args.idle_clients} clients, after 10 warm-up "
        "clients; one fresh server process per design)",
        ["design", "clients", "RSS before MiB", "RSS after MiB", "KiB/client", "vs wslogging"],
        idle_rows,
    )

    scenarios = [(name, stalled) for name in _designs.NAMES for stalled in (0, args.stalled)]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {sc: [] for sc in scenarios}
    for rep in range(args.reps):
        # Every other repetition runs the scenarios in reverse, against drift on a busy machine.
        for name, stalled in scenarios if rep % 2 == 0 else scenarios[::-1]:
            r = await latency(name, stalled, args)
            runs[name, stalled].append(r)
            print(
                f"  run {rep + 1}: {name}, {stalled} stalled: sent {r['sent']}, "
                f"p50 {median(r['samples']):.2f} ms, p99 {quantile(r['samples'], 0.99):.2f} ms, "
                f"RSS +{r['rss_growth']:.2f} MiB",
                flush=True,
            )
    merged = {sc: merge_runs(rs) for sc, rs in runs.items()}
    rows = []
    for (name, stalled), r in merged.items():
        base = merged[name, 0]
        rows.append(
            [
                _designs.TITLES[name],
                stalled,
                r["sent"],
                f"{100 * r['received_min_share']:.1f}%",
                r["missed"],
                r["p50"],
                r["p99"],
                r["max"],
                ratio(r["p99"], base["p99"]),
                r["rss_growth"],
                r["client_drops"],
            ]
        )
    print_table(
        f"Delivery latency (log call -> receipt, wall clock) at {READERS} reading clients, "
        f"{args.rate:g} records/s for {args.duration:g} s, runs per scenario: {args.reps}",
        [
            "design",
            "stalled",
            "sent",
            "least reader got",
            "gap missed",
            *LATENCY_COLUMNS,
        ],
        rows,
        [
            "stalled = raw sockets (SO_RCVBUF 4 KiB) that complete the handshake and never "
            "read; readers and stalled sockets connect alternately",
            "percentiles over every record every reader received in every run (pooled); a "
            "record not received within 2 s after its run is not in them (see 'least reader "
            "got': the smallest share of the records sent that one reader received in one run)",
            "gap missed: records the readers were told (gap frames) they missed",
            f"RSS growth: server process, highest sample during a run minus its start (the "
            f"largest over the runs), after {PREFILL} records prefilled",
            "client_drops: wslogging's /api/stats count of records dropped for slow clients",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    """Parse options and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clients, shorter runs")
    parser.add_argument("--idle-clients", type=int, default=None)
    parser.add_argument("--stalled", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1000.0, help="records per second")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    parser.add_argument("--reps", type=int, default=None, help="runs per latency scenario")
    parser.add_argument(
        "--body-bytes",
        type=int,
        default=2048,
        help="size of each record's 'body' field (default 2048)",
    )
    args = parser.parse_args(argv)
    if args.idle_clients is None:
        args.idle_clients = 200 if args.quick else 500
    if args.duration is None:
        args.duration = 1.5 if args.quick else 4.0
    if args.reps is None:
        args.reps = 1 if args.quick else 2
    print(f"memory.py: {environment()}")
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
