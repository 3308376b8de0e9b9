"""Redaction cost: ms per ``RedactingFilter().filter(record)`` on adversarial messages.

Whoever sends the app a request chooses what it logs (a path, a header, a form field), and
the filter runs on the app's thread. Each shape below is built at ``n`` and ``2n`` characters;
the table shows the best of ``--reps`` timings at each size and their ratio (about 2 for linear
time, 4 for quadratic, 8 for cubic).
"""

from __future__ import annotations

import argparse
import logging
import sys
import timeit
from collections.abc import Callable

from _common import environment, print_table

from wslogging import RedactingFilter


def repeat(unit: str, prefix: str = "") -> Callable[[int], str]:
    """A shape: ``prefix`` then ``unit`` repeated to ``n`` characters in all."""
    return lambda n: prefix + unit * ((n - len(prefix)) // len(unit))


SHAPES: dict[str, Callable[[int], str]] = {
    '"GET /" + "token" * k': repeat("token", "GET /"),
    '"secret_" * k': repeat("secret_"),
    '"a" * n': repeat("a"),
    '"=" * n': repeat("="),
    '"password" + "=" * k': repeat("=", "password"),
    '"token: " * k': repeat("token: "),
    '"Authorization: " + "Bearer " * k': repeat("Bearer ", "Authorization: "),
    '\'"password": "\' * k': repeat('"password": "'),
    "'token=\"' + '\\\\\"' * k": repeat('\\"', 'token="'),
    '"password=x " * k': repeat("password=x "),
    '"://u:p@" * k': repeat("://u:p@"),
}


def best(text: str, reps: int, seconds: float) -> float:
    """Seconds per run of the default filter on a record logging ``text``: the best of
    ``reps`` timings, each of as many runs as take about ``seconds`` (at least one)."""
    redactor = RedactingFilter()
    record = logging.LogRecord("app", logging.INFO, __file__, 1, text, None, None)
    timer = timeit.Timer(lambda: redactor.filter(record))
    number = max(1, round(seconds / timer.timeit(1)))
    return min(timer.repeat(reps, number)) / number


def main(argv: list[str] | None = None) -> int:
    """Parse options, time every shape at both sizes, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 2,000 and 3 runs")
    parser.add_argument("--size", type=int, default=None, help="n, characters (10,000)")
    parser.add_argument("--reps", type=int, default=None, help="timings per size, best kept (7)")
    args = parser.parse_args(argv)
    size = args.size or (2_000 if args.quick else 10_000)
    reps = args.reps or (3 if args.quick else 7)
    seconds = 0.02 if args.quick else 0.1
    print(f"redact.py: {environment()}", flush=True)
    rows: list[list[object]] = []
    for title, shape in SHAPES.items():
        small, large = best(shape(size), reps, seconds), best(shape(2 * size), reps, seconds)
        rows.append([title, small * 1000, large * 1000, f"{large / small:.1f}x"])
    print_table(
        f"RedactingFilter().filter(record): ms, best of {reps}",
        ["message", f"n={size:,}", f"n={2 * size:,}", "ratio"],
        rows,
        ["ratio: about 2 for linear time, 4 for quadratic, 8 for cubic"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
