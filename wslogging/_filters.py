"""Pure: parse a client's filter (query string or ``subscribe`` message) and match records."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._wire import LogEntry

# Bounds on what one client may ask for, so a filter is cheap to evaluate for every record.
MAX_TERMS = 32
MAX_TEXT = 256


class FilterError(ValueError):
    """A filter parameter is malformed; the message says which and why."""


def parse_level(value: object) -> int:
    """A level given as a name (``"warning"``) or a number (``30``, ``"30"``)."""
    if isinstance(value, bool):
        raise FilterError(f"level must be a level name or a number, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise FilterError("level must not be negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 9:
            return int(text)
        number = logging.getLevelNamesMapping().get(text.upper())
        if number is not None:
            return number
    raise FilterError(
        f"unknown level {value!r}: use DEBUG, INFO, WARNING, ERROR, CRITICAL or a number"
    )


def field_text(value: Any) -> str:
    """The text form a ``field.<key>=<value>`` filter compares against: strings as they are,
    anything else as JSON (``500``, ``true``, ``null``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Filter:
    """Which records one client wants. The default matches everything.

    - ``level``: minimum level number.
    - ``loggers``: hierarchical prefixes; ``app`` matches ``app`` and ``app.db``, not
      ``application``. Any one matching is enough.
    - ``categories``: exact categories; any one matching is enough.
    - ``grep``: substring of the formatted message (``log``), case-sensitive.
    - ``fields``: every pair must equal the record's field in its text form (:func:`field_text`).
    - ``pids``: the process ids of the records wanted (several worker processes on one port);
      any one matching is enough.
    """

    level: int = 0
    loggers: tuple[str, ...] = ()
    categories: frozenset[str] = frozenset()
    grep: str | None = None
    fields: tuple[tuple[str, str], ...] = field(default=())
    pids: frozenset[int] = frozenset()

    def matches(self, entry: LogEntry) -> bool:
        """Whether ``entry`` passes every part of this filter."""
        if not self.matches_source(entry.levelno, entry.logger, entry.category, entry.pid):
            return False
        if self.grep is not None and self.grep not in entry.log:
            return False
        for key, text in self.fields:
            if key not in entry.fields or field_text(entry.fields[key]) != text:
                return False
        return True

    def matches_source(self, levelno: int, logger: str, category: str, pid: int | None) -> bool:
        """Whether a record of this level, logger, category and pid passes the parts of this
        filter that look at nothing else (all but ``grep`` and ``fields``)."""
        if levelno < self.level:
            return False
        if self.loggers and not any(
            logger == p or logger.startswith(p + ".") for p in self.loggers
        ):
            return False
        if self.categories and category not in self.categories:
            return False
        return not self.pids or pid in self.pids

    @property
    def reads_content(self) -> bool:
        """Whether matching looks at a record's message or fields (``grep``, ``fields``)."""
        return self.grep is not None or bool(self.fields)

    @property
    def filtering(self) -> bool:
        """Whether some records may not match (a level above every level, or any other
        condition)."""
        return not self.takes_all(logging.NOTSET)

    def takes_all(self, lowest: int) -> bool:
        """Whether every record of level ``lowest`` or above matches: whether a batch whose
        lowest level is ``lowest`` can be passed on without looking at each record."""
        return (
            self.level <= lowest
            and not self.loggers
            and not self.categories
            and self.grep is None
            and not self.fields
            and not self.pids
        )

    def select(self, entries: Iterable[LogEntry]) -> list[LogEntry]:
        """The entries that match, in order."""
        matches = self.matches
        return [entry for entry in entries if matches(entry)]

    def to_json(self) -> dict[str, Any]:
        """The filter as the ``hello`` / ``subscribed`` frames show it."""
        return {
            "level": self.level,
            "logger": list(self.loggers),
            "category": sorted(self.categories),
            "grep": self.grep,
            "fields": dict(self.fields),
            "pid": sorted(self.pids),
        }


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise FilterError(f"{name} must be a string, not {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise FilterError(f"{name} is longer than {MAX_TEXT} characters")
    return value


def _texts(name: str, values: Iterable[object]) -> list[str]:
    out = [_text(name, v) for v in values]
    if len(out) > MAX_TERMS:
        raise FilterError(f"at most {MAX_TERMS} {name} values")
    return out


def _pid(value: object) -> int:
    """A process id: a positive integer, or its decimal digits."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        digits = value.strip().lstrip("0") or "0"
        value = int(digits) if len(digits) <= 10 else -1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise FilterError(f"pid must be a positive integer, not {str(value)[:40]!r}")
    return value


def build_filter(
    *,
    level: object = None,
    loggers: Iterable[object] = (),
    categories: Iterable[object] = (),
    grep: object = None,
    fields: Mapping[Any, object] | None = None,
    pids: Iterable[object] = (),
) -> Filter:
    """Validate each part and build a :class:`Filter`; raises :class:`FilterError`."""
    pairs: list[tuple[str, str]] = []
    for key, value in (fields or {}).items():
        key = _text("field name", key)
        if not key:
            raise FilterError("field name must not be empty")
        pairs.append((key, _text(f"field.{key}", field_text(value))))
    if len(pairs) > MAX_TERMS:
        raise FilterError(f"at most {MAX_TERMS} field filters")
    return Filter(
        level=0 if level is None or level == "" else parse_level(level),
        loggers=tuple(p for p in _texts("logger", loggers) if p),
        categories=frozenset(c for c in _texts("category", categories) if c),
        grep=None if grep is None or grep == "" else _text("grep", grep),
        fields=tuple(pairs),
        pids=frozenset(_pid(p) for p in _terms("pid", pids)),
    )


def _terms(name: str, values: Iterable[object]) -> list[object]:
    out = list(values)
    if len(out) > MAX_TERMS:
        raise FilterError(f"at most {MAX_TERMS} {name} values")
    return out


def filter_from_query(query: Iterable[tuple[str, str]]) -> Filter:
    """Build a filter from query parameters (``level``, ``logger``, ``category``, ``grep``,
    ``field.<key>``, ``pid``). Other parameters are left for their own handlers."""
    level: str | None = None
    grep: str | None = None
    loggers: list[str] = []
    categories: list[str] = []
    pids: list[str] = []
    fields: dict[object, object] = {}
    for name, value in query:
        if name == "level":
            level = value
        elif name == "grep":
            grep = value
        elif name == "logger":
            loggers.append(value)
        elif name == "category":
            categories.append(value)
        elif name == "pid":
            pids.append(value)
        elif name.startswith("field."):
            fields[name[len("field.") :]] = value
    return build_filter(
        level=level, loggers=loggers, categories=categories, grep=grep, fields=fields, pids=pids
    )


def filter_from_message(spec: object) -> Filter:
    """Build a filter from a ``subscribe`` message's ``filter`` object.

    ``logger`` and ``category`` may be a string or a list of strings; ``pid`` an integer or
    a list of integers.
    """
    if spec is None:
        return Filter()
    if not isinstance(spec, dict):
        raise FilterError("filter must be an object")
    unknown = set(spec) - {"level", "logger", "category", "grep", "fields", "pid"}
    if unknown:
        raise FilterError(f"unknown filter keys: {', '.join(sorted(map(str, unknown)))}")

    def listed(name: str) -> list[object]:
        value = spec.get(name)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return value
        raise FilterError(f"{name} must be a string or a list of strings")

    fields = spec.get("fields")
    if fields is not None and not isinstance(fields, dict):
        raise FilterError("fields must be an object")
    pids = spec.get("pid")
    if pids is None:
        pids = []
    elif isinstance(pids, int | str):
        pids = [pids]
    elif not isinstance(pids, list):
        raise FilterError("pid must be an integer or a list of integers")
    return build_filter(
        level=spec.get("level"),
        loggers=listed("logger"),
        categories=listed("category"),
        grep=spec.get("grep"),
        fields=fields,
        pids=pids,
    )
