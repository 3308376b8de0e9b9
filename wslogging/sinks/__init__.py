"""Where a handler's records go when this process does not serve them itself: to the process
that serves the port (``_forwarder``, with its connection in ``_ingest_client``), or to a
Redis stream (``_redis``, which also holds the reader ``wslogging serve --redis`` serves
from). Each runs on a :class:`~wslogging._loop_thread.LoopThread`, as the server does.

:class:`Sink` is what the handler asks of any of them, the server included. Nothing here is
imported until it is used: ``_redis`` needs redis-py (the ``redis`` extra).
"""

from __future__ import annotations

from typing import Protocol

from .._wire import LogEntry

__all__ = ["Sink"]


class Sink(Protocol):
    """What a handler asks of the place its records go (:class:`LogServer`,
    :class:`Forwarder` or :class:`StreamAppender`), each on a
    :class:`~wslogging._loop_thread.LoopThread` of its own. A new sink is one more class with
    this interface, chosen in the handler's constructor."""

    @property
    def port(self) -> int:
        """The port served (by this process or the one forwarded to); 0 if none."""

    @property
    def url(self) -> str:
        """Where clients find the records (or, for Redis, the stream's URL, masked)."""

    @property
    def thread_id(self) -> int | None:
        """The sink's thread: records logged on it are never sent."""

    def submit(self, entry: LogEntry) -> bool:
        """Take ``entry`` without waiting (any thread); ``False``: the caller counts a drop."""

    def close(self, timeout: float) -> None:
        """Deliver what is queued within about ``timeout`` seconds, then stop (bounded;
        never waiting under logging's module lock)."""
