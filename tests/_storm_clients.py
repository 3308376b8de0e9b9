"""The clients of test_stress's storm, in a process of their own.

``python tests/_storm_clients.py URL N`` runs N WebSocket clients against URL that connect,
read a random number of frames, disconnect and come back (resuming with ``since`` half the
time), each checking its view of the stream. It prints ``ready`` once every client has been
greeted, runs until a line comes on stdin, then prints one JSON object: per client its
connections, records and gaps, and every check that failed (``errors``).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

import aiohttp

AUTH = {"Authorization": "Bearer test-key"}
TIMEOUT = 10.0


class StreamChecker:
    """Checks one client's view of the stream across its reconnections: ids strictly
    increase, and every id skipped is accounted for by the ``gap`` frames in between."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.unexplained_gap = 0  # records announced missing since the last record
        self.records = 0
        self.gaps = 0

    def hello(self, frame: dict[str, Any], resumed: bool) -> None:
        if not resumed:  # a fresh start: the stream goes on right after hello's last_id
            self.last = int(frame["last_id"])
        # Resumed: right after the last record, so a gap heard after it on the connection
        # before is told again (or its records replayed); either way the count starts anew.
        self.unexplained_gap = 0

    def frame(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "gap":
            assert isinstance(frame["missed"], int), frame
            self.unexplained_gap += frame["missed"]
            self.gaps += 1
        elif frame["type"] == "log":
            record_id = int(frame["id"])
            assert self.last is not None
            assert record_id - self.last - 1 == self.unexplained_gap, (
                self.last,
                record_id,
                self.unexplained_gap,
            )
            self.last, self.unexplained_gap = record_id, 0
            self.records += 1


async def storm_client(
    url: str, seed: int, stop: asyncio.Event, checker: StreamChecker, errors: list[str]
) -> int:
    """Connect, read a random number of frames, disconnect, and again: half the time it
    resumes with ``since``, half the time it starts afresh. Returns its connection count."""
    rng = random.Random(seed)
    connections = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        while not stop.is_set() or connections == 0:
            resumed = checker.last is not None and rng.random() < 0.5
            query = f"?since={checker.last}" if resumed else ""
            async with session.ws_connect(f"{url}/ws/logs{query}", headers=AUTH) as ws:
                connections += 1
                checker.hello(json.loads(await ws.receive_str(timeout=TIMEOUT)), resumed)
                for _ in range(rng.randint(0, 300)):
                    try:
                        data = await ws.receive_str(timeout=0.2)
                    except TimeoutError:
                        break  # the app has gone quiet
                    try:
                        checker.frame(json.loads(data))
                    except AssertionError as exc:
                        errors.append(f"client {seed}: {exc!r}")
                        return connections
                    if stop.is_set() and rng.random() < 0.1:
                        break
            if rng.random() < 0.2:
                await asyncio.sleep(rng.random() / 100)
    return connections


async def main(url: str, count: int) -> None:
    stop = asyncio.Event()
    checkers = [StreamChecker() for _ in range(count)]
    errors: list[str] = []
    clients = [
        asyncio.create_task(storm_client(url, n, stop, checkers[n], errors)) for n in range(count)
    ]
    while not all(c.last is not None for c in checkers):
        await asyncio.sleep(0.005)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    stop.set()
    connections = await asyncio.wait_for(asyncio.gather(*clients), 3 * TIMEOUT)
    result: dict[str, Any] = {
        "connections": connections,
        "records": [c.records for c in checkers],
        "gaps": [c.gaps for c in checkers],
        "errors": errors,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
