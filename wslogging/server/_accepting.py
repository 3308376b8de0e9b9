"""Accepting connections into the server's :class:`ConnectionTable`: the bound on every
connection, TLS handshakes, and the sweep of connections past their deadline."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from .._connections import AUTH_DEADLINE
from ._core import ServerCore
from ._options import ServerState
from ._sockets import TrackedConnection

# Seconds between two sweeps for connections past their deadline (see ConnectionTable).
SWEEP_INTERVAL = 1.0


# Seconds accepting pauses when the process is out of descriptors (the app's to have).
ACCEPT_PAUSE = 1.0


# Connections accepted per wakeup at most, so that a flood cannot hold up the loop.
ACCEPT_BURST = 128


class Accepting(ServerCore):
    """Accepts connections itself, so that each is in the table from accept on."""

    def _accept_ready(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        """Accept what the listening socket has (a burst at most) into the table."""
        for _ in range(ACCEPT_BURST):
            try:
                accepted, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the peer gave up while waiting in the backlog
            except OSError:
                # Out of descriptors (EMFILE: the app's, and it keeps them) or memory, or
                # worse: the peers wait in the kernel's backlog a moment (as with asyncio).
                self._pause_accepting(sock, ssl_context)
                return
            self._admit(accepted, ssl_context)

    def _pause_accepting(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())

        def resume() -> None:
            if self.state is ServerState.RUNNING and sock.fileno() >= 0:
                loop.add_reader(sock.fileno(), self._accept_ready, sock, ssl_context)

        loop.call_later(ACCEPT_PAUSE, resume)

    def _admit(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        """Serve ``sock`` if the table takes it (see :class:`ConnectionTable`), else close it."""
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        protocol = TrackedConnection(server, loop)

        def close() -> None:
            # The transport once there is one; before (a TLS handshake), the socket itself:
            # shut down, its transport sees the end and closes it.
            if protocol.transport is not None:
                protocol.transport.abort()
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        entry = self._table.opened(loop.time(), close, sock.fileno())
        if entry is None:
            sock.close()
            return
        protocol.entry, protocol.on_lost = entry, self._table.closed
        sock.setblocking(False)
        task = loop.create_task(self._handshake(sock, protocol, ssl_context))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(
        self,
        sock: socket.socket,
        protocol: TrackedConnection,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=ssl_context,
                ssl_handshake_timeout=AUTH_DEADLINE if ssl_context else None,
            )
        except (Exception, asyncio.CancelledError):
            # A failed TLS handshake (asyncio has closed the socket): the protocol never
            # heard of the connection, so it is taken off the table here.
            assert protocol.entry is not None
            self._table.closed(protocol.entry)

    async def _sweep(self) -> None:
        """Close the connections past their deadline, once every :data:`SWEEP_INTERVAL`."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self._table.sweep(loop.time())
