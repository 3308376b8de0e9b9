"""Pure: the bounded ring of accepted records, their ids, and replay after an id with gaps.

Ids are consecutive integers. Each run of the server starts at the microseconds since the Unix
epoch at start, and above every id an earlier run in the same process issued, so an id from an
earlier run is smaller than every id of this run (the ``restart`` case). Across processes this
holds while the earlier run issued fewer ids than microseconds passed between the two starts
(one record per microsecond, sustained, is far beyond what a process logs) and the wall clock
did not step back. Every id has 16 digits until the year 2286, so as strings they also sort
in order.
"""

from __future__ import annotations

import bisect
import time
import weakref
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._filters import Filter
from ._wire import LogEntry, dumps, gap_message

# Loss marks whose ids and counts are remembered after they leave the ring, so that a gap for
# a forgotten range can still count the losses it spans (see History.missed).
MAX_MARKS = 10000
# Records forgotten from the ring are remembered by level, logger, category and pid (3 bytes
# each), SHADOWED times as many as the ring holds, so that a filtering client's
# ``gap(history)`` counts only the records it would have been sent (see History.missed).
SHADOWED = 4
# Distinct (logger, category, pid) remembered so; a record of one more is remembered by its
# level only.
MAX_SOURCES = 4096
# Shadow keys that stand for no source: a loss mark, and a source past MAX_SOURCES.
_MARK = 0xFFFF
_UNKNOWN = 0xFFFE


@dataclass(frozen=True)
class Gap:
    """Records a client should have had and will not get.

    ``missed`` counts the records lost that the client would have been sent (those matching
    its filter, and what loss marks among them announced) or is ``None`` when unknown;
    ``reason`` is ``"history"``, ``"slow_client"`` or ``"restart"``.
    """

    missed: int | None
    reason: str


class LossMark:
    """A loss that stands in the stream (``overflow``, ``source``): a gap with an id of its
    own, numbered and kept in history like a record.

    So it reaches every live client at its place among the records, a client that resumes
    across it from history is told of it, and one that has been told (whose last id is the
    mark's) is not told again. It matches every filter: records lost before they could be
    matched are every client's concern. Duck-types the parts of :class:`LogEntry` that the
    ring, the fan-out and the writers read (``id``, ``data``, ``levelno``, ``wire_id``).
    """

    __slots__ = ("_data", "count", "id", "levels", "reason", "stream_id")
    # Above every level: a batch's lowest level is never raised by a mark.
    levelno = 1 << 62

    def __init__(self, count: int | None, reason: str, levels: dict[str, int]) -> None:
        self.count = count
        self.reason = reason
        self.levels = levels
        self.id = 0
        # Its id on the wire when read from a Redis stream (as for a record).
        self.stream_id: str | None = None
        self._data: bytes | None = None

    @property
    def wire_id(self) -> str:
        return str(self.id) if self.stream_id is None else self.stream_id

    def to_dict(self) -> dict[str, Any]:
        """The ``gap`` frame: SPEC §5's fields, its ``id``, and ``levels`` when known."""
        message = gap_message(self.count, self.reason)
        message["id"] = self.wire_id
        if self.levels:
            message["levels"] = self.levels
        return message

    @property
    def data(self) -> bytes:
        """The JSON of the ``gap`` frame, made once (after ``id`` is set)."""
        if self._data is None:
            self._data = dumps(self.to_dict())
        return self._data


Held = LogEntry | LossMark


@dataclass(frozen=True)
class Resume:
    """A resume point worked out elsewhere (from ids that are not positions, as a Redis
    stream's): the first position a client gets, and the gap it is told first."""

    start: int
    gap: Gap | None


class SinceError(ValueError):
    """A ``since`` / ``Last-Event-ID`` value that is not an id at all."""


def parse_id(text: str) -> int:
    """An id as clients send it back (a decimal string); raises :class:`SinceError`."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 30:
        raise SinceError(f"not a record id: {text[:40]!r}")
    return int(text)


_runs: weakref.WeakSet[History] = weakref.WeakSet()


class History:
    """A ring of the last ``maxlen`` accepted entries, indexed by id in O(1).

    Bounded: appending to a full ring forgets the oldest entry, whose level and source
    (logger, category, pid) are kept a while longer, in a ring of :data:`SHADOWED` times
    ``maxlen`` shadows of 3 bytes each. ``maxlen`` may be 0 (no replay; ids are still
    assigned).
    """

    _next_id: int

    def __init__(self, maxlen: int, first_id: int | None = None) -> None:
        if maxlen < 0:
            raise ValueError("history must be 0 or more")
        self.maxlen = maxlen
        if first_id is None:
            first_id = max([time.time_ns() // 1000] + [h._next_id for h in list(_runs)])
        _runs.add(self)
        self.first_id = first_id
        self._next_id = self.first_id
        self._ring: list[Held | None] = [None] * maxlen
        # Ids taken by loss marks, and what each announced, the latest MAX_MARKS of them; the
        # totals over all of them. Record counts subtract the marks' ids.
        self._mark_ids: deque[int] = deque()
        self._mark_counts: deque[int | None] = deque()
        self._marks_forgotten_below = first_id
        self.marks = 0
        self._shadows = SHADOWED * maxlen
        self._shadow_levels = bytearray(self._shadows)
        self._shadow_sources = array("H", bytes(2 * self._shadows))
        self._sources: dict[tuple[str, str, int | None], int] = {}
        self._source_list: list[tuple[str, str, int | None]] = []

    @property
    def records(self) -> int:
        """Records accepted (ids issued, less those of loss marks)."""
        return self._next_id - self.first_id - self.marks

    def __len__(self) -> int:
        return min(self._next_id - self.first_id, self.maxlen)

    @property
    def last_id(self) -> int:
        """The newest id assigned; ``first_id - 1`` before the first record."""
        return self._next_id - 1

    @property
    def next_id(self) -> int:
        """The id the next appended entry gets."""
        return self._next_id

    @property
    def oldest_id(self) -> int:
        """The oldest id still held (``last_id + 1`` when empty)."""
        return self._next_id - len(self)

    def append(self, entry: LogEntry) -> int:
        """Give ``entry`` the next id and keep it, forgetting the oldest if full."""
        entry.id = self._next_id
        self._next_id += 1
        if self.maxlen:
            self._ring[entry.id % self.maxlen] = entry
        return entry.id

    def extend(self, entries: Iterable[Held]) -> None:
        """:meth:`append` each of ``entries``, in order."""
        next_id = self._next_id
        maxlen = self.maxlen
        ring = self._ring
        # The entries it overwrites leave their shadows (see _shadow), inline: this runs for
        # every record the server takes.
        shadows = self._shadows
        full_from = self.first_id + maxlen
        levels, keys, sources = self._shadow_levels, self._shadow_sources, self._sources
        for entry in entries:
            entry.id = next_id
            if maxlen:
                slot = next_id % maxlen
                if next_id >= full_from:
                    old: Any = ring[slot]
                    old_slot = old.id % shadows
                    if type(old) is LossMark:
                        keys[old_slot] = _MARK
                    else:
                        levelno = old.levelno
                        levels[old_slot] = levelno if levelno < 255 else 255
                        key = sources.get((old.logger, old.category, old.pid))
                        keys[old_slot] = self._new_source(old) if key is None else key
                ring[slot] = entry
            next_id += 1
        self._next_id = next_id

    def _new_source(self, entry: LogEntry) -> int:
        """The shadow key of a source seen for the first time (:data:`_UNKNOWN` once
        :data:`MAX_SOURCES` are known)."""
        if len(self._source_list) >= MAX_SOURCES:
            return _UNKNOWN
        source = (entry.logger, entry.category, entry.pid)
        key = self._sources[source] = len(self._source_list)
        self._source_list.append(source)
        return key

    def extend_marked(self, entries: Sequence[Held]) -> None:
        """:meth:`extend`, for a batch with loss marks among its records: their ids and counts
        are remembered (see :meth:`missed`)."""
        self.extend(entries)
        ids, counts = self._mark_ids, self._mark_counts
        for entry in entries:
            if type(entry) is LossMark:
                ids.append(entry.id)
                counts.append(entry.count)
                self.marks += 1
        while len(ids) > MAX_MARKS:
            self._marks_forgotten_below = ids.popleft() + 1
            counts.popleft()

    def missed(self, start: int, end: int, flt: Filter | None = None) -> int | None:
        """How many records a client lost that resumes at ``start`` when the oldest it can be
        given is ``end`` (at most the oldest held): the records with ids in ``[start, end)``
        that match ``flt``, plus what the loss marks among them announced; ``None`` when that
        cannot be known (a mark there announced an unknown number, the range reaches back
        past the marks remembered, or, for a filter, past the shadows kept, or the filter
        reads the message or fields, which are not kept)."""
        if start >= end:
            return 0
        ids = self._mark_ids
        if start < self._marks_forgotten_below and self.marks > len(ids):
            return None
        lo, hi = bisect.bisect_left(ids, start), bisect.bisect_left(ids, end)
        if flt is None or not flt.filtering:
            total = end - start - (hi - lo)
        else:
            matching = self._matching(start, end, flt)
            if matching is None:
                return None
            total = matching
        for index in range(lo, hi):
            count = self._mark_counts[index]
            if count is None:
                return None
            total += count
        return total

    def _matching(self, start: int, end: int, flt: Filter) -> int | None:
        """The forgotten records with ids in ``[start, end)`` that match ``flt``, counted
        from their shadows; ``None`` when that cannot be known (see :meth:`missed`)."""
        shadows = self._shadows
        if flt.reads_content or flt.level > 255 or start < self.oldest_id - shadows:
            return None
        start = max(start, self.first_id)
        levels, keys, sources = self._shadow_levels, self._shadow_sources, self._source_list
        by_source = flt.loggers or flt.categories or flt.pids
        level = flt.level
        matches: dict[int, bool] = {}
        total = 0
        for entry_id in range(start, end):
            slot = entry_id % shadows
            key = keys[slot]
            if key == _MARK or levels[slot] < level:
                continue  # a mark is counted by what it announced
            if not by_source:
                total += 1
                continue
            if key == _UNKNOWN:
                return None
            match = matches.get(key)
            if match is None:  # by source alone: the level has passed already
                match = matches[key] = flt.matches_source(level, *sources[key])
            total += match
        return total

    def get(self, entry_id: int) -> Held | None:
        """The entry with this id, or ``None`` if it was never assigned or is forgotten."""
        if self.oldest_id <= entry_id <= self.last_id:
            return self._ring[entry_id % self.maxlen]
        return None

    def resume(
        self, since: int | Resume | None, flt: Filter | None = None
    ) -> tuple[int, Gap | None]:
        """Where a client that last saw ``since`` continues, and the gap it must be told first.

        - ``None``: live only, from the next record on.
        - a :class:`Resume`: what it says.
        - ``0``: everything this run still holds (a gap only if some of it was forgotten).
        - an id of this run still held: right after it, no gap.
        - an id of this run already forgotten: ``gap(history)`` counting what was forgotten
          that matches ``flt`` (none: no gap), then the oldest held.
        - an id this run never issued (an earlier run, another server): ``gap(restart)`` with
          ``missed`` unknown, then the oldest held.
        """
        if since is None:
            return self._next_id, None
        if isinstance(since, Resume):
            return since.start, since.gap
        if since == 0:
            since = self.first_id - 1
        if self.first_id - 1 <= since <= self.last_id:
            start = since + 1
            missed = self.missed(start, self.oldest_id, flt) if start < self.oldest_id else 0
            if missed == 0:
                return max(start, self.oldest_id), None
            return self.oldest_id, Gap(missed, "history")
        return self.oldest_id, Gap(None, "restart")

    def page(self, start: int, end: int, flt: Filter, limit: int) -> tuple[list[Held], int]:
        """Up to ``limit`` entries with ids in ``[start, end]`` that match ``flt`` (loss marks
        match every filter).

        Returns them and the id a reader should continue after: the last one returned, or
        ``end`` when the range was scanned to its end. ``start`` below the oldest held is
        raised to it (the caller has already reported the gap).
        """
        out: list[Held] = []
        entry_id = max(start, self.oldest_id)
        end = min(end, self.last_id)
        while entry_id <= end:
            entry = self._ring[entry_id % self.maxlen]
            assert entry is not None
            if type(entry) is LossMark or flt.matches(entry):  # type: ignore[arg-type]
                out.append(entry)
                if len(out) >= limit:
                    return out, entry_id
            entry_id += 1
        return out, end

    def latest(self, flt: Filter, limit: int) -> list[Held]:
        """The newest ``limit`` held entries that match ``flt`` (loss marks included), oldest
        first."""
        out: list[Held] = []
        entry_id = self.last_id
        while entry_id >= self.oldest_id and len(out) < limit:
            entry = self._ring[entry_id % self.maxlen]
            assert entry is not None
            if type(entry) is LossMark or flt.matches(entry):  # type: ignore[arg-type]
                out.append(entry)
            entry_id -= 1
        out.reverse()
        return out
