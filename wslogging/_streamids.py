"""Pure: records in a Redis stream, and stream ids as record ids over a serve process's History.

A ``wslogging serve`` process keeps what it reads from the stream in an ordinary
:class:`History` ring, whose positions are consecutive integers of its own; each entry also
carries its stream id (:attr:`LogEntry.stream_id`), which is what clients see as ``id`` and pass
back. :class:`StreamPositions` maps such an id back to a position, so that a client resumes
from any serve process, before or after a restart, by the stream's ids alone.

Nothing here imports asyncio, aiohttp or redis.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._history import Gap, Held, History, LossMark, Resume, SinceError
from ._wire import dumps, pack_entry, unpack_entry

# The field of a stream entry that holds the packed record (see pack_entry).
FIELD = b"r"
# A stream id's two parts are unsigned 64-bit numbers.
_MAX_PART = 2**64
# Longest id text looked at: two 20-digit numbers and a dash.
_MAX_TEXT = 41

StreamKey = tuple[int, int]


def parse_stream_id(text: str) -> StreamKey:
    """``"<ms>-<seq>"`` as a pair of integers, which order as the stream does; raises
    :class:`SinceError` for anything else."""
    text = text.strip()
    ms, dash, seq = text.partition("-")
    if not (dash and len(text) <= _MAX_TEXT and _digits(ms) and _digits(seq)):
        raise SinceError(f"not a record id: {text[:40]!r}")
    key = (int(ms), int(seq))
    if key[0] >= _MAX_PART or key[1] >= _MAX_PART:
        raise SinceError(f"not a record id: {text[:40]!r}")
    return key


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def format_stream_id(key: StreamKey) -> str:
    """The text Redis writes for ``key``."""
    return f"{key[0]}-{key[1]}"


def stream_value(entry: Held) -> bytes:
    """What the field :data:`FIELD` of the stream entry that carries ``entry`` holds: the
    packed record, or, for a loss a producer announces, ``{"gap": reason, "missed": N}``."""
    if isinstance(entry, LossMark):
        return dumps({"gap": entry.reason, "missed": entry.count})
    return dumps(pack_entry(entry))


def stream_fields(entry: Held) -> dict[bytes, bytes]:
    """The fields of the stream entry that carries ``entry`` (for ``XADD``)."""
    return {FIELD: stream_value(entry)}


def entry_from_stream(stream_id: str, fields: Mapping[Any, Any]) -> Held:
    """The record (or announced loss) in a stream entry read back, with ``stream_id`` as its
    id on the wire.

    Anyone who can write to the stream can write anything there: raises ``ValueError`` for an
    entry that :func:`stream_fields` did not make (the caller skips and counts it).
    """
    raw = fields.get(FIELD)
    if raw is None:
        raw = fields.get(FIELD.decode())
    if not isinstance(raw, bytes | str):
        raise ValueError(f"a stream entry holds its record in the field {FIELD.decode()!r}")
    try:
        packed = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("the record is not JSON") from None
    entry: Held
    if isinstance(packed, dict):
        missed = packed.get("missed")
        if packed.get("gap") != "source" or not (
            missed is None or (type(missed) is int and 0 <= missed < 2**63)
        ):
            raise ValueError("a gap entry is {'gap': 'source', 'missed': N or null}")
        entry = LossMark(missed, "source", {})
    else:
        entry = unpack_entry(packed)
    entry.stream_id = stream_id
    return entry


class StreamPositions:
    """Where a stream id falls among the entries ``history`` holds (each with its
    ``stream_id``), for ``since``, ``Last-Event-ID`` and acks.

    Two stream ids bound what is known: :attr:`last_seen`, the newest id read from the
    stream (the reader's cursor, malformed entries included), and :attr:`floor`: records with
    ids above it were all read (and those still held are in ``history``), while records at or
    below it may have been lost to the history bound or to the stream's own trimming.
    """

    def __init__(self, history: History) -> None:
        self.history = history
        self.floor: StreamKey = (0, 0)
        self.last_seen: StreamKey = (0, 0)

    def _key(self, position: int) -> StreamKey:
        entry = self.history.get(position)
        assert entry is not None
        assert entry.stream_id is not None
        return parse_stream_id(entry.stream_id)

    def seen(self, key: StreamKey) -> None:
        """The reader has read up to ``key`` (a record, or an entry it skipped)."""
        self.last_seen = max(self.last_seen, key)

    def accepting(self, entries: Sequence[Held]) -> None:
        """Note the stream ids of ``entries``, about to be appended to ``history`` in order:
        :attr:`floor` rises to the newest one the ring forgets to make room."""
        history = self.history
        excess = len(history) + len(entries) - history.maxlen
        if excess > 0:
            held = len(history)
            if excess <= held:
                self.floor = max(self.floor, self._key(history.oldest_id + excess - 1))
            else:
                stream_id = entries[excess - held - 1].stream_id
                assert stream_id is not None
                self.floor = max(self.floor, parse_stream_id(stream_id))
        if entries:
            stream_id = entries[-1].stream_id
            assert stream_id is not None
            self.seen(parse_stream_id(stream_id))

    def after(self, key: StreamKey) -> int:
        """The position of the newest held entry whose id is at most ``key``
        (``oldest_id - 1`` when there is none)."""
        history = self.history
        low, high = history.oldest_id, history.last_id
        while low <= high:  # the held ids increase with the positions
            middle = (low + high) // 2
            if self._key(middle) <= key:
                low = middle + 1
            else:
                high = middle - 1
        return high

    def since(self, text: str) -> int | Resume:
        """Where a client whose last record had the id ``text`` resumes, for
        :meth:`History.resume`; raises :class:`SinceError` for text that is no id at all.

        - ``0``: everything held, with no gap.
        - a stream id at or after :attr:`last_seen`: live, from the next record read. (An id
          newer than that, which another serve process further ahead may have sent, is
          taken as read.)
        - a stream id above :attr:`floor`: right after it, from what is held; no gap.
        - an older one: ``gap(history)``, its count unknown, then the oldest held.
        - a plain number (an id of a server that served records itself): ``gap(restart)``.
        """
        history = self.history
        text = text.strip()
        if text == "0":
            return Resume(history.oldest_id, None)
        if _digits(text) and len(text) <= _MAX_TEXT:
            return Resume(history.oldest_id, Gap(None, "restart"))
        key = parse_stream_id(text)
        if key >= self.last_seen:
            return history.last_id
        if key < self.floor:
            return Resume(history.oldest_id, Gap(None, "history"))
        return self.after(key)

    def ack(self, text: str) -> int:
        """The position an acknowledged stream id stands for (never past the newest)."""
        return self.after(parse_stream_id(text))

    def wire_id(self, position: int) -> str:
        """The id clients see for ``position``: its entry's stream id, or for the newest
        position (and an empty history) the reader's cursor, which :meth:`since` reads as
        "live from here"."""
        if position >= self.history.last_id:
            return format_stream_id(self.last_seen)
        entry = self.history.get(position)
        if entry is None or entry.stream_id is None:
            return format_stream_id(self.floor)
        return entry.stream_id
