"""Run every benchmark, each in a fresh interpreter, and print their tables.

Usage: ``python benchmarks/run.py [--quick] [--only NAME ...]``, NAME among emit, emit_ratio,
fanout, storm, latency, memory, redis_mode, redact and forwarding.
Options after ``--`` go to every script.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import environment

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    "emit",
    "emit_ratio",
    "storm",
    "fanout",
    "latency",
    "memory",
    "redis_mode",
    "redact",
    "forwarding",
)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scripts one after the other; non-zero if any of them failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 35 s instead of about 3 min")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- options for every script")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    print(f"wslogging benchmarks: {environment()}", flush=True)
    failed = []
    started = time.monotonic()
    for name in args.only:
        command = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else [])]
        command += extra
        print(f"\n$ {' '.join(command)}", flush=True)
        began = time.monotonic()
        code = subprocess.call(command)
        print(f"[{name}.py: exit {code}, {time.monotonic() - began:.0f} s]", flush=True)
        if code:
            failed.append(name)
    print(
        f"\nall done in {time.monotonic() - started:.0f} s"
        + (f"; FAILED: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
