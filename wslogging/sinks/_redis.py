"""asyncio and redis-py: the app's records appended to a Redis stream, and read back to serve.

:class:`StreamAppender` is what a handler with ``backend="redis://..."`` hands its records to;
:class:`StreamReader` is where ``wslogging serve --redis`` gets them. Both run on a loop of
their own in a daemon thread, and both ride out Redis outages by themselves: they say once on
stderr that Redis went away and once that it is back, and retry with backoff meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url as _parse_url
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from .._backoff import Backoff
from .._handoff import Handoff
from .._history import Held, LossMark
from .._hub import Hub
from .._loop_thread import LoopThread
from .._stderr import say
from .._streamids import (
    FIELD,
    StreamPositions,
    entry_from_stream,
    format_stream_id,
    parse_stream_id,
    stream_fields,
    stream_value,
)
from .._wire import LogEntry

# How a record source hands what it read to the server: entries in order, and whether loss
# marks are among them.
Accept = Callable[[Sequence[Held], bool], None]

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

# Records per append (see APPEND_SCRIPT), and per XREAD.
BATCH = 500
# How long XREAD waits for new entries before it asks again (milliseconds).
BLOCK_MS = 1000
# Bounds on one connection attempt and one reply. Above BLOCK_MS, which XREAD waits itself.
CONNECT_TIMEOUT = 2.0
REPLY_TIMEOUT = 5.0
# Reconnect delays: doubled after each failure from the first, up to the cap.
FIRST_DELAY = 0.1
MAX_DELAY = 5.0
# Acknowledgments (WebSocket client_id): kept in Redis under "<stream>:ack:<client_id>" for
# this long after the last one, written at most this often, at most this many waiting.
ACK_TTL = 7 * 24 * 3600
ACK_WRITE_EVERY = 0.2
MAX_WAITING_ACKS = 10000
# How long a reconnecting client's acknowledgment is looked up for before it is done without.
ACK_LOOKUP = 1.0
# redis-py leaves it untyped.
parse_url: Callable[[str], dict[str, Any]] = _parse_url
# Everything redis-py and the socket underneath may raise for an unreachable or odd server.
_OUTAGES = (RedisError, OSError, TimeoutError)


def check_url(url: str) -> None:
    """Raise ``ValueError`` naming the problem if ``url`` is not a Redis URL redis-py takes
    (``redis://``, ``rediss://`` for TLS, ``unix://``); never connects."""
    try:
        parse_url(url)
    except (ValueError, TypeError) as exc:
        # redis-py's text may quote a piece of the URL: a password with an unescaped "/",
        # "?" or "#" is read as a port ("Port could not be cast to integer value as 's3cr'").
        detail = str(exc) if "scheme" in str(exc) else "escape special characters as %XX"
        raise ValueError(f"not a Redis URL: {mask_url(url)} ({detail})") from None


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) replaced by
    ``***``: what messages and ``/api/stats`` show."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        # The user part ends at the last "@", even where an unescaped "/", "?" or "#" in
        # the password would end the authority for urlsplit (and so hide it from it).
        userinfo, _, after = rest.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        url = f"{scheme}://{user}:***@{after}" if colon else f"{scheme}://***@{after}"
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if not any(k == "password" for k, _ in pairs):
            return url  # nothing more to hide (and urlunsplit would drop unix://'s empty host)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs])
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    except ValueError:
        return "<unreadable Redis URL>"


def connect(url: str) -> Redis:
    """A client for ``url`` that fails fast: the callers retry with backoff of their own."""
    client: Redis = Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=REPLY_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    return client


class Link(enum.Enum):
    """The state of a connection to Redis, as ``/api/stats`` shows it."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DOWN = "down"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# -- the app's side: appending ------------------------------------------------------------


class StreamAppender:
    """Appends the app's records to a Redis stream from a daemon thread with its own loop.

    Thread side, :meth:`submit`: never blocks (the bounded :class:`Handoff`), ``False`` when
    the queue is full or the appender is closed: the caller counts the drop.

    Loop side: takes the queue in batches of up to :data:`BATCH` and appends each batch with
    one command (:data:`APPEND_SCRIPT`: ``XADD ... MAXLEN ~ maxlen`` for each record, in
    order), or a pipeline of ``XADD`` where Redis runs no scripts. When Redis fails, the batch
    in flight is counted as dropped (it may have been written: a record is counted lost rather
    than risk sending it twice), one line says so on stderr, and the loop pings Redis with
    backoff, leaving the queue alone meanwhile: a short outage costs nothing while the queue
    holds, a longer one drops (and counts) what does not fit. When Redis is back, one line says
    so with the number dropped, and a WARNING record from ``wslogging.redis`` saying as much
    is appended first, so that viewers see the hole.

    :meth:`close` sends what is queued within its timeout; what is left then is counted.
    """

    def __init__(
        self,
        url: str,
        stream: str,
        maxlen: int,
        queue_size: int,
        dropped: Callable[[], int],
        count_drops: Callable[[int], None],
        keep_level: int | None = None,
    ) -> None:
        self.url_with_password = url
        self.stream = stream
        self.maxlen = max(1, maxlen)
        self.queue_size = queue_size
        self.keep_level = keep_level
        self._dropped = dropped
        self._count_drops = count_drops
        self.link = Link.CONNECTING
        # Its thread and loop (see LoopThread), made by start().
        self._loop_thread = LoopThread("wslogging-redis")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoff: Handoff[LogEntry] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._script: AsyncScript | None = None
        self._use_script = True

    # What a handler asks of the server it would otherwise run: nothing is served here.
    port = 0

    @property
    def url(self) -> str:
        """The Redis URL, its password masked."""
        return mask_url(self.url_with_password)

    def set_keys(self, keys: tuple[str, ...]) -> None:
        raise RuntimeError(
            "this handler appends to Redis and serves nothing: give the keys to "
            "`wslogging serve` (--api-key or WSLOGGING_API_KEY)"
        )

    def start(self) -> None:
        """Start the thread (without waiting for it: the caller may hold logging's lock)."""
        if self._loop is not None:
            raise RuntimeError("StreamAppender.start() may be called once; make a new one")
        # Made here, on the caller's thread (see LoopThread).
        self._loop = self._loop_thread.make_loop()
        self._handoff = Handoff(self.queue_size, self._loop, keep_level=self.keep_level)
        self._loop_thread.start(self._main)

    def submit(self, entry: LogEntry) -> bool:
        """Queue ``entry`` without waiting (any thread); ``False`` when full or closed."""
        handoff = self._handoff
        if handoff is None or self._closing:
            return False
        return handoff.put(entry)

    def close(self, timeout: float) -> None:
        """Append what is queued within about ``timeout`` seconds, then stop; what could not
        be appended by then is counted as dropped. Idempotent; waits (bounded) unless called
        from the appender's own thread."""
        if self._loop is None or self._closing:
            return
        self._closing = True
        # Under logging's module lock (dictConfig replacing this handler) our thread may be
        # waiting for that lock (redis-py calls logging.getLogger on connect): no wait then.
        if self._loop_thread.call(self._begin_close, timeout):
            self._loop_thread.wait(timeout + 1.0)

    @property
    def thread_id(self) -> int | None:
        """The appender thread's id while it runs: records logged on it are never sent."""
        return self._loop_thread.thread_id

    def _begin_close(self, timeout: float) -> None:
        assert self._handoff is not None
        assert self._loop is not None
        self._handoff.shutdown()
        if self._task is not None:
            self._loop.call_later(timeout, self._task.cancel)

    async def _main(self) -> None:
        """The thread's work: append until closed (see :meth:`_append`)."""
        self._task = asyncio.current_task()
        await self._append()

    async def _append(self) -> None:
        assert self._handoff is not None
        get_batch = self._handoff.get_batch
        client = connect(self.url_with_password)
        batch: list[LogEntry] = []
        backoff = Backoff(FIRST_DELAY, MAX_DELAY, jitter=0.0)
        # The handler's drop count when Redis went away, while it is away.
        dropped_at_outage: int | None = None
        # The drops already announced in the stream (see below).
        reported = self._dropped()
        try:
            while batch or (batch := await get_batch(BATCH)):
                try:
                    if self.link is Link.DOWN:
                        await client.ping()  # before a batch that could be written in part
                    dropped = self._dropped()
                    lost = 0 if dropped_at_outage is None else dropped - dropped_at_outage
                    # Every drop since the last append goes first, as a gap(source) that
                    # serve passes to every client; after an outage, a record says so too.
                    told: list[Held] = [LossMark(dropped - reported, "source", {})]
                    told = (told if dropped > reported else []) + (
                        [_drop_notice(lost)] if lost else []
                    )
                    await self._xadd(client, [*told, *batch])
                    reported = dropped
                    batch = []
                    backoff.reset()
                    self.link = Link.CONNECTED
                    if dropped_at_outage is not None:
                        dropped_at_outage = None
                        say(f"Redis at {self.url} is back; {lost} record(s) dropped")
                except _OUTAGES as exc:
                    if self.link is not Link.DOWN:
                        self.link = Link.DOWN
                        dropped_at_outage = self._dropped()
                        self._count_drops(len(batch))  # in flight: perhaps written in part
                        batch = []
                        say(
                            f"cannot append to Redis at {self.url} ({_reason(exc)}); "
                            f"up to {self.queue_size} records wait, later ones are dropped and "
                            "counted until it is back"
                        )
                    await asyncio.sleep(backoff.next())
        except asyncio.CancelledError:
            # close() ran out of time: whatever was not appended is lost.
            left = len(batch) + self._handoff.qsize()
            if left:
                self._count_drops(left)
            raise
        finally:
            await client.aclose()

    async def _xadd(self, client: Redis, batch: Sequence[Held]) -> None:
        """Append ``batch`` in order: with :data:`APPEND_SCRIPT` (one command), or, where
        Redis refuses scripts (ACLs, managed services), with a pipeline of ``XADD``."""
        if self._script is None:
            self._script = client.register_script(APPEND_SCRIPT)
        if self._use_script:
            packed = [stream_value(entry) for entry in batch]
            try:
                await self._script(keys=[self.stream], args=[self.maxlen, *packed])
                return
            except ResponseError as exc:
                if not _refuses_scripts(exc):
                    raise
                self._use_script = False
        pipe = client.pipeline(transaction=False)
        for entry in batch:
            fields: dict[Any, Any] = stream_fields(entry)
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
        await pipe.execute()


# Appends a batch with one command: ARGV[1] is the bound, each further ARGV one record's field.
# In the app's process, redis-py spends about ten times less CPU (and GIL) per record on one
# EVALSHA than on a pipeline of XADDs (benchmarks/README.rst).
APPEND_SCRIPT = f"""
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', '{FIELD.decode()}', ARGV[i])
end
return #ARGV - 1
"""


def _refuses_scripts(exc: ResponseError) -> bool:
    """Whether Redis refused to run a script at all (rather than the script failing)."""
    if isinstance(exc, NoPermissionError):  # an ACL without scripting (NOPERM)
        return True
    text = str(exc).lower()
    return "unknown command" in text or "disabled" in text


_NOTICE_LOGGER = "wslogging.redis"


def _drop_notice(lost: int) -> LogEntry:
    """The record appended when Redis is back, saying how many records this process lost."""
    pid = os.getpid()
    host = socket.gethostname()
    return LogEntry(
        f"{lost} record(s) of process {pid} on {host} were dropped while Redis was unreachable",
        logging.WARNING,
        "WARNING",
        _NOTICE_LOGGER,
        "wslogging",
        time.time(),
        {"dropped": lost, "host": host},
        None,
        pid,
    )


# -- the serving side: reading ------------------------------------------------------------


class StreamReader:
    """The records of a Redis stream, for a :class:`LogServer` (see :class:`RecordSource`).

    On start it loads the newest ``history`` entries (``XREVRANGE``), so that clients resume
    across restarts of the serving process from what Redis kept; then it follows the stream
    with ``XREAD BLOCK`` from the last id read. Each serving process reads everything by
    itself (no consumer group). When Redis fails it says so once, keeps serving what is held,
    and retries with backoff, resuming after the last id read: nothing that Redis kept is lost.

    Entries that are not records (written by something else) are skipped and counted in
    ``records_failed``.

    Acknowledgments (``ack`` with a ``client_id``) are written to Redis too (at most
    :data:`MAX_WAITING_ACKS` waiting, written every :data:`ACK_WRITE_EVERY` seconds, kept
    :data:`ACK_TTL` seconds), so that a client resumes after its last ack on any serve
    process of the stream, restarted or not.
    """

    first_id = 1

    def __init__(self, url: str, stream: str) -> None:
        self.url = url
        self.stream = stream
        self.epoch = f"redis:{stream}"
        self.link = Link.CONNECTING
        self._loaded = asyncio.Event()
        self._hub: Hub | None = None
        self._positions: StreamPositions | None = None
        self._client: Redis | None = None
        # Set whenever the cursor moves (see reached).
        self._moved = asyncio.Event()
        self._acks: OrderedDict[str, str] = OrderedDict()
        self._acks_waiting = asyncio.Event()
        # Losing entries to trimming (see _count_lost): the stream's entries-added count when
        # this process had read all of it (None until then), entries read since, and
        # entries lost but not yet announced.
        self._added: int | None = None
        self._read_since = 0
        self._unannounced = 0

    def attach(self, hub: Hub) -> StreamPositions:
        self._hub = hub
        self._positions = StreamPositions(hub.history)
        return self._positions

    def stats(self) -> dict[str, Any]:
        assert self._positions is not None
        return {
            "backend": "redis",
            "redis": {
                "url": mask_url(self.url),
                "stream": self.stream,
                "state": self.link.value,
                "last_id": format_stream_id(self._positions.last_seen),
            },
        }

    async def ready(self) -> None:
        await self._loaded.wait()

    async def reached(self, since: str) -> None:
        positions = self._positions
        assert positions is not None
        try:
            key = parse_stream_id(since)
        except ValueError:
            return
        while positions.last_seen < key:
            self._moved.clear()
            await self._moved.wait()

    def ack(self, client_id: str, wire_id: str) -> None:
        acks = self._acks
        acks[client_id] = wire_id
        acks.move_to_end(client_id)
        if len(acks) > MAX_WAITING_ACKS:
            acks.popitem(last=False)
        self._acks_waiting.set()

    async def acked(self, client_id: str) -> str | None:
        if client_id in self._acks:
            return self._acks[client_id]
        client = self._client
        if client is None:
            return None
        try:
            async with asyncio.timeout(ACK_LOOKUP):
                raw = await client.get(self._ack_key(client_id))
        except _OUTAGES:
            return None
        return raw.decode() if isinstance(raw, bytes) else raw

    def _ack_key(self, client_id: str) -> str:
        return f"{self.stream}:ack:{client_id}"

    async def _write_acks(self, client: Redis) -> None:
        """Write the acknowledgments that wait, in batches, for as long as the reader runs;
        those that fail wait for the next turn (unless newer ones replaced them)."""
        while True:
            await self._acks_waiting.wait()
            self._acks_waiting.clear()
            batch, self._acks = self._acks, OrderedDict()
            try:
                await self._set_acks(client, batch)
            except _OUTAGES:
                for client_id, wire_id in batch.items():
                    self._acks.setdefault(client_id, wire_id)
                self._acks_waiting.set()
                await asyncio.sleep(MAX_DELAY)
            await asyncio.sleep(ACK_WRITE_EVERY)

    async def _set_acks(self, client: Redis, acks: dict[str, str]) -> None:
        pipe = client.pipeline(transaction=False)
        for client_id, wire_id in acks.items():
            pipe.set(self._ack_key(client_id), wire_id, ex=ACK_TTL)
        await pipe.execute()

    async def run(self, accept: Accept) -> None:
        client = self._client = connect(self.url)
        backoff = Backoff(FIRST_DELAY, MAX_DELAY, jitter=0.0)
        writer = asyncio.create_task(self._write_acks(client))
        try:
            while True:
                try:
                    if not self._loaded.is_set():
                        await self._load(client, accept)
                        self._loaded.set()
                    await self._follow(client, accept, backoff)
                except _OUTAGES as exc:
                    if self.link is not Link.DOWN:
                        self.link = Link.DOWN
                        say(
                            f"cannot read the stream {self.stream!r} at {mask_url(self.url)} "
                            f"({_reason(exc)}); serving what is held, retrying"
                        )
                    await asyncio.sleep(backoff.next())
        finally:
            writer.cancel()
            if self._acks:  # the server is closing: the last acks, if Redis takes them at once
                with contextlib.suppress(*_OUTAGES):
                    async with asyncio.timeout(ACK_LOOKUP):
                        await self._set_acks(client, self._acks)
            await client.aclose()

    def _connected(self, backoff: Backoff) -> None:
        backoff.reset()
        if self.link is not Link.CONNECTED:
            assert self._positions is not None
            after = format_stream_id(self._positions.last_seen)
            say(f"reading the stream {self.stream!r} at {mask_url(self.url)} after {after}")
            self.link = Link.CONNECTED

    async def _load(self, client: Redis, accept: Accept) -> None:
        """Load the newest entries the history holds, and where to follow from."""
        positions = self._positions
        assert positions is not None
        history = positions.history
        newest = list(await client.xrevrange(self.stream, "+", "-", count=history.maxlen + 1) or [])
        newest.reverse()
        if len(newest) > history.maxlen:
            positions.floor = _key(newest.pop(0)[0])  # it, and all before it, are not held
        # What Redis trimmed before the oldest held entry is lost too (an entry deleted
        # among those held is not: nobody will ask for it).
        deleted = await _deleted_up_to(client, self.stream)
        if not newest or deleted < _key(newest[0][0]):
            positions.floor = max(positions.floor, deleted)
        self._take(newest, accept)
        if newest:
            await self._count_lost(client, _key(newest[-1][0]))
        if not newest and history.maxlen == 0:
            newest = list(await client.xrevrange(self.stream, "+", "-", count=1) or [])
            if newest:
                positions.seen(_key(newest[0][0]))

    async def _follow(self, client: Redis, accept: Accept, backoff: Backoff) -> None:
        positions = self._positions
        assert positions is not None
        while True:
            cursor = format_stream_id(positions.last_seen)
            reply = await client.xread({self.stream: cursor}, count=BATCH, block=BLOCK_MS)
            self._connected(backoff)
            for _stream, items in _stream_items(reply):
                self._read_since += len(items)
                if items:
                    await self._count_lost(client, _key(items[-1][0]))
                self._take(items, accept, self._lost_before(items))

    async def _count_lost(self, client: Redis, last: tuple[int, int]) -> None:
        """Count the entries Redis removed before this process read them (the stream trimmed
        faster than it was read, or entries deleted), from the stream's ``entries-added``
        (Redis 7): whenever this process has read up to the stream's newest entry, what was
        added since it last had, less what it read meanwhile, was lost."""
        try:
            info = await client.xinfo_stream(self.stream)
            added = int(info["entries-added"])
            newest = _key(info["last-generated-id"])
        except (RedisError, KeyError, TypeError, ValueError):
            return  # before Redis 7, or the stream is gone: nothing to go by
        if newest != last:
            return  # more came meanwhile: count at the next time it is all read
        if self._added is not None:
            self._unannounced += max(0, added - self._added - self._read_since)
        self._added, self._read_since = added, 0

    def _lost_before(self, items: list[Any]) -> int:
        """The entries lost to announce in front of ``items`` (then no longer unannounced):
        all of them, if the id just before the first item is free (after every id read);
        else none yet, until a batch leaves room (any pause of a millisecond does)."""
        positions = self._positions
        assert positions is not None
        if not self._unannounced or not items or _before(_key(items[0][0])) <= positions.last_seen:
            return 0
        lost, self._unannounced = self._unannounced, 0
        return lost

    def _take(self, items: list[Any], accept: Accept, lost: int = 0) -> None:
        """Accept the records among stream ``items`` (id and fields), in order, with the
        losses producers announced among them; ``lost``: entries Redis removed before they
        were read, told first as ``gap(source)`` (with the id just before the first item)."""
        positions, hub = self._positions, self._hub
        assert positions is not None
        assert hub is not None
        entries: list[Held] = []
        marked = False
        last = positions.last_seen
        for raw_id, fields in items:
            stream_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            last = max(last, parse_stream_id(stream_id))
            try:
                entry = entry_from_stream(stream_id, fields)
            except ValueError:
                hub.records_failed += 1
                continue
            if isinstance(entry, LossMark):
                marked = True
            if lost:
                mark = LossMark(lost, "source", {})
                mark.stream_id = format_stream_id(_before(parse_stream_id(stream_id)))
                entries.append(mark)
                marked, lost = True, 0
            entries.append(entry)
        positions.accepting(entries)
        positions.seen(last)
        if entries:
            accept(entries, marked)
        self._moved.set()


def _before(key: tuple[int, int]) -> tuple[int, int]:
    """The stream id just before ``key``."""
    ms, seq = key
    return (ms, seq - 1) if seq else (ms - 1, 2**64 - 1)


def _key(raw_id: object) -> tuple[int, int]:
    return parse_stream_id(raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id))


def _stream_items(reply: Any) -> list[tuple[Any, list[Any]]]:
    """XREAD's reply as (stream, items) pairs: a list in RESP2, a mapping in RESP3 (which a
    URL may ask for with ``?protocol=3``)."""
    if not reply:
        return []
    if isinstance(reply, dict):  # {stream: [[entry, ...]]}
        return [
            (name, items[0] if items and isinstance(items[0], list) else items)
            for name, items in reply.items()
        ]
    return [(name, items) for name, items in reply]


async def _deleted_up_to(client: Redis, stream: str) -> tuple[int, int]:
    """The newest id Redis removed from ``stream`` (trimmed or deleted), from Redis 7 on;
    ``(0, 0)`` when it does not say."""
    try:
        info = await client.xinfo_stream(stream)
    except RedisError:
        return (0, 0)
    raw = info.get("max-deleted-entry-id") if isinstance(info, dict) else None
    if raw is None:
        return (0, 0)
    try:
        return _key(raw)
    except ValueError:
        return (0, 0)
