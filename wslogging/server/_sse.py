"""``GET /api/get-logs-stream``: a client's queue as Server-Sent Events."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .. import _wire
from .._filters import FilterError
from .._hub import SendPing, SendPong
from ._core import KEY_ID
from ._guard import Guarded
from ._responses import bad_request, positive, sse_bytes
from ._sockets import STALL_HEARTBEATS, write_in_slices

# The ``retry:`` an SSE stream starts with: how long a browser waits before reconnecting.
SSE_RETRY_MS = 2000


class EventStreams(Guarded):
    """The SSE route."""

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        if unready := await self._not_ready(request, header_since=True):
            return unready
        opened = self._open(request, header_since=True)
        if isinstance(opened, web.Response):
            return opened
        try:
            limit = positive(request, "limit", 1e9, int)
            duration = positive(request, "timeout", 1e9)
        except FilterError as exc:
            return bad_request(str(exc))
        heartbeat = self.options.heartbeat
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        # Registered before the first await, so that max_clients holds however many requests
        # arrive at once.
        client = self.hub.connect(*opened, key=request[KEY_ID])
        sent = 0
        try:
            await response.prepare(request)
            self._track(request, client)
            await response.write(_wire.sse_retry(SSE_RETRY_MS))
            async with asyncio.timeout(duration) as deadline:
                while True:
                    items = await client.next_batch(heartbeat)
                    if items is None:
                        break
                    chunk = []
                    for item in items:
                        assert not isinstance(item, SendPing | SendPong)  # WebSocket only
                        chunk.append(sse_bytes(item))
                        if isinstance(item, _wire.LogEntry):
                            sent += 1
                            if limit is not None and sent >= limit:
                                break
                    if not chunk:
                        # Caught up: the ping carries how far the stream was examined, which
                        # a reconnecting EventSource then sends back as Last-Event-ID.
                        last = self._ids.wire_id(self.hub.history.last_id)
                        chunk.append(_wire.sse_ping(last))
                    await write_in_slices(
                        response.write, b"".join(chunk), STALL_HEARTBEATS * heartbeat
                    )
                    if limit is not None and sent >= limit:
                        break
            await response.write_eof()
        except TimeoutError:
            if deadline.expired():  # the client's own ?timeout=: a normal end
                await response.write_eof()
            else:
                client.cut_off()
        except (ConnectionError, RuntimeError):
            pass  # the client went away (aiohttp raises either, depending on when)
        finally:
            client.closed()
        return response
