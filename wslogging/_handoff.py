"""The one way from the app's threads into the server's loop: a bounded janus queue that wakes
the loop only when its consumer is idle."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

import janus

T = TypeVar("T")

# Seconds the consumer waits for more, once the queue is empty, before it goes idle.
LINGER = 0.001


class Handoff(Generic[T]):
    """A bounded queue from any number of threads to one consumer task on ``loop``.

    Thread side, :meth:`put`: never blocks, never waits for the loop. It costs one lock (janus's)
    and, only when the consumer has found the queue empty and gone to sleep, one
    ``call_soon_threadsafe`` (a write to the loop's self-pipe) to wake it. While the consumer
    is busy, items just pile up and it takes them in batches: a thread that logs in a tight
    loop pays no wakeup per record. (janus's own ``async_q.get()`` would have the thread
    schedule a wakeup on every put until the consumer runs again.)

    Loop side, :meth:`get_batch`: up to ``limit`` items, waiting only when there are none.
    When it finds the queue empty it looks again :data:`LINGER` seconds later before it goes
    idle: an app that logs steadily then never has to wake it, and a record that comes
    while it is idle wakes it at once.

    Bounded: at most ``maxsize`` items wait; :meth:`put` refuses more (returns ``False``, and
    the caller counts the drop). After :meth:`shutdown`, :meth:`put` refuses everything and
    :meth:`get_batch` returns what is left, then ``[]``.
    """

    def __init__(self, maxsize: int, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: janus.Queue[T] = janus.Queue(maxsize=maxsize)
        self._loop = loop
        # True while the consumer waits on _ready: the next put() must wake it.
        self._idle = False
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        """Items waiting now."""
        return self._queue.sync_q.qsize()

    def put(self, item: T) -> bool:
        """Queue ``item`` without waiting (any thread); ``False`` when full or shut down.

        The only place where the app's threads wake the loop. Precondition: ``item`` is already
        in the queue when ``_idle`` is read. The consumer sets ``_idle`` *before* its last look
        at the queue, so either that look finds ``item`` or this read sees ``_idle`` set: a
        record is never left waiting for the next one. Two threads may both see it set and
        both wake the loop; the second wakeup finds nothing to do, which is harmless.
        """
        try:
            self._queue.sync_q.put_nowait(item)
        except (janus.SyncQueueFull, janus.SyncQueueShutDown):
            return False
        if self._idle:
            self._idle = False
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop is closed: the server is gone
                return False
        return True

    async def get_batch(self, limit: int) -> list[T]:
        """Up to ``limit`` items in order (loop side), waiting while there are none; ``[]``
        only once :meth:`shutdown` was called and every item has been taken."""
        get = self._queue.async_q.get_nowait
        items: list[T] = []
        lingered = False
        while True:
            try:
                while len(items) < limit:
                    items.append(get())
            except janus.AsyncQueueEmpty:
                pass
            except janus.AsyncQueueShutDown:
                return items  # shut down and drained
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
            if self._queue.async_q.qsize():
                self._idle = False
                continue
            await self._ready.wait()
            self._idle = False

    def drain(self) -> list[T]:
        """Every item still queued, without waiting (loop side)."""
        items: list[T] = []
        get = self._queue.async_q.get_nowait
        with contextlib.suppress(janus.AsyncQueueEmpty, janus.AsyncQueueShutDown):
            while True:
                items.append(get())
        return items

    def shutdown(self) -> None:
        """Refuse further items and let the consumer take what is left (loop side)."""
        self._queue.shutdown()
        self._ready.set()
