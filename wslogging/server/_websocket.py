"""``GET /ws/logs``: a client's queue as WebSocket messages, and its messages (SPEC §5)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from .. import _wire
from .._filters import Filter
from .._history import LossMark, SinceError
from .._hub import Batch, Client, ClientState, Item, SendPing, SendPong
from .._protocol import (
    ClientMessage,
    Liveness,
    MessageBudget,
    Ping,
    ProtocolError,
    Subscribe,
    parse_client_message,
)
from .._version import __version__
from ._core import KEY_ID
from ._guard import Guarded
from ._responses import bad_request, error, message_json
from ._sockets import STALL_HEARTBEATS, unsent, write_in_slices
from ._source import caught_up

# Longest ``client_id`` a WebSocket may name.
MAX_CLIENT_ID = 128


# aiohttp's own frame limit, above ours so that we can answer instead of dropping the socket.
_WS_READ_LIMIT = 1024 * 1024


# The headers of a WebSocket handshake that aiohttp reads; their values must be ASCII.
HANDSHAKE_HEADERS = (
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
)


# The close code and reason of a stream whose key was removed (SPEC §3's code for a bad key).
REVOKED = (4401, "API key revoked")


class WebSockets(Guarded):
    """The WebSocket route: the handshake, the session reading the client's messages, and the
    one writer task per connection."""

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = self.options.allowed_origins
        if allowed is not None and origin is not None and origin not in allowed:
            return error(403, "forbidden", "Origin not allowed")
        for name in HANDSHAKE_HEADERS:
            if not all(value.isascii() for value in request.headers.getall(name, ())):
                # aiohttp fails on these with a 500 and a traceback, not a 400.
                return bad_request(f"{name} must be ASCII")
        problem = self._authenticate(request)
        client = None
        if problem is not None and (refused := await self._throttled(request)):
            return refused
        if problem is None:
            if unready := await self._not_ready(request, header_since=False):
                return unready
            client_id = request.query.get("client_id") or None
            if client_id is not None and len(client_id) > MAX_CLIENT_ID:
                return bad_request(f"client_id is longer than {MAX_CLIENT_ID} characters")
            # Asked of the source before _open, so that nothing is awaited between the
            # checks there and the client's registration.
            stored = await self._stored_ack(client_id, request)
            opened = self._open(request, header_since=False)
            if isinstance(opened, web.Response):
                return opened
            flt, since = opened
            if since is None and client_id is not None:
                since = self.hub.acked(client_id)  # resume right after the last ack
                if since is None and stored is not None:
                    with contextlib.suppress(SinceError):
                        since = self._ids.since(stored)
            # Registered before the first await, so that max_clients holds however many
            # handshakes arrive at once.
            client = self.hub.connect(flt, since, self._hello(flt), request[KEY_ID])
            client.client_id = client_id
        # Pings are ours (see _ws_writer), not aiohttp's: its heartbeat expects the pong within
        # half a heartbeat of the ping, which a healthy client still reading a backlog misses.
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=_WS_READ_LIMIT)
        try:
            await ws.prepare(request)
            if client is None:
                # Accepted, then closed at once: a browser sees the reason; no record is sent.
                await ws.close(code=4401, message=str(problem).encode())
            else:
                await self._ws_session(ws, client, self._track(request, client))
        except ConnectionError:
            pass  # the peer left during the handshake: nobody to answer (nor to log about)
        finally:
            if client is not None:
                client.closed()
        return ws

    async def _ws_session(
        self, ws: web.WebSocketResponse, client: Client, transport: asyncio.Transport | None
    ) -> None:
        """Read the client's messages while :meth:`_ws_writer` sends to it."""
        writer = asyncio.create_task(self._ws_writer(ws, client, transport))
        try:
            budget = MessageBudget()
            async for frame in ws:
                if frame.type is WSMsgType.ERROR:
                    break  # aiohttp has closed the connection (e.g. a frame over its limit)
                if not budget.take(time.monotonic()):
                    client.kick(1008, "too many messages")
                    break
                if frame.type is WSMsgType.PONG:
                    if client.liveness is not None:
                        client.liveness.pong()
                    continue
                if frame.type is WSMsgType.PING:
                    client.send_control(SendPong(frame.data))
                    continue
                try:
                    if frame.type is not WSMsgType.TEXT:
                        raise ProtocolError("send JSON text messages")
                    self._on_message(client, parse_client_message(frame.data, self._ids.ack))
                except ProtocolError as exc:
                    if not budget.error():
                        client.kick(1008, "too many malformed messages")
                        break
                    client.send_control({"type": "error", "detail": str(exc)})
            if client.state is ClientState.FINISHING:
                await writer  # it closes the socket with the code the client was kicked with
        finally:
            writer.cancel()

    async def _stored_ack(self, client_id: str | None, request: web.Request) -> str | None:
        """The id ``client_id`` last acknowledged to another server of the source (or to
        an earlier run of this one), when this one does not know it and it matters."""
        source = self._source
        if source is None or client_id is None or request.query.get("since"):
            return None
        if self.hub.acked(client_id) is not None:
            return None
        stored = await source.acked(client_id)
        if stored is not None:
            await caught_up(source, stored)
        return stored

    def _position(self) -> dict[str, Any]:
        """How far the stream has been examined for a client that is all caught up: every
        record up to ``last_id`` was sent to it or did not match its filter, so it resumes
        after that (SPEC §5), and a gap it hears later counts nothing it has passed."""
        return {"type": "position", "last_id": self._ids.wire_id(self.hub.history.last_id)}

    def _hello(self, flt: Filter) -> dict[str, Any]:
        return {
            "type": "hello",
            "server": f"wslogging/{__version__}",
            "epoch": self.hub.epoch,
            "last_id": self._ids.wire_id(self.hub.history.last_id),
            "filter": flt.to_json(),
        }

    async def _ws_writer(
        self, ws: web.WebSocketResponse, client: Client, transport: asyncio.Transport | None
    ) -> None:
        """The one task that writes to this socket: records, gaps and replies, in order.

        Liveness (see :class:`Liveness`): it pings once a heartbeat; a peer that has neither
        answered nor taken any bytes two heartbeats later is gone (a half-open connection)
        and is cut off. A write that makes no progress for :data:`STALL_HEARTBEATS`
        heartbeats (a peer that stopped reading altogether) cuts it off too. A client that
        reads slowly but reads is never cut off: it loses its oldest records per
        ``slow_client`` instead. Progress is read from the kernel's send queue on Linux;
        elsewhere only the pong counts.
        """
        heartbeat = self.options.heartbeat
        loop = asyncio.get_running_loop()
        liveness = client.liveness = Liveness(heartbeat, loop.time())
        if transport is not None:
            client.write_now = _writer_now(ws, transport)
        try:
            while True:
                items = await client.next_batch(heartbeat)
                if items is None:
                    break
                if not items and client.filter.filtering:
                    items.append(self._position())
                now = loop.time()
                if liveness.gone(now, lambda: unsent(transport)):
                    client.cut_off()
                    return
                if liveness.due(now):
                    liveness.pinged(now, unsent(transport))
                    items.append(SendPing())  # after the batch, so it measures the backlog
                await self._ws_send(ws, items, STALL_HEARTBEATS * heartbeat)
            await ws.close(code=client.close_code, message=client.close_reason.encode())
        except TimeoutError:
            client.cut_off()
        except (ConnectionError, RuntimeError):
            pass  # the peer is gone; the reading side notices and cleans up

    @staticmethod
    async def _ws_send(ws: web.WebSocketResponse, items: list[Item], stall: float) -> None:
        """Send ``items`` in order, the text frames of a batch in one write.

        One write (one system call) per batch rather than per record: each system call lets
        the app's threads take the GIL, and a writer that makes one per record is starved by
        an app that logs in a tight loop. The frames are framed here (RFC 6455 §5.2: a server
        does not mask, so a frame is its header and the record's bytes) and written through
        the response's own stream, which waits (drains) as aiohttp's writes do. Raises
        ``TimeoutError`` if the peer takes nothing for ``stall`` seconds.
        """

        async def write(data: bytes | memoryview) -> None:
            # StreamResponse.write: WebSocketResponse.write refuses raw bytes on purpose.
            await web.StreamResponse.write(ws, data)

        frames: list[bytes] = []
        for item in items:
            if isinstance(item, SendPing | SendPong):
                if frames:
                    await write_in_slices(write, b"".join(frames), stall)
                    frames = []
                async with asyncio.timeout(stall):
                    await (ws.ping() if isinstance(item, SendPing) else ws.pong(item.data))
                continue
            data = item.data if isinstance(item, _wire.LogEntry | LossMark) else message_json(item)
            frames += (_wire.ws_text_frame_header(len(data)), data)
        if frames:
            await write_in_slices(write, b"".join(frames), stall)

    def _on_message(self, client: Client, message: ClientMessage) -> None:
        """Act on one well-formed client message (SPEC §5)."""
        if isinstance(message, Ping):
            client.send_control({"type": "pong"})
        elif isinstance(message, Subscribe):
            client.set_filter(message.filter)
            client.send_control({"type": "subscribed", "filter": message.filter.to_json()})
        elif client.client_id is None:
            raise ProtocolError("ack needs a client_id in the connection URL")
        else:
            try:
                self.hub.ack(client.client_id, message.id)
            except ValueError as exc:
                raise ProtocolError(str(exc)) from None
            if self._source is not None:
                acked = self.hub.acked(client.client_id)
                assert acked is not None
                self._source.ack(client.client_id, self._ids.wire_id(acked))


def _writer_now(ws: web.WebSocketResponse, transport: asyncio.Transport) -> Callable[[Batch], bool]:
    """:attr:`Client.write_now` for a WebSocket: the batch's frames, in one write straight
    to the transport, only while it has nothing buffered (the peer keeps up) and the socket
    is open; otherwise ``False``, and the writer (with its deadlines) takes over.

    Called only while the connection's writer is idle, so nothing else is being written: the
    frames go out whole and in order. This is how one record reaches a thousand clients
    without a thousand task switches.
    """

    def write_now(batch: Batch) -> bool:
        if ws.closed or transport.is_closing() or transport.get_write_buffer_size():
            return False
        transport.write(batch.ws_frames())  # joined once for every client that gets it all
        return True

    return write_now
