"""Tests for wslogging._history: the ring of accepted entries, ids, replay and gaps."""

from __future__ import annotations

import json
import logging
import time
import types
import weakref

import pytest
from _records import make_entry

from wslogging import _history
from wslogging._filters import Filter
from wslogging._history import Gap, History, LossMark, SinceError, parse_id
from wslogging._wire import LogEntry

FIRST = 1000


def filled(maxlen: int, count: int) -> tuple[History, list[LogEntry]]:
    """A history starting at id FIRST with ``count`` entries appended."""
    history = History(maxlen, first_id=FIRST)
    entries = [make_entry(f"m{n}") for n in range(count)]
    for e in entries:
        history.append(e)
    return history, entries


# -- ids and the ring -----------------------------------------------------------------------


def test_ids_consecutive_from_first_id() -> None:
    """Appending numbers entries consecutively from ``first_id``."""
    history = History(10, first_id=FIRST)
    entries = [make_entry() for _ in range(3)]

    returned = [history.append(e) for e in entries]

    assert ([1000, 1001, 1002], [1000, 1001, 1002]) == (returned, [e.id for e in entries])


@pytest.mark.parametrize("maxlen", [0, 3, 10])
def test_extend_is_append_of_each(maxlen: int) -> None:
    """``extend`` numbers and keeps entries exactly as appending them one by one does."""
    by_one, appended = filled(maxlen, 7)
    at_once = History(maxlen, first_id=FIRST)
    extended = [make_entry(f"m{n}") for n in range(7)]

    at_once.extend(extended)

    assert [e.id for e in appended] == [e.id for e in extended]
    assert (by_one.last_id, by_one.oldest_id, len(by_one)) == (
        at_once.last_id,
        at_once.oldest_id,
        len(at_once),
    )
    assert [e and e.id for e in by_one._ring] == [e and e.id for e in at_once._ring]


def test_empty_history() -> None:
    """An empty history holds nothing; ``last_id`` is just before ``first_id``."""
    history = History(10, first_id=FIRST)

    assert (0, 999, 1000, None) == (
        len(history),
        history.last_id,
        history.oldest_id,
        history.get(FIRST),
    )


def test_get_held_entries() -> None:
    """Every held entry can be got by its id."""
    history, entries = filled(10, 3)

    assert entries == [history.get(FIRST + n) for n in range(3)]


def test_get_unassigned_id() -> None:
    """Ids not yet assigned (or before the first) give None."""
    history, _ = filled(10, 3)

    assert [None, None] == [history.get(FIRST + 3), history.get(FIRST - 1)]


def test_ring_forgets_oldest() -> None:
    """A full ring forgets its oldest entries."""
    history, entries = filled(3, 5)

    assert (3, 1002, 1004) == (len(history), history.oldest_id, history.last_id)
    assert [None, None, *entries[2:]] == [history.get(FIRST + n) for n in range(5)]


def test_maxlen_zero_assigns_ids_holds_nothing() -> None:
    """With ``maxlen`` 0, ids are still assigned but nothing is held."""
    history, entries = filled(0, 2)

    assert ([1000, 1001], 0, 1001, 1002) == (
        [e.id for e in entries],
        len(history),
        history.last_id,
        history.oldest_id,
    )
    assert (None, ([], 1001), []) == (
        history.get(FIRST),
        history.page(FIRST, history.last_id, Filter(), 10),
        history.latest(Filter(), 10),
    )


def test_negative_maxlen_raises() -> None:
    """A negative size is a ValueError."""
    with pytest.raises(ValueError, match="0 or more"):
        History(-1)


def test_default_first_id_is_time_based() -> None:
    """By default ids start at the microseconds since the epoch."""
    before = time.time_ns() // 1000
    history = History(10)
    after = time.time_ns() // 1000

    assert before <= history.first_id <= after


def at_microsecond(monkeypatch: pytest.MonkeyPatch, microseconds: int) -> None:
    """Make histories created from now on see the clock at ``microseconds`` (and forget the
    runs made before this test)."""
    clock = types.SimpleNamespace(time_ns=lambda: microseconds * 1000)
    monkeypatch.setattr(_history, "time", clock)
    if not isinstance(_history._runs, _IsolatedRuns):
        monkeypatch.setattr(_history, "_runs", _IsolatedRuns())


class _IsolatedRuns(weakref.WeakSet[History]):
    """The runs of one test only."""


def test_default_first_id_from_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default first id is the clock in whole microseconds."""
    at_microsecond(monkeypatch, 1_764_091_722_123_456)

    assert 1_764_091_722_123_456 == History(10).first_id


def test_default_first_id_after_earlier_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """A history made later starts above every id an earlier one assigned."""
    at_microsecond(monkeypatch, 5_000_000)
    earlier = History(10)
    ids = [earlier.append(make_entry()) for _ in range(3)]

    at_microsecond(monkeypatch, 5_000_010)
    later = History(10)

    assert (5_000_002, 5_000_010) == (max(ids), later.first_id)


def test_later_run_in_process_starts_above_earlier_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run started less than one microsecond per record after an earlier one (or after the
    clock stepped back) still starts above every id the earlier run issued."""
    at_microsecond(monkeypatch, 5_000_000)
    earlier = History(10)
    ids = [earlier.append(make_entry()) for _ in range(5)]  # 5_000_000 .. 5_000_004
    at_microsecond(monkeypatch, 4_000_000)
    later = History(10)
    later.append(make_entry())

    assert (5_000_005, (later.oldest_id, None)) == (later.first_id, later.resume(max(ids)))
    assert (later.oldest_id, Gap(None, "restart")) == later.resume(min(ids))


# -- resume ---------------------------------------------------------------------------------


def test_resume_none_is_live() -> None:
    """No ``since``: continue with the next record, no gap."""
    history, _ = filled(3, 5)

    assert (1005, None) == history.resume(None)


def test_resume_zero_everything_held() -> None:
    """``since=0`` replays everything held, without a gap when nothing was forgotten."""
    history, _ = filled(10, 5)

    assert (FIRST, None) == history.resume(0)


def test_resume_zero_on_empty_history() -> None:
    """``since=0`` before any record continues from the first id, without a gap."""
    assert (FIRST, None) == History(10, first_id=FIRST).resume(0)


def test_resume_zero_after_forgetting() -> None:
    """``since=0`` after records of this run were forgotten: gap(history) counting them."""
    history, _ = filled(3, 5)

    assert (1002, Gap(2, "history")) == history.resume(0)


def test_resume_zero_with_maxlen_zero() -> None:
    """Without history, ``since=0`` reports every record so far as missed."""
    history, _ = filled(0, 4)

    assert (1004, Gap(4, "history")) == history.resume(0)


@pytest.mark.parametrize("since", [1002, 1003, 1004])
def test_resume_held_id(since: int) -> None:
    """An id still held: right after it, no gap."""
    history, _ = filled(3, 5)

    assert (since + 1, None) == history.resume(since)


def test_resume_oldest_forgotten_boundary() -> None:
    """The id just before the oldest held needs no gap: nothing after it was lost."""
    history, _ = filled(3, 5)

    assert (1002, None) == history.resume(1001)


@pytest.mark.parametrize(("since", "missed"), [(1000, 6), (1003, 3), (1005, 1)])
def test_resume_forgotten_id(since: int, missed: int) -> None:
    """An id already forgotten: gap(history) with the exact count, then the oldest held."""
    history, _ = filled(3, 10)

    assert (1007, Gap(missed, "history")) == history.resume(since)


@pytest.mark.parametrize("since", [1, 500, FIRST - 2])
def test_resume_id_before_first_id(since: int) -> None:
    """An id from before this run: gap(restart) with ``missed`` unknown, then the oldest."""
    history, _ = filled(3, 5)

    assert (1002, Gap(None, "restart")) == history.resume(since)


@pytest.mark.parametrize("since", [1005, 10**20])
def test_resume_id_after_last_id(since: int) -> None:
    """An id this run never issued yet: gap(restart), then the oldest held."""
    history, _ = filled(3, 5)

    assert (1002, Gap(None, "restart")) == history.resume(since)


# -- page and latest ------------------------------------------------------------------------


def test_page_everything() -> None:
    """All entries in range, continuing after the end of the range."""
    history, entries = filled(10, 5)

    assert (entries, 1004) == history.page(FIRST, history.last_id, Filter(), 100)


def test_page_with_filter() -> None:
    """Only matching entries; the continue-id is still the end of the scanned range."""
    history = History(10, first_id=FIRST)
    entries = [make_entry(levelno=n) for n in (20, 30, 20, 40, 20)]
    for e in entries:
        history.append(e)

    actual = history.page(FIRST, history.last_id, Filter(level=logging.WARNING), 100)

    assert ([entries[1], entries[3]], 1004) == actual


def test_page_limit_continues_after_last_returned() -> None:
    """With a limit, the continue-id is the last returned entry's id."""
    history, entries = filled(10, 5)

    assert (entries[:2], 1001) == history.page(FIRST, history.last_id, Filter(), 2)


def test_page_limit_with_filter() -> None:
    """The limit counts matching entries; skipped ones before the last returned are passed."""
    history = History(10, first_id=FIRST)
    entries = [make_entry(levelno=n) for n in (20, 30, 20, 40, 50)]
    for e in entries:
        history.append(e)

    actual = history.page(FIRST, history.last_id, Filter(level=30), 2)

    assert ([entries[1], entries[3]], 1003) == actual


def test_page_end_inside_history() -> None:
    """Only ids up to ``end`` are read."""
    history, entries = filled(10, 5)

    assert (entries[1:3], 1002) == history.page(1001, 1002, Filter(), 100)


def test_page_end_past_last_id() -> None:
    """An ``end`` past the newest id is cut to it."""
    history, entries = filled(10, 3)

    assert (entries, 1002) == history.page(FIRST, 5000, Filter(), 100)


def test_page_start_below_oldest_raised() -> None:
    """A ``start`` below the oldest held starts at the oldest."""
    history, entries = filled(3, 5)

    assert (entries[2:], 1004) == history.page(FIRST, history.last_id, Filter(), 100)


def test_page_past_end_empty() -> None:
    """Nothing new: no entries, continue after the newest id."""
    history, _ = filled(10, 3)

    assert ([], 1002) == history.page(1003, history.last_id, Filter(), 100)


def test_page_follows_resume() -> None:
    """Paging from where ``resume`` says gives exactly the records after ``since``."""
    history, entries = filled(10, 6)

    start, gap = history.resume(1002)

    assert (None, entries[3:]) == (gap, history.page(start, history.last_id, Filter(), 100)[0])


def test_latest_newest_oldest_first() -> None:
    """The newest ``limit`` entries, oldest first."""
    history, entries = filled(10, 5)

    assert entries[3:] == history.latest(Filter(), 2)


def test_latest_with_filter() -> None:
    """The newest matching entries, oldest first."""
    history = History(10, first_id=FIRST)
    entries = [make_entry(levelno=n) for n in (30, 20, 40, 20, 30, 20)]
    for e in entries:
        history.append(e)

    assert [entries[2], entries[4]] == history.latest(Filter(level=30), 2)


def test_latest_only_held() -> None:
    """``latest`` never reaches past the oldest held entry."""
    history, entries = filled(3, 5)

    assert entries[2:] == history.latest(Filter(), 100)


# -- parse_id -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0), ("42", 42), (" 1764091722123456 ", 1764091722123456)]
)
def test_parse_id_digits(text: str, expected: int) -> None:
    """Decimal ids are read as integers."""
    assert expected == parse_id(text)


@pytest.mark.parametrize("text", ["", "  ", "abc", "-1", "1.5", "0x10", "4 2", "1" * 31])
def test_parse_id_garbage_raises(text: str) -> None:
    """Anything but a short decimal number is a SinceError."""
    with pytest.raises(SinceError, match="not a record id"):
        parse_id(text)


def test_parse_id_odd_digits_raises() -> None:
    """Characters that ``str.isdigit`` accepts but ``int`` does not are a SinceError."""
    with pytest.raises(SinceError):
        parse_id("²")


def test_parse_id_error_message_cut() -> None:
    """The error message quotes at most 40 characters of what was sent."""
    with pytest.raises(SinceError) as info:
        parse_id("x" * 1000)

    assert f"not a record id: {'x' * 40!r}" == str(info.value)


# -- loss marks -----------------------------------------------------------------------------


def marked(maxlen: int, items: list[LogEntry | LossMark]) -> History:
    history = History(maxlen, first_id=100)
    history.extend_marked(items)
    return history


def test_a_loss_mark_takes_an_id_of_its_own_and_is_no_record() -> None:
    """Marks are numbered among the records; ``records`` counts only records."""
    mark = LossMark(7, "overflow", {"INFO": 7})
    history = marked(10, [make_entry("a"), mark, make_entry("b")])

    assert (101, 2, 1) == (mark.id, history.records, history.marks)
    assert {"type": "gap", "missed": 7, "reason": "overflow", "id": "101"} | {
        "levels": {"INFO": 7}
    } == json.loads(mark.data)


def test_a_page_keeps_loss_marks_under_any_filter() -> None:
    """Marks match every filter: records lost before matching concern every client."""
    mark = LossMark(3, "overflow", {})
    history = marked(10, [make_entry("a"), mark, make_entry("b", levelno=logging.ERROR)])
    only_errors = Filter(level=logging.ERROR)

    assert ([mark, "b"], [mark, "b"]) == (
        [e if e is mark else e.log for e in history.page(100, 102, only_errors, 10)[0]],
        [e if e is mark else e.log for e in history.latest(only_errors, 10)],
    )


def test_a_forgotten_range_counts_what_its_marks_announced() -> None:
    """Resuming past forgotten ids: the records forgotten, less the marks' own ids, plus what
    the marks announced (100 a, 101 mark of 5, 102 b, then 103..105 held)."""
    items: list[LogEntry | LossMark] = [make_entry("a"), LossMark(5, "overflow", {})]
    items += [make_entry(m) for m in "bcde"]
    history = marked(3, items)

    assert (103, Gap(1 + 5 + 1, "history")) == history.resume(99)
    assert (103, Gap(1, "history")) == history.resume(101)


def test_a_forgotten_mark_of_unknown_size_makes_the_gap_unknown() -> None:
    """A mark that announced an unknown number (a forwarder gone) leaves the count unknown."""
    items: list[LogEntry | LossMark] = [LossMark(None, "source", {})]
    items += [make_entry(m) for m in "abc"]
    history = marked(2, items)

    assert (102, Gap(None, "history")) == history.resume(99)
    assert (102, Gap(1, "history")) == history.resume(100)


def test_marks_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_MARKS, the oldest marks are forgotten: a range reaching back past them has
    an unknown count, later ones are still counted."""
    monkeypatch.setattr(_history, "MAX_MARKS", 2)
    history = History(1, first_id=100)
    for _ in range(3):
        history.extend_marked([LossMark(1, "overflow", {}), make_entry("r")])

    assert (None, 2, 3) == (history.missed(100, 105), history.missed(103, 105), history.marks)


# -- what a filtering client missed ---------------------------------------------------------


def mixed(maxlen: int) -> History:
    """Ids 100..119: every 4th an ERROR of "app.db" (pid 1), the others INFO of "app"
    (pid 2); a loss mark of 3 at id 120; then 121..128, INFO of "app"."""
    items: list[LogEntry | LossMark] = [
        make_entry(f"m{n}", levelno=logging.ERROR, logger="app.db", pid=1)
        if n % 4 == 0
        else make_entry(f"m{n}", pid=2)
        for n in range(20)
    ]
    items.append(LossMark(3, "overflow", {}))
    items += [make_entry(f"late{n}", pid=2) for n in range(8)]
    return marked(maxlen, items)


@pytest.mark.parametrize(
    ("flt", "missed"),
    [
        (Filter(), 20 + 3),
        (Filter(level=logging.ERROR), 5 + 3),
        (Filter(loggers=("app.db",)), 5 + 3),
        (Filter(loggers=("app",), level=logging.WARNING), 5 + 3),
        (Filter(pids=frozenset({2})), 15 + 3),
        (Filter(categories=frozenset({"elsewhere"})), 0 + 3),
    ],
)
def test_a_forgotten_range_counts_only_what_matches(flt: Filter, missed: int) -> None:
    """Records that left the ring are remembered by level and source: a resume across them
    counts those the filter matches, and what the marks among them announced."""
    history = mixed(8)  # holds 121..128, remembers 89..120

    assert (121, Gap(missed, "history")) == history.resume(99, flt)


def test_a_forgotten_range_of_no_match_is_no_gap() -> None:
    """A filter that none of the forgotten records match: no gap, the replay starts at the
    oldest held."""
    history = marked(4, [make_entry(f"m{n}") for n in range(10)])

    assert (106, None) == history.resume(99, Filter(level=logging.ERROR))


def test_what_a_filter_missed_is_unknown_when_it_reads_the_message() -> None:
    """``grep`` and ``fields`` read what is not remembered of a forgotten record."""
    history = mixed(8)

    assert Gap(None, "history") == history.resume(99, Filter(grep="m1"))[1]
    assert Gap(None, "history") == history.resume(99, Filter(fields=(("k", "v"),)))[1]


def test_what_a_filter_missed_is_unknown_past_the_shadows() -> None:
    """Only SHADOWED times the ring's size is remembered: further back, unknown for a filter
    (a client without one still gets the count)."""
    history = marked(2, [make_entry(f"m{n}") for n in range(20)])  # holds 118, 119

    assert Gap(None, "history") == history.resume(99, Filter(level=logging.ERROR))[1]
    assert Gap(18, "history") == history.resume(99, Filter())[1]
    assert (118, None) == history.resume(109, Filter(level=logging.ERROR))  # 110..117 kept


def test_sources_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_SOURCES distinct sources a record is remembered by its level only: a level
    filter still counts, a logger filter cannot."""
    monkeypatch.setattr(_history, "MAX_SOURCES", 2)
    history = marked(2, [make_entry(f"m{n}", logger=f"app.{n}") for n in range(6)])

    assert Gap(4, "history") == history.resume(99, Filter(level=logging.INFO))[1]
    assert Gap(None, "history") == history.resume(99, Filter(loggers=("app.1",)))[1]
