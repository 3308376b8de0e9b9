"""Where a server's records come from when not from the app (``wslogging serve --redis``),
and how the ids clients see map to history positions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .._history import Held, Resume, parse_id
from .._hub import Hub

# How long a request waits for a source to load (see RecordSource.ready) before it gets 503.
SOURCE_WAIT = 3.0


class IdScheme(Protocol):
    """How the ids clients see relate to positions in the server's history."""

    def since(self, text: str) -> int | Resume:
        """A ``since`` / ``Last-Event-ID`` for :meth:`History.resume`; raises
        :class:`SinceError` for text that is no id."""

    def ack(self, text: str) -> int:
        """The position an acknowledged id stands for; raises :class:`SinceError`."""

    def wire_id(self, position: int) -> str:
        """The id clients see for the history position ``position``."""


class CountedIds:
    """The ids of a server that takes its records from the app: its history's positions."""

    since = ack = staticmethod(parse_id)

    @staticmethod
    def wire_id(position: int) -> str:
        return str(position)


class RecordSource(Protocol):
    """Where a server gets its records when not from the app's threads (``wslogging serve``
    reads them from a Redis stream): it runs as a task on the server's loop."""

    first_id: int
    epoch: str

    def attach(self, hub: Hub) -> IdScheme:
        """The hub the source feeds (it may count ``records_failed`` there), and the ids
        it serves in exchange."""

    async def run(self, accept: Callable[[Sequence[Held], bool], None]) -> None:
        """Pass records to ``accept`` in order, never awaiting it, until cancelled; its second
        argument says whether loss marks are among them."""

    def stats(self) -> dict[str, Any]:
        """What ``/api/stats`` adds about the source."""

    async def ready(self) -> None:
        """Return once the source has loaded what it had when the server started, against
        which ids are resolved."""

    async def reached(self, since: str) -> None:
        """Return once the source has read up to the id ``since`` (at once for text that is
        no id of the source): a client may come from another server further ahead, and
        resuming it before would send it records it has."""

    async def acked(self, client_id: str) -> str | None:
        """The id ``client_id`` last acknowledged to any server of the source, if known."""

    def ack(self, client_id: str, wire_id: str) -> None:
        """Remember (without waiting) that ``client_id`` acknowledged ``wire_id``."""


async def caught_up(source: RecordSource, wire_id: str) -> None:
    """Wait, at most :data:`SOURCE_WAIT` seconds, until ``source`` has read as far as
    ``wire_id`` (a client coming from a server of the source that is further ahead), so that
    it is sent nothing twice; after that, go on regardless."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SOURCE_WAIT):
            await source.reached(wire_id)
