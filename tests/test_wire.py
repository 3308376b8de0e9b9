"""Tests for wslogging._wire: records to entries, entries to JSON bytes and SSE frames."""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import socket
import sys
import tracemalloc
from typing import Any

import pytest
from _records import CREATED, make_entry, make_record
from structlog.stdlib import ProcessorFormatter

from wslogging import _wire
from wslogging._wire import (
    dumps,
    encode_entry,
    format_time,
    gap_message,
    json_safe,
    render_record,
    sse_event,
    sse_ping,
    sse_retry,
    ws_frames,
    ws_text_frame_header,
)


def parse_sse(stream: bytes) -> list[dict[str, list[str]]]:
    """The events an SSE parser (WHATWG) dispatches: field name → values, in order."""
    events: list[dict[str, list[str]]] = []
    event: dict[str, list[str]] = {}
    for line in re.split(r"\r\n|\r|\n", stream.decode("utf-8")):
        if not line:
            if event:
                events.append(event)
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event.setdefault(name, []).append(value.removeprefix(" "))
    return events


def structlog_record(event_dict: dict[str, Any], name: str = "app") -> logging.LogRecord:
    """A record as structlog.stdlib hands it to logging on the ProcessorFormatter path."""
    args, kwargs = ProcessorFormatter.wrap_for_formatter(None, "info", event_dict)
    (msg,) = args
    return make_record(msg, name=name, extra=kwargs["extra"])


class Unreprable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def nested(depth: int, leaf: object) -> object:
    """``leaf`` wrapped in ``depth`` lists."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


# -- render_record ------------------------------------------------------------------------


def test_render_keeps_formatted_message() -> None:
    """``log`` is the message the handler formatted, not the raw one."""
    entry = render_record(make_record("hi %s", "there"), "12:00 hi there")

    assert "12:00 hi there" == entry.log


def test_render_level_and_logger() -> None:
    """Level name, level number and logger name come from the record."""
    entry = render_record(make_record(level=logging.WARNING, name="app.db"), "m")

    assert ("WARNING", 30, "app.db") == (entry.level, entry.levelno, entry.logger)


def test_render_category_from_extra() -> None:
    """The ``category`` extra becomes the category, and is not repeated in fields."""
    entry = render_record(make_record(extra={"category": "billing"}), "m")

    assert ("billing", {}) == (entry.category, entry.fields)


def test_render_category_defaults_to_logger_name() -> None:
    """Without a ``category`` extra the category is the logger name."""
    entry = render_record(make_record(name="app.worker"), "m")

    assert "app.worker" == entry.category


def test_render_empty_category_falls_back_to_logger_name() -> None:
    """An empty ``category`` extra counts as none."""
    entry = render_record(make_record(name="app", extra={"category": ""}), "m")

    assert "app" == entry.category


def test_render_pid_and_time_from_record() -> None:
    """``pid`` and the creation time are the record's."""
    record = make_record()
    record.process = 4242

    entry = render_record(record, "m")

    assert (4242, record.created) == (entry.pid, entry.created)


def test_render_plain_record_has_no_fields() -> None:
    """A record without extras has empty fields: standard attributes are not fields."""
    assert {} == render_record(make_record(), "m").fields


def test_render_fields_from_extras() -> None:
    """Extras become fields."""
    entry = render_record(make_record(extra={"job": 7, "user": "ann"}), "m")

    assert {"job": 7, "user": "ann"} == entry.fields


def test_render_fields_are_json_safe() -> None:
    """Extras that JSON cannot hold are made JSON-safe."""
    entry = render_record(make_record(extra={"t": (1, 2), "o": object, "f": float("nan")}), "m")

    assert {"t": [1, 2], "o": repr(object), "f": "nan"} == entry.fields


def test_render_private_extras_left_out() -> None:
    """Extras whose names start with ``_`` are left out of fields."""
    entry = render_record(make_record(extra={"_secret": 1, "public": 2}), "m")

    assert {"public": 2} == entry.fields


def test_render_structlog_pairs_become_fields() -> None:
    """A structlog event dict in ``msg`` gives its pairs, minus ``event``, as fields."""
    record = structlog_record({"event": "user logged in", "user": 7, "ok": True})

    assert {"user": 7, "ok": True} == render_record(record, "m").fields


def test_render_structlog_private_pairs_left_out() -> None:
    """structlog's own ``_logger`` / ``_name`` extras and ``_`` keys are left out."""
    record = structlog_record({"event": "e", "_internal": 1, "user": 7})

    assert {"user": 7} == render_record(record, "m").fields


def test_render_structlog_pairs_the_record_states_are_left_out() -> None:
    """``logger`` and ``level`` equal to the record's, and ``timestamp``, are the record's own
    logger, level and time: not fields. A different ``logger`` or ``level`` stays."""
    same = {"event": "e", "logger": "app", "level": "info", "timestamp": "2026-11-25T17:28"}
    other = {"event": "e", "logger": "elsewhere", "level": "notice", "user": 7}

    fields = [render_record(structlog_record(pairs), "m").fields for pairs in (same, other)]

    assert [{}, {"logger": "elsewhere", "level": "notice", "user": 7}] == fields


def test_render_leaves_out_uvicorns_color_message() -> None:
    """uvicorn's ``color_message`` repeats the message with escape codes: left out."""
    extra = {"color_message": "Started server process [\x1b[36m%d\x1b[0m]", "port": 8000}
    entry = render_record(make_record("Started server process [%d]", 42, extra=extra), "m")

    assert {"port": 8000} == entry.fields


def test_render_leaves_out_sockets() -> None:
    """A socket (Django's ``django.server`` passes its connection as ``request``) is left
    out; other objects are their repr, with a default repr's address taken out."""

    class Cart:
        pass

    class Request:
        def __repr__(self) -> str:
            return "<WSGIRequest: GET '/orders/42'>"

    with socket.socket() as sock:
        extra = {"request": sock, "status_code": 200, "cart": Cart(), "http": Request()}
        entry = render_record(make_record(extra=extra), "m")

    expected = {
        "status_code": 200,
        "cart": f"<{Cart.__module__}.{Cart.__qualname__} object>",
        "http": "<WSGIRequest: GET '/orders/42'>",
    }
    assert expected == entry.fields


def test_default_message_of_structlog_event_dict() -> None:
    """For a structlog event dict the message alone is its ``event``."""
    record = structlog_record({"event": "user logged in", "user": 7})

    assert "user logged in" == _wire.default_message(record)


def test_default_message_of_plain_record() -> None:
    """For a plain record the message alone is ``getMessage()``."""
    assert "hi there" == _wire.default_message(make_record("hi %s", "there"))


def test_render_exc_from_exc_info() -> None:
    """``exc`` is the traceback text of ``exc_info``."""
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        exc_info = sys.exc_info()

    entry = render_record(make_record(exc_info=exc_info), "m")

    assert logging.Formatter().formatException(exc_info) == entry.exc
    assert "ZeroDivisionError" in (entry.exc or "")


def test_render_exc_reuses_cached_text() -> None:
    """Traceback text a formatter already cached on the record is reused."""
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        record = make_record(exc_info=sys.exc_info())
    record.exc_text = "cached traceback"

    assert "cached traceback" == render_record(record, "m").exc


def test_render_exc_from_stack_info() -> None:
    """``stack_info`` alone goes to ``exc``."""
    entry = render_record(make_record(stack_info="Stack (most recent call last):\n  f"), "m")

    assert "Stack (most recent call last):\n  f" == entry.exc


def test_render_exc_traceback_then_stack() -> None:
    """With both, ``exc`` holds the traceback, then the stack."""
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        exc_info = sys.exc_info()

    entry = render_record(make_record(exc_info=exc_info, stack_info="Stack"), "m")

    assert logging.Formatter().formatException(exc_info) + "\nStack" == entry.exc


def test_render_exc_none_without_exception() -> None:
    """A record without exception or stack has ``exc`` None."""
    assert None is render_record(make_record(), "m").exc


# -- json_safe ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, True, False, 0, -3, 2**70, 1.5, "", "text ✓"])
def test_json_safe_keeps_primitives(value: object) -> None:
    """JSON primitives come back as they are."""
    actual = json_safe(value)

    assert (type(value), value) == (type(actual), actual)


@pytest.mark.parametrize(
    ("value", "expected"), [(float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")]
)
def test_json_safe_non_finite_floats_repr(value: float, expected: str) -> None:
    """NaN and infinities, which JSON cannot hold, become their repr."""
    assert expected == json_safe(value)


def test_json_safe_nested_containers() -> None:
    """Dicts, lists, tuples and sets are copied recursively into dicts and lists."""
    value = {"a": [1, (2, 3)], "b": {"c": None, "d": {4}}, "e": frozenset()}

    assert {"a": [1, [2, 3]], "b": {"c": None, "d": [4]}, "e": []} == json_safe(value)


def test_json_safe_non_str_keys_repr() -> None:
    """Keys that are not strings become their repr."""
    assert {"1": "a", "(1, 2)": "b", "None": "c"} == json_safe({1: "a", (1, 2): "b", None: "c"})


def test_json_safe_objects_repr() -> None:
    """Other objects become their repr."""

    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    assert {"t": "<thing>", "l": ["<thing>"]} == json_safe({"t": Thing(), "l": [Thing()]})


def test_json_safe_broken_repr_placeholder() -> None:
    """An object whose repr raises becomes a placeholder, as value or as key."""
    value = {"v": Unreprable(), Unreprable(): 1}

    expected = {"v": "<unrepresentable Unreprable>", "<unrepresentable Unreprable>": 1}
    assert expected == json_safe(value)


def test_json_safe_depth_bound() -> None:
    """Containers nested deeper than the bound are summarised, not walked."""
    depth = _wire._MAX_DEPTH

    assert nested(depth, "<list of 1 items>") == json_safe(nested(depth + 2, 1))


def test_json_safe_list_item_bound() -> None:
    """A list longer than the bound keeps its first items and says how many are cut."""
    limit = _wire._MAX_ITEMS

    actual = json_safe(list(range(limit + 5)))

    assert [*range(limit), "... 5 more items"] == actual


def test_json_safe_dict_item_bound() -> None:
    """A dict longer than the bound keeps its first items and says how many are cut."""
    limit = _wire._MAX_ITEMS

    actual = json_safe({f"k{n}": n for n in range(limit + 5)})

    assert {**{f"k{n}": n for n in range(limit)}, "...": "5 more items"} == actual


def test_json_safe_result_always_dumps() -> None:
    """Whatever goes in, the result is JSON that round-trips."""
    value = {"a": [Unreprable(), float("nan"), {1: {2}}], "b": nested(20, object())}

    safe = json_safe(value)

    assert safe == json.loads(dumps(safe))


def test_json_safe_huge_int_dumps() -> None:
    """An int too long for int→str conversion still gives JSON that can be sent."""
    entry = render_record(make_record(extra={"n": 10**5000}), "m")

    assert str is type(json.loads(encode_entry(entry))["fields"]["n"])


# -- dumps ----------------------------------------------------------------------------------


@pytest.fixture(params=["orjson", "stdlib"])
def json_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with orjson (the ``fast`` extra) and with the stdlib fallback."""
    if request.param == "orjson":
        pytest.importorskip("orjson")
    else:
        monkeypatch.setattr(_wire, "_orjson_dumps", None)
    return str(request.param)


def test_dumps_compact(json_backend: str) -> None:
    """No spaces after separators."""
    assert b'{"a":[1,2],"b":null}' == dumps({"a": [1, 2], "b": None})


def test_dumps_keeps_non_ascii(json_backend: str) -> None:
    """Non-ASCII text is UTF-8, not escaped."""
    assert '{"m":"héllo ✓ 日本"}'.encode() == dumps({"m": "héllo ✓ 日本"})


def test_dumps_lone_surrogate_valid_json(json_backend: str) -> None:
    """A string with a lone surrogate still gives valid UTF-8 JSON with the same text."""
    data = dumps({"m": "a\ud800b é"})

    assert {"m": "a\ud800b é"} == json.loads(data.decode("utf-8"))


def test_dumps_holds_just_its_bytes(json_backend: str) -> None:
    """What dumps returns takes about its length in memory (history keeps thousands)."""
    values = [{"log": "x" * 3000, "n": n} for n in range(50)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [dumps(value) for value in values]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert used < 1.5 * sum(len(data) for data in kept)


class _Text(str):
    pass


class _Number(int):
    pass


class _Real(float):
    pass


class _Level(enum.IntEnum):
    WARN = 30


class _Colour(enum.StrEnum):
    RED = "red"


# What json_safe() lets through, and what orjson handles differently from the stdlib or refuses.
AWKWARD_VALUES = [
    'ctrl \x00\x1f\x7f \u2028\u2029 quote" back\\ slash/ \b\f\n\r\t é 😀',
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    2**1000,
    _Text("sub"),
    _Number(5),
    _Real(1.5),
    _Level.WARN,
    _Colour.RED,
    {_Text("key"): 1},
    0.1,
    -0.0,
    1e16,
    5e-324,
    [1, [2, {"a": None}]],
    "\ud800",
]


@pytest.mark.parametrize("value", AWKWARD_VALUES, ids=repr)
def test_dumps_orjson_writes_what_the_stdlib_writes(
    value: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With and without orjson, the same bytes: what orjson refuses goes to the stdlib."""
    pytest.importorskip("orjson")
    fast = dumps({"v": value})
    monkeypatch.setattr(_wire, "_orjson_dumps", None)

    assert dumps({"v": value}) == fast


def test_dumps_orjson_spells_small_exponents_shorter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one difference: orjson writes ``1.5e-7`` where the stdlib writes ``1.5e-07``."""
    pytest.importorskip("orjson")
    fast = dumps(1.5e-7)
    monkeypatch.setattr(_wire, "_orjson_dumps", None)

    assert (b"1.5e-7", b"1.5e-07", 1.5e-7) == (fast, dumps(1.5e-7), json.loads(fast))


@pytest.mark.parametrize("value", AWKWARD_VALUES, ids=repr)
def test_encoded_record_is_spec_json(value: object, json_backend: str) -> None:
    """A record with any extra encodes to the SPEC object on both paths."""
    record = make_record(extra={"v": value})
    entry = render_record(record, "m")
    entry.id = 7

    decoded = json.loads(encode_entry(entry))

    assert entry.to_dict() == decoded


# -- LogEntry / encode_entry ----------------------------------------------------------------


def test_to_dict_is_spec_record() -> None:
    """``to_dict`` is exactly the SPEC §4 object, ``id`` as a string."""
    entry = make_entry("Process started", logger="app.worker", fields={"job": 7})
    entry.id = 42

    expected = {
        "type": "log",
        "id": "42",
        "log": "Process started",
        "level": "INFO",
        "levelno": 20,
        "logger": "app.worker",
        "category": "app.worker",
        "pid": 4242,
        "time": "2026-11-25T17:28:42.123456+00:00",
        "fields": {"job": 7},
        "exc": None,
    }
    assert expected == entry.to_dict()


def test_new_entry_has_no_id_or_bytes() -> None:
    """An entry gets its id when the server accepts it, and its bytes when first read."""
    entry = make_entry()

    assert (0, None) == (entry.id, entry._data)


def test_entry_bytes_made_once() -> None:
    """``data`` is made on first use, and is the same object after that."""
    entry = make_entry()
    entry.id = 42

    data = entry.data

    assert encode_entry(entry) == data
    assert entry.data is data


def test_ws_frames_one_after_the_other() -> None:
    """Entries become consecutive text frames, each its header and its JSON."""
    entries = [make_entry("a"), make_entry("b" * 200)]

    expected = b"".join(ws_text_frame_header(len(e.data)) + e.data for e in entries)
    assert expected == ws_frames(entries)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_ws_frames_header_at_every_length_boundary(size: int) -> None:
    """Each frame's header is :func:`ws_text_frame_header` for its length, at every size."""
    entry = make_entry()
    entry._data = b"x" * size

    assert ws_text_frame_header(size) + entry._data == ws_frames([entry])


def test_encode_entry_of_unencodable_entry_says_why() -> None:
    """An entry made by hand with values JSON cannot hold still encodes, with a note."""
    entry = make_entry()
    entry.fields = {"obj": object()}
    entry.log = b"bytes"  # type: ignore[assignment]

    record = json.loads(encode_entry(entry))

    assert ("b'bytes'", None) == (record["log"], record["exc"])
    assert record["fields"]["wslogging_error"].startswith("record could not be encoded: ")


def test_entry_pid_defaults_to_this_process() -> None:
    """An entry made without a pid has this process's."""
    entry = _wire.LogEntry(
        log="m", levelno=20, level="INFO", logger="a", category="a", created=0.0, fields={}
    )

    assert os.getpid() == entry.pid


def test_encode_entry_is_json_of_to_dict() -> None:
    """``encode_entry`` is the compact JSON of ``to_dict``."""
    entry = make_entry(exc="Traceback ...")
    entry.id = 7

    data = encode_entry(entry)

    assert (entry.to_dict(), dumps(entry.to_dict())) == (json.loads(data), data)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"log": 'é \u2028 "q" \\ \x00', "logger": "a\tb", "category": "ü"},
        {"fields": {"n": 1.5e-7, "big": 2**70, "deep": {"a": [None, True, -0.0]}}},
        {"fields": {"lone": "\ud800"}},
        {"log": "\udfff"},
        {"levelno": True, "pid": None},
        {"levelno": 20.0, "pid": 1.0},
        {"created": 1e9 + 0.9999996},
        {"created": -1.0},
        {"created": 5},
        {"id": 10**20},
        {"exc": "Traceback\n  é"},
    ],
)
def test_encode_entry_is_dumps_of_to_dict_byte_for_byte(change: dict[str, Any]) -> None:
    """With or without orjson, and whatever an entry holds, ``encode_entry`` writes exactly
    ``dumps(to_dict())``."""
    entry = make_entry()
    entry.id = 7
    for name, value in change.items():
        setattr(entry, name, value)

    assert dumps(entry.to_dict()) == encode_entry(entry)


def test_encode_entry_after_one_with_equal_but_other_typed_values() -> None:
    """The parts kept from one record are not reused for another whose ``levelno`` or
    ``pid`` is equal but not an ``int`` (``True == 1``)."""
    entry, other = make_entry(), make_entry()
    entry.levelno = other.pid = 1
    other.levelno, other.pid = True, 1.0  # type: ignore[assignment]

    encode_entry(entry)

    assert dumps(other.to_dict()) == encode_entry(other)


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000000+00:00"),
        (1.5, "1970-01-01T00:00:01.500000+00:00"),
        (CREATED, "2026-11-25T17:28:42.123456+00:00"),
    ],
)
def test_format_time_iso_utc_microseconds(created: float, expected: str) -> None:
    """Times are ISO 8601 in UTC, always with microseconds."""
    assert expected == format_time(created)


# -- SSE ------------------------------------------------------------------------------------


def test_sse_event_with_id() -> None:
    """A record is an ``id:`` line, a ``data:`` line and a blank line."""
    assert b'id: 7\ndata: {"a":1}\n\n' == sse_event(b'{"a":1}', event_id="7")


def test_sse_event_with_event_type() -> None:
    """A named event has an ``event:`` line."""
    assert b"event: gap\ndata: {}\n\n" == sse_event(b"{}", event="gap")


def test_sse_event_with_both() -> None:
    """``event:`` comes before ``id:``."""
    assert b"event: gap\nid: 3\ndata: {}\n\n" == sse_event(b"{}", event_id="3", event="gap")


def test_sse_event_data_only() -> None:
    """Without id or type an event is a lone ``data:`` line."""
    assert [{"data": ["{}"]}] == parse_sse(sse_event(b"{}"))


@pytest.mark.parametrize(
    "text",
    ["\n\nid: x\r\ndata: evil", "a\rb\r\rdata: x", "\r\n\r\nevent: gap\n", "line\u2028sep\x85"],
)
def test_sse_event_hostile_message_is_one_data_line(text: str) -> None:
    """Line breaks in a message cannot add fields or events: one event, one ``data:`` line."""
    entry = make_entry(text)
    entry.id = 42

    (event,) = parse_sse(sse_event(encode_entry(entry), event_id="42"))

    assert {"id": ["42"], "data": [encode_entry(entry).decode()]} == event
    assert text == json.loads(event["data"][0])["log"]


def test_sse_retry() -> None:
    """``retry:`` carries milliseconds and ends with a blank line."""
    assert b"retry: 3000\n\n" == sse_retry(3000)


def test_sse_ping_is_a_comment_and_an_id() -> None:
    """The keep-alive is a ``: ping`` comment and an ``id:`` with no ``data:``: a browser keeps
    the id as the stream's last event id and dispatches no event (there is no data)."""
    assert (b": ping\nid: 7\n\n", [{"id": ["7"]}]) == (sse_ping("7"), parse_sse(sse_ping("7")))


# -- gap_message ----------------------------------------------------------------------------


def test_gap_message() -> None:
    """A ``gap`` frame carries the count and the reason."""
    assert {"type": "gap", "missed": 3, "reason": "history"} == gap_message(3, "history")


def test_gap_message_unknown_count() -> None:
    """``missed`` may be None where unknown."""
    assert {"type": "gap", "missed": None, "reason": "restart"} == gap_message(None, "restart")


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_ws_text_frame_header(length: int, header: bytes) -> None:
    """Final, unmasked text frame headers with the 7-bit, 16-bit and 64-bit lengths."""
    assert header == ws_text_frame_header(length)


# -- between processes --------------------------------------------------------------------


def test_packed_entries_come_back_whole() -> None:
    record = logging.makeLogRecord(
        {"name": "app.db", "levelno": 30, "levelname": "WARNING", "msg": "slow", "rows": [1, 2]}
    )
    entry = _wire.render_record(record, "slow query")
    entries, bad = _wire.unpack_entries(_wire.pack_entries([entry, entry]))
    assert bad == 0
    assert [e.to_dict() for e in entries] == [entry.to_dict()] * 2
    assert entries[0].pid == entry.pid


@pytest.mark.parametrize(
    "packed",
    [
        "not a list",
        [1, 2, 3],
        ["m", "20", "INFO", "a", "a", 1.0, {}, None, 1],
        ["m", 20, "INFO", "a", "a", float("nan"), {}, None, 1],
        ["m", 20, "INFO", "a", "a", 1.0, [], None, 1],
        ["m", 20, "INFO", "a", "a", 1.0, {}, 5, 1],
        ["m", 20, "INFO", "a", None, 1.0, {}, None, 1],
        ["m", 20, "INFO", "a", "a", True, {}, None, 1],
        ["m", 20, "INFO", "a", "a", 1.0, {}, None, 2**70],
    ],
)
def test_a_malformed_packed_record_is_refused_alone(packed: object) -> None:
    good = ["ok", 20, "INFO", "a", "a", 1.0, {}, None, 7]
    data = json.dumps([good, packed, good], allow_nan=True)
    entries, bad = _wire.unpack_entries(data)
    assert bad == 1
    assert [e.log for e in entries] == ["ok", "ok"]
    with pytest.raises(ValueError, match="JSON array"):
        _wire.unpack_entries(b'{"a": 1}')


def test_extras_keep_their_order_after_formatting() -> None:
    """Extras come out in the order given, though formatting adds attributes after them."""
    record = make_record("m", extra={"zeta": 1, "alpha": [2], "mid": "x"})
    logging.Formatter("%(asctime)s %(message)s").format(record)

    assert ["zeta", "alpha", "mid"] == list(render_record(record, "m").fields)


class _EarlyRecord(logging.LogRecord):
    """A record class that sets an attribute of its own before logging's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.tenant = "acme"
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(_EarlyRecord("app", 20, "p.py", 1, "m", None, None), id="set-before-init"),
        pytest.param(logging.makeLogRecord({"msg": "m", "tenant": "acme"}), id="makeLogRecord"),
    ],
)
def test_extras_of_records_laid_out_otherwise(record: logging.LogRecord) -> None:
    """Extras are found wherever a record holds them, not only after logging's own."""
    record.late = 1

    assert {"tenant": "acme", "late": 1} == render_record(record, "m").fields
    assert ["tenant", "late"] == _wire.extra_names(record.__dict__)


def test_extras_found_after_an_attribute_of_logging_s_is_set_again() -> None:
    """An attribute of logging's deleted and set again moves to the end: still not a field."""
    record = make_record("m", extra={"k": 1})
    del record.lineno
    record.lineno = 7

    assert {"k": 1} == render_record(record, "m").fields
