"""asyncio: the connected clients, their bounded queues, and the fan-out of accepted records.

Everything here runs on the server's event loop and never awaits a client: :meth:`Hub.accept`
is synchronous, so one slow client can delay nobody but itself.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._filters import Filter
from ._history import Gap, Held, History, LossMark, Resume
from ._protocol import Liveness
from ._wire import ws_frames

# Records handed to one writer per wakeup: bounds the work (and the write) per turn.
BATCH = 500
# How long a client kicked for being slow may take to close cleanly before it is cut off.
KICK_GRACE = 1.0
# Replies (pong, subscribed, error) that may wait for one client before it is closed.
MAX_CONTROL = 64
# How many client_ids' acknowledgments are remembered; the least recently used go first.
MAX_ACKED_CLIENTS = 10000


class SendPong:
    """A WebSocket pong to send, answering the client's ping with its payload."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class SendPing:
    """A WebSocket ping to send: the server's own liveness check."""

    __slots__ = ()


Item = Held | Gap | dict[str, Any] | SendPong | SendPing


class Batch(list[Held]):
    """Records (and loss marks) fanned out together, in order. Their WebSocket frames are
    joined once, for every client that is written the whole batch at once (see
    :attr:`Client.write_now`)."""

    _frames: bytes | None = None
    # How many loss marks are among them.
    marks = 0

    def ws_frames(self) -> bytes:
        if self._frames is None:
            self._frames = ws_frames(self)
        return self._frames


class SlowClientPolicy(enum.StrEnum):
    """What happens when a client's queue is full (the ``slow_client`` option)."""

    DROP = "drop"
    DISCONNECT = "disconnect"


class ClientState(enum.Enum):
    """A client's lifecycle: streaming, flushing before the server closes, or gone."""

    LIVE = "live"
    FINISHING = "finishing"
    CLOSED = "closed"


class Client:
    """One connected stream: its filter, its replay cursor and its bounded send queue.

    Bounded: at most ``maxlen`` live records wait for the writer (or one batch, if a batch
    is larger: it always fits into an empty queue whole). When full, the ``drop`` policy
    forgets the oldest (counted, and reported to this client as a ``gap(slow_client)``
    before the next record it gets); ``disconnect`` closes it
    (code 1008). Replay after ``since`` is read from history as the writer goes, so it
    takes no queue space; records that left history meanwhile become a ``gap(history)``.
    """

    def __init__(
        self,
        hub: Hub,
        flt: Filter,
        start_id: int,
        first: list[Item],
        maxlen: int,
        policy: SlowClientPolicy,
    ) -> None:
        self.hub = hub
        self.filter = flt
        self.maxlen = maxlen
        self.policy = policy
        self.state = ClientState.LIVE
        self.close_code = 1000
        self.close_reason = ""
        self.dropped = 0
        # Whether a loss mark of unknown size was among what it dropped: its gap's missed
        # is then unknown too.
        self.dropped_unknown = False
        # Names the client across reconnections, for acknowledgments (WebSocket only).
        self.client_id: str | None = None
        # Names the API key the client came with (see _auth.KeyId); None when not known.
        self.key: bytes | None = None
        # Called (once) when the client must go at once; the connection sets it.
        self.abort: Callable[[], None] | None = None
        # WebSocket liveness, kept by the connection's writer.
        self.liveness: Liveness | None = None
        # Writes records at once, without the writer, when the connection can take them
        # without waiting (see offer); returns whether it did. The connection sets it.
        self.write_now: Callable[[Batch], bool] | None = None
        # Whether the writer is waiting for something to send (nothing in flight).
        self._writer_idle = False
        self._queue: deque[Held] = deque()
        # Loss marks in _queue (0 nearly always: then records leave it without a look).
        self._marks_queued = 0
        self._control: list[Item] = first
        # Ids in [replay_next, replay_end] are read from history; later ones arrive via offer().
        self._replay_next = start_id
        self._replay_end = hub.history.last_id
        self._wake = asyncio.Event()
        if self._control or self._replay_next <= self._replay_end:
            self._wake.set()

    def offer(self, entries: Batch) -> None:
        """Queue live records that matched, in order (hub side; never blocks).

        A client that is all caught up (its writer waiting, nothing queued, no replay or gap
        or reply pending) gets them written at once through :attr:`write_now`, when the
        connection can take them without waiting: one write, and no task switch, per client
        per batch. Otherwise they wait for the writer, which keeps the order.
        """
        if not entries:
            return  # nothing matched: the writer has no reason to wake
        queue = self._queue
        if (
            self._writer_idle
            and self.state is ClientState.LIVE
            and not queue
            and not self._control
            and not self.dropped
            and self._replay_next > self._replay_end
            and self.write_now is not None
            and self.write_now(entries)
        ):
            return
        # A batch fits whole into an empty queue, however large (the server bounds batches):
        # a client that had taken everything before it loses nothing to batching.
        overflow = len(queue) + len(entries) - (self.maxlen if queue else len(entries))
        if overflow > 0:
            if self.policy is SlowClientPolicy.DISCONNECT:
                queue.extend(entries)  # kick() counts them
                self.kick(1008, "client too slow: its queue is full")
                return
            if self._marks_queued or entries.marks:
                self._forget(itertools.islice(itertools.chain(queue, entries), overflow))
            else:
                self.dropped += overflow
                self.hub.client_drops += overflow
            if overflow < len(queue):
                self._queue = queue = deque(itertools.islice(queue, overflow, None))
            else:
                kept = Batch(entries[overflow - len(queue) :])
                kept.marks = sum(type(e) is LossMark for e in kept) if entries.marks else 0
                queue.clear()
                entries = kept
            if self._marks_queued:
                self._marks_queued = sum(type(e) is LossMark for e in queue)
        self._marks_queued += entries.marks
        queue.extend(entries)
        self._wake.set()

    def _forget(self, items: Iterable[Held]) -> None:
        """Count ``items``, about to be forgotten, as dropped for this client (a loss mark
        among them by what it announced: the client was never told of it)."""
        for item in items:
            if type(item) is LossMark:
                if item.count is None:
                    self.dropped_unknown = True
                else:
                    self.dropped += item.count
            else:
                self.dropped += 1
                self.hub.client_drops += 1

    def send_control(self, message: dict[str, Any] | SendPong) -> None:
        """Queue a protocol message (``pong``, ``error``, ...) ahead of records.

        Bounded: a client that leaves :data:`MAX_CONTROL` replies unread while it keeps
        asking is closed with 1008.
        """
        if len(self._control) >= MAX_CONTROL:
            self.kick(1008, "too many unanswered messages")
            return
        self._control.append(message)
        self._wake.set()

    def set_filter(self, flt: Filter) -> None:
        """Replace the filter now: queued records that the new filter rejects are dropped
        (not counted: the client asked), so everything after the reply obeys it."""
        self.filter = flt
        self._queue = deque(select(flt, self._queue))

    def kick(self, code: int, reason: str) -> None:
        """Close this client with ``code``: cleanly if its writer is free, else cut it off
        after :data:`KICK_GRACE` seconds."""
        if self.state is ClientState.CLOSED:
            return
        self.hub.detach(self)
        self.state = ClientState.FINISHING
        self.close_code, self.close_reason = code, reason
        self.hub.client_drops += len(self._queue) - self._marks_queued
        self._queue.clear()
        self._marks_queued = 0
        self._replay_next = self._replay_end + 1
        self._wake.set()
        if self.abort is not None:
            asyncio.get_running_loop().call_later(KICK_GRACE, self._abort_if_open)

    def finish(self, code: int, reason: str) -> None:
        """The server is closing: deliver what is queued, then close with ``code``."""
        if self.state is ClientState.LIVE:
            self.state = ClientState.FINISHING
            self.close_code, self.close_reason = code, reason
            self._wake.set()

    def cut_off(self) -> None:
        """The peer is gone or stuck: drop the connection now, without a goodbye."""
        self.closed()
        if self.abort is not None:
            self.abort()

    def _abort_if_open(self) -> None:
        if self.state is not ClientState.CLOSED and self.abort is not None:
            self.abort()

    def _take(self) -> list[Item]:
        items: list[Item] = self._control
        self._control = []
        history = self.hub.history
        if self._replay_next <= self._replay_end:
            if self._replay_next < history.oldest_id:
                # Only the replay range counts: later ids are in the live queue, not lost.
                lost_until = min(history.oldest_id, self._replay_end + 1)
                missed = history.missed(self._replay_next, lost_until, self.filter)
                if missed != 0:
                    items.append(Gap(missed, "history"))
            entries, last = history.page(self._replay_next, self._replay_end, self.filter, BATCH)
            items.extend(entries)
            self._replay_next = last + 1
            if self._replay_next <= self._replay_end:
                return items  # more replay before any live record, to keep the order
        if self.dropped or self.dropped_unknown:
            items.append(Gap(None if self.dropped_unknown else self.dropped, "slow_client"))
            self.dropped = 0
            self.dropped_unknown = False
        queue = self._queue
        if self._marks_queued:
            for _ in range(min(BATCH, len(queue))):
                item = queue.popleft()
                self._marks_queued -= type(item) is LossMark
                items.append(item)
        else:
            for _ in range(min(BATCH, len(queue))):
                items.append(queue.popleft())
        if not queue:
            self._wake.clear()
        return items

    async def next_batch(self, wait: float | None) -> list[Item] | None:
        """What to send next, in order. ``[]`` when ``wait`` seconds passed with nothing to send
        (time for a heartbeat); ``None`` when the stream is over and should be closed."""
        if not self._wake.is_set() and self.state is ClientState.LIVE:
            self._writer_idle = True
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                return []
            finally:
                self._writer_idle = False
        items = self._take()
        if not items and self.state is not ClientState.LIVE:
            return None
        return items

    def closed(self) -> None:
        """The connection is gone: stop feeding it."""
        self.state = ClientState.CLOSED
        self.hub.detach(self)


class Hub:
    """History plus clients: accepts records in order and fans each out without awaiting.

    Bounded: history holds ``history`` records; each client at most ``client_queue_size``;
    at most ``max_clients`` clients (the server refuses more with 503), and the server lets
    each key hold a bounded number of them (see :meth:`clients_of`).
    """

    def __init__(
        self,
        *,
        history: int,
        client_queue_size: int,
        slow_client: SlowClientPolicy,
        max_clients: int,
        first_id: int | None = None,
        epoch: str | None = None,
    ) -> None:
        self.history = History(history, first_id)
        self._epoch = epoch
        self.client_queue_size = client_queue_size
        self.slow_client = slow_client
        self.max_clients = max_clients
        self.clients: set[Client] = set()
        self._per_key: Counter[bytes | None] = Counter()
        self.client_drops = 0
        self.records_failed = 0
        self._acks: OrderedDict[str, int] = OrderedDict()

    @property
    def epoch(self) -> str:
        """Changes whenever the server starts afresh; a server whose ids outlive it (a Redis
        stream's) names them with an epoch of its own that does not."""
        return self._epoch if self._epoch is not None else str(self.history.first_id)

    @property
    def full(self) -> bool:
        return len(self.clients) >= self.max_clients

    def clients_of(self, key: bytes | None) -> int:
        """How many connected clients came with the key ``key``."""
        return self._per_key[key]

    def connect(
        self,
        flt: Filter,
        since: int | Resume | None,
        greeting: dict[str, Any] | None = None,
        key: bytes | None = None,
    ) -> Client:
        """Register a client that came with the key ``key``; records accepted from now on are
        queued for it, and those after ``since`` are replayed from history first. It is sent
        ``greeting`` first, then the gap (if any) in front of the replay."""
        start, gap = self.history.resume(since, flt)
        first: list[Item] = [greeting] if greeting else []
        if gap is not None:
            first.append(gap)
        client = Client(self, flt, start, first, self.client_queue_size, self.slow_client)
        client.key = key
        self.clients.add(client)
        self._per_key[key] += 1
        return client

    def ack(self, client_id: str, entry_id: int) -> None:
        """Remember that ``client_id`` has every record up to ``entry_id`` (never going back).
        Raises ``ValueError`` for an id this server has not issued yet."""
        if entry_id > self.history.last_id:
            raise ValueError("ack names an id this server has not sent")
        acks = self._acks
        acks[client_id] = max(entry_id, acks.get(client_id, entry_id))
        acks.move_to_end(client_id)
        if len(acks) > MAX_ACKED_CLIENTS:
            acks.popitem(last=False)

    def acked(self, client_id: str) -> int | None:
        """The last id ``client_id`` acknowledged, if remembered."""
        return self._acks.get(client_id)

    def detach(self, client: Client) -> None:
        """Forget ``client`` (any number of times)."""
        if client in self.clients:
            self.clients.remove(client)
            self._per_key[client.key] -= 1
            if not self._per_key[client.key]:
                del self._per_key[client.key]

    def accept(self, entries: Sequence[Held], marked: bool = False) -> None:
        """Number and keep ``entries``, in order, then queue for every client, in one go,
        those its filter matches. ``marked``: loss marks are among them, which every client
        gets, at their place.

        Per batch rather than per record, so that the cost per client is one filter pass and
        one queue extension per batch. Each record is encoded here, once for every client,
        when there are clients; with none, only when first read (:attr:`LogEntry.data`).
        Encoding here rather than in the writers keeps the pace of acceptance to what the
        server can send, so that a burst does not fill the queues of clients that keep up.
        """
        if not entries:
            return
        if marked:
            self.history.extend_marked(entries)
        else:
            self.history.extend(entries)
        if self.clients:
            for entry in entries:
                entry.data  # noqa: B018 - made (and kept) now
        everything = Batch(entries)
        marks = everything.marks = sum(type(e) is LossMark for e in entries) if marked else 0
        lowest = min(entry.levelno for entry in entries)
        for client in list(self.clients):
            flt = client.filter
            if flt.takes_all(lowest):
                client.offer(everything)
            elif marked:
                some = Batch(select(flt, entries))
                some.marks = marks
                client.offer(some)
            else:
                client.offer(Batch(flt.select(entries)))  # type: ignore[arg-type]

    def finish_all(self, code: int, reason: str) -> None:
        for client in list(self.clients):
            client.finish(code, reason)

    def stats(self) -> dict[str, int]:
        history = self.history
        return {
            "clients": len(self.clients),
            "records_accepted": history.records,
            "client_drops": self.client_drops,
            "records_failed": self.records_failed,
            "history_size": len(history),
        }


def select(flt: Filter, entries: Iterable[Held]) -> list[Held]:
    """The entries ``flt`` matches, and every loss mark, in order."""
    matches = flt.matches
    return [e for e in entries if type(e) is LossMark or matches(e)]  # type: ignore[arg-type]
