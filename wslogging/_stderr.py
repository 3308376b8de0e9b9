"""wslogging's own lines to stderr: one whole line per event."""

from __future__ import annotations

import sys


def say(line: str) -> None:
    """Write ``wslogging: <line>`` and its newline to stderr in one call, and flush: a line
    never runs into another thread's or process's (``print`` writes the newline apart), and
    never holds one of its own (whitespace runs, newlines included, become one space). A
    missing or closed stderr (``pythonw``, a daemon) is nobody to tell: never an error."""
    text = " ".join(line.split())
    try:
        sys.stderr.write(f"wslogging: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
