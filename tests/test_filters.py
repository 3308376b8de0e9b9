"""Tests for wslogging._filters: parsing client filters and matching entries."""

from __future__ import annotations

import logging

import pytest
from _records import make_entry

from wslogging._filters import (
    MAX_TERMS,
    MAX_TEXT,
    Filter,
    FilterError,
    filter_from_message,
    filter_from_query,
    parse_level,
)

# -- parse_level ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("debug", 10),
        ("INFO", 20),
        ("Warning", 30),
        ("warn", 30),
        (" error ", 40),
        ("critical", 50),
        ("notset", 0),
    ],
)
def test_parse_level_names_any_case(value: str, expected: int) -> None:
    """Level names are accepted in any case."""
    assert expected == parse_level(value)


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (25, 25), ("30", 30), (" 5 ", 5)])
def test_parse_level_numbers(value: object, expected: int) -> None:
    """Numbers and numeric strings are levels as they are."""
    assert expected == parse_level(value)


@pytest.mark.parametrize("value", ["loud", "", "-1", "2.5", None, 2.5, [20], {"level": 20}])
def test_parse_level_bad_values(value: object) -> None:
    """Anything else is a FilterError naming the valid levels."""
    with pytest.raises(FilterError, match="DEBUG, INFO, WARNING, ERROR, CRITICAL or a number"):
        parse_level(value)


def test_parse_level_negative_number() -> None:
    """A negative number is a FilterError."""
    with pytest.raises(FilterError, match="negative"):
        parse_level(-10)


@pytest.mark.parametrize("value", [True, False])
def test_parse_level_rejects_bool(value: bool) -> None:
    """A bool is not a level, though it is an int."""
    with pytest.raises(FilterError, match="level name or a number"):
        parse_level(value)


@pytest.mark.parametrize("value", ["²", "9" * 5000], ids=["superscript", "past-int-limit"])
def test_parse_level_odd_digit_strings(value: str) -> None:
    """Strings that ``str.isdigit`` accepts but ``int`` does not are a FilterError too."""
    with pytest.raises(FilterError):
        parse_level(value)


# -- Filter.matches -------------------------------------------------------------------------


def test_default_filter_matches_everything() -> None:
    """The default filter lets every entry through."""
    entries = [
        make_entry(levelno=0, logger="root"),
        make_entry("", levelno=50, logger="x.y", category="c", fields={"a": None}),
    ]

    assert [True, True] == [Filter().matches(e) for e in entries]


def test_level_is_a_minimum() -> None:
    """Entries below the level are rejected; at or above it pass."""
    flt = Filter(level=logging.WARNING)

    actual = [flt.matches(make_entry(levelno=n)) for n in (20, 30, 40)]

    assert [False, True, True] == actual


@pytest.mark.parametrize(
    ("logger", "expected"),
    [("app", True), ("app.db", True), ("app.db.pool", True), ("application", False), ("", False)],
)
def test_logger_is_hierarchical_prefix(logger: str, expected: bool) -> None:
    """``app`` matches ``app`` and its children, not ``application``."""
    assert expected == Filter(loggers=("app",)).matches(make_entry(logger=logger))


def test_several_loggers_any() -> None:
    """With several loggers, any one matching is enough."""
    flt = Filter(loggers=("app", "lib"))

    actual = [flt.matches(make_entry(logger=n)) for n in ("app.x", "lib", "other")]

    assert [True, True, False] == actual


def test_category_is_exact() -> None:
    """Categories match exactly, not by prefix."""
    flt = Filter(categories=frozenset({"billing"}))

    actual = [flt.matches(make_entry(category=c)) for c in ("billing", "billing.eu", "bill")]

    assert [True, False, False] == actual


def test_several_categories_any() -> None:
    """With several categories, any one matching is enough."""
    flt = Filter(categories=frozenset({"billing", "auth"}))

    actual = [flt.matches(make_entry(category=c)) for c in ("auth", "billing", "other")]

    assert [True, True, False] == actual


def test_grep_is_case_sensitive_substring() -> None:
    """``grep`` matches a substring of ``log``, case-sensitively."""
    flt = Filter(grep="disk")

    actual = [flt.matches(make_entry(m)) for m in ("disk full", "the disk", "Disk", "di sk")]

    assert [True, True, False, False] == actual


@pytest.mark.parametrize(
    ("value", "text", "expected"),
    [
        (500, "500", True),
        (500, "501", False),
        (True, "true", True),
        (True, "True", False),
        (None, "null", True),
        (1.5, "1.5", True),
        ("abc", "abc", True),
        ("abc", "ABC", False),
        ("500", "500", True),
        ([1, 2], "[1,2]", True),
    ],
)
def test_field_compared_by_text_form(value: object, text: str, expected: bool) -> None:
    """A field matches when its text form equals the value: strings as is, others as JSON."""
    flt = Filter(fields=(("status", text),))

    assert expected == flt.matches(make_entry(fields={"status": value}))


def test_field_missing_does_not_match() -> None:
    """An entry without the field does not match, even for the text ``null``."""
    assert False is Filter(fields=(("status", "null"),)).matches(make_entry(fields={}))


def test_fields_all_must_match() -> None:
    """Every field pair must match."""
    flt = Filter(fields=(("a", "1"), ("b", "x")))

    actual = [
        flt.matches(make_entry(fields={"a": 1, "b": "x"})),
        flt.matches(make_entry(fields={"a": 1, "b": "y"})),
        flt.matches(make_entry(fields={"a": 1})),
    ]

    assert [True, False, False] == actual


def test_combination_needs_every_part() -> None:
    """Parts combine with AND: each one can reject on its own."""
    flt = Filter(
        level=30,
        loggers=("app",),
        categories=frozenset({"billing"}),
        grep="paid",
        fields=(("n", "1"),),
    )
    good = {"log": "paid", "levelno": 30, "logger": "app.x", "category": "billing"}
    variants = [
        {},
        {"levelno": 20},
        {"logger": "lib"},
        {"category": "auth"},
        {"log": "pay"},
        {"fields": {"n": 2}},
    ]

    actual = [flt.matches(make_entry(**{"fields": {"n": 1}, **good, **v})) for v in variants]

    assert [True, False, False, False, False, False] == actual


def test_pid_any_of_several() -> None:
    """Records of any listed process match; no pid listed matches every process."""
    flt = Filter(pids=frozenset({10, 11}))
    pids = [10, 11, 12]

    actual = [flt.matches(make_entry(pid=pid)) for pid in pids]

    assert [True, True, False] == actual


def test_query_pid_repeatable() -> None:
    """``pid`` accumulates, as numbers."""
    assert frozenset({4, 5}) == filter_from_query([("pid", "4"), ("pid", " 5")]).pids


def test_message_pid_as_number_or_list() -> None:
    """``pid`` in a subscribe filter: one integer or a list."""
    assert frozenset({7}) == filter_from_message({"pid": 7}).pids
    assert frozenset({7, 8}) == filter_from_message({"pid": [7, "8"]}).pids


@pytest.mark.parametrize("value", ["x", "0", "-3", "99999999999", True, 2.5, None, [1]])
def test_bad_pid_raises(value: object) -> None:
    """Anything but a positive integer (or its digits) is refused, naming ``pid``."""
    with pytest.raises(FilterError, match="pid must be a positive integer"):
        filter_from_message({"pid": [value]})


def test_too_many_pids_raise() -> None:
    """``pid`` is bounded like the other repeatable terms."""
    with pytest.raises(FilterError, match="at most"):
        filter_from_query([("pid", str(n)) for n in range(1, MAX_TERMS + 2)])


# -- to_json --------------------------------------------------------------------------------


def test_to_json_default() -> None:
    """The default filter as ``hello`` shows it."""
    expected = {"level": 0, "logger": [], "category": [], "grep": None, "fields": {}, "pid": []}

    assert expected == Filter().to_json()


def test_to_json_full() -> None:
    """Every part appears; categories sorted."""
    flt = Filter(
        level=30,
        loggers=("b", "a"),
        categories=frozenset({"z", "y"}),
        grep="g",
        fields=(("k", "v"),),
        pids=frozenset({9, 3}),
    )

    expected = {"level": 30, "logger": ["b", "a"], "category": ["y", "z"], "grep": "g"}
    assert {**expected, "fields": {"k": "v"}, "pid": [3, 9]} == flt.to_json()


# -- filter_from_query ----------------------------------------------------------------------


def test_query_empty_is_default() -> None:
    """No parameters give the default filter."""
    assert Filter() == filter_from_query([])


def test_query_every_part() -> None:
    """Each parameter sets its part; repeated ones accumulate."""
    query = [
        ("level", "warning"),
        ("logger", "app"),
        ("logger", "lib.db"),
        ("category", "billing"),
        ("category", "auth"),
        ("grep", "disk"),
        ("field.status", "500"),
        ("field.request_id", "abc"),
    ]

    expected = Filter(
        level=30,
        loggers=("app", "lib.db"),
        categories=frozenset({"billing", "auth"}),
        grep="disk",
        fields=(("status", "500"), ("request_id", "abc")),
    )
    assert expected == filter_from_query(query)


def test_query_field_key_keeps_dots() -> None:
    """Only the ``field.`` prefix is cut: the rest of the name is the key."""
    assert (("a.b", "1"),) == filter_from_query([("field.a.b", "1")]).fields


def test_query_unrelated_params_ignored() -> None:
    """Parameters of other handlers (``since``, ``access_token``, ...) are ignored."""
    query = [("since", "42"), ("access_token", "k"), ("limit", "5"), ("fields", "x")]

    assert Filter() == filter_from_query(query)


def test_query_empty_values_ignored() -> None:
    """Empty ``level``, ``logger`` and ``grep`` values are ignored."""
    query = [("level", ""), ("logger", ""), ("grep", "")]

    assert Filter() == filter_from_query(query)


def test_query_empty_category_ignored() -> None:
    """An empty ``category`` value is ignored, as an empty ``logger`` is."""
    assert Filter() == filter_from_query([("category", "")])


def test_query_bad_level_raises() -> None:
    """A bad ``level`` is a FilterError."""
    with pytest.raises(FilterError, match="unknown level 'loud'"):
        filter_from_query([("level", "loud")])


def test_query_empty_field_name_raises() -> None:
    """``field.=x`` names no field: a FilterError."""
    with pytest.raises(FilterError, match="field name must not be empty"):
        filter_from_query([("field.", "x")])


# -- filter_from_message --------------------------------------------------------------------


def test_message_none_is_default() -> None:
    """A ``subscribe`` without a filter gets the default filter."""
    assert Filter() == filter_from_message(None)


def test_message_empty_object_is_default() -> None:
    """An empty filter object is the default filter."""
    assert Filter() == filter_from_message({})


def test_message_every_part_as_lists() -> None:
    """Every part of a ``subscribe`` filter, ``logger`` and ``category`` as lists."""
    spec = {
        "level": "error",
        "logger": ["app", "lib"],
        "category": ["billing"],
        "grep": "x",
        "fields": {"status": 500, "ok": True, "user": "ann"},
    }

    expected = Filter(
        level=40,
        loggers=("app", "lib"),
        categories=frozenset({"billing"}),
        grep="x",
        fields=(("status", "500"), ("ok", "true"), ("user", "ann")),
    )
    assert expected == filter_from_message(spec)


def test_message_logger_and_category_as_strings() -> None:
    """``logger`` and ``category`` may be single strings."""
    actual = filter_from_message({"logger": "app", "category": "billing", "level": 30})

    assert Filter(level=30, loggers=("app",), categories=frozenset({"billing"})) == actual


def test_message_nulls_are_defaults() -> None:
    """Parts given as null are left at their defaults."""
    spec = {"level": None, "logger": None, "category": None, "grep": None, "fields": None}

    assert Filter() == filter_from_message(spec)


def test_message_unknown_keys_rejected() -> None:
    """Unknown keys are a FilterError naming them."""
    with pytest.raises(FilterError, match="unknown filter keys: lvl, zzz"):
        filter_from_message({"zzz": 1, "lvl": 20, "level": 20})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("level=20", "filter must be an object"),
        ([], "filter must be an object"),
        ({"level": True}, "level"),
        ({"level": [20]}, "unknown level"),
        ({"logger": 5}, "logger must be a string or a list of strings"),
        ({"logger": {"app": 1}}, "logger must be a string or a list of strings"),
        ({"logger": ["app", 5]}, "logger must be a string, not int"),
        ({"category": [None]}, "category must be a string, not NoneType"),
        ({"grep": 5}, "grep must be a string, not int"),
        ({"fields": "status=500"}, "fields must be an object"),
        ({"fields": ["status"]}, "fields must be an object"),
        ({"fields": {"": "x"}}, "field name must not be empty"),
    ],
)
def test_message_wrong_types_rejected(spec: object, message: str) -> None:
    """Parts of the wrong type are a FilterError that says what is wrong."""
    with pytest.raises(FilterError, match=message):
        filter_from_message(spec)


# -- bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["logger", "category"])
def test_too_many_terms_raise(name: str) -> None:
    """More than MAX_TERMS loggers or categories is a FilterError."""
    query = [(name, f"n{i}") for i in range(MAX_TERMS + 1)]

    with pytest.raises(FilterError, match=f"at most {MAX_TERMS}"):
        filter_from_query(query)


def test_max_terms_allowed() -> None:
    """Exactly MAX_TERMS values of each kind are fine."""
    query = [(name, f"n{i}") for i in range(MAX_TERMS) for name in ("logger", "category")]
    query += [(f"field.k{i}", "v") for i in range(MAX_TERMS)]

    flt = filter_from_query(query)

    assert [MAX_TERMS] * 3 == [len(flt.loggers), len(flt.categories), len(flt.fields)]


def test_too_many_fields_raise() -> None:
    """More than MAX_TERMS field filters is a FilterError."""
    with pytest.raises(FilterError, match=f"at most {MAX_TERMS} field filters"):
        filter_from_message({"fields": {f"k{i}": "v" for i in range(MAX_TERMS + 1)}})


@pytest.mark.parametrize(
    "query",
    [
        [("logger", "a" * (MAX_TEXT + 1))],
        [("category", "a" * (MAX_TEXT + 1))],
        [("grep", "a" * (MAX_TEXT + 1))],
        [("field." + "a" * (MAX_TEXT + 1), "v")],
    ],
)
def test_too_long_text_raises(query: list[tuple[str, str]]) -> None:
    """A text longer than MAX_TEXT is a FilterError."""
    with pytest.raises(FilterError, match=f"longer than {MAX_TEXT}"):
        filter_from_query(query)


def test_max_text_allowed() -> None:
    """A text of exactly MAX_TEXT characters is fine."""
    assert "a" * MAX_TEXT == filter_from_query([("grep", "a" * MAX_TEXT)]).grep


def test_too_long_field_value_raises() -> None:
    """A field value longer than MAX_TEXT is a FilterError, as every other text is."""
    with pytest.raises(FilterError, match=f"longer than {MAX_TEXT}"):
        filter_from_query([("field.k", "v" * (MAX_TEXT + 1))])
