"""Sockets and the loop, below the routes: aiohttp's protocol for an accepted connection
(tracked, its errors scrubbed of credentials), writing in slices against a stall deadline,
what the kernel still holds, descriptors after a fork, and the loop itself."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import resource
import struct
import termios
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .._connections import Connection
from .._redact import DEFAULT_FIELDS, RedactingFilter
from ._responses import error

# Seconds an HTTP keep-alive connection may sit idle after a response before it is closed.
KEEPALIVE_IDLE = 10.0


# Bytes per write call; the stall deadline applies to each (see write_in_slices).
WRITE_SLICE = 256 * 1024


# Heartbeats a write may go without progress before the client is taken for gone.
STALL_HEARTBEATS = 4


# aiohttp's request handler options, the same for the runner and every connection.
HANDLER_OPTIONS: dict[str, Any] = {
    # access_log=None: an access line could carry a credential, and must never be streamed;
    # logger=http_log, for the same reason (see HttpLogScrubber).
    "access_log": None,
    "keepalive_timeout": KEEPALIVE_IDLE,
}


class HttpLogScrubber(logging.Filter):
    """Keeps credentials out of what aiohttp's request handler logs (on :data:`http_log`).

    aiohttp logs a request it cannot parse at ERROR with its raw request line, which may hold
    a key or a ticket, and anyone who can connect can send one: such a record becomes DEBUG
    and names the error's class only. Any other record (a bug of ours) keeps its traceback,
    with every credential in it masked. Changes the record in place: it is aiohttp's own,
    made for this call, and no handler has seen it yet.
    """

    _redactor = RedactingFilter(fields=(*DEFAULT_FIELDS, "ticket"))

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            detail = f": {type(error).__name__} (HTTP {error.code})"
            record.msg = str(record.msg) + detail.replace("%", "%%")
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        else:
            record.__dict__.update(self._redactor.filter(record).__dict__)
        return True


# The logger aiohttp's request handler uses: ours, so never streamed, and scrubbed.
http_log = logging.getLogger("wslogging.http")
http_log.addFilter(HttpLogScrubber())


class TrackedConnection(web.RequestHandler):
    """aiohttp's protocol for one accepted connection, which tells the server's
    :class:`ConnectionTable` when it ends, and answers a request it cannot parse with the
    server's own JSON error, never with anything of the request."""

    __slots__ = ("entry", "on_lost")

    def __init__(self, manager: web.Server, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(manager, loop=loop, logger=http_log, **HANDLER_OPTIONS)
        self.entry: Connection | None = None
        self.on_lost: Callable[[Connection], None] | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.entry is not None and self.on_lost is not None:
            self.on_lost(self.entry)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's logs the error (see HttpLogScrubber) and raises if an answer has begun;
        # its answer may quote the request line (and any token in it) back.
        super().handle_error(request, status, exc, message)
        if status >= 500:
            response = error(status, "internal_error", "the server could not answer")
        else:
            response = error(status, "bad_request", "malformed HTTP request")
        response.force_close()
        return response


def soft_nofile() -> int | None:
    """The process's soft limit on open descriptors; ``None`` where unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def release_descriptors(descriptors: list[int]) -> None:
    """Point each of ``descriptors`` at ``/dev/null`` (see :meth:`LogServer.abandon_after_fork`)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in descriptors:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def unsent(transport: asyncio.BaseTransport | None) -> int | None:
    """Bytes written to ``transport`` that the peer has not taken yet: asyncio's buffer plus
    the kernel's send queue (Linux's SIOCOUTQ); ``None`` where that cannot be known."""
    if transport is None or not hasattr(termios, "TIOCOUTQ"):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        buffered = transport.get_write_buffer_size()  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return None
    return int(struct.unpack("i", queued)[0]) + int(buffered)


async def write_in_slices(
    write: Callable[[bytes | memoryview], Awaitable[None]], data: bytes, stall: float
) -> None:
    """Write ``data`` in slices of :data:`WRITE_SLICE` bytes, each within ``stall`` seconds.

    The deadline is per slice, so it measures progress: a reader that takes nothing for
    ``stall`` seconds is gone (``TimeoutError``), one that reads slowly is not.
    """
    view = memoryview(data)
    for start in range(0, len(view), WRITE_SLICE):
        async with asyncio.timeout(stall):
            await write(view[start : start + WRITE_SLICE])
