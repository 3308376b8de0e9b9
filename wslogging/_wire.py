"""Pure wire format: a LogRecord becomes a LogEntry, a LogEntry becomes JSON bytes and SSE frames.

Nothing here imports asyncio or aiohttp. The app thread calls :func:`render_record`; the
server thread calls :func:`encode_entry`, :func:`sse_event` and friends.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

_orjson_dumps: Callable[[Any], bytes] | None
try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # the `fast` extra is not installed: the stdlib's json does the same, slower
    _orjson_dumps = None

# What LogRecord.__init__ sets, in this Python: every record starts with these, in this order.
_INIT_ATTRS = frozenset(logging.makeLogRecord({}).__dict__)
_N_INIT = len(_INIT_ATTRS)
# Attributes every LogRecord has; anything else on a record is an "extra" and goes to `fields`.
_RECORD_ATTRS = _INIT_ATTRS | {
    "message",
    "asctime",
    "taskName",
    "category",
}
# How deep nested extras are copied before the rest is repr()'d: bounds the work done in emit.
_MAX_DEPTH = 6
# How many items of one container are copied; the rest is summarised.
_MAX_ITEMS = 200
# How many container items one record copies in all, across its fields.
_MAX_TOTAL = 1000
# How much of a repr() is kept.
_MAX_REPR = 2000
# Record times from 1970 to 9999; anything else is replaced by the time it is rendered.
_MAX_TIME = 253402300799.0
# Larger ints are summarised: Python refuses to print ints of more than 4300 digits.
_MAX_INT_BITS = 14000

_EXC_FORMATTER = logging.Formatter()
# Keys of a structlog event dict that are not fields: the message, what becomes ``exc``, and
# TimeStamper's time (the record has its own).
_EVENT_KEYS = frozenset({"event", "exc_info", "stack_info", "timestamp"})
# Extras that repeat the message: uvicorn's copy of it with colour codes.
_REPEATED_EXTRAS = frozenset({"color_message"})
# A repr() that only names the class and the object's address: the address goes (it tells a
# reader nothing, and would make every record's value differ).
_DEFAULT_REPR = re.compile(r"<(\S+) object at 0x[0-9a-fA-F]+>")


class LogEntry:
    """One record, rendered on the app thread and frozen from then on.

    ``id`` is 0 until the server accepts the entry. ``stream_id`` is ``None`` but for a
    record read from a Redis stream, whose id on the wire it is (``id`` is then only its
    position in the serve process's history). Its bytes on the wire are made on the
    server thread the first time a client (or a page of history) needs them, and kept: each
    record is encoded once however many clients get it; a record nobody reads is never
    encoded.
    """

    __slots__ = (
        "_data",
        "category",
        "created",
        "exc",
        "fields",
        "id",
        "level",
        "levelno",
        "log",
        "logger",
        "pid",
        "stream_id",
    )

    def __init__(
        self,
        log: str,
        levelno: int,
        level: str,
        logger: str,
        category: str,
        created: float,
        fields: dict[str, Any],
        exc: str | None = None,
        pid: int | None = None,
    ) -> None:
        # Positional parameters too: render_record() calls this on every logging call, and a
        # call by position is several times cheaper than one by keyword.
        self.log = log
        self.levelno = levelno
        self.level = level
        self.logger = logger
        self.category = category
        self.created = created
        self.fields = fields
        self.exc = exc
        self.pid = os.getpid() if pid is None else pid
        self.id = 0
        self.stream_id: str | None = None
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        """The JSON bytes of this record (:func:`encode_entry`), made once (server thread,
        after ``id`` is set)."""
        data = self._data
        if data is None:
            data = self._data = encode_entry(self)
        return data

    @property
    def wire_id(self) -> str:
        """The id clients see: ``stream_id`` if set, else ``id`` as a string."""
        return str(self.id) if self.stream_id is None else self.stream_id

    def to_dict(self) -> dict[str, Any]:
        """The SPEC §4 object (``id`` as a string: :attr:`wire_id`)."""
        return {
            "type": "log",
            "id": self.wire_id,
            "log": self.log,
            "level": self.level,
            "levelno": self.levelno,
            "logger": self.logger,
            "category": self.category,
            "pid": self.pid,
            "time": format_time(self.created),
            "fields": self.fields,
            "exc": self.exc,
        }


def format_time(created: float) -> str:
    """ISO 8601 in UTC with microseconds, as in ``2026-11-25T17:28:42.123456+00:00``.

    The same text as ``datetime.fromtimestamp(created, UTC).isoformat()`` (microseconds
    rounded half to even), with the date and time of the whole second kept from the last
    call: records come in bursts within one second.
    """
    global _second_text
    if not 0 <= created < _MAX_TIME:
        return _isoformat(created)
    whole = int(created)
    micros = round((created - whole) * 1e6)  # created - whole is exact: no double rounding
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    second, text = _second_text
    if second != whole:
        text = _isoformat(whole)[:19]
        _second_text = (whole, text)  # one tuple, replaced whole: safe from any thread
    return f"{text}.{micros:06d}+00:00"


# The whole second format_time() last formatted, and its text.
_second_text: tuple[int, str] = (-1, "")


def _isoformat(created: float) -> str:
    return datetime.datetime.fromtimestamp(created, tz=datetime.UTC).isoformat(
        timespec="microseconds"
    )


class _Budget:
    """How many more container items one record may copy: bounds the work in ``emit`` even
    for extras that share or repeat references."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = _MAX_TOTAL


def json_safe(value: Any, depth: int = 0, budget: _Budget | None = None) -> Any:
    """Copy ``value`` into plain JSON types; anything else becomes its ``repr()``.

    Bounded: containers deeper than ``_MAX_DEPTH`` are summarised, longer than ``_MAX_ITEMS``
    cut, and at most ``_MAX_TOTAL`` items are copied per ``budget`` (all marked); a ``repr()``
    is cut at ``_MAX_REPR`` characters, and one that raises is replaced by a placeholder.
    Never raises.
    """
    cls = type(value)
    if cls is str or cls is bool or value is None:  # the common cases first, cheaply
        return value
    if cls is int and -(2**63) <= value < 2**63:
        return value
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        # json (and repr) refuse ints past 4300 digits; say what it was instead.
        return f"<int of {value.bit_length()} bits>"
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if budget is None:
        budget = _Budget()
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for n, (k, v) in enumerate(value.items()):
                if n == _MAX_ITEMS or budget.left <= 0:
                    out["..."] = f"{len(value) - n} more items"
                    break
                budget.left -= 1
                out[k if isinstance(k, str) else _safe_repr(k)] = json_safe(v, depth + 1, budget)
            return out
        if isinstance(value, list | tuple | set | frozenset):
            safe: list[Any] = []
            for n, v in enumerate(value):
                if n == _MAX_ITEMS or budget.left <= 0:
                    safe.append(f"... {len(value) - n} more items")
                    break
                budget.left -= 1
                safe.append(json_safe(v, depth + 1, budget))
            return safe
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        # Past the depth limit: a summary, not a repr() that would walk the whole subtree.
        return f"<{type(value).__name__} of {len(value)} items>"
    return _safe_repr(value)


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not cost the record
        return f"<unrepresentable {type(value).__name__}>"
    if len(text) > _MAX_REPR:
        return text[:_MAX_REPR] + "..."
    default = _DEFAULT_REPR.fullmatch(text)
    return f"<{default.group(1)} object>" if default else text


def extra_names(attrs: dict[str, Any]) -> list[str]:
    """The names of a record's extras (its attributes that are not logging's own), in the
    order they were set.

    A record is laid out as ``LogRecord.__init__`` and then ``makeRecord`` make it: logging's
    own attributes first, the extras after them, and only a few of logging's own
    (``message``, ``asctime``) later still. So the names are read from the end, up to the
    first attribute ``__init__`` sets: no walk over all of them, and no set built, on every
    logging call. A record laid out otherwise (made by hand, a subclass) is read whole.
    """
    names: list[str] = []
    walked = 0
    for key in reversed(attrs):
        if key in _INIT_ATTRS:
            break
        walked += 1
        if key not in _RECORD_ATTRS:
            names.append(key)
    if len(attrs) - walked == _N_INIT:
        names.reverse()
        return names
    extras = attrs.keys() - _RECORD_ATTRS
    return [key for key in attrs if key in extras]


def record_fields(record: logging.LogRecord, extras: list[str] | None = None) -> dict[str, Any]:
    """The record's extras (and structlog key/values), JSON-safe; ``extras``: their names,
    if already known (see :func:`extra_names`).

    What is left out, because it says nothing the record does not already say, or nothing a
    reader of a live log can use:

    - names starting with ``_``: private to logging integrations (structlog puts its logger
      there);
    - ``color_message`` (uvicorn's copy of the message with colour codes: ``log`` has the
      text);
    - sockets (Django's ``django.server`` passes its connection as ``request``: a file
      descriptor and addresses, not the request, which the message names);
    - from a structlog event dict carried in ``record.msg`` (the
      ``ProcessorFormatter.wrap_for_formatter`` path, and :class:`StructlogProcessor`):
      ``event`` (the message), ``exc_info`` and ``stack_info`` (``exc``), ``timestamp``
      (the record's ``time``), and ``logger`` and ``level`` where they equal the record's.

    Any other value JSON cannot hold is its ``repr()`` (see :func:`json_safe`), with the
    address taken out of a default one (``<app.Cart object>``): so Django's
    ``<WSGIRequest: GET '/orders/42'>`` stays.
    """
    fields: dict[str, Any] = {}
    budget: _Budget | None = None  # made when a value needs copying: most never do
    msg = record.msg
    if isinstance(msg, dict) and not record.args:
        budget = _Budget()
        for key, value in msg.items():
            if (
                isinstance(key, str)
                and key not in _EVENT_KEYS
                and not key.startswith("_")
                and not _restates(record, key, value)
            ):
                fields[key] = json_safe(value, 0, budget)
    attrs = record.__dict__
    for key in extra_names(attrs) if extras is None else extras:
        if not key.startswith("_") and key not in _REPEATED_EXTRAS:
            value = attrs[key]
            cls = type(value)
            # The common scalars as they are, without a call: this runs on every record.
            if (
                cls is str
                or cls is bool
                or value is None
                or (cls is int and -(2**63) <= value < 2**63)
            ):
                fields[key] = value
            elif not isinstance(value, socket.socket):
                if budget is None:
                    budget = _Budget()
                fields[key] = json_safe(value, 0, budget)
    return fields


def _restates(record: logging.LogRecord, key: str, value: object) -> bool:
    """Whether a structlog pair says what the record says already (``add_logger_name``,
    ``add_log_level``)."""
    if key == "logger":
        return value == record.name
    if key == "level":
        return isinstance(value, str) and value.upper() == record.levelname
    return False


def default_message(record: logging.LogRecord) -> str:
    """The message alone, without traceback (that goes to ``exc``).

    For a structlog event dict in ``record.msg`` this is its ``event``.
    """
    msg = record.msg
    if isinstance(msg, dict) and not record.args and "event" in msg:
        return str(msg["event"])
    return record.getMessage()


def resolve_exc_info(value: object) -> Any:
    """An ``exc_info`` as structlog users give it (``True``, an exception, or the tuple) as
    the tuple ``logging`` expects, or ``None``."""
    if value is True:
        info = sys.exc_info()
        return info if info[0] is not None else None
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3 and value[0] is not None:
        return value
    return None


def record_exc(record: logging.LogRecord) -> str | None:
    """The formatted traceback and stack, or ``None``; reuses what a formatter cached.

    A structlog event dict in ``record.msg`` may carry its own ``exc_info`` (resolved here,
    on the app thread, while ``sys.exc_info()`` still holds the exception)."""
    parts: list[str] = []
    exc_info = record.exc_info
    if not exc_info and isinstance(record.msg, dict):
        exc_info = resolve_exc_info(record.msg.get("exc_info"))
    if exc_info and exc_info[0] is not None:
        parts.append(record.exc_text or _EXC_FORMATTER.formatException(exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts) if parts else None


def _small_int(value: object) -> bool:
    if type(value) is int:  # the common case, first
        return -(2**63) <= value < 2**63
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def render_record(record: logging.LogRecord, message: str) -> LogEntry:
    """Everything the app thread must capture of ``record``, with ``message`` already formatted.

    Every attribute is coerced to its wire type here (a record made by hand may hold ``None``
    or anything else), so the server never meets an ill-typed entry. This runs in every
    logging call: the common case (no extras, no traceback) takes no Python-level loop.
    """
    attrs = record.__dict__
    msg = record.msg
    extras = extra_names(attrs)
    if not extras and not isinstance(msg, dict):
        fields: dict[str, Any] = {}
    else:
        fields = record_fields(record, extras)
    name = record.name
    if type(name) is not str:
        name = str(name)
    category = attrs.get("category")
    # Each check has its common case first, as a plain type test: this runs on every call.
    levelno = record.levelno
    if not (type(levelno) is int and -(2**63) <= levelno < 2**63) and not _small_int(levelno):
        levelno = logging.NOTSET
    created = record.created
    if type(created) is not float and not isinstance(created, int | float):
        created = time.time()
    elif not 0 <= created < _MAX_TIME:
        created = time.time()  # nan, inf, or a year format_time() cannot print
    process = record.process
    if not (type(process) is int and -(2**63) <= process < 2**63) and not _small_int(process):
        process = None
    level = record.levelname
    if record.exc_info or record.exc_text or record.stack_info or isinstance(msg, dict):
        exc = record_exc(record)
    else:
        exc = None
    return LogEntry(
        message if type(message) is str else str(message),
        levelno,
        level if type(level) is str else str(level),
        name,
        category if isinstance(category, str) and category else name,
        created,
        fields,
        exc,
        process,
    )


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON. Lone surrogates fall back to ASCII escapes, so it never raises.

    With orjson installed (the ``fast`` extra) it writes the same JSON about ten times faster;
    what orjson refuses (ints past 64 bits, subclasses of ``str`` as keys or of ``float``,
    lone surrogates) goes to the stdlib as without it. The two differ only in how some
    floats are spelled (``1.5e-7`` for ``1.5e-07``), never in value.
    """
    if _orjson_dumps is not None:
        try:
            data = _orjson_dumps(obj)
        except TypeError:  # orjson.JSONEncodeError
            pass
        else:
            # orjson's bytes keep the buffer it wrote into: 4 KiB at least, 32 KiB for a
            # record of 3 KB. History keeps thousands; a copy holds just the bytes.
            return bytes(memoryview(data))
    return _stdlib_dumps(obj)


def _stdlib_dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


# The part of a record's JSON from ``"level"`` to the opening quote of ``"time"``, for the
# (level, levelno, logger, category, pid) it was made for: in most apps a few dozen loggers
# make nearly every record. Bounded: emptied when it holds _MAX_HEADS of them.
_heads: dict[tuple[Any, ...], bytes] = {}
_MAX_HEADS = 1024


def _encode_fast(entry: LogEntry, dumps: Callable[[Any], bytes]) -> bytes:
    """:func:`dumps` of ``entry.to_dict()``, byte for byte, with orjson: the compact JSON of
    an object is its keys and the compact JSON of each value, so the parts that repeat from
    record to record are encoded once and only the message, time, fields and traceback are
    encoded for each. Raises ``TypeError`` for what orjson refuses, like :func:`dumps`, and
    for a ``levelno`` or ``pid`` of another type than ``int``: ``True`` and ``1.0`` would find
    the part made for ``1``."""
    pid = entry.pid
    if type(entry.levelno) is not int or (type(pid) is not int and pid is not None):
        raise TypeError("levelno and pid must be int")
    key = (entry.level, entry.levelno, entry.logger, entry.category, pid)
    head = _heads.get(key)
    if head is None:
        head = b"".join(
            (
                b',"level":',
                dumps(entry.level),
                b',"levelno":',
                dumps(entry.levelno),
                b',"logger":',
                dumps(entry.logger),
                b',"category":',
                dumps(entry.category),
                b',"pid":',
                dumps(pid),
                b',"time":',
            )
        )
        if len(_heads) >= _MAX_HEADS:
            _heads.clear()
        _heads[key] = head
    fields = entry.fields
    exc = entry.exc
    return b"".join(
        (
            b'{"type":"log","id":',
            b'"%d"' % entry.id if entry.stream_id is None else dumps(entry.stream_id),
            b',"log":',
            dumps(entry.log),
            head,
            _time_json(entry.created),
            b',"fields":',
            b"{}" if not fields and type(fields) is dict else dumps(fields),
            b',"exc":',
            b"null" if exc is None else dumps(exc),
            b"}",
        )
    )


def _time_json(created: float) -> bytes:
    """``dumps(format_time(created))``, the same bytes, made faster the same way."""
    global _second_json
    if type(created) is not float or not 0 <= created < _MAX_TIME:
        return dumps(format_time(created))
    whole = int(created)
    micros = round((created - whole) * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    second, head = _second_json
    if second != whole:
        head = b'"' + _isoformat(whole)[:19].encode() + b"."
        _second_json = (whole, head)  # one tuple, replaced whole: safe from any thread
    return b'%s%06d+00:00"' % (head, micros)


# The whole second _time_json() last formatted, and its JSON up to the microseconds.
_second_json: tuple[int, bytes] = (-1, b"")


def encode_entry(entry: LogEntry) -> bytes:
    """The JSON bytes of one record, identical for every client. Never raises: should the
    record not encode (which :func:`render_record` makes impossible), its fields and
    traceback are replaced by a note that says why."""
    if _orjson_dumps is not None:
        try:
            return _encode_fast(entry, _orjson_dumps)
        except Exception:  # noqa: S110 - what orjson refuses goes the general way, below
            pass
    try:
        return dumps(entry.to_dict())
    except Exception as exc:
        # Only an entry made by hand can get here; every part is made plain, so this cannot
        # fail in turn.
        return dumps(
            {
                "type": "log",
                "id": entry.wire_id,
                "log": _text(entry.log),
                "level": _text(entry.level),
                "levelno": entry.levelno if _small_int(entry.levelno) else logging.NOTSET,
                "logger": _text(entry.logger),
                "category": _text(entry.category),
                "pid": entry.pid if _small_int(entry.pid) else None,
                "time": format_time(time.time()),
                "fields": {"wslogging_error": f"record could not be encoded: {_safe_repr(exc)}"},
                "exc": None,
            }
        )


def _text(value: object) -> str:
    return value if isinstance(value, str) else _safe_repr(value)


def gap_message(missed: int | None, reason: str) -> dict[str, Any]:
    """SPEC §5 ``gap``: records this client should have had were lost."""
    return {"type": "gap", "missed": missed, "reason": reason}


def sse_event(data: bytes, *, event_id: str | None = None, event: str | None = None) -> bytes:
    """One SSE event.

    ``data`` is compact JSON, which never holds a raw CR or LF (JSON escapes them), so an event
    is always exactly one ``data:`` line however hostile the logged text is.
    """
    head = b""
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    if event_id is not None:
        head += b"id: " + event_id.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


def sse_ping(last_id: str) -> bytes:
    """The heartbeat of a caught-up stream: a comment, and an ``id:`` with no data, which
    sets the stream's last event id without firing an event (WHATWG HTML, "dispatch the
    event": an empty data buffer dispatches nothing, the id is kept)."""
    return b": ping\nid: " + last_id.encode() + b"\n\n"


def ws_text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final WebSocket text frame of ``length`` bytes
    (RFC 6455 §5.2): what a server puts before a record's JSON."""
    if length < 126:
        return bytes((0x81, length))
    if length < 0x10000:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class Framed(Protocol):
    """What :func:`ws_frames` needs of an item: its JSON, made once (records, loss marks)."""

    _data: bytes | None

    @property
    def data(self) -> bytes: ...


def ws_frames(entries: Iterable[Framed]) -> bytes:
    """``entries`` as consecutive WebSocket text frames, ready for one write."""
    parts: list[bytes] = []
    add = parts.append
    for entry in entries:
        data = entry._data or entry.data  # made when the batch was accepted, as a rule
        size = len(data)
        # ws_text_frame_header, inline for the common sizes: this runs for every record.
        if size < 126:
            add(bytes((0x81, size)))
        elif size < 0x10000:
            add(_HEADER_16(0x81, 0x7E, size))
        else:
            add(ws_text_frame_header(size))
        add(data)
    return b"".join(parts)


_HEADER_16 = struct.Struct(">BBH").pack


def sse_retry(milliseconds: int) -> bytes:
    """The ``retry:`` field that opens every stream."""
    return b"retry: " + str(int(milliseconds)).encode() + b"\n\n"


# -- between processes --------------------------------------------------------------------
#
# A record rendered in one process and served by another (a worker forwarding to the process
# that holds the port, or any process appending to a Redis stream) travels as a JSON array of
# its rendered parts, without an id: the serving side assigns (or reads) that.

PACKED_FIELDS = 9


def pack_entry(entry: LogEntry) -> list[Any]:
    """``entry`` as the JSON-ready list :func:`unpack_entry` reads back."""
    return [
        entry.log,
        entry.levelno,
        entry.level,
        entry.logger,
        entry.category,
        entry.created,
        entry.fields,
        entry.exc,
        entry.pid,
    ]


def pack_entries(entries: Iterable[LogEntry]) -> bytes:
    """A batch of entries as one JSON array of :func:`pack_entry` lists."""
    return dumps([pack_entry(entry) for entry in entries])


def unpack_entry(packed: object) -> LogEntry:
    """The entry :func:`pack_entry` made, from the decoded JSON.

    The other side is another process, so nothing is taken on trust: a value of the wrong
    shape or type raises ``ValueError`` naming the problem, and the caller drops (and counts)
    that record alone.
    """
    if not isinstance(packed, list) or len(packed) != PACKED_FIELDS:
        raise ValueError(f"a packed record is a list of {PACKED_FIELDS} items")
    log, levelno, level, logger, category, created, fields, exc, pid = packed
    if not all(isinstance(text, str) for text in (log, level, logger, category)):
        raise ValueError("log, level, logger and category must be strings")
    if not (_small_int(levelno) and _small_int(pid)):
        raise ValueError("levelno and pid must be integers")
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise ValueError("time must be a number")
    if not 0 <= created < _MAX_TIME:
        raise ValueError("time is out of range")
    if not isinstance(fields, dict):
        raise ValueError("fields must be an object")
    if exc is not None and not isinstance(exc, str):
        raise ValueError("exc must be a string or null")
    return LogEntry(log, levelno, level, logger, category, float(created), fields, exc, pid)


def unpack_entries(data: bytes | str) -> tuple[list[LogEntry], int]:
    """The entries of a :func:`pack_entries` batch and how many of them were malformed
    (skipped). Raises ``ValueError`` when ``data`` is not a JSON array at all."""
    batch = json.loads(data)
    if not isinstance(batch, list):
        raise ValueError("a batch of records is a JSON array")
    entries: list[LogEntry] = []
    bad = 0
    for packed in batch:
        try:
            entries.append(unpack_entry(packed))
        except ValueError:
            bad += 1
    return entries, bad
