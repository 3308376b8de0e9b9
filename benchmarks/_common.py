"""Helpers shared by the benchmark scripts: statistics, tables, RSS and file-descriptor limits."""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
from collections.abc import Iterable, Sequence

# The API key every benchmark server accepts (loopback only; not a secret).
KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HOST = "127.0.0.1"
# The columns every delivery-latency table ends with.
LATENCY_COLUMNS = (
    "p50 ms",
    "p99 ms",
    "max ms",
    "p99 vs 0 stalled",
    "RSS growth MiB",
    "client_drops",
)


def median(values: Iterable[float]) -> float:
    """The median of ``values``, or NaN when there are none."""
    data = list(values)
    return statistics.median(data) if data else math.nan


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``, or NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def fmt(value: object, digits: int = 2) -> str:
    """A table cell: floats with ``digits`` decimals, NaN and None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(a: float, b: float) -> str:
    """``a / b`` as ``1.23x``, or ``-`` when either side is missing."""
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], notes: Iterable[str] = ()
) -> None:
    """Print a plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(row: Sequence[str]) -> str:
        """One row, padded to the column widths."""
        parts = [row[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    print()
    print(title)
    print("=" * len(title))
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    for note in notes:
        print(f"  * {note}")
    print(flush=True)


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def raise_nofile(needed: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``needed``; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        soft = target
    return soft


def environment() -> str:
    """One line naming the interpreter, the machine, and how wslogging encodes JSON and runs
    its loop here, for the head of every report."""
    from wslogging import _wire

    if _wire._orjson_dumps is not None:
        from importlib.metadata import version

        json_path = f"orjson {version('orjson')}"
    else:
        json_path = "stdlib json (orjson not installed)"
    loop = "asyncio"
    if os.environ.get("WSLOGGING_UVLOOP", "").strip() == "1":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            loop = "asyncio (WSLOGGING_UVLOOP=1, but uvloop is not installed)"
        else:
            loop = "uvloop"
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}, {platform.machine()}, {cpu_model()}, "
        f"nproc={len(os.sched_getaffinity(0))}; wslogging JSON: {json_path}, loop: {loop}"
    )


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or ``unknown CPU``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"
