"""The one way from the app's threads into the server's loop: a bounded janus queue that wakes
the loop only when its consumer is idle, sheds the least important records first, and keeps
the place and count of every record it refuses."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import janus

T = TypeVar("T")

# Seconds the consumer waits for more, once the queue is empty, before it goes idle.
LINGER = 0.001
# The share of the queue past which records below ``keep_level`` are shed (logback's
# AsyncAppender discards TRACE to INFO once its queue is 80% full).
SHED_AT = 0.8


class Lost:
    """Records refused in a row, standing where they would have been in the queue.

    ``count`` is how many (``None`` when unknown), ``levels`` how many of each level name
    (records refused by the hand-off itself; empty for losses reported from elsewhere), and
    ``reason`` the SPEC §5 gap reason: ``overflow`` for the hand-off's own refusals,
    ``source`` for records another process lost before they got here.
    """

    __slots__ = ("count", "levels", "reason")

    def __init__(self, count: int | None, reason: str, levels: dict[str, int] | None = None):
        self.count = count
        self.reason = reason
        self.levels: dict[str, int] = levels if levels is not None else {}

    def add(self, other: Lost) -> None:
        """Take ``other``'s records into this one (same reason)."""
        self.count = None if self.count is None or other.count is None else self.count + other.count
        for level, n in other.levels.items():
            self.levels[level] = self.levels.get(level, 0) + n

    def __repr__(self) -> str:
        return f"Lost({self.count!r}, {self.reason!r}, {self.levels!r})"


class _Refused(Exception):
    """Raised out of :meth:`_Queue._put` (under janus's lock) for an item it did not keep."""


class _Queue(janus.Queue[Any]):
    """A janus queue that makes its bound, shedding and loss-marking decisions under janus's
    own lock, through the hooks janus documents for other queue kinds (``_init``, ``_qsize``,
    ``_put``, ``_get``, as its ``PriorityQueue`` does), and gives its consumer whole batches.

    To janus it is unbounded: the bound is :attr:`limit` items, kept here, so that a refusal
    is counted in the same critical section that decides it, and stands in the queue as a
    :class:`Lost` marker (consecutive refusals share one, so markers never outnumber items
    plus one). A marker goes in even when the queue is full: it is how the loss is told.
    """

    def __init__(self, limit: int, keep_level: int | None, mark: bool) -> None:
        self.limit = limit
        # Items below this level are refused once SHED_AT of the queue is taken.
        self.keep_level = keep_level
        self.shed_at = max(1, int(limit * SHED_AT)) if keep_level is not None else limit
        self.mark = mark
        # The most items one _get returns (set by the consumer before each get).
        self.take = 1
        super().__init__(0)

    def _init(self, maxsize: int) -> None:
        self._queue: deque[Any] = deque()
        self._items = 0  # items, not markers
        self._marks = 0
        # Whether the last _get returned a marker (read by the consumer right after it).
        self.marked = False

    def _qsize(self) -> int:
        return len(self._queue)

    def _put(self, item: Any) -> None:
        queue = self._queue
        if type(item) is Lost:
            self._note(item)
            return
        items = self._items
        if items >= self.shed_at and (
            items >= self.limit or getattr(item, "levelno", 0) < self.keep_level  # type: ignore[operator]
        ):
            if self.mark:
                level = getattr(item, "level", None)
                self._note(Lost(1, "overflow", {level: 1} if level else None))
            raise _Refused
        queue.append(item)
        self._items = items + 1

    def _note(self, lost: Lost) -> None:
        queue = self._queue
        if queue and type(queue[-1]) is Lost and queue[-1].reason == lost.reason:
            queue[-1].add(lost)
        else:
            queue.append(lost)
            self._marks += 1

    def _get(self) -> list[Any]:
        queue = self._queue
        if len(queue) <= self.take:
            self._queue = deque()
            self._items = 0
            self.marked = self._marks > 0
            self._marks = 0
            return list(queue)
        # Split in C, not popped one by one in Python: the app's threads wait for this lock.
        items = list(queue)
        batch = items[: self.take]
        self._queue = deque(items[self.take :])
        marks = sum(type(item) is Lost for item in batch) if self._marks else 0
        self._items -= len(batch) - marks
        self._marks -= marks
        self.marked = marks > 0
        return batch


class Handoff(Generic[T]):
    """A bounded queue from any number of threads to one consumer task on ``loop``.

    Thread side, :meth:`put`: never blocks, never waits for the loop. It costs one lock (janus's)
    and, only when the consumer has found the queue empty and gone to sleep, one
    ``call_soon_threadsafe`` (a write to the loop's self-pipe) to wake it. While the consumer
    is busy, items just pile up and it takes them in batches: a thread that logs in a tight
    loop pays no wakeup per record. (janus's own ``async_q.get()`` would have the thread
    schedule a wakeup on every put until the consumer runs again.)

    Loop side, :meth:`get_batch`: everything waiting, up to ``limit`` items, in one take of the
    lock, waiting only when there is nothing. When it finds the queue empty it looks again
    :data:`LINGER` seconds later before it goes idle: an app that logs steadily then never has
    to wake it, and a record that comes while it is idle wakes it at once.

    Bounded: at most ``maxsize`` items wait; :meth:`put` refuses more (returns ``False``, and
    the caller counts the drop). With ``keep_level``, items whose ``levelno`` is below it are
    refused already once :data:`SHED_AT` of the queue is taken, so that the last room goes to
    the records that matter (WARNING and above, by default in the handler). With ``mark``,
    every refusal, and every loss :meth:`lost` reports, comes out of :meth:`get_batch` as a
    :class:`Lost` marker at the place it happened. After :meth:`shutdown`, :meth:`put` refuses
    everything and :meth:`get_batch` returns what is left, then ``[]``.
    """

    def __init__(
        self,
        maxsize: int,
        loop: asyncio.AbstractEventLoop,
        *,
        keep_level: int | None = None,
        mark: bool = False,
    ) -> None:
        self._queue = _Queue(maxsize, keep_level, mark)
        # put(item, False) is put_nowait(item) without the extra call: this runs for every
        # record.
        self._put = self._queue.sync_q.put
        self._loop = loop
        # True while the consumer waits on _ready: the next put() must wake it.
        self._idle = False
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        """Items (and loss markers) waiting now."""
        return self._queue.sync_q.qsize()

    @property
    def marked(self) -> bool:
        """Whether the batch :meth:`get_batch` returned last has :class:`Lost` markers."""
        return self._queue.marked

    def put(self, item: T) -> bool:
        """Queue ``item`` without waiting (any thread); ``False`` when refused (full, shed, or
        shut down).

        The only place where the app's threads wake the loop. Precondition: ``item`` is already
        in the queue when ``_idle`` is read. The consumer sets ``_idle`` *before* its last look
        at the queue, so either that look finds ``item`` or this read sees ``_idle`` set: a
        record is never left waiting for the next one. Two threads may both see it set and
        both wake the loop; the second wakeup finds nothing to do, which is harmless.
        """
        try:
            self._put(item, False)
        except (_Refused, janus.SyncQueueShutDown):
            return False
        if self._idle:
            self._wake()
        return True

    def lost(self, count: int | None, reason: str) -> None:
        """Report records lost on their way here (any thread): with ``mark``, they come out of
        :meth:`get_batch` as a :class:`Lost` at this place in the queue; else nothing."""
        if not self._queue.mark:
            return
        with contextlib.suppress(janus.SyncQueueShutDown):
            self._put(Lost(count, reason), False)
            if self._idle:
                self._wake()

    def _wake(self) -> None:
        self._idle = False
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            self._loop.call_soon_threadsafe(self._ready.set)

    def take(self, limit: int) -> list[T] | None:
        """Up to ``limit`` items waiting now, in order, without waiting (loop side): ``[]``
        when there are none, ``None`` once :meth:`shutdown` was called and every item has
        been taken. With ``mark``, :class:`Lost` markers among them (each counts as one of
        ``limit``)."""
        queue = self._queue
        queue.take = limit
        try:
            items: list[T] = queue.async_q.get_nowait()
        except janus.AsyncQueueEmpty:
            return []
        except janus.AsyncQueueShutDown:
            return None
        return items

    def take_now(self, limit: int) -> list[T] | None:
        """:meth:`take`, from any thread (a forwarding process's app thread that writes
        what is queued before its own record, see ``sinks._ingest_client``), never waiting
        but for the queue's own lock."""
        queue = self._queue
        queue.take = limit
        try:
            items: list[T] = queue.sync_q.get_nowait()
        except janus.SyncQueueEmpty:
            return []
        except janus.SyncQueueShutDown:
            return None
        return items

    async def get_batch(
        self, limit: int, take: Callable[[int], list[T] | None] | None = None
    ) -> list[T]:
        """Up to ``limit`` items in order (loop side), waiting while there are none; ``[]``
        only once :meth:`shutdown` was called and every item has been taken. ``take`` (by
        default :meth:`take`) is how they are taken, for a consumer that must note under a
        lock of its own that it holds them."""
        take = take or self.take
        queue = self._queue
        lingered = False
        while True:
            items = take(limit)
            if items is None:
                return []  # shut down and drained
            if items:
                return items
            if not lingered:
                # In a busy app the next record is about to come: look again a moment later
                # instead of going idle at once, so that the app's thread is not made to
                # wake the loop (a system call, and a GIL handoff) for nearly every record.
                lingered = True
                await asyncio.sleep(LINGER)
                continue
            # Idle: say so first, then look once more (see put), then sleep.
            self._ready.clear()
            self._idle = True
            if queue.async_q.qsize():
                self._idle = False
                continue
            await self._ready.wait()
            self._idle = False

    def drain(self) -> list[T]:
        """Every item still queued, without waiting (loop side)."""
        queue = self._queue
        queue.take = len(queue._queue) + 1
        with contextlib.suppress(janus.AsyncQueueEmpty, janus.AsyncQueueShutDown):
            items: list[T] = queue.async_q.get_nowait()
            return items
        return []

    def shutdown(self) -> None:
        """Refuse further items and let the consumer take what is left (loop side)."""
        self._queue.shutdown()
        self._ready.set()
