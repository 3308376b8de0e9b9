"""The emit cost as the issue tracker measures it: ``WebSocketHandler`` against the stdlib
``QueueHandler`` + ``QueueListener(NullHandler)``, both with the formatter
``%(levelname)s %(name)s: %(message)s``, ``extra`` with two keys, no client, the two run in
alternating rounds; the minimum over the rounds of µs per call, on the wall clock and in the
logging thread's own CPU time (``time.thread_time``, which leaves out the time the other
thread holds the GIL).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import queue
import sys
import time

from _common import KEY, environment, print_table, ratio

import wslogging

FORMAT = "%(levelname)s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    """Alternate the two handlers round after round; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--calls", type=int, default=5000, help="logging calls per round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per handler")
    args = parser.parse_args(argv)
    rounds = args.rounds or (7 if args.quick else 15)
    print(f"emit_ratio.py: {environment()}")
    formatter = logging.Formatter(FORMAT)
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    stdlib = logging.handlers.QueueHandler(records)
    listener = logging.handlers.QueueListener(records, logging.NullHandler())
    ours = wslogging.WebSocketHandler(port=0, api_keys=KEY)
    loggers = {}
    for name, handler in (("QueueHandler+QueueListener", stdlib), ("WebSocketHandler", ours)):
        handler.setFormatter(formatter)
        logger = logging.getLogger(f"bench.{len(loggers)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        loggers[name] = logger
    listener.start()
    wall = dict.fromkeys(loggers, float("inf"))
    cpu = dict.fromkeys(loggers, float("inf"))
    try:
        names = list(loggers)
        for n in range(rounds):
            for name in names if n % 2 else names[::-1]:
                log = loggers[name]
                began, began_cpu = time.perf_counter(), time.thread_time()
                for i in range(args.calls):
                    log.info("msg %d", i, extra={"k": i, "request": "abc"})
                cpu[name] = min(cpu[name], (time.thread_time() - began_cpu) / args.calls * 1e6)
                wall[name] = min(wall[name], (time.perf_counter() - began) / args.calls * 1e6)
                time.sleep(0.1)  # both sides drain before the next round
    finally:
        listener.stop()
        ours.close()
    base = "QueueHandler+QueueListener"
    print_table(
        f"µs per logging call, the minimum of {rounds} alternating rounds of {args.calls}",
        ["handler", "wall µs/call", "vs QueueHandler", "thread CPU µs/call", "vs QueueHandler"],
        [
            [
                name,
                wall[name],
                ratio(wall[name], wall[base]),
                cpu[name],
                ratio(cpu[name], cpu[base]),
            ]
            for name in loggers
        ],
        [
            f"formatter {FORMAT!r}; logger.info('msg %d', i, extra={{'k': i, 'request': 'abc'}})",
            "no client connected; the QueueListener's handler is a NullHandler",
            f"records_dropped: {ours.records_dropped}",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
