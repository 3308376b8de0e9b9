"""``wslogging mcp``: a Model Context Protocol server over stdio for a running wslogging server.

It is a client of that server's HTTP API (embedded, collector or Redis mode alike): each tool
call is one request (``GET /api/logs``, ``GET /api/stats``) or one WebSocket to ``/ws/logs``,
so it holds no state of its own and a server that restarts is simply reached again on the next
call. It needs the ``mcp`` extra; :mod:`wslogging.cli` imports this module only for ``mcp``.

Decisions a model (and its user) sees, also in docs/cli.rst:

- ``get_logs`` without ``since`` returns the newest ``limit`` matching records; with ``since``
  the oldest ``limit`` after that id, to page forward. Every result has ``next_since``, the id
  to continue from.
- ``wait_for_logs`` without ``since`` waits for records logged after the call; with ``since``
  for records after that id (returned at once if some are already there), so passing the
  previous result's ``next_since`` misses nothing between two calls. It returns as soon as one
  record matches, with whatever else arrives within :data:`SETTLE` seconds, or empty at the
  timeout.
- Bounded for a model's context: at most :data:`MAX_RECORDS` records a call; a message keeps
  its first :data:`MESSAGE_MAX` characters, a traceback its first :data:`TRACEBACK_HEAD` and
  last :data:`TRACEBACK_TAIL` (the exception is at its end), a field value
  :data:`FIELD_MAX`, each cut marked ``… [cut N characters]``; and the records of one result
  share :data:`RESULT_BUDGET` characters of text: those beyond it are left out, counted, and
  ``next_since`` (or a smaller ``limit``) reaches them.
- Every failure (a refused key, an unreachable server, a bad filter) is a tool error whose text
  says what is wrong; the MCP server goes on answering the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NoReturn, TextIO
from urllib.parse import urlencode

import aiohttp
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from .._filters import field_text
from .._version import __version__
from . import _tail

# Records one call returns at most, and by default.
MAX_RECORDS = 200
DEFAULT_RECORDS = 50
# Characters kept of a message, of a traceback (its start and its end), of one field value.
MESSAGE_MAX = 2000
TRACEBACK_HEAD = 1000
TRACEBACK_TAIL = 3000
FIELD_MAX = 300
# Fields shown of one record; the rest are counted under the key "…".
FIELDS_MAX = 50
# Characters of record text one result holds at most (about 25,000 tokens).
RESULT_BUDGET = 100_000
# wait_for_logs: default and longest wait, and how long it goes on collecting after the first
# matching record (records logged together arrive together).
DEFAULT_WAIT = 30.0
MAX_WAIT = 300.0
SETTLE = 0.25
# Longest wait for one HTTP answer, and for a connection.
HTTP_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0

INSTRUCTIONS = (
    "Reads the live logs of a running Python application served by wslogging. get_logs "
    "returns recent records (filter by level, logger, category, text, fields); wait_for_logs "
    "waits until matching records are logged (for example until a deploy logs 'ready') and "
    "returns them; get_stats tells how the log server is doing. Record times are UTC; each "
    "result gives `now` and a `next_since` id: pass it as `since` to continue where it ended."
)


class Gap(BaseModel):
    """Records the server could not deliver."""

    missed: int | None = Field(description="how many records were lost (null if unknown)")
    reason: str = Field(
        description="history (older than the server keeps), restart, slow_client, overflow "
        "(the app logged faster than the server took records) or source"
    )


class Record(BaseModel):
    """One log record, cut to fit (see the marker ``… [cut N characters]``)."""

    id: str = Field(description="the record's id; pass it as `since` to get what follows")
    time: str = Field(description="when it was logged (ISO 8601, UTC)")
    level: str
    levelno: int
    logger: str
    category: str
    pid: int | None = Field(description="the process that logged it")
    log: str = Field(description="the formatted message")
    fields: dict[str, Any] = Field(description="the record's structured fields (extras)")
    exc: str | None = Field(description="the traceback, if the record has one")


class LogsResult(BaseModel):
    """A page of records, oldest first."""

    records: list[Record]
    next_since: str = Field(description="pass as `since` to continue after this result")
    gaps: list[Gap] = Field(description="records the server lost before or among these")
    left_out: int = Field(description="records not included, to keep this result short")
    now: str = Field(description="the time of this answer (ISO 8601, UTC)")


LevelArg = Annotated[
    str | int | None,
    Field(
        description="minimum level: debug, info, warning, error, critical, or a number "
        "(30 is warning); omit for every level"
    ),
]
LoggerArg = Annotated[
    list[str] | None,
    Field(
        description="logger names; each matches itself and its children ('app' matches "
        "'app' and 'app.db', not 'application'); any one matching is enough"
    ),
]
CategoryArg = Annotated[
    list[str] | None,
    Field(description="exact categories (a record's category extra, else its logger name)"),
]
GrepArg = Annotated[
    str | None, Field(description="only records whose message contains this text (exact case)")
]
FieldsArg = Annotated[
    dict[str, str | int | float | bool] | None,
    Field(
        description="structured fields a record must have with these values, e.g. "
        '{"request_id": "abc", "status": 500}'
    ),
]
SinceArg = Annotated[
    str | None,
    Field(description="a record id (next_since of an earlier result): only records after it"),
]
LimitArg = Annotated[
    int, Field(ge=1, le=MAX_RECORDS, description=f"records to return at most (1-{MAX_RECORDS})")
]
TimeoutArg = Annotated[
    float,
    Field(gt=0, le=MAX_WAIT, description=f"seconds to wait at most (up to {MAX_WAIT:g})"),
]
_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)


# -- cutting and rendering (pure) ---------------------------------------------------------


def cut(text: str, head: int, tail: int = 0) -> str:
    """``text`` if it has at most ``head + tail`` characters, else its first ``head`` and last
    ``tail`` characters with ``… [cut N characters]`` where the rest was."""
    over = len(text) - head - tail
    if over <= 0:
        return text
    marker = f"… [cut {over:,} characters]"
    return text[:head] + marker + ("…" + text[-tail:] if tail else "")


def _bounded_value(value: Any) -> Any:
    if isinstance(value, str):
        return cut(value, FIELD_MAX)
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False)
        return value if len(text) <= FIELD_MAX else cut(text, FIELD_MAX)
    return value


def bounded_record(frame: dict[str, Any]) -> dict[str, Any]:
    """A ``log`` frame as a :class:`Record`'s data, its long parts cut."""
    fields = frame.get("fields")
    items = list(fields.items()) if isinstance(fields, dict) else []
    shown = {str(k): _bounded_value(v) for k, v in items[:FIELDS_MAX]}
    if len(items) > FIELDS_MAX:
        shown["…"] = f"{len(items) - FIELDS_MAX} more fields cut"
    exc = frame.get("exc")
    pid = frame.get("pid")
    levelno = frame.get("levelno")
    return {
        "id": str(frame.get("id", "")),
        "time": _utc(frame.get("time")),
        "level": str(frame.get("level", "")),
        "levelno": levelno if isinstance(levelno, int) else 0,
        "logger": str(frame.get("logger", "")),
        "category": str(frame.get("category", "")),
        "pid": pid if isinstance(pid, int) else None,
        "log": cut(str(frame.get("log", "")), MESSAGE_MAX),
        "fields": shown,
        "exc": cut(str(exc).rstrip("\n"), TRACEBACK_HEAD, TRACEBACK_TAIL) if exc else None,
    }


def _utc(value: Any) -> str:
    """An ISO 8601 time in UTC to the millisecond (``Z``), or the text as it was."""
    try:
        moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    except ValueError:
        return str(value)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _indented(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\n    ")


def record_text(record: dict[str, Any]) -> str:
    """One record as a model reads it: ``time level logger: message {fields}``, then the
    traceback, indented."""
    line = f"{record['time']} {record['level']} {record['logger']}: {_indented(record['log'])}"
    if record["fields"]:
        line += " " + json.dumps(record["fields"], ensure_ascii=False)
    if record["exc"]:
        line += "\n    " + _indented(record["exc"])
    return line


def gap_text(gap: dict[str, Any]) -> str:
    missed = gap["missed"]
    count = "an unknown number of records" if missed is None else f"{missed} records"
    return f"--- gap: {count} missed ({gap['reason']}) ---"


def _gap(frame: dict[str, Any]) -> dict[str, Any]:
    missed = frame.get("missed")
    return {"missed": missed if isinstance(missed, int) else None, "reason": str(frame["reason"])}


class Page:
    """Records and gaps in the order the server sent them, fitted to :data:`RESULT_BUDGET`."""

    def __init__(self) -> None:
        # (is it a record, the record or gap, its text)
        self.items: list[tuple[bool, dict[str, Any], str]] = []
        self.gaps: list[dict[str, Any]] = []

    def add_record(self, frame: dict[str, Any]) -> None:
        record = bounded_record(frame)
        self.items.append((True, record, record_text(record)))

    def add_gap(self, frame: dict[str, Any]) -> None:
        gap = _gap(frame)
        self.gaps.append(gap)
        self.items.append((False, gap, gap_text(gap)))

    @property
    def records(self) -> list[dict[str, Any]]:
        return [item for is_record, item, _ in self.items if is_record]

    def fit(self, keep: Literal["first", "last"]) -> int:
        """Leave out the records past the budget, from the end (``first``: the oldest are
        kept) or from the start (``last``); at least one record stays. Returns how many
        were left out."""
        order = self.items if keep == "first" else self.items[::-1]
        kept: list[tuple[bool, dict[str, Any], str]] = []
        used = left_out = records = 0
        for is_record, item, text in order:
            if is_record and (left_out or (records and used + len(text) > RESULT_BUDGET)):
                left_out += 1
                continue
            used += len(text) + 1
            records += is_record
            kept.append((is_record, item, text))
        self.items = kept if keep == "first" else kept[::-1]
        return left_out

    def result(self, next_since: str, left_out: int, summary: str) -> CallToolResult:
        """The tool result: :class:`LogsResult` as structured content, and as text the
        ``summary`` line and one line per record."""
        now = _utc(datetime.now(UTC).isoformat())
        data = LogsResult.model_validate(
            {
                "records": self.records,
                "next_since": next_since,
                "gaps": self.gaps,
                "left_out": left_out,
                "now": now,
            }
        ).model_dump(mode="json")
        lines = [f"{summary} Now {now}; next_since={next_since}."]
        lines += [text for _, _, text in self.items]
        text = "\n".join(lines)
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content=data
        )


def _count(n: int, what: str = "record") -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


# -- the wslogging server's API ---------------------------------------------------------


class LogsClient:
    """Talks to one wslogging server; every method raises :class:`ToolError` with a sentence
    a model can act on when the server cannot be asked or refuses."""

    def __init__(self, url: str, key: str | None, cafile: str | None = None) -> None:
        """Raises :class:`~wslogging.cli._tail.TailError` for a URL that cannot be used and
        ``OSError`` or ``ssl.SSLError`` for a ``cafile`` that cannot be read."""
        self.stream = _tail.stream_url(url)
        self.base = _tail.api_url(self.stream, "/")
        self.key = key
        self.ssl: ssl.SSLContext | bool = True
        if cafile:
            self.ssl = ssl.create_default_context(cafile=cafile)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session, made on first use (it needs the running loop). A new connection
        for each request: a tool call is rare, and a server restarted since the last one then
        costs nothing but the connection."""
        if self._session is None:
            headers = {"User-Agent": f"wslogging-mcp/{__version__}"}
            if self.key is not None:
                headers["Authorization"] = f"Bearer {self.key}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
                connector=aiohttp.TCPConnector(force_close=True),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        """The JSON answer of ``GET path?query``."""
        url = _with_query(_tail.api_url(self.stream, path), query)
        try:
            async with self.session().get(
                url, ssl=self.ssl, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
            ) as response:
                if response.status != 200:
                    self.refused(response.status, await _tail._detail(response))
                try:
                    return await response.json()
                except (ValueError, aiohttp.ContentTypeError):
                    raise ToolError(
                        f"the server at {self.base} did not answer {path} with JSON: "
                        "is it a wslogging server?"
                    ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.unreachable(exc)

    async def wait(
        self, query: Sequence[tuple[str, str]], since: str | None, seconds: float, limit: int
    ) -> tuple[Page, str]:
        """Follow ``/ws/logs`` until a record arrives (then :data:`SETTLE` seconds more) or
        ``limit`` records did, or for ``seconds``; the page and the id to go on from."""
        extra = [] if since is None else [("since", since)]
        try:
            ws = await self.session().ws_connect(
                _with_query(self.stream, [*query, *extra]),
                max_msg_size=_tail.MAX_FRAME,
                ssl=self.ssl,
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            self.refused(exc.status, exc.message)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.unreachable(exc)
        page = Page()
        cursor = since
        hello = False
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        # One deadline around the reads (aiohttp takes a receive timeout of 0 for none, so a
        # timeout per read could wait without end): first for the hello, whatever the wait
        # asked for, so that there is an id to go on from; then the wait's; then, from the
        # first record on, SETTLE more.
        with contextlib.suppress(TimeoutError):
            async with ws, asyncio.timeout(HTTP_TIMEOUT) as deadline:
                while len(page.records) < limit:
                    message = await ws.receive()
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        if page.records:
                            break  # what arrived is the answer; the next call reconnects
                        self._closed(ws, message)
                    frame = json.loads(message.data)
                    kind = frame.get("type")
                    if kind == "hello":
                        hello = True
                        cursor = cursor or str(frame["last_id"])
                        deadline.reschedule(end)
                    elif kind == "log":
                        if not page.records:
                            deadline.reschedule(min(end, loop.time() + SETTLE))
                        page.add_record(frame)
                        cursor = str(frame["id"])
                    elif kind == "gap":
                        page.add_gap(frame)
                        if frame.get("id") is not None:  # it stands in the stream: past it
                            cursor = str(frame["id"])
                    elif kind == "position" and not page.records:
                        cursor = str(frame["last_id"])  # examined this far, nothing matched
        if not hello:
            raise ToolError(f"the server at {self.base} did not start the stream; retry")
        return page, cursor or ""

    def _closed(self, ws: aiohttp.ClientWebSocketResponse, message: aiohttp.WSMessage) -> NoReturn:
        reason = str(message.extra or "") if message.type is aiohttp.WSMsgType.CLOSE else ""
        if ws.close_code == 4401:
            self.refused(401, reason)
        if message.type is aiohttp.WSMsgType.ERROR:
            self.unreachable(message.data)
        detail = f"{ws.close_code}: {reason}" if reason else str(ws.close_code)
        raise ToolError(f"the wslogging server at {self.base} closed the stream ({detail})")

    def refused(self, status: int, detail: str) -> NoReturn:
        """Raise the :class:`ToolError` that says what a refusal with ``status`` means."""
        said = f": {detail}" if detail else ""
        if status == 401:
            if self.key is None:
                raise ToolError(
                    f"the server needs an API key (401){said}; set WSLOGGING_API_KEY in this "
                    "MCP server's environment (or pass --key)"
                )
            raise ToolError(
                f"the server refused the API key (401){said}; check WSLOGGING_API_KEY (or "
                "--key) in this MCP server's configuration"
            )
        if status == 400:
            raise ToolError(f"the server rejected the request (400){said}")
        if status == 429:
            raise ToolError(
                f"the server is slowing down failed keys from this address (429){said}; "
                "retry in a few seconds"
            )
        if status == 503:
            raise ToolError(f"the server is busy or not ready (503){said}; retry shortly")
        raise ToolError(f"the server at {self.base} answered HTTP {status}{said}")

    def unreachable(self, exc: BaseException) -> NoReturn:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            raise ToolError(
                f"the certificate of {self.base} is not trusted ({exc.certificate_error}); "
                "give its CA with --cafile"
            )
        raise ToolError(
            f"cannot reach the wslogging server at {self.base}: {_tail._reason(exc)}; is it "
            "running?"
        )


def _with_query(url: str, query: Sequence[tuple[str, str]]) -> str:
    if not query:
        return url
    return url + ("&" if "?" in url else "?") + urlencode(query)


def _filter(
    level: str | int | None,
    logger: list[str] | None,
    category: list[str] | None,
    grep: str | None,
    fields: dict[str, str | int | float | bool] | None,
) -> list[tuple[str, str]]:
    """The tools' filter arguments as query parameters; a bad one is a :class:`ToolError`."""
    try:
        return _tail.filter_query(
            level=None if level is None else str(level),
            loggers=logger or (),
            categories=category or (),
            grep=grep,
            fields={k: field_text(v) for k, v in (fields or {}).items()},
        )
    except _tail.TailError as exc:
        raise ToolError(f"bad filter: {exc}") from None


# -- the MCP server ---------------------------------------------------------------------


def build_server(client: LogsClient) -> MCPServer:
    """The MCP server with the tools ``get_logs``, ``wait_for_logs`` and ``get_stats``."""
    server = MCPServer(
        "wslogging", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )

    @server.tool(annotations=_READ_ONLY)
    async def get_logs(
        level: LevelArg = None,
        logger: LoggerArg = None,
        category: CategoryArg = None,
        grep: GrepArg = None,
        fields: FieldsArg = None,
        since: SinceArg = None,
        limit: LimitArg = DEFAULT_RECORDS,
    ) -> Annotated[CallToolResult, LogsResult]:
        """Get recent log records of the application, oldest first.

        Without `since`: the newest `limit` records that match the filters. With `since`: the
        records after that id, to read on from an earlier result. Long messages, tracebacks
        and field values are cut with a marker "… [cut N characters]".
        """
        query = _filter(level, logger, category, grep, fields)
        return await _get_logs(client, query, since, limit)

    @server.tool(annotations=_READ_ONLY)
    async def wait_for_logs(
        level: LevelArg = None,
        logger: LoggerArg = None,
        category: CategoryArg = None,
        grep: GrepArg = None,
        fields: FieldsArg = None,
        since: SinceArg = None,
        limit: LimitArg = DEFAULT_RECORDS,
        # The tool's argument, named as the model is told; the wait is bounded in wait().
        timeout: TimeoutArg = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> Annotated[CallToolResult, LogsResult]:
        """Wait until the application logs records that match the filters, and return them.

        Returns as soon as a matching record is logged (with any others logged within a
        moment), or with no records after `timeout` seconds. Without `since` it waits for
        records logged after this call; with `since` (the next_since of an earlier result)
        records after that id count too, so nothing between two calls is missed. Use it to
        watch a deploy, a test run or a reproduction: e.g. grep="ready", or level="error".
        """
        query = _filter(level, logger, category, grep, fields)
        return await _wait_for_logs(client, query, since, timeout, limit)

    @server.tool(annotations=_READ_ONLY)
    async def get_stats() -> Annotated[CallToolResult, dict[str, Any]]:
        """How the log server is doing: connected clients, records accepted and dropped
        (queue full), records dropped for slow clients, history size, forwarding processes,
        backend."""
        return await _get_stats(client)

    return server


async def _get_logs(
    client: LogsClient, query: list[tuple[str, str]], since: str | None, limit: int
) -> CallToolResult:
    """``get_logs``: a page of history, the newest ``limit`` or those after ``since``."""
    extra = [("limit", str(limit))] + ([] if since is None else [("since", since)])
    answer = await client.get("/api/logs", [*query, *extra])
    page = Page()
    if answer.get("gap"):
        page.add_gap(answer["gap"])
    # Losses that stand among the records (overflow, source), told before them.
    for gap in answer.get("gaps", []):
        page.add_gap(gap)
    for frame in answer["records"]:
        page.add_record(frame)
    next_since = str(answer["last_id"])
    left_out = page.fit("first" if since is not None else "last")
    records = page.records
    summary = f"{_count(len(records))} (oldest first)."
    if since is None:
        if left_out:
            summary += f" {_count(left_out, 'older record')} left out to keep this short."
    else:
        if left_out or len(records) == limit:
            next_since = records[-1]["id"]
            summary += " More may follow: call again with since=next_since."
    if not records:
        summary = "No matching records."
    return page.result(next_since, left_out, summary)


async def _wait_for_logs(
    client: LogsClient,
    query: list[tuple[str, str]],
    since: str | None,
    timeout: float,  # noqa: ASYNC109 (bounded in LogsClient.wait)
    limit: int,
) -> CallToolResult:
    """``wait_for_logs``: the records that match once some arrive, or none at ``timeout``."""
    page, next_since = await client.wait(query, since, timeout, limit)
    left_out = page.fit("first")
    records = page.records
    if left_out:
        next_since = records[-1]["id"]
    if records:
        summary = f"{_count(len(records))} arrived (oldest first)."
        if left_out or len(records) == limit:
            summary += " More may follow: call again with since=next_since."
    else:
        summary = f"No matching record within {timeout:g} s."
    return page.result(next_since, left_out, summary)


async def _get_stats(client: LogsClient) -> CallToolResult:
    """``get_stats``: the server's ``/api/stats``, structured and as text."""
    stats: dict[str, Any] = await client.get("/api/stats")
    text = "\n".join(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in stats.items())
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=stats)


async def _serve(server: MCPServer, client: LogsClient) -> None:
    try:
        await server.run_stdio_async()
    finally:
        await client.close()


def run(url: str, key: str | None, cafile: str | None = None, err: TextIO = sys.stderr) -> int:
    """Serve MCP on stdin/stdout until stdin closes (status 0) or Ctrl-C (130); status 2 if
    ``url`` or ``cafile`` cannot be used."""
    try:
        client = LogsClient(url, key, cafile)
    except (_tail.TailError, OSError, ssl.SSLError) as exc:
        print(f"wslogging mcp: {exc}", file=err)
        return _tail.EXIT_USAGE
    try:
        asyncio.run(_serve(build_server(client), client))
    except KeyboardInterrupt:
        return _tail.EXIT_INTERRUPTED
    return 0
