"""Pure: mask secrets in a record (named fields, ``name=value`` text, URL passwords, patterns)
on a copy, in time linear in the record's size."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ._wire import _EXC_FORMATTER, json_safe, resolve_exc_info
from ._wire import _RECORD_ATTRS as RECORD_ATTRS

# Field names masked when none are given: what usually holds a credential.
DEFAULT_FIELDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
)
DEFAULT_MASK = "***"

# Whoever sends the app a request chooses much of what it logs, and the filter runs on the
# app's thread: every pattern here is matched in time linear in the text, as a whole. None
# can start inside a run of the characters it repeats (a key is a whole run of name
# characters, hence the lookbehind) and none gives back what a repetition took (``*+``,
# ``++``), so no run is scanned again from each of its positions.
#
# A key (group 1: a whole run of name characters) and its separator (``=``, ``:``, ``": "``,
# ...); group 2 is the quote that opens the value, if any.
_KEY = re.compile(r"(?<![\w.-])([\w.-]++)[\"']?[ \t]*+[:=][ \t]*+([\"']?)")
# An Authorization scheme, kept in front of the masked credential.
_SCHEME = r"(?:bearer|basic|digest|token)[ \t]++"
_SCHEME_START = re.compile(_SCHEME, re.IGNORECASE)
# A value without quotes, group 1: up to the next space, quote, ``&``, ``,`` or ``;``.
_BARE_VALUE = re.compile(rf"(?:{_SCHEME})?([^\s\"'&,;]++)", re.IGNORECASE)
# The inside of a quoted value, to its closing quote (not an escaped one) or the line's end.
_QUOTED_BODY = {quote: re.compile(rf"(?:[^\\{quote}\n]|\\.)*+") for quote in "\"'"}
# A URL's authority, group 1: ``user:password@host:port``.
_URL_AUTHORITY = re.compile(r"://([^\s/?#\"'<>]*+)")


def _value_span(text: str, start: int, quote: str) -> tuple[int, int] | None:
    """Where the value starting at ``start`` lies, its scheme left out; ``None`` if none.

    After an opening ``quote`` the value runs to the closing one, spaces and all; without a
    closing quote on the line it is read as a bare value. No text is searched twice for the
    same quote: an opening quote follows a separator, never a backslash, so any in the text
    an earlier search went over would have closed that search.
    """
    if quote:
        body = _QUOTED_BODY[quote].match(text, start)  # never None: it may match nothing
        end = body.end() if body else start
        if text.startswith(quote, end):
            if end == start:
                return None
            scheme = _SCHEME_START.match(text, start, end)
            return (scheme.end() if scheme and scheme.end() < end else start), end
    bare = _BARE_VALUE.match(text, start)
    return bare.span(1) if bare else None


def _name_pattern(names: Iterable[str]) -> str:
    """One alternation for ``names``, ``-`` and ``_`` alike."""
    alternatives = [
        "[-_]".join(re.escape(part) for part in re.split(r"[-_]", name)) for name in names
    ]
    return "|".join(sorted(alternatives, key=len, reverse=True))


class RedactingFilter(logging.Filter):
    """Masks secrets in each record before it leaves the process, on a copy.

    Add it to the ``filters`` of a :class:`WebSocketHandler` (in ``dictConfig``:
    ``"()": "wslogging.RedactingFilter"`` under ``filters``, then that filter's name in the
    handler's ``filters``). What it masks, with ``mask``:

    - the value of every extra, structlog pair or ``%(name)s`` argument whose name contains
      one of ``fields`` (case-insensitive, ``-`` and ``_`` alike), at any depth of nested
      dicts and lists;
    - in the message, the traceback, the stack and every string value: the value after a
      named field written as ``name=value``, ``name: value``, ``"name": "value"`` (a quoted
      value up to its closing quote, spaces and all; any other up to the next space, quote,
      ``&``, ``,`` or ``;``; an ``Authorization`` scheme such as ``Bearer`` is kept), the
      password in a URL (``scheme://user:password@host``), and every match of ``patterns``
      (only what a pattern's groups captured when it has groups, else the whole match).

    Time is linear in the size of the record, whatever its text (the filter runs on the
    app's thread, and much of what an app logs is chosen by whoever sends it a request), as
    long as the ``patterns`` given are: Python's ``re`` backtracks, so a pattern such as
    ``(a+)+$`` is not.

    :meth:`filter` never changes the record it is given: it returns a redacted copy. A
    :class:`WebSocketHandler` streams the copy on every Python version; on Python 3.12 and
    later, any handler or logger passes the copy on (on 3.11 others ignore it). Fields are
    made JSON-safe first (anything else ``repr()``'d), as the handler would. Never raises: a
    record it cannot take apart is passed with its message masked as a whole.
    """

    def __init__(
        self,
        name: str = "",
        fields: Iterable[str] | str | None = None,
        patterns: Iterable[str | re.Pattern[str]] | str = (),
        mask: str = DEFAULT_MASK,
    ) -> None:
        super().__init__(name)
        if fields is None:
            fields = DEFAULT_FIELDS
        elif isinstance(fields, str):
            fields = [fields]
        names = [str(f).strip().lower() for f in fields if str(f).strip()]
        if isinstance(patterns, str):
            patterns = [patterns]
        self.mask = str(mask)
        self._patterns = [re.compile(p) if isinstance(p, str) else p for p in patterns]
        self._names: re.Pattern[str] | None = None
        if names:
            self._names = re.compile(_name_pattern(names), re.IGNORECASE)

    # -- the pieces -------------------------------------------------------------------------

    def secret_name(self, name: object) -> bool:
        """Whether a field called ``name`` holds a secret."""
        return self._names is not None and isinstance(name, str) and bool(self._names.search(name))

    def redact_text(self, text: str) -> str:
        """``text`` with named values, URL passwords and pattern matches masked."""
        if self._names is not None:
            text = self._mask_named_values(text, self._names)
        text = _URL_AUTHORITY.sub(self._mask_userinfo, text)
        for pattern in self._patterns:
            text = pattern.sub(self._mask_match, text)
        return text

    def redact_value(self, value: Any) -> Any:
        """A JSON-safe copy of ``value`` with secret-named entries masked at any depth and
        every string redacted as text."""
        return self._redact_plain(json_safe(value))

    def _redact_plain(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {
                k: self.mask if self.secret_name(k) else self._redact_plain(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._redact_plain(v) for v in value]
        return value

    def _mask_named_values(self, text: str, names: re.Pattern[str]) -> str:
        # One pass from left to right: each key is looked at once, a masked value is skipped.
        out: list[str] = []
        copied = position = 0
        while (key := _KEY.search(text, position)) is not None:
            position = key.end()
            if names.search(key.group(1)) is None:
                continue
            span = _value_span(text, position, key.group(2))
            if span is not None:
                out += (text[copied : span[0]], self.mask)
                copied = position = span[1]
        return "".join((*out, text[copied:])) if out else text

    def _mask_userinfo(self, match: re.Match[str]) -> str:
        userinfo, at, host = match.group(1).rpartition("@")
        user, colon, password = userinfo.partition(":")
        if not (at and colon and password):
            return match.group(0)
        return f"://{user}:{self.mask}@{host}"

    def _mask_match(self, match: re.Match[str]) -> str:
        if not match.re.groups:
            return self.mask
        whole, offset = match.group(0), match.start()
        spans = sorted(
            match.span(g) for g in range(1, match.re.groups + 1) if match.span(g) != (-1, -1)
        )
        out: list[str] = []
        at = 0
        for start, end in spans:
            if start - offset < at:  # a group nested in one already masked
                continue
            out += (whole[at : start - offset], self.mask)
            at = end - offset
        return "".join(out) + whole[at:]

    # -- records ----------------------------------------------------------------------------

    def filter(self, record: logging.LogRecord) -> logging.LogRecord:  # type: ignore[override]
        """A redacted copy of ``record`` (``record`` itself is not changed)."""
        try:
            return self.redact_record(record)
        except Exception:  # a record odd enough to break this is passed, its message masked
            fallback = copy.copy(record)
            fallback.msg, fallback.args = self.mask, None
            fallback.exc_info = fallback.exc_text = fallback.stack_info = None
            for key in list(fallback.__dict__):
                if key not in RECORD_ATTRS:
                    del fallback.__dict__[key]
            return fallback

    def redact_record(self, record: logging.LogRecord) -> logging.LogRecord:
        """A copy of ``record`` with every secret masked; may raise for a broken record."""
        redacted = copy.copy(record)
        msg = record.msg
        exc_info = record.exc_info
        if isinstance(msg, dict) and not record.args:
            # A structlog event dict: kept a dict (a ProcessorFormatter renders it), its
            # exc_info resolved here and formatted with the rest of the traceback below.
            exc_info = exc_info or resolve_exc_info(msg.get("exc_info"))
            redacted.msg = {
                k: self.mask if self.secret_name(k) else self.redact_value(v)
                for k, v in msg.items()
                if k != "exc_info"
            }
        else:
            args = record.args
            if isinstance(args, Mapping):
                redacted.args = {
                    k: self.mask if self.secret_name(k) else v for k, v in args.items()
                }
            try:
                message = redacted.getMessage()
            except Exception:  # arguments that do not fit the message: keep the template
                message = str(msg)
            redacted.msg, redacted.args = self.redact_text(message), None
        exc_text = record.exc_text
        if exc_info and exc_info[0] is not None and not exc_text:
            exc_text = _EXC_FORMATTER.formatException(exc_info)
        redacted.exc_info = None
        redacted.exc_text = self.redact_text(exc_text) if exc_text else None
        if record.stack_info:
            redacted.stack_info = self.redact_text(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in RECORD_ATTRS and not key.startswith("_"):
                redacted.__dict__[key] = (
                    self.mask if self.secret_name(key) else self.redact_value(value)
                )
        return redacted
