"""``/ws/ingest``: forwarding processes of the same host, their batches and their drops."""

from __future__ import annotations

import contextlib
import os

from aiohttp import WSMsgType, web

from .. import _ingest, _wire
from .._ingest import IngestError
from ._guard import Guarded
from ._options import ForwarderStats
from ._responses import bad_request, error

# The close code (RFC 6455's "service restart") that tells forwarders this process serves the
# port again in a moment.
RESTARTING = 1012


# Forwarding processes connected at once, at most; more get HTTP 503.
MAX_FORWARDERS = 1024


# Forwarders (connected or gone) whose counts /api/stats lists, the most recent ones.
FORWARDER_STATS = 256


class Ingest(Guarded):
    """The route forwarding processes connect to (see :mod:`wslogging._ingest`)."""

    async def _ingest(self, request: web.Request) -> web.StreamResponse:
        """One forwarding process: the handshake, then its batches into the hand-off.

        Untrusting: every frame is bounded (:data:`_ingest.MAX_FRAME`) and checked; a
        malformed one is answered with an ``error`` frame and changes nothing, and after
        :data:`_ingest.MAX_ERRORS` of them the connection is closed with 1008. Records that
        find the queue full are dropped and counted (``records_dropped``); reading never
        waits for anything but the socket, so a forwarder cannot stall the server.
        """
        secret = self._ingest_secret
        assert secret is not None
        try:
            nonce = _ingest.check_nonce(request.query.get("nonce"))
        except IngestError as exc:
            return bad_request(str(exc))
        if len(self._ingest_sockets) >= MAX_FORWARDERS:
            return error(503, "unavailable", "too many forwarding processes")
        ws = web.WebSocketResponse(
            autoping=True, compress=False, max_msg_size=_ingest.MAX_FRAME + 1024
        )
        stats: ForwarderStats | None = None
        orderly = False
        try:
            await ws.prepare(request)
            challenge = _ingest.new_nonce()
            await ws.send_str(
                _ingest.challenge_message(
                    challenge, os.getpid(), _ingest.server_proof(secret, nonce)
                )
            )
            frame = await ws.receive(timeout=_ingest.HANDSHAKE_TIMEOUT)
            if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return ws  # a forwarder that found our proof wrong (a stale file) goes away
            try:
                if frame.type is not WSMsgType.TEXT:
                    raise IngestError("expected an 'auth' message")
                auth = _ingest.parse_auth(frame.data)
                if not _ingest.proof_matches(
                    auth.proof, _ingest.forwarder_proof(secret, challenge)
                ):
                    raise IngestError("invalid ingest secret")
            except IngestError as exc:
                await ws.close(code=4401, message=str(exc).encode())
                return ws
            # Counted against MAX_FORWARDERS once proven: a handshake nobody finishes
            # (anyone may start one) must not take a forwarder's place.
            self._authenticated(request)
            self._ingest_sockets.add(ws)
            stats = self._forwarder_stats(auth.pid)
            await ws.send_str(_ingest.ACCEPTED)
            orderly = await self._ingest_frames(ws, stats)
        except (ConnectionError, TimeoutError, RuntimeError):
            pass  # the forwarder went away, or never finished its handshake
        finally:
            self._ingest_sockets.discard(ws)
            if stats is not None:
                stats.connected = False
                if not orderly and self._handoff is not None:
                    # What it still held (and how much it dropped since it last said) is
                    # lost with it. Told while this server is closing too (a worker that
                    # died just before its master stopped): the hand-off takes it until
                    # the server's close has shut it, and then says nothing.
                    self._handoff.lost(None, "source")
        return ws

    async def _ingest_frames(self, ws: web.WebSocketResponse, stats: ForwarderStats) -> bool:
        """Take one forwarder's batches and drop counts until its connection ends; whether it
        ended in order (the forwarder's close frame, or ours).

        Records the forwarder reports it dropped are told to clients as ``gap(source)`` at this
        place in the stream; so is a connection that ends without the forwarder's close (its
        process killed, say), with the count unknown: what it still held is lost.
        """
        handoff = self._handoff
        assert handoff is not None
        put = handoff.put
        errors = 0
        while True:
            frame = await ws.receive()
            try:
                if frame.type is WSMsgType.BINARY:
                    entries, bad = _wire.unpack_entries(frame.data)
                    for entry in entries:
                        if put(entry):
                            stats.records_received += 1
                        else:
                            self.ingest_dropped += 1
                    if bad:
                        self.hub.records_failed += bad  # counted as records_failed
                        raise IngestError(f"{bad} malformed record(s) skipped")
                elif frame.type is WSMsgType.TEXT:
                    count = _ingest.parse_dropped(frame.data)
                    if count > stats.records_dropped:
                        handoff.lost(count - stats.records_dropped, "source")
                        stats.records_dropped = count
                elif frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING):
                    return True
                elif frame.type in (WSMsgType.CLOSED, WSMsgType.ERROR):
                    return False  # the end of the stream without a close frame, or garbage
                else:
                    raise IngestError("expected a batch (binary) or a 'dropped' message")
            except (IngestError, ValueError, RecursionError) as exc:
                errors += 1
                if errors > _ingest.MAX_ERRORS:
                    await ws.close(code=1008, message=b"too many malformed frames")
                    return True
                await ws.send_str(_ingest.error_message(str(exc)[:200]))

    def _forwarder_stats(self, pid: int) -> ForwarderStats:
        """The stats entry for ``pid``, made anew (a pid reconnecting after a takeover
        keeps its counts), newest last; only the latest :data:`FORWARDER_STATS` are kept."""
        stats = self._forwarders.pop(pid, None) or ForwarderStats(pid)
        stats.connected = True
        self._forwarders[pid] = stats
        while len(self._forwarders) > FORWARDER_STATS:
            self._forwarders.popitem(last=False)
        return stats

    @staticmethod
    async def _close_ingest(ws: web.WebSocketResponse, restarting: bool = False) -> None:
        with contextlib.suppress(Exception):
            if restarting:
                await ws.close(code=RESTARTING, message=b"server restarting")
            else:
                await ws.close(code=1001, message=b"server shutting down")
