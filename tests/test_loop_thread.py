"""The one lifecycle of the server, the forwarder and the Redis appender (LoopThread)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from conftest import TIMEOUT

from wslogging._loop_thread import LEFTOVER_WAIT, LoopThread, holds_logging_lock


def test_runs_main_on_its_own_thread_and_loop_then_finishes() -> None:
    seen: dict[str, object] = {}
    finished = threading.Event()
    stop = threading.Event()
    lt = LoopThread("test-loop")
    loop = lt.make_loop()  # on this thread

    async def main() -> None:
        seen["loop"] = asyncio.get_running_loop()
        seen["thread"] = threading.get_ident()
        while not stop.is_set():
            await asyncio.sleep(0.01)

    def finish() -> None:
        seen["closed"] = loop.is_closed()
        finished.set()

    lt.start(main, finish)
    assert lt.thread is not None
    assert lt.thread.daemon
    assert "test-loop" == lt.thread.name
    deadline = time.monotonic() + TIMEOUT
    while "thread" not in seen:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert (loop, lt.thread.ident, lt.thread_id) == (seen["loop"], seen["thread"], seen["thread"])
    assert not lt.stopped.is_set()
    stop.set()
    assert lt.wait(TIMEOUT)
    assert finished.is_set()
    assert seen["closed"] is True


def test_call_runs_on_the_loop_and_says_when_it_cannot() -> None:
    lt = LoopThread("test-call")
    assert not lt.call(print)  # no loop yet
    ran_on: list[int] = []
    stop = threading.Event()

    async def main() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.01)

    lt.start(main)
    assert lt.call(lambda: ran_on.append(threading.get_ident()))
    deadline = time.monotonic() + TIMEOUT
    while not ran_on:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert [lt.thread_id] == ran_on
    stop.set()
    assert lt.wait(TIMEOUT)
    assert not lt.call(print)  # the loop is closed: refused, nothing raised


def test_never_waits_under_logging_lock_nor_on_its_own_thread() -> None:
    lt = LoopThread("test-wait")
    stop = threading.Event()
    answers: list[bool] = []

    async def main() -> None:
        answers.append(lt.may_wait())  # its own thread
        while not stop.is_set():
            await asyncio.sleep(0.01)

    lt.start(main)
    with logging._lock:  # type: ignore[attr-defined]  # as dictConfig holds it
        assert holds_logging_lock()
        began = time.monotonic()
        assert not lt.wait(5.0)  # returns at once: the thread may be waiting for this lock
        assert time.monotonic() - began < 1.0
    assert not holds_logging_lock()
    stop.set()
    assert lt.wait(TIMEOUT)
    assert [False] == answers


def test_what_main_left_running_is_cancelled_within_a_bound() -> None:
    lt = LoopThread("test-leftovers")
    cancelled = threading.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def deaf() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # never ends: the thread must not wait for it for ever

    async def main() -> None:
        asyncio.get_running_loop().create_task(stubborn())
        asyncio.get_running_loop().create_task(deaf())
        await asyncio.sleep(0)

    began = time.monotonic()
    lt.start(main)
    assert lt.wait(TIMEOUT)
    assert cancelled.is_set()
    assert time.monotonic() - began < LEFTOVER_WAIT + 2.0


def test_a_loop_thread_runs_once() -> None:
    lt = LoopThread("test-once")
    lt.make_loop()
    with pytest.raises(RuntimeError, match="runs once"):
        lt.make_loop()
    lt.start(lambda: asyncio.sleep(0))
    assert lt.wait(TIMEOUT)


def test_forget_after_a_fork_leaves_the_loop_alone() -> None:
    lt = LoopThread("test-forget")
    stop = threading.Event()

    async def main() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.01)

    lt.start(main)
    deadline = time.monotonic() + TIMEOUT
    while lt.thread_id is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    loop = lt.loop
    lt.forget()  # what a forked child does: no thread of its own is taken for it
    assert lt.thread_id is None
    assert lt.loop is loop
    assert loop is not None
    assert not loop.is_closed()
    stop.set()
    assert lt.stopped.wait(TIMEOUT)
