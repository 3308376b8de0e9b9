"""``wslogging tail``: follow a live stream in the terminal, reconnecting and resuming by itself.

One WebSocket to ``/ws/logs`` at a time. The cursor is the id of the last record printed (or,
before any, the ``last_id`` the first ``hello`` named), and every reconnect passes it back as
``since``: records logged while the connection was down arrive once, in order, and what the
server could no longer keep is announced by its ``gap`` frame, which is printed as a notice.

Decisions a user sees (also in docs/cli.rst):

- Records go to stdout, one per line (``--json``: the ``log`` and ``gap`` frames as JSON lines,
  as sent); status lines (connected, retrying) go to stderr, so a pipe gets only records.
- A message's own line breaks are kept, with continuation lines indented, and control
  characters (escape sequences, bidi overrides and marks) are shown escaped: log text is data
  from anywhere and must not drive the terminal or forge a line of its own. The one exception
  is the app's own colours: SGR sequences (``ESC [ digits and semicolons m``: colour, bold)
  pass through to a colour terminal, with a reset after each message, field list and
  traceback, and are stripped when colour is off (``--color never``, a pipe); ``--json``
  prints records unchanged.
- Bad input that cannot fix itself ends it with status 2: a wrong or missing key (4401 or 401),
  a refused Host or Origin (403), a filter the server rejects (400). Anything else (refused
  connection, server restart, 503, 429) is retried with backoff, without end.
- Ctrl-C (or SIGTERM) closes the WebSocket normally and exits with status 130, no traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from .._backoff import Backoff
from .._filters import FilterError, build_filter
from .._version import __version__

DEFAULT_URL = "http://127.0.0.1:3000"
STREAM_PATH = "/ws/logs"
# Reconnect delays: start small (a restarting server is back within a second or two), double
# on each failure, never wait more than the cap; a connection that got its hello starts over.
FIRST_DELAY = 0.5
MAX_DELAY = 10.0
# The client pings this often and gives up on a server that does not answer within half of it:
# a server that vanished without closing (a laptop that slept, a dropped NAT entry) is noticed.
HEARTBEAT = 20.0
# A single frame larger than this is refused (the server's records are bounded far below it).
MAX_FRAME = 16 * 1024 * 1024
# Exit statuses: 2 for input that cannot succeed by retrying, 130 for Ctrl-C (128 + SIGINT).
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
# Control characters (C0 but tab and newline, DEL, C1) and the bidi controls and marks that
# can make a line display as something else; each is shown as an escape instead.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# An SGR sequence (colour, bold, ...) and nothing else: digits and semicolons only, bounded,
# so that matching stays linear in the text.
_SGR = re.compile("\x1b\\[[0-9;]{0,64}m")
_INDENT = "\n    "
# How a quoted field value writes what would end the quote or the line (backslash first).
_QUOTED = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_LEVEL_STYLES = (  # (minimum levelno, SGR sequence), highest first
    (50, "\x1b[1;37;41m"),
    (40, "\x1b[1;31m"),
    (30, "\x1b[33m"),
    (20, "\x1b[32m"),
    (0, "\x1b[2m"),
)
_GAP_STYLE = "\x1b[1;30;43m"
_GAP_REASONS = {
    "history": "older than the server's history",
    "restart": "the server restarted",
    "slow_client": "this client fell behind",
    "overflow": "the app logged faster than the server took records",
    "source": "lost before they reached this server",
}


class TailError(Exception):
    """A problem that retrying cannot fix: printed as one line, exit status 2."""


def stream_url(url: str) -> str:
    """The WebSocket URL of the log stream for what the user typed.

    Accepts ``host:port``, an ``http(s)://`` base URL (also one behind a path prefix, as a
    reverse proxy may serve it) or a ``ws(s)://`` URL; the path gets ``/ws/logs`` unless it
    already ends with it. A query in the URL is kept.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise TailError(f"unsupported URL scheme {parts.scheme!r}: use http, https, ws or wss")
    if not parts.hostname:
        raise TailError(f"no host in URL {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(STREAM_PATH):
        path += STREAM_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def host_port(url: str) -> tuple[str, int]:
    """The host and port that ``url`` (as :func:`stream_url` takes it) names; the scheme's
    port when it names none."""
    parts = urlsplit(stream_url(url))
    try:
        port = parts.port
    except ValueError:
        raise TailError(f"bad port in URL {url!r}") from None
    assert parts.hostname is not None  # stream_url() checked
    return parts.hostname, port or (443 if parts.scheme == "wss" else 80)


def api_url(stream: str, path: str) -> str:
    """The http(s) URL of the endpoint at ``path`` (``/api/logs``) of the server whose stream
    URL (from :func:`stream_url`) is ``stream``, behind the same path prefix."""
    parts = urlsplit(stream)
    prefix = parts.path[: -len(STREAM_PATH)]
    scheme = parts.scheme.replace("ws", "http", 1)
    return urlunsplit(parts._replace(scheme=scheme, path=prefix + path))


def parse_fields(pairs: Iterable[str]) -> dict[str, str]:
    """``--field KEY=VALUE`` options as a mapping; raises :class:`TailError` on a bad one."""
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TailError(f"--field takes KEY=VALUE, not {pair!r}")
        fields[key] = value
    return fields


@dataclass
class Options:
    """What to follow and how to show it (the parsed command line)."""

    url: str = DEFAULT_URL
    key: str | None = None
    # The file the key was read from, when it is a made-up key kept for a local server.
    key_source: str | None = None
    level: str | None = None
    loggers: Sequence[str] = ()
    categories: Sequence[str] = ()
    grep: str | None = None
    fields: Sequence[str] = ()  # KEY=VALUE
    pids: Sequence[str] = ()
    since: str | None = None
    lines: int = 0
    json: bool = False
    color: bool = False
    quiet: bool = False
    cafile: str | None = None

    def query(self) -> list[tuple[str, str]]:
        """The filter as query parameters (see :func:`filter_query`)."""
        return filter_query(
            level=self.level,
            loggers=self.loggers,
            categories=self.categories,
            grep=self.grep,
            fields=parse_fields(self.fields),
            pids=self.pids,
        )


def filter_query(
    *,
    level: str | None = None,
    loggers: Sequence[str] = (),
    categories: Sequence[str] = (),
    grep: str | None = None,
    fields: Mapping[str, str] | None = None,
    pids: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """A filter as the query parameters of ``/ws/logs`` and ``/api/logs``, checked here first
    so that a mistake gets the same clear message the server would give (as
    :class:`TailError`), before any connection is made."""
    fields = fields or {}
    try:
        build_filter(
            level=level,
            loggers=loggers,
            categories=categories,
            grep=grep,
            fields=fields,
            pids=pids,
        )
    except FilterError as exc:
        raise TailError(str(exc)) from None
    query: list[tuple[str, str]] = []
    if level:
        query.append(("level", level))
    query += [("logger", name) for name in loggers]
    query += [("category", name) for name in categories]
    if grep:
        query.append(("grep", grep))
    query += [(f"field.{key}", value) for key, value in fields.items()]
    query += [("pid", pid) for pid in pids]
    return query


def _escape(text: str) -> str:
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], text)


def _clean(text: str, color: bool = False) -> str:
    """``text`` safe to print: control characters escaped, continuation lines indented.

    SGR sequences are kept when ``color`` (then followed by a reset, so that the app's colour
    ends with its text) and dropped otherwise; any other escape sequence is shown escaped.
    """
    text = text.replace("\r\n", "\n")
    parts: list[str] = []
    start = 0
    for match in _SGR.finditer(text):
        parts.append(_escape(text[start : match.start()]))
        if color:
            parts.append(match.group())
        start = match.end()
    parts.append(_escape(text[start:]))
    if color and len(parts) > 1:
        parts.append(_RESET)
    return "".join(parts).replace("\n", _INDENT)


def _field_text(value: Any) -> str:
    """A field's value: a plain word as is, other text quoted (line breaks as ``\\n``, so a
    field stays on its line; control characters are left to :func:`_clean`), else JSON."""
    if not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value and not any(c.isspace() or c in "\"'=\\" for c in value):
        return value
    for char, escaped in _QUOTED:
        value = value.replace(char, escaped)
    return f'"{value}"'


def _time_text(value: Any) -> str:
    """A record's ``time`` in the terminal's local time, to the millisecond."""
    try:
        moment = datetime.fromisoformat(str(value)).astimezone()
    except ValueError:
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


class Printer:
    """Turns frames into lines on ``out``: text (coloured or not) or JSON lines."""

    def __init__(self, out: TextIO, *, as_json: bool, color: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.color = color

    def _style(self, sgr: str, text: str) -> str:
        return f"{sgr}{text}{_RESET}" if self.color else text

    def record(self, frame: dict[str, Any], raw: str) -> None:
        """Print a ``log`` frame; ``raw`` is its JSON text as received."""
        if self.as_json:
            self._write(raw)
            return
        levelno = frame.get("levelno")
        if not isinstance(levelno, int):
            levelno = 0
        sgr = next(s for n, s in _LEVEL_STYLES if levelno >= n)
        level = _clean(str(frame.get("level", "")))
        parts = [
            self._style(_DIM, _time_text(frame.get("time"))),
            self._style(sgr, f"{level:<8}"),
            _clean(f"{frame.get('logger', '')}:"),
            _clean(str(frame.get("log", "")), self.color),
        ]
        fields = frame.get("fields")
        if isinstance(fields, dict) and fields:
            pairs = " ".join(f"{k}={_field_text(v)}" for k, v in fields.items())
            parts.append(self._style(_DIM, _clean(pairs, self.color)))
        line = " ".join(parts)
        exc = frame.get("exc")
        if exc:
            line += _INDENT + self._style(sgr, _clean(str(exc).rstrip("\n"), self.color))
        self._write(line)

    def gap(self, frame: dict[str, Any], raw: str) -> None:
        """Print a ``gap`` frame as a notice line; ``raw`` is its JSON text as received."""
        if self.as_json:
            self._write(raw)
            return
        missed = frame.get("missed")
        count = "an unknown number of records" if missed is None else f"{missed} records"
        if missed == 1:
            count = "1 record"
        reason = frame.get("reason")
        why = _GAP_REASONS.get(str(reason), _clean(str(reason)))
        levels = frame.get("levels")
        if isinstance(levels, dict) and levels:  # an overflow gap counts each level
            why += ": " + _clean(", ".join(f"{n} {level}" for level, n in levels.items()))
        self._write(self._style(_GAP_STYLE, f"--- gap: {count} missed ({why}) ---"))

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")

    def flush(self) -> None:
        self.out.flush()


class _Retry(Exception):
    """The connection ended or could not be made; try again after ``delay`` (if given)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class Tail:
    """Follows one stream until cancelled; :meth:`run` raises :class:`TailError` to stop."""

    def __init__(self, options: Options, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.url = stream_url(options.url)
        self.query = options.query()
        self.cursor = options.since
        self.printer = Printer(out, as_json=options.json, color=options.color)
        self.err = err
        self.problem = ""  # the last reconnect reason said, not to repeat it
        self.headers = {"User-Agent": f"wslogging-tail/{__version__}"}
        if options.key:
            self.headers["Authorization"] = f"Bearer {options.key}"
        self.ssl: ssl.SSLContext | bool = True
        if options.cafile:
            self.ssl = ssl.create_default_context(cafile=options.cafile)

    def say(self, line: str) -> None:
        """A status line on stderr (unless ``--quiet``)."""
        if not self.options.quiet:
            print(f"wslogging tail: {line}", file=self.err, flush=True)

    async def run(self) -> None:
        backoff = Backoff(FIRST_DELAY, MAX_DELAY)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as session:
            while True:
                try:
                    if self.cursor is None and self.options.lines > 0:
                        await self._backlog(session)
                    await self._follow(session, backoff)
                except _Retry as retry:
                    delay = retry.delay if retry.delay is not None else backoff.next()
                    # Said once: a server that stays down does not fill the terminal.
                    if str(retry) != self.problem:
                        self.problem = str(retry)
                        self.say(f"{retry}; reconnecting (every {MAX_DELAY:g}s at most)")
                    await asyncio.sleep(delay)

    def _with_query(self, url: str, extra: Sequence[tuple[str, str]] = ()) -> str:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True) + self.query + list(extra)
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _backlog(self, session: aiohttp.ClientSession) -> None:
        """Print the newest ``--lines`` records from history, and follow on from there."""
        base = api_url(self.url, "/api/logs")
        url = self._with_query(base, [("limit", str(self.options.lines))])
        try:
            async with session.get(url, ssl=self.ssl) as response:
                if response.status != 200:
                    detail = await _detail(response)
                    self._refused(response.status, detail, response.headers)
                page = await response.json()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _untrusted(exc) from None
        except aiohttp.ClientError as exc:
            raise _Retry(f"cannot reach {base}: {_reason(exc)}") from None
        for frame in page["records"]:
            self.printer.record(frame, json.dumps(frame, ensure_ascii=False, separators=(",", ":")))
        self.printer.flush()
        self.cursor = str(page["last_id"])

    def _refused(self, status: int, detail: str, headers: Any) -> NoReturn:
        """Raise what a refused request means: stop (:class:`TailError`) or :class:`_Retry`."""
        if status == 401:
            hint = "give the key with --key or $WSLOGGING_API_KEY"
            if self.options.key_source:
                hint = f"the key kept in {self.options.key_source} is not accepted; {hint}"
            raise TailError(f"refused: {detail or 'unauthorized'} ({hint})")
        if status in (400, 403, 404):
            raise TailError(f"refused with HTTP {status}: {detail}")
        delay: float | None = None
        if status == 429:
            try:
                delay = float(headers.get("Retry-After", ""))
            except ValueError:
                delay = None
        raise _Retry(f"refused with HTTP {status}: {detail}", delay)

    async def _follow(self, session: aiohttp.ClientSession, backoff: Backoff) -> None:
        extra = [] if self.cursor is None else [("since", self.cursor)]
        url = self._with_query(self.url, extra)
        try:
            ws = await session.ws_connect(
                url, heartbeat=HEARTBEAT, max_msg_size=MAX_FRAME, ssl=self.ssl, compress=0
            )
        except aiohttp.WSServerHandshakeError as exc:
            self._refused(exc.status, exc.message, exc.headers or {})
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _untrusted(exc) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Retry(f"cannot connect to {self.url}: {_reason(exc)}") from None
        reason = ""
        async with ws:
            while True:
                message = await ws.receive()
                if message.type is aiohttp.WSMsgType.TEXT:
                    self._frame(message.data, backoff)
                elif message.type is aiohttp.WSMsgType.CLOSE:
                    reason = str(message.extra or "")
                    break
                elif message.type is aiohttp.WSMsgType.ERROR:
                    reason = _reason(message.data)
                    break
                elif message.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    break
        if ws.close_code == 4401:
            raise TailError(f"refused: {reason or 'unauthorized'}")
        detail = f"{ws.close_code}: {reason}" if reason else str(ws.close_code)
        raise _Retry(f"connection closed ({detail})")

    def _frame(self, data: str, backoff: Backoff) -> None:
        try:
            frame = json.loads(data)
            kind = frame.get("type")
        except (ValueError, AttributeError):
            return  # not a frame of ours: nothing to show
        if kind == "log":
            self.printer.record(frame, data)
            self.cursor = str(frame["id"])
        elif kind == "gap":
            self.printer.gap(frame, data)
            if frame.get("id") is not None:  # a loss that stands in the stream: resume past it
                self.cursor = str(frame["id"])
        elif kind == "position" and frame.get("last_id") is not None:
            self.cursor = str(frame["last_id"])  # examined this far: nothing more matched
        elif kind == "hello":
            backoff.reset()
            self.problem = ""
            if self.cursor is None:
                self.cursor = str(frame["last_id"])
            self.say(f"following {self.url} ({frame.get('server', 'server')})")
        self.printer.flush()


async def _detail(response: aiohttp.ClientResponse) -> str:
    """The ``detail`` of a JSON error body, else the reason phrase."""
    try:
        body = await response.json(content_type=None)
        return str(body.get("detail") or body.get("error") or response.reason)
    except (ValueError, aiohttp.ClientError, AttributeError):
        return str(response.reason or "")


def _untrusted(exc: aiohttp.ClientConnectorCertificateError) -> TailError:
    """A server certificate that is not trusted will not become trusted by retrying."""
    return TailError(
        f"the server's certificate is not trusted ({exc.certificate_error}); "
        "give its CA with --cafile"
    )


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def run(options: Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Follow until Ctrl-C/SIGTERM (status 130) or a refusal that retrying cannot fix (2)."""
    try:
        tail = Tail(options, out, err)
    except TailError as exc:
        print(f"wslogging tail: {exc}", file=err)
        return EXIT_USAGE
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(tail.run())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except TailError as exc:
        print(f"wslogging tail: {exc}", file=err)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python from complaining
        # about the unflushed stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
