"""Pure: the messages a WebSocket client may send (SPEC §5), and how many it may get wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._filters import Filter, FilterError, filter_from_message
from ._history import SinceError, parse_id

# Largest message a client may send; larger ones are answered with an ``error``.
MAX_CLIENT_MESSAGE = 64 * 1024


class ProtocolError(ValueError):
    """A client message that cannot be acted on; the text says why (sent as ``error``)."""


@dataclass(frozen=True)
class Ping:
    """``{"type": "ping"}``: answer ``pong``."""


@dataclass(frozen=True)
class Subscribe:
    """``{"type": "subscribe", "filter": {...}}``: replace the filter."""

    filter: Filter


@dataclass(frozen=True)
class Ack:
    """``{"type": "ack", "id": "..."}``: the client has every record up to ``id``."""

    id: int


ClientMessage = Ping | Subscribe | Ack


def load_message(text: str, limit: int, error: type[ValueError] = ValueError) -> Any:
    """The JSON value of a message of at most ``limit`` characters; ``error`` otherwise."""
    if len(text) > limit:
        raise error(f"message over {limit} bytes")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise error("message is not JSON") from None


def parse_client_message(text: str, read_id: Callable[[str], int] = parse_id) -> ClientMessage:
    """The message in ``text``; raises :class:`ProtocolError` saying what is wrong.

    ``read_id`` turns an acknowledged id into a position of the server's history (raising
    :class:`SinceError` for one that is no id): the server's own ids are positions already,
    a Redis stream's are not."""
    message = load_message(text, MAX_CLIENT_MESSAGE, ProtocolError)
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object with a type")
    kind = message.get("type")
    if kind == "ping":
        return Ping()
    if kind == "subscribe":
        try:
            return Subscribe(filter_from_message(message.get("filter")))
        except FilterError as exc:
            raise ProtocolError(str(exc)) from None
    if kind == "ack":
        entry_id = message.get("id")
        if not isinstance(entry_id, str):
            raise ProtocolError("ack id must be a string")
        try:
            return Ack(read_id(entry_id))
        except SinceError as exc:
            raise ProtocolError(str(exc)) from None
    raise ProtocolError(f"unknown message type: {str(kind)[:40]!r}")


class MessageBudget:
    """Whether a client has earned a close with 1008: too many malformed messages in all
    (``max_errors``), or messages faster than ``rate`` per second beyond a ``burst``.

    A token bucket: each message takes a token; tokens come back at ``rate`` per second up to
    ``burst``. Constant memory.
    """

    def __init__(self, *, max_errors: int = 20, rate: float = 50.0, burst: float = 200.0) -> None:
        self.max_errors = max_errors
        self.rate = rate
        self.burst = burst
        self.errors = 0
        self._tokens = burst
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """Count one message; ``False`` once the client is flooding."""
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1.0
        return self._tokens >= 0.0

    def error(self) -> bool:
        """Count one malformed message; ``False`` once there were too many."""
        self.errors += 1
        return self.errors <= self.max_errors


class Liveness:
    """When to ping a WebSocket peer, and when to give it up for gone. Pure: it is told the
    time and, where the platform can say, how many bytes the peer has yet to take.

    A ping goes out once a heartbeat (with or without traffic). A peer that has not answered
    two heartbeats after it is gone, unless it has taken bytes since (its pong is behind a
    backlog it is still reading): then the wait starts again.
    """

    def __init__(self, heartbeat: float, now: float) -> None:
        self.heartbeat = heartbeat
        self._last_ping = now
        self._ping_sent: float | None = None
        self._unsent: int | None = None

    def due(self, now: float) -> bool:
        """Whether to ping now."""
        return self._ping_sent is None and now - self._last_ping >= self.heartbeat

    def pinged(self, now: float, unsent: int | None) -> None:
        """A ping was queued when the peer had ``unsent`` bytes to take (``None``: unknown)."""
        self._ping_sent = self._last_ping = now
        self._unsent = unsent

    def pong(self) -> None:
        """The peer answered."""
        self._ping_sent = None

    def gone(self, now: float, unsent: Callable[[], int | None]) -> bool:
        """Whether the peer is gone: no pong two heartbeats after the ping, and no progress.
        ``unsent`` is only called then (it may cost a system call)."""
        if self._ping_sent is None or now - self._ping_sent < 2 * self.heartbeat:
            return False
        left = unsent()
        if left is not None and self._unsent is not None and left < self._unsent:
            self._ping_sent, self._unsent = now, left  # still reading: wait again
            return False
        return True
