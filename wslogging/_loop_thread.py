"""One lifecycle for everything that runs beside the app: a daemon thread with an asyncio loop
of its own. The server, the forwarder and the Redis appender each run on one.

The rules it keeps, for all of them:

- The loop is made on the caller's thread (:meth:`LoopThread.make_loop`), and starting
  never waits for the new thread: the caller may hold logging's module lock (``dictConfig``
  does, around the handlers it builds), and asyncio logs while it makes a loop, which on the
  new thread would wait for that lock.
- The app's threads reach the loop only through a :class:`~wslogging._handoff.Handoff` made
  on it, and through :meth:`LoopThread.call`, which never waits either.
- Stopping is bounded: the owner asks its loop to wind down (with :meth:`LoopThread.call`)
  and waits with :meth:`LoopThread.wait`, which does not wait at all on the thread itself or
  under logging's module lock (the thread may be waiting for that lock to log; it then
  finishes after the caller returns).
- When the main coroutine is over, what it left running is cancelled (bounded), the
  async generators are closed and the loop is closed, then the owner's ``finish`` runs.
- In a forked child the thread is not there: :meth:`LoopThread.forget` makes the child
  forget it without touching the loop, whose epoll instance it shares with the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

# How long the tasks a main coroutine left running may take to end once cancelled.
LEFTOVER_WAIT = 1.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A loop for a :class:`LoopThread`: uvloop's when ``WSLOGGING_UVLOOP=1`` is set and
    uvloop is installed (the ``fast`` extra does not install it), else asyncio's own.

    Opt-in: uvloop cuts the server's own CPU per client, but it is another C extension in
    someone else's process, and asyncio's loop is what every test runs on by default.
    """
    if os.environ.get("WSLOGGING_UVLOOP", "").strip() == "1":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def holds_logging_lock() -> bool:
    """Whether this thread holds logging's module lock (an RLock, which knows its owner)."""
    is_owned = getattr(getattr(logging, "_lock", None), "_is_owned", None)
    return bool(is_owned is not None and is_owned())


class LoopThread:
    """A daemon thread named ``name`` that runs one main coroutine on a loop of its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        # The thread's id while it runs (records logged on it are never sent anywhere).
        self.thread_id: int | None = None
        # Set once the loop is closed and the owner's finish has run.
        self.stopped = threading.Event()

    def make_loop(self) -> asyncio.AbstractEventLoop:
        """Make the loop, on the caller's thread (see the module's docstring)."""
        if self.loop is not None:
            raise RuntimeError(f"{self.name}: a loop thread runs once; make a new one")
        self.loop = new_event_loop()
        return self.loop

    def start(
        self,
        main: Callable[[], Coroutine[Any, Any, None]],
        finish: Callable[[], None] | None = None,
        settle: float = 0.0,
    ) -> None:
        """Run ``main()`` on the new thread, without waiting for it; then, once the loop is
        closed, ``finish()``. ``settle``: seconds the connections cancelled at the end may
        take to finish closing (a TLS connection waits for its peer's close_notify)."""
        if self.loop is None:
            self.make_loop()
        self.thread = threading.Thread(
            target=self._run, args=(main, finish, settle), name=self.name, daemon=True
        )
        self.thread.start()

    def call(self, callback: Callable[..., object], *args: Any) -> bool:
        """Have ``callback(*args)`` run on the loop (any thread, never waiting); ``False`` if
        the loop is not there or already closed."""
        loop = self.loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def may_wait(self) -> bool:
        """Whether this thread may wait for the loop thread: not the thread itself, and not
        while it holds logging's module lock."""
        return threading.get_ident() != self.thread_id and not holds_logging_lock()

    def wait(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds and only where :meth:`may_wait`, until the
        thread has stopped; whether it has."""
        if self.may_wait():
            return self.stopped.wait(timeout)
        return self.stopped.is_set()

    def forget(self) -> None:
        """In a process forked from this one: the thread is not here. Its loop is left as
        it is (never closed here: its epoll instance is the parent's too), and no thread of
        the child is taken for it."""
        self.thread_id = None

    def _run(
        self,
        main: Callable[[], Coroutine[Any, Any, None]],
        finish: Callable[[], None] | None,
        settle: float,
    ) -> None:
        self.thread_id = threading.get_ident()
        loop = self.loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main())
        finally:
            try:
                # What main left running (a connection attempt cut short, a stream's
                # handler) ends here, closing its sockets, as asyncio.run() does.
                left = asyncio.all_tasks(loop)
                for task in left:
                    task.cancel()
                if left:
                    loop.run_until_complete(asyncio.wait(left, timeout=LEFTOVER_WAIT))
                if settle:
                    loop.run_until_complete(asyncio.sleep(settle))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                try:
                    if finish is not None:
                        finish()
                finally:
                    self.stopped.set()
