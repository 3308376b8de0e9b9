"""Tests for wslogging._hub: clients, their bounded queues and the fan-out, without sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from _records import make_entry

from wslogging import _hub, _wire
from wslogging._filters import Filter
from wslogging._history import Gap, LossMark
from wslogging._hub import BATCH, Client, ClientState, Hub, Item, SlowClientPolicy
from wslogging._wire import LogEntry, encode_entry, ws_frames

HELLO = {"type": "hello"}
# Long enough never to expire while the loop has work; short enough for an idle client.
IDLE = 0.01


def make_hub(
    history: int = 100,
    client_queue_size: int = 100,
    slow_client: SlowClientPolicy = SlowClientPolicy.DROP,
    max_clients: int = 10,
) -> Hub:
    return Hub(
        history=history,
        client_queue_size=client_queue_size,
        slow_client=slow_client,
        max_clients=max_clients,
    )


def accept(hub: Hub, count: int, **entry: Any) -> list[LogEntry]:
    """Accept ``count`` new entries; returns them."""
    entries = [make_entry(f"m{n}", **entry) for n in range(count)]
    for e in entries:
        hub.accept([e])
    return entries


async def drain(client: Client) -> list[Item]:
    """Everything the client has to send now, over as many batches as it takes."""
    items: list[Item] = []
    while batch := await client.next_batch(wait=IDLE):
        items.extend(batch)
    return items


# -- accept ---------------------------------------------------------------------------------


def test_accept_assigns_consecutive_ids() -> None:
    """Accepted entries are numbered in order from the history's first id."""
    hub = make_hub()

    entries = accept(hub, 3)

    first = hub.history.first_id
    assert [first, first + 1, first + 2] == [e.id for e in entries]


def test_accept_leaves_encoding_to_first_reader() -> None:
    """Accepting does not encode; ``data`` is then the entry's wire encoding, with its id."""
    hub = make_hub()

    (entry,) = accept(hub, 1)

    assert None is entry._data
    assert (encode_entry(entry), str(entry.id)) == (entry.data, entry.to_dict()["id"])


async def test_entry_encoded_once_for_all_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """One encoding per entry, and the same bytes object reaches every client."""
    calls: list[LogEntry] = []

    def counting_encode(entry: LogEntry) -> bytes:
        calls.append(entry)
        return encode_entry(entry)

    monkeypatch.setattr(_wire, "encode_entry", counting_encode)
    hub = make_hub()
    clients = [hub.connect(Filter(), None) for _ in range(3)]

    (entry,) = accept(hub, 1)

    batches = [await c.next_batch(wait=IDLE) for c in clients]
    sent = {id(e.data) for batch in batches for e in batch if isinstance(e, LogEntry)}
    assert ([entry], [[entry]] * 3, 1) == (calls, batches, len(sent))


# -- order of what a client gets ------------------------------------------------------------


async def test_greeting_gap_replay_live_in_order() -> None:
    """Greeting first, then the gap, the replay from history, then live records, by id."""
    hub = make_hub()
    old = accept(hub, 5)
    client = hub.connect(Filter(), 1, greeting=HELLO)  # an id from an earlier run

    live = accept(hub, 2)

    assert [HELLO, Gap(None, "restart"), *old, *live] == await drain(client)


async def test_gap_for_forgotten_since_before_replay() -> None:
    """A ``since`` already forgotten: gap(history) with the count, then the oldest held."""
    hub = make_hub(history=3)
    old = accept(hub, 5)

    client = hub.connect(Filter(), old[0].id, greeting=HELLO)

    assert [HELLO, Gap(1, "history"), *old[2:]] == await drain(client)


async def test_live_only_without_since() -> None:
    """Without ``since`` a client gets only what is accepted after it connected."""
    hub = make_hub()
    accept(hub, 3)
    client = hub.connect(Filter(), None, greeting=HELLO)

    live = accept(hub, 2)

    assert [HELLO, *live] == await drain(client)


async def test_resume_after_id_no_duplicates() -> None:
    """With ``since`` still in history, exactly the records after it, none twice."""
    hub = make_hub()
    old = accept(hub, 5)
    client = hub.connect(Filter(), old[1].id)

    live = accept(hub, 2)

    assert [*old[2:], *live] == await drain(client)


async def test_filter_applies_to_replay_and_live() -> None:
    """The client's filter applies to replayed and to live records."""
    hub = make_hub()
    _, warning = accept(hub, 1, levelno=20) + accept(hub, 1, levelno=30)
    client = hub.connect(Filter(level=30), 0)

    _, error = accept(hub, 1, levelno=20) + accept(hub, 1, levelno=40)

    assert [warning, error] == await drain(client)


async def test_replay_longer_than_batch_in_several_batches() -> None:
    """A replay longer than BATCH comes in batches of at most BATCH, in order, before live."""
    hub = make_hub(history=3 * BATCH)
    old = accept(hub, 2 * BATCH + 5)
    client = hub.connect(Filter(), 0)
    live = accept(hub, 1)

    batches: list[list[Item]] = []
    while batch := await client.next_batch(wait=IDLE):
        batches.append(batch)

    assert [BATCH, BATCH, 6] == [len(b) for b in batches]
    assert [*old, *live] == [item for b in batches for item in b]


async def test_replay_entries_forgotten_during_replay_give_gap() -> None:
    """Replay records that leave history before they are sent become gap(history)."""
    hub = make_hub(history=BATCH + 100, client_queue_size=10 * BATCH)
    old = accept(hub, BATCH + 100)
    client = hub.connect(Filter(), 0)
    first = await client.next_batch(wait=IDLE)

    live = accept(hub, BATCH + 50)  # the oldest held is now old[BATCH + 50]

    rest = await drain(client)
    assert old[:BATCH] == first
    assert [Gap(50, "history"), *old[BATCH + 50 :], *live] == rest


async def test_replay_gap_does_not_count_queued_live_records() -> None:
    """When the whole replay range leaves history, the gap counts only replay records."""
    hub = make_hub(history=5)
    old = accept(hub, 5)
    client = hub.connect(Filter(), 0)

    live = accept(hub, 10)  # old[*] forgotten; live[:5] forgotten too, but queued for it

    assert [Gap(len(old), "history"), *live] == await drain(client)


async def test_send_control_before_queued_records() -> None:
    """Protocol messages go ahead of records already queued."""
    hub = make_hub()
    client = hub.connect(Filter(), None)
    (entry,) = accept(hub, 1)

    client.send_control({"type": "pong"})

    assert [{"type": "pong"}, entry] == await drain(client)


# -- slow clients ---------------------------------------------------------------------------


async def test_drop_policy_keeps_newest_and_reports_gap() -> None:
    """A full queue drops its oldest; the client is told with gap(slow_client) first."""
    hub = make_hub(client_queue_size=3)
    client = hub.connect(Filter(), None)

    entries = accept(hub, 10)

    assert ([Gap(7, "slow_client"), *entries[7:]], 7) == (await drain(client), hub.client_drops)


async def test_drop_gap_reported_once() -> None:
    """After the gap is sent, the next records come without another one."""
    hub = make_hub(client_queue_size=3)
    client = hub.connect(Filter(), None)
    accept(hub, 5)
    await drain(client)

    entries = accept(hub, 2)

    assert entries == await drain(client)


async def test_drop_policy_only_affects_slow_client() -> None:
    """Another client with room in its queue loses nothing."""
    hub = make_hub(client_queue_size=3)
    slow = hub.connect(Filter(), None)
    other = hub.connect(Filter(level=40), None)

    infos = accept(hub, 10)
    errors = accept(hub, 2, levelno=40)

    assert (errors, 9) == (await drain(other), hub.client_drops)
    assert [Gap(9, "slow_client"), infos[-1], *errors] == await drain(slow)


async def test_disconnect_policy_kicks_client() -> None:
    """With ``disconnect``, a full queue closes the client with 1008 and detaches it."""
    hub = make_hub(client_queue_size=3, slow_client=SlowClientPolicy.DISCONNECT)
    client = hub.connect(Filter(), None)

    accept(hub, 4)

    assert (ClientState.FINISHING, 1008, False) == (
        client.state,
        client.close_code,
        client in hub.clients,
    )
    assert None is await client.next_batch(wait=IDLE)


async def test_disconnect_policy_sends_nothing_more() -> None:
    """A kicked client gets no more records, only what was ahead of them (the greeting)."""
    hub = make_hub(client_queue_size=3, slow_client=SlowClientPolicy.DISCONNECT)
    client = hub.connect(Filter(), None, greeting=HELLO)

    accept(hub, 10)

    assert ([HELLO], None) == (
        await client.next_batch(wait=IDLE),
        await client.next_batch(wait=IDLE),
    )


# -- filters, finishing, idling -------------------------------------------------------------


async def test_set_filter_drops_queued_non_matching() -> None:
    """A new filter removes queued records it rejects; later records obey it too."""
    hub = make_hub()
    client = hub.connect(Filter(), None)
    accept(hub, 1, levelno=20)
    warning = accept(hub, 1, levelno=30)

    client.set_filter(Filter(level=30))
    accept(hub, 1, levelno=20)
    error = accept(hub, 1, levelno=40)

    assert [*warning, *error] == await drain(client)


async def test_finish_delivers_queued_then_ends() -> None:
    """``finish`` lets queued records out, then ``next_batch`` returns None."""
    hub = make_hub()
    client = hub.connect(Filter(), None)
    entries = accept(hub, 2)

    client.finish(1001, "server shutting down")

    assert (entries, None) == (
        await client.next_batch(wait=IDLE),
        await client.next_batch(wait=IDLE),
    )
    assert (ClientState.FINISHING, 1001) == (client.state, client.close_code)


async def test_finish_all_ends_idle_clients() -> None:
    """An idle client ends at once when every client is finished."""
    hub = make_hub()
    clients = [hub.connect(Filter(), None) for _ in range(2)]

    hub.finish_all(1001, "bye")

    assert [None, None] == [await c.next_batch(wait=None) for c in clients]


async def test_idle_client_gets_empty_batch() -> None:
    """With nothing to send, ``next_batch`` returns [] after ``wait`` (heartbeat time)."""
    hub = make_hub()
    client = hub.connect(Filter(), None)

    assert [] == await client.next_batch(wait=IDLE)


async def test_idle_after_draining() -> None:
    """Once everything was taken, the client waits again and returns []."""
    hub = make_hub()
    client = hub.connect(Filter(), None)
    accept(hub, 2)
    await client.next_batch(wait=IDLE)

    assert [] == await client.next_batch(wait=IDLE)


async def test_closed_client_detached() -> None:
    """A closed client is detached and gets no more records."""
    hub = make_hub()
    client = hub.connect(Filter(), None)

    client.closed()
    accept(hub, 1)

    assert (ClientState.CLOSED, set(), None) == (
        client.state,
        hub.clients,
        await client.next_batch(wait=IDLE),
    )


# -- hub bookkeeping ------------------------------------------------------------------------


def test_stats() -> None:
    """Stats count clients, accepted records, slow-client drops and history size."""
    hub = make_hub(history=3, client_queue_size=2)
    hub.connect(Filter(), None)

    accept(hub, 5)

    expected = {"clients": 1, "records_accepted": 5, "client_drops": 3, "history_size": 3}
    expected["records_failed"] = 0
    assert expected == hub.stats()


def test_stats_empty() -> None:
    """A new hub has counted nothing."""
    expected = {"clients": 0, "records_accepted": 0, "client_drops": 0, "history_size": 0}
    expected["records_failed"] = 0

    assert expected == make_hub().stats()


def test_full_at_max_clients() -> None:
    """The hub is full once ``max_clients`` clients are connected."""
    hub = make_hub(max_clients=2)

    fullness = [hub.full]
    for _ in range(2):
        hub.connect(Filter(), None)
        fullness.append(hub.full)

    assert [False, False, True] == fullness


def test_epoch_is_first_id() -> None:
    """The epoch names this run: its first id."""
    hub = make_hub()

    assert str(hub.history.first_id) == hub.epoch


# -- acknowledgments ----------------------------------------------------------------------------


def test_ack_never_goes_back() -> None:
    """The remembered ack is the highest one; an id not issued yet is refused."""
    hub = make_hub()
    first, second = accept(hub, 2)
    hub.ack("c", second.id)
    hub.ack("c", first.id)
    assert second.id == hub.acked("c")
    with pytest.raises(ValueError, match="not sent"):
        hub.ack("c", second.id + 1)


def test_acks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_ACKED_CLIENTS the least recently acknowledging client is forgotten."""
    monkeypatch.setattr(_hub, "MAX_ACKED_CLIENTS", 2)
    hub = make_hub()
    (entry,) = accept(hub, 1)
    for client_id in ("a", "b", "a", "c"):
        hub.ack(client_id, entry.id)
    assert (entry.id, None, entry.id) == (hub.acked("a"), hub.acked("b"), hub.acked("c"))


async def test_control_replies_are_bounded() -> None:
    """A client that leaves MAX_CONTROL replies unread while it keeps asking is closed 1008."""
    hub = make_hub()
    client = hub.connect(Filter(), None)
    for _ in range(_hub.MAX_CONTROL):
        client.send_control({"type": "pong"})
    assert ClientState.LIVE is client.state
    client.send_control({"type": "pong"})
    assert (ClientState.FINISHING, 1008) == (client.state, client.close_code)
    assert client not in hub.clients


async def test_clients_are_counted_per_key() -> None:
    """Each key's clients are counted from connect until they are gone, however often the
    connection reports it."""
    hub = make_hub()
    first, second = hub.connect(Filter(), None, key=b"a"), hub.connect(Filter(), None, key=b"a")
    hub.connect(Filter(), None, key=b"b")
    first.closed()
    first.closed()
    second.kick(1008, "gone")
    assert (0, 1, 0) == (hub.clients_of(b"a"), hub.clients_of(b"b"), hub.clients_of(b"c"))


# -- writing at once ------------------------------------------------------------------------


async def idle_writer(client: Client) -> asyncio.Task[list[Item] | None]:
    """The client's writer, waiting for something to send."""
    writer = asyncio.create_task(client.next_batch(wait=None))
    await asyncio.sleep(0)
    return writer


async def test_caught_up_client_is_written_at_once() -> None:
    """With its writer idle and nothing pending, a client's records go out through
    ``write_now``, in order, and its writer is not woken."""
    hub = make_hub()
    client = hub.connect(Filter(), None)
    written: list[LogEntry] = []
    client.write_now = lambda entries: written.extend(entries) or True
    writer = await idle_writer(client)

    entries = accept(hub, 3)

    assert (entries, False) == (written, writer.done())
    writer.cancel()


async def test_whole_batch_framed_once_for_every_client() -> None:
    """Clients that get a whole batch are written the same bytes object: joined once."""
    hub = make_hub()
    clients = [hub.connect(Filter(), None) for _ in range(3)]
    written: list[bytes] = []
    writers = []
    for client in clients:
        client.write_now = lambda batch: written.append(batch.ws_frames()) or True
        writers.append(await idle_writer(client))

    entries = [make_entry(f"m{n}") for n in range(4)]
    hub.accept(entries)

    assert [ws_frames(entries)] * 3 == written
    assert 1 == len({id(frames) for frames in written})
    for writer in writers:
        writer.cancel()


async def test_records_wait_for_the_writer_when_the_connection_cannot_take_them() -> None:
    """When ``write_now`` declines (the peer has bytes pending), the writer sends them."""
    hub = make_hub()
    client = hub.connect(Filter(), None)
    client.write_now = lambda entries: False
    writer = await idle_writer(client)

    entries = accept(hub, 2)

    assert entries == await writer


async def test_pending_reply_keeps_records_behind_it() -> None:
    """A reply waiting for the writer goes first: records are not written past it."""
    hub = make_hub()
    client = hub.connect(Filter(), None)
    written: list[LogEntry] = []
    client.write_now = lambda entries: written.extend(entries) or True
    writer = await idle_writer(client)
    client.send_control({"type": "pong"})

    entries = accept(hub, 1)

    assert ([], [{"type": "pong"}, *entries]) == (written, await writer)


async def test_batch_that_matches_nothing_does_not_wake_the_writer() -> None:
    """A client whose filter takes none of a batch is left alone: no write, no wakeup."""
    hub = make_hub()
    client = hub.connect(Filter(level=40), None)
    calls: list[list[LogEntry]] = []
    client.write_now = lambda entries: calls.append(list(entries)) or False
    writer = await idle_writer(client)

    accept(hub, 3)  # INFO records
    await asyncio.sleep(0)

    assert ([], False) == (calls, writer.done())
    writer.cancel()


# -- loss marks -------------------------------------------------------------------------------


async def test_a_loss_mark_reaches_every_client_at_its_place() -> None:
    """Whatever a client's filter, it gets the mark between the records around it."""
    hub = make_hub()
    everyone = hub.connect(Filter(), None)
    errors_only = hub.connect(Filter(level=logging.ERROR), None)
    mark = LossMark(4, "overflow", {"INFO": 4})
    before, after = make_entry("before"), make_entry("after", levelno=logging.ERROR)

    hub.accept([before, mark, after], marked=True)

    assert ([before, mark, after], [mark, after]) == (
        await drain(everyone),
        await drain(errors_only),
    )
    assert 2 == hub.stats()["records_accepted"]


async def test_a_slow_client_that_forgets_a_mark_counts_what_it_announced() -> None:
    """A mark pushed out of a full client queue adds its count to the client's own gap, so
    that what the client is told still adds up to everything it did not get."""
    hub = make_hub(client_queue_size=2)
    client = hub.connect(Filter(), None)
    entries = [make_entry("a"), LossMark(10, "overflow", {}), make_entry("b"), make_entry("c")]

    hub.accept(entries[:2], marked=True)
    hub.accept(entries[2:])

    assert ([Gap(1 + 10, "slow_client"), entries[2], entries[3]], 1) == (
        await drain(client),
        hub.client_drops,
    )


async def test_a_batch_larger_than_a_client_queue_fits_whole() -> None:
    """A client that has taken everything loses nothing to the size of a batch: the server
    bounds batches, the client queue bounds how far behind a client may fall."""
    hub = make_hub(client_queue_size=2)
    client = hub.connect(Filter(), None)
    entries = [make_entry(f"m{n}") for n in range(5)]

    hub.accept(entries)

    assert (entries, 0) == (await drain(client), hub.client_drops)


async def test_a_forgotten_mark_of_unknown_size_makes_the_slow_client_gap_unknown() -> None:
    hub = make_hub(client_queue_size=1)
    client = hub.connect(Filter(), None)
    entries = [LossMark(None, "source", {}), make_entry("a")]

    hub.accept(entries[:1], marked=True)
    hub.accept(entries[1:])

    assert [Gap(None, "slow_client"), entries[1]] == await drain(client)
