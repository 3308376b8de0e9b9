"""Tests for wslogging._handoff: the bounded queue from the app's threads to the server's loop."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from typing import Any

import pytest
from _records import make_entry
from conftest import TIMEOUT

from wslogging import _handoff
from wslogging._handoff import Handoff


def count_wakeups(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every ``call_soon_threadsafe`` on the running loop (still calling through)."""
    loop = asyncio.get_running_loop()
    calls: list[Any] = []
    real = loop.call_soon_threadsafe

    def spy(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        calls.append(callback)
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", spy)
    return calls


async def test_batches_in_order_up_to_limit() -> None:
    """Items come out in the order they went in, at most ``limit`` at a time."""
    handoff: Handoff[int] = Handoff(100, asyncio.get_running_loop())
    for n in range(7):
        assert handoff.put(n)

    assert [[0, 1, 2], [3, 4, 5], [6]] == [await handoff.get_batch(3) for _ in range(3)]


async def test_full_queue_refuses() -> None:
    """Past ``maxsize`` a put is refused (the caller counts the drop), never waits."""
    handoff: Handoff[int] = Handoff(2, asyncio.get_running_loop())

    assert [True, True, False] == [handoff.put(n) for n in range(3)]
    assert 2 == handoff.qsize()


async def test_shutdown_refuses_then_drains() -> None:
    """After shutdown, puts are refused; the consumer gets what was queued, then ``[]``."""
    handoff: Handoff[int] = Handoff(10, asyncio.get_running_loop())
    handoff.put(1)
    handoff.put(2)

    handoff.shutdown()

    assert not handoff.put(3)
    assert [[1, 2], []] == [await handoff.get_batch(10), await handoff.get_batch(10)]


async def test_take_now_from_an_app_thread() -> None:
    """An app thread takes what is queued, in order, without the loop (a forwarding process
    writing it before its own record): ``[]`` when nothing is, ``None`` once shut and
    drained; what is left after it is the loop's, in order."""
    handoff: Handoff[int] = Handoff(100, asyncio.get_running_loop())
    for n in range(5):
        handoff.put(n)

    taken = await asyncio.to_thread(handoff.take_now, 3)
    assert [0, 1, 2] == taken
    assert [3, 4] == await handoff.get_batch(10)
    assert [] == await asyncio.to_thread(handoff.take_now, 3)
    handoff.put(5)
    handoff.shutdown()
    assert [[5], None] == [
        await asyncio.to_thread(handoff.take_now, 3),
        await asyncio.to_thread(handoff.take_now, 3),
    ]


async def test_shutdown_ends_a_waiting_consumer() -> None:
    """A consumer waiting on an empty queue gets ``[]`` as soon as it is shut down."""
    handoff: Handoff[int] = Handoff(10, asyncio.get_running_loop())
    consumer = asyncio.create_task(handoff.get_batch(10))
    await asyncio.sleep(_handoff.LINGER * 2)  # let it go idle; either way it must end

    handoff.shutdown()

    assert [] == await asyncio.wait_for(consumer, TIMEOUT)


async def test_busy_consumer_is_never_woken(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the consumer is not waiting, puts cost no wakeup of the loop at all."""
    wakeups = count_wakeups(monkeypatch)
    handoff: Handoff[int] = Handoff(1000, asyncio.get_running_loop())

    for n in range(500):
        handoff.put(n)

    assert (list(range(500)), []) == (await handoff.get_batch(1000), wakeups)


async def test_idle_consumer_is_woken_once_by_another_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A put from another thread wakes an idle consumer, once however many puts follow."""
    handoff: Handoff[int] = Handoff(1000, asyncio.get_running_loop())
    wakeups = count_wakeups(monkeypatch)
    consumer = asyncio.create_task(handoff.get_batch(1000))
    await asyncio.sleep(_handoff.LINGER * 5)
    assert handoff._idle  # it has gone to sleep

    def app() -> None:
        for n in range(100):
            handoff.put(n)

    await asyncio.to_thread(app)

    assert [0] == (await asyncio.wait_for(consumer, TIMEOUT))[:1]
    assert 1 == wakeups.count(handoff._ready.set)  # (to_thread wakes the loop too)


async def test_no_item_lost_when_the_consumer_goes_idle_as_threads_put() -> None:
    """Several threads put with pauses around the time the consumer takes to go idle, so that
    puts keep landing just as it does: every item arrives, each thread's in order, none
    twice. A lost wakeup would leave items behind and the test would time out."""
    handoff: Handoff[tuple[int, int]] = Handoff(100_000, asyncio.get_running_loop())
    threads, per_thread = 4, 300

    def app(thread: int) -> None:
        rng = random.Random(thread)
        pause = threading.Event()  # never set: wait() is a pause of the given length
        for n in range(per_thread):
            assert handoff.put((thread, n))
            if rng.random() < 0.5:
                pause.wait(rng.uniform(0, 2 * _handoff.LINGER))

    workers = [threading.Thread(target=app, args=(t,), daemon=True) for t in range(threads)]
    for worker in workers:
        worker.start()
    received: list[tuple[int, int]] = []
    async with asyncio.timeout(TIMEOUT):
        while len(received) < threads * per_thread:
            received += await handoff.get_batch(random.randint(1, 50))
    for worker in workers:
        worker.join(TIMEOUT)

    assert [[(t, n) for n in range(per_thread)] for t in range(threads)] == [
        [item for item in received if item[0] == t] for t in range(threads)
    ]
    assert 0 == handoff.qsize()


# -- shedding and loss markers ----------------------------------------------------------------


def counts(items: list[Any]) -> list[Any]:
    """Items as comparable values: a record's message, a marker's (count, reason, levels)."""
    return [(i.count, i.reason, i.levels) if isinstance(i, _handoff.Lost) else i.log for i in items]


async def test_records_below_keep_level_are_shed_first() -> None:
    """Past 80% of the queue only records at keep_level or above get in, until it is full."""
    handoff: Handoff[Any] = Handoff(
        10, asyncio.get_running_loop(), keep_level=logging.WARNING, mark=True
    )
    infos = [handoff.put(make_entry(f"i{n}")) for n in range(10)]
    warnings = [handoff.put(make_entry(f"w{n}", levelno=logging.WARNING)) for n in range(3)]

    assert ([True] * 8 + [False] * 2, [True, True, False]) == (infos, warnings)
    shed, full = (2, "overflow", {"INFO": 2}), (1, "overflow", {"WARNING": 1})
    assert [*(f"i{n}" for n in range(8)), shed, "w0", "w1", full] == counts(
        await handoff.get_batch(100)
    )


async def test_a_loss_marker_stands_where_the_records_were_refused() -> None:
    """Refusals in a row share one marker, placed between the records around them; losses
    reported from elsewhere have markers of their own reason."""
    handoff: Handoff[Any] = Handoff(2, asyncio.get_running_loop(), mark=True)
    assert handoff.put(make_entry("a"))
    assert handoff.put(make_entry("b"))
    assert not handoff.put(make_entry("c"))
    assert not handoff.put(make_entry("d", levelno=logging.ERROR))
    assert ["a", "b", (2, "overflow", {"INFO": 1, "ERROR": 1})] == counts(
        await handoff.get_batch(100)
    )
    handoff.lost(5, "source")
    handoff.lost(None, "source")
    assert handoff.put(make_entry("e"))
    assert [(None, "source", {}), "e"] == counts(await handoff.get_batch(100))


async def test_markers_wake_an_idle_consumer() -> None:
    """A loss reported while the consumer sleeps reaches it without a record after it."""
    handoff: Handoff[Any] = Handoff(2, asyncio.get_running_loop(), mark=True)
    consumer = asyncio.create_task(handoff.get_batch(100))
    await asyncio.sleep(_handoff.LINGER * 3)  # let it go idle
    await asyncio.to_thread(handoff.lost, 3, "overflow")
    async with asyncio.timeout(TIMEOUT):
        assert [(3, "overflow", {})] == counts(await consumer)


async def test_without_mark_refusals_leave_no_marker() -> None:
    """A hand-off that does not mark (a forwarder's) only refuses: its caller counts."""
    handoff: Handoff[Any] = Handoff(1, asyncio.get_running_loop())
    assert [True, False] == [handoff.put(make_entry("a")), handoff.put(make_entry("b"))]
    handoff.lost(4, "source")
    assert ["a"] == counts(await handoff.get_batch(100))


async def test_a_partial_take_keeps_the_bound() -> None:
    """Taking fewer than are waiting frees exactly the room of the records taken."""
    handoff: Handoff[Any] = Handoff(3, asyncio.get_running_loop(), mark=True)
    for n in range(4):
        handoff.put(make_entry(f"r{n}"))
    assert ["r0", "r1"] == counts(await handoff.get_batch(2))
    assert handoff.put(make_entry("r4"))
    assert handoff.put(make_entry("r5"))
    assert not handoff.put(make_entry("r6"))
    assert ["r2", (1, "overflow", {"INFO": 1}), "r4", "r5", (1, "overflow", {"INFO": 1})] == (
        counts(await handoff.get_batch(100))
    )
