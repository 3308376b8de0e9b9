"""Several processes on one port: what a logging call costs in a forwarding process against
the serving one, and how long a takeover takes after the serving process is killed.

Emit: a process logs ``--records`` records (``logger.info("msg %d", n, extra={"k": n})``) as
fast as it can, once while it serves the port itself and once while it forwards to another
process serving it; reported are µs per call on the app thread, the longest single call, and
how long after the loop until the server had every record (``drain``).

Takeover: a serving process and a forwarding one, both logging 50 records a second; the
serving one gets SIGKILL, and the time until the other one serves the port (``/api/stats``
names its pid) is measured, ``--takeovers`` times.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from _common import AUTH, KEY, environment, median, print_table

EMITTER = """\
import json, logging, sys, time
from wslogging import WebSocketHandler
port, records = int(sys.argv[1]), int(sys.argv[2])
handler = WebSocketHandler(port=port, api_keys=sys.argv[3], queue_size=records)
log = logging.getLogger("bench")
log.addHandler(handler)
log.propagate = False
log.setLevel(logging.INFO)
longest = 0.0
began = time.perf_counter()
for n in range(records):
    t = time.perf_counter()
    log.info("msg %d", n, extra={"k": n})
    longest = max(longest, time.perf_counter() - t)
took = time.perf_counter() - began
print(json.dumps({"role": handler.role, "took": took, "longest": longest,
                  "dropped": handler.records_dropped}), flush=True)
sys.stdin.read()
"""

TICKER = """\
import json, logging, os, sys, time
from wslogging import WebSocketHandler
handler = WebSocketHandler(port=int(sys.argv[1]), api_keys=sys.argv[2])
log = logging.getLogger("bench")
log.addHandler(handler)
log.setLevel(logging.INFO)
print(json.dumps({"role": handler.role}), flush=True)
while True:
    log.info("tick")
    time.sleep(0.02)
"""


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


def stats(port: int) -> dict[str, Any] | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/stats", headers=AUTH)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
            data: dict[str, Any] = json.load(response)
            return data
    except OSError:
        return None


def start(script: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate()


def emit_run(records: int, forwarding: bool) -> dict[str, float]:
    port = free_port()
    holder = None
    if forwarding:
        holder, _ = start(TICKER, str(port), KEY)
    accepted_before = (stats(port) or {}).get("records_accepted", 0)
    emitter, result = start(EMITTER, str(port), str(records), KEY)
    assert result["role"] == ("forwarding" if forwarding else "serving"), result
    ended = time.perf_counter()
    target = accepted_before + records - result["dropped"]
    while (stats(port) or {}).get("records_accepted", 0) < target:
        time.sleep(0.005)
    drain = time.perf_counter() - ended
    stop(emitter)
    if holder is not None:
        stop(holder)
    return {
        "us_per_call": result["took"] / records * 1e6,
        "longest_ms": result["longest"] * 1e3,
        "drain_s": drain,
        "dropped": float(result["dropped"]),
    }


def takeover_run() -> float:
    port = free_port()
    serving, state = start(TICKER, str(port), KEY)
    assert state["role"] == "serving"
    forwarding, state = start(TICKER, str(port), KEY)
    assert state["role"] == "forwarding"
    while not (stats(port) or {}).get("forwarders"):
        time.sleep(0.005)
    serving.send_signal(signal.SIGKILL)
    killed = time.perf_counter()
    serving.wait()
    while (stats(port) or {}).get("pid") != forwarding.pid:
        time.sleep(0.002)
    took = time.perf_counter() - killed
    stop(forwarding)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--takeovers", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="20,000 records, 1 run, 3 takeovers")
    args = parser.parse_args()
    if args.quick:
        args.records, args.repeat, args.takeovers = 20_000, 1, 3
    os.environ.setdefault("WSLOGGING_RUNTIME_DIR", tempfile.mkdtemp(prefix="wslogging-bench-"))
    print(environment())
    rows = []
    for forwarding in (False, True):
        runs = [emit_run(args.records, forwarding) for _ in range(args.repeat)]
        rows.append(
            [
                "forwarding" if forwarding else "serving",
                f"{median([r['us_per_call'] for r in runs]):.2f}",
                f"{max(r['longest_ms'] for r in runs):.1f}",
                f"{median([r['drain_s'] for r in runs]):.2f}",
                f"{max(r['dropped'] for r in runs):.0f}",
            ]
        )
    print_table(
        f"emit: {args.records:,} records as fast as one thread logs (median of {args.repeat})",
        ["process", "µs/call", "longest call ms", "drain s", "dropped"],
        rows,
    )
    takeovers = sorted(takeover_run() for _ in range(args.takeovers))
    print_table(
        "takeover: SIGKILL of the serving process until another one serves the port",
        ["takeovers", "median ms", "max ms"],
        [[str(len(takeovers)), f"{median(takeovers) * 1e3:.0f}", f"{takeovers[-1] * 1e3:.0f}"]],
    )


if __name__ == "__main__":
    main()
