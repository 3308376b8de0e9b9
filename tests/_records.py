"""Build LogRecord and LogEntry objects for the pure-module tests."""

from __future__ import annotations

import logging
from typing import Any

from wslogging._wire import LogEntry

# 2026-11-25T17:28:42.123456+00:00, the SPEC §4 example's time.
CREATED = 1795627722.123456


def make_record(
    msg: object = "hello",
    *args: object,
    level: int = logging.INFO,
    name: str = "app",
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
    stack_info: str | None = None,
) -> logging.LogRecord:
    """A record as ``logging.getLogger(name).log(level, msg, *args, extra=...)`` makes it."""
    return logging.getLogger(name).makeRecord(
        name, level, "app.py", 1, msg, args, exc_info, extra=extra, sinfo=stack_info
    )


def make_entry(
    log: str = "hello",
    *,
    levelno: int = logging.INFO,
    logger: str = "app",
    category: str | None = None,
    fields: dict[str, Any] | None = None,
    exc: str | None = None,
    pid: int | None = None,
) -> LogEntry:
    """A rendered entry, not yet accepted (``id`` 0)."""
    return LogEntry(
        log=log,
        levelno=levelno,
        level=logging.getLevelName(levelno),
        logger=logger,
        category=logger if category is None else category,
        created=CREATED,
        fields={} if fields is None else fields,
        exc=exc,
        pid=4242 if pid is None else pid,
    )
