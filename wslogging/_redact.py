"""Pure: mask secrets in a record (named fields, ``name=value`` text, patterns) on a copy."""

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
      named field written as ``name=value``, ``name: value``, ``"name": "value"`` (up to the
      next space, quote, ``&``, ``,`` or ``;``; an ``Authorization`` scheme such as ``Bearer``
      is kept), and every match of ``patterns`` (only what a pattern's groups captured when
      it has groups, else the whole match).

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
        self._pairs: re.Pattern[str] | None = None
        if names:
            alternation = _name_pattern(names)
            self._names = re.compile(alternation, re.IGNORECASE)
            self._pairs = re.compile(
                rf"(?P<key>[\w.-]*(?:{alternation})[\w.-]*)"
                r"(?P<sep>[\"']?[ \t]*[:=][ \t]*[\"']?)"
                r"(?:(?:bearer|basic|digest|token)[ \t]+)?"
                r"(?P<value>[^\s\"'&,;]+)",
                re.IGNORECASE,
            )

    # -- the pieces -------------------------------------------------------------------------

    def secret_name(self, name: object) -> bool:
        """Whether a field called ``name`` holds a secret."""
        return self._names is not None and isinstance(name, str) and bool(self._names.search(name))

    def redact_text(self, text: str) -> str:
        """``text`` with named values and pattern matches masked."""
        if self._pairs is not None:
            text = self._pairs.sub(self._mask_value, text)
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

    def _mask_value(self, match: re.Match[str]) -> str:
        start, end = match.span("value")
        whole = match.group(0)
        offset = match.start()
        return whole[: start - offset] + self.mask + whole[end - offset :]

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
