"""Records in a Redis stream, and stream ids mapped onto a serve process's history."""

from __future__ import annotations

import json

import pytest

from wslogging._filters import Filter
from wslogging._history import Gap, History, LossMark, Resume, SinceError
from wslogging._streamids import (
    FIELD,
    StreamPositions,
    entry_from_stream,
    format_stream_id,
    parse_stream_id,
    stream_fields,
)
from wslogging._wire import LogEntry, dumps, encode_entry, pack_entry


def make_entry(n: int, stream_id: str | None = None) -> LogEntry:
    entry = LogEntry(f"record {n}", 20, "INFO", "app", "app", 1795600000.0 + n, {"n": n})
    entry.stream_id = stream_id
    return entry


def filled(maxlen: int, ids: list[str]) -> StreamPositions:
    """Positions over a history of ``maxlen`` that has read entries with ``ids``, in order."""
    positions = StreamPositions(History(maxlen, first_id=1))
    entries = [make_entry(n, stream_id) for n, stream_id in enumerate(ids)]
    positions.accepting(entries)
    positions.history.extend(entries)
    return positions


# -- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0-0", (0, 0)), ("1795600000000-3", (1795600000000, 3)), (" 5-1 ", (5, 1))],
)
def test_parse_stream_id(text: str, expected: tuple[int, int]) -> None:
    """An id is two decimal numbers joined by a dash."""
    assert expected == parse_stream_id(text)


@pytest.mark.parametrize(
    "text", ["", "5", "5-", "-5", "5-x", "a-1", "1-2-3", "²-1", f"{2**64}-0", "9" * 30 + "-1"]
)
def test_parse_stream_id_garbage_raises(text: str) -> None:
    """Anything else is a SinceError (a 400 for the client)."""
    with pytest.raises(SinceError, match="not a record id"):
        parse_stream_id(text)


def test_format_stream_id_round_trip() -> None:
    """format_stream_id writes what parse_stream_id reads."""
    assert "17-4" == format_stream_id(parse_stream_id("17-4"))


# -- stream entries -------------------------------------------------------------------------


def test_entry_round_trip() -> None:
    """A record written with stream_fields reads back whole, with the stream id as its id."""
    entry = make_entry(7)
    back = entry_from_stream("9-1", stream_fields(entry))
    assert pack_entry(entry) == pack_entry(back)
    assert "9-1" == back.stream_id
    assert "9-1" == back.to_dict()["id"]


def test_entry_fields_as_text() -> None:
    """Fields read back as text (a client that decodes replies) are taken as well."""
    fields = {FIELD.decode(): dumps(pack_entry(make_entry(1))).decode()}
    assert "record 1" == entry_from_stream("1-0", fields).log


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {b"other": b"x"},
        {FIELD: b"not json"},
        {FIELD: b"[1, 2]"},
        {FIELD: b"[" * 100000},
        {FIELD: json.dumps(["log", 20, "INFO", "app", "app", 1.0, [], None, 1]).encode()},
    ],
)
def test_malformed_entry_raises(fields: dict[bytes, bytes]) -> None:
    """Anything stream_fields did not make is a ValueError, for the reader to count."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        entry_from_stream("1-0", fields)


def test_stream_id_on_the_wire() -> None:
    """Encoded (and as an SSE id), a record read from a stream carries its stream id."""
    entry = make_entry(1, "1795600000000-0")
    entry.id = 42
    assert "1795600000000-0" == json.loads(encode_entry(entry))["id"]
    assert "1795600000000-0" == entry.wire_id
    assert "1795600000000-0" == entry.to_dict()["id"]


def test_own_id_on_the_wire() -> None:
    """A record of a server that serves its own records keeps its number as its id."""
    entry = make_entry(1)
    entry.id = 42
    assert ("42", "42") == (entry.wire_id, json.loads(encode_entry(entry))["id"])


# -- positions ------------------------------------------------------------------------------

IDS = ["10-0", "10-1", "12-0", "15-0", "20-0"]


def test_since_held_id() -> None:
    """An id still held resumes right after its position."""
    positions = filled(10, IDS)
    assert 3 == positions.since("12-0")  # positions start at 1: 12-0 is the third


def test_since_between_ids() -> None:
    """An id between two held ids (a skipped entry, another stream's id) resumes after the
    older one."""
    positions = filled(10, IDS)
    assert 3 == positions.since("13-5")


def test_since_newest_or_newer_is_live() -> None:
    """The newest id read, or a newer one, resumes live."""
    positions = filled(10, IDS)
    assert positions.history.last_id == positions.since("20-0")
    assert positions.history.last_id == positions.since("99-0")


def test_since_zero_is_everything_held() -> None:
    """``0`` replays everything held, without a gap."""
    positions = filled(3, IDS)
    assert Resume(positions.history.oldest_id, None) == positions.since("0")


def test_since_older_than_everything_read_no_gap() -> None:
    """An id older than the oldest held, when nothing before it was read, is no gap."""
    positions = filled(10, IDS)
    start, gap = positions.history.resume(positions.since("1-0"))
    assert (1, None) == (start, gap)


def test_since_forgotten_is_history_gap() -> None:
    """An id the history has forgotten gets gap(history), its count unknown."""
    positions = filled(3, IDS)  # 10-0 and 10-1 were forgotten
    assert (10, 1) == positions.floor
    assert Resume(3, Gap(None, "history")) == positions.since("10-0")
    assert 2 == positions.since("10-1")  # the newest forgotten: nothing after it was lost


def test_since_plain_number_is_restart() -> None:
    """A plain number (a self-serving server's id) gets gap(restart)."""
    positions = filled(10, IDS)
    assert Resume(1, Gap(None, "restart")) == positions.since("1795600000000123")


def test_since_garbage_raises() -> None:
    """Text that is no id at all is a SinceError."""
    with pytest.raises(SinceError):
        filled(10, IDS).since("yesterday")


def test_floor_from_a_batch_larger_than_history() -> None:
    """A batch larger than the history moves the floor into the batch itself."""
    positions = filled(2, IDS)
    assert (12, 0) == positions.floor
    assert ["15-0", "20-0"] == [e.stream_id for e in positions.history.latest(Filter(), 10)]


def test_ack_and_wire_id() -> None:
    """Acks map to positions; positions map back to ids, the newest to the reader's cursor."""
    positions = filled(10, IDS)
    positions.seen((25, 0))  # a skipped entry after the last record
    assert 4 == positions.ack("15-0")
    assert "15-0" == positions.wire_id(4)
    assert "25-0" == positions.wire_id(positions.history.last_id)
    assert positions.history.last_id == positions.since("25-0")


def test_empty_history_wire_id() -> None:
    """Before any record, the newest id is the cursor, which resumes live."""
    positions = StreamPositions(History(10, first_id=1))
    assert "0-0" == positions.wire_id(positions.history.last_id)
    assert positions.history.last_id == positions.since("0-0")


def test_no_history() -> None:
    """With a history of 0 every entry is forgotten at once; the cursor still moves."""
    positions = filled(0, IDS)
    assert ((20, 0), (20, 0)) == (positions.floor, positions.last_seen)


def test_a_gap_entry_reads_back_as_a_loss_mark() -> None:
    """A producer's announced loss round-trips through the stream as a gap(source)."""
    mark = entry_from_stream("5-0", stream_fields(LossMark(3, "source", {})))

    assert isinstance(mark, LossMark)
    assert (3, "source", "5-0") == (mark.count, mark.reason, mark.wire_id)


@pytest.mark.parametrize(
    "value",
    [b'{"gap": "overflow", "missed": 1}', b'{"gap": "source", "missed": -1}', b'{"x": 1}'],
)
def test_a_malformed_gap_entry_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="gap entry"):
        entry_from_stream("5-0", {FIELD: value})
