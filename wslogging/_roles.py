"""Where a handler's records go, and how that changes: serving the port, joining the process
that serves it (forwarding), taking the port over when that process goes, adopting the
server of the handler a reconfiguration replaced, appending to Redis, and what a forked
child does. :class:`Roles` is that part of :class:`~wslogging.WebSocketHandler`.

The lines a handler says on stderr are said here too: one whole line per event, some of
them once per process (see :meth:`Roles._say_once`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import socket
import threading
import weakref
from typing import TYPE_CHECKING

from . import _rendezvous
from ._belonging import Joiner, describe, differences, refusal
from ._rendezvous import Rendezvous, RendezvousError, keys_fingerprint
from ._stderr import say
from .server import LogServer, ServerOptions, ServerState
from .sinks import Sink
from .sinks._forwarder import Forwarder

if TYPE_CHECKING:
    from .sinks._redis import StreamAppender

# How long close() may spend delivering what is queued before it gives up.
CLOSE_TIMEOUT = 2.0
# How long a handler that finds its port in use waits for the process holding it to publish
# its rendezvous file (it does so right after binding) before it takes the holder for some
# other program.
JOIN_WAIT = 1.0
# Lines said once per process (see Roles._say_once); bounded.
_said: set[str] = set()
_said_lock = threading.Lock()
MAX_SAID = 100


class HandlerState(enum.Enum):
    """``SERVING``: this process serves the port. ``FORWARDING``: another process of this
    user on this host does, and records are sent to it (see :class:`Forwarder`).
    ``APPENDING``: ``backend=`` is set, and records are appended to a Redis stream. ``FAILED``
    (the server could not start) and ``CLOSED`` count every record as dropped and do nothing
    else. ``PARKED``: closed by a reconfiguration while serving; its server goes on, for the
    handler that replaces it to adopt, and records that still reach this one go to it."""

    SERVING = "serving"
    FORWARDING = "forwarding"
    APPENDING = "appending"
    FAILED = "failed"
    CLOSED = "closed"
    PARKED = "parked"


# Tuples, not sets: membership by identity, without Enum's hash (a Python call) on every
# logging call.
STREAMING = (HandlerState.SERVING, HandlerState.FORWARDING, HandlerState.APPENDING)
# What hands records on to its sink: a parked handler's server is still serving.
ACCEPTING = (*STREAMING, HandlerState.PARKED)

# The handlers that stream, or may again (see Roles._register).
handlers: weakref.WeakSet[Roles] = weakref.WeakSet()


def after_fork() -> None:
    """In a forked child: a fresh lock for the lines said once (the parent's may be held)."""
    global _said_lock
    _said_lock = threading.Lock()


class Roles(logging.Handler):
    """The part of a handler that decides where its records go and changes it. The state
    it works on is made by :class:`~wslogging.WebSocketHandler`'s constructor."""

    state: HandlerState
    stream: str
    _options: ServerOptions
    # 0: a port chosen by the system, which no later handler asks for by number.
    _configured_port: int
    _generated: bool
    _dropped: int
    _drop_lock: threading.RLock
    _local: threading.local
    # The handler that adopted this one's server (see _adopt): drops are counted there.
    _adopter: Roles | None
    # Taken (briefly, never while waiting for another thread) to change roles: close()
    # against a takeover on the forwarder's thread.
    _role_lock: threading.Lock
    _secret: str
    _forwarder: Forwarder | None
    _appender: StreamAppender | None
    # This process's server: None while it serves nothing (forwarding or appending).
    _server: LogServer | None
    # Where records go: the server, the forwarder, or the Redis appender.
    _sink: Sink

    @property
    def url(self) -> str:
        """The base URL, as ``http://127.0.0.1:3000`` (no trailing slash), of this process's
        server or of the one it forwards to; with ``backend=``, the Redis URL, its password
        masked."""
        return self._sink.url

    def _register(self) -> None:
        """Count this handler among those that stream (``broadcast_log`` and forks)."""
        handlers.add(self)

    def _adopt(self, parked: Roles, options: ServerOptions) -> bool:
        """Serve on with the server of ``parked``, the handler this one replaces in a
        reconfiguration (see the class docstring); whether it could (the same host and TLS
        files, and the server still running)."""
        server = parked._server
        old = parked._options
        if (
            server is None
            or server.state is not ServerState.RUNNING
            or (old.host, old.ssl_certfile, old.ssl_keyfile)
            != (options.host, options.ssl_certfile, options.ssl_keyfile)
        ):
            return False
        announce = False
        if self._generated and parked._generated:
            # Neither configured a key: the one printed, that clients have, stays.
            options = dataclasses.replace(options, keys=old.keys)
        elif self._generated:
            announce = True  # the configured keys went: the new made-up one is printed
        options = dataclasses.replace(options, port=server.port)
        with parked._drop_lock:
            self._dropped = parked._dropped  # the server's count of drops goes on from there
            parked._adopter = self
        kept = server.reconfigure(options, lambda: self._dropped)
        self._options = options
        self._server = self._sink = server
        self._secret = parked._secret
        self._publish(server.port, options.keys, self._secret)
        self.state = HandlerState.SERVING
        self._register()
        if kept:
            values = ", ".join(f"{name}={getattr(old, name)}" for name in kept)
            self._say(
                f"{self.url}/ kept serving through the reconfiguration with {values}; "
                "the new value applies when the process restarts"
            )
        if announce:
            self._say(f"streaming logs at {self.url}/ with API key {options.keys[0]}")
        return True

    def _stop_parked(self, restarting: bool = False) -> None:
        """Stop the parked server (this handler's, taken out of the parked ones): bounded,
        and without waiting under logging's lock; ``restarting``: a new one follows at once
        (see :meth:`LogServer.close`)."""
        with self._role_lock:
            self.state = HandlerState.CLOSED
            server, secret = self._server, self._secret
        if server is not None:
            _rendezvous.remove(self._options.host, server.port, secret)
            server.close(CLOSE_TIMEOUT, restarting)

    def _join(self) -> None:
        """The port is in use: forward to the process serving it if it is a wslogging server
        of this user (it has published a rendezvous file) that this process belongs with
        (see :mod:`wslogging._belonging`); else say, in one line, who holds the port and why
        this process does not join, and drop (counting)."""
        host, port = self._options.host, self._options.port
        in_use = f"cannot serve on {host}:{port} (Address already in use)"
        dropped = "records for this handler are dropped and counted"
        try:
            found = _rendezvous.wait_for(host, port, JOIN_WAIT)
        except RendezvousError as exc:
            self._say(f"{in_use} nor forward to the process serving it: {exc}; {dropped}")
            return
        if found is None:
            self._say(
                f"{in_use}: another program holds it, not a wslogging server of this user; "
                f"{dropped} (configure another port)"
            )
            return
        joiner = self._joiner()
        holder = describe(found.pid, found.program)
        me = describe(joiner.pid, joiner.program)
        why = refusal(found, joiner)
        if why is not None:
            self._say(
                f"{in_use}: {holder} holds it, a wslogging server {why}; {me} does not join "
                f"its stream, and {dropped} (configure another port for this program, or the "
                "same api_keys to share one stream)"
            )
            return
        forwarder = self._new_forwarder(found)
        self._forwarder = self._sink = forwarder
        self.state = HandlerState.FORWARDING
        self._register()
        forwarder.start()
        different = differences(found, joiner)
        if found.collector:
            self._say_once(f"{me} forwards its records to the collector at {self.url}/ ({holder})")
        elif different:
            these = " and ".join(different)
            self._say_once(
                f"{me} forwards its records to {self.url}/, served by {holder}, whose "
                f"{these} differ from this process's; restart {holder} to use these {these}"
            )
        elif found.pid != joiner.parent and found.program != joiner.program:
            # Two programs in one stream: said once, never silently.
            self._say_once(f"{me} forwards its records to {self.url}/, the stream of {holder}")

    def _joiner(self) -> Joiner:
        """This process, as :mod:`wslogging._belonging` sees it."""
        return Joiner(
            pid=os.getpid(),
            parent=os.getppid(),
            program=_rendezvous.this_program(),
            keys=self._options.keys,
            generated=self._generated,
            history=self._options.history,
        )

    def _may_forward_to(self, found: Rendezvous, joined: Rendezvous | None) -> str | None:
        """For the forwarder, finding ``found`` serving the port after the server it joined
        (``joined``) went: ``None`` if it may forward there (the same server, one with the
        same keys, or one this process belongs with), else the line that says why not."""
        if joined is not None and (
            found.secret == joined.secret or (found.keys is not None and found.keys == joined.keys)
        ):
            return None
        joiner = self._joiner()
        why = refusal(found, joiner)
        if why is None:
            return None
        return (
            f"{describe(found.pid, found.program)} now serves {self.url}/, a wslogging server "
            f"{why}; {describe(joiner.pid, joiner.program)} does not forward to it: its "
            "records wait in its queue, then are dropped and counted"
        )

    def _new_forwarder(self, found: Rendezvous | None) -> Forwarder:
        forwarder = Forwarder(
            self._options,
            lambda: self._dropped,
            self._count_drop,
            self._take_over,
            self._say,
            self._may_forward_to,
        )
        forwarder.rendezvous = forwarder.joined = found
        return forwarder

    def _publish(self, port: int, keys: tuple[str, ...], secret: str) -> None:
        """Write the rendezvous file that lets other processes forward to this one's server
        on ``port``; it names the key too when the key was made up."""
        api_key = keys[0] if self._generated else None
        published = Rendezvous(
            os.getpid(),
            secret,
            api_key,
            keys=keys_fingerprint(keys),
            history=self._options.history,
            parent=os.getppid(),
            program=_rendezvous.this_program(),
        )
        try:
            _rendezvous.write(self._options.host, port, published)
        except OSError as exc:
            self._say(f"other processes cannot forward their records to this one: {exc}")

    def _take_over(self, sock: socket.socket, found: Rendezvous | None) -> LogServer | None:
        """Serve on ``sock``, which the forwarder (on its thread) has just bound: the
        process that served the port has gone. A made-up key stays the one the previous
        server printed, so clients that have it keep working. ``None`` (and ``sock`` closed)
        if this handler is closed meanwhile or the server cannot start."""
        options = self._options
        if self._generated and found is not None and found.api_key:
            options = dataclasses.replace(options, keys=(found.api_key,))
        secret = _rendezvous.new_secret()
        server = LogServer(options, lambda: self._dropped, ingest_secret=secret)
        # Published before the server starts, for the other forwarders to find it sooner.
        port: int = sock.getsockname()[1]
        self._publish(port, options.keys, secret)
        try:
            server.start(sock)
        except Exception as exc:
            sock.close()
            _rendezvous.remove(options.host, port, secret)
            self._say(f"cannot take over {options.host}:{options.port}: {exc!r}")
            return None
        with self._role_lock:
            closed = self.state is HandlerState.CLOSED
            if not closed:
                self._server = self._sink = server
                self._secret = secret
                self.state = HandlerState.SERVING
            # set_api_keys() may have run since options were read, and seen no server.
            keys = self._options.keys if not self._generated else options.keys
        if not closed and keys != options.keys:
            server.set_keys(keys)
            self._publish(port, keys, secret)
        if closed:
            server.close(0.0)
            _rendezvous.remove(options.host, port, secret)
            return None
        before = f" from process {found.pid}" if found is not None else ""
        self._say(f"process {os.getpid()} took over serving {self.url}/{before}")
        return server

    def _count_drop(self, count: int = 1) -> None:
        with self._drop_lock:
            adopter = self._adopter
            if adopter is None:
                self._dropped += count
        if adopter is not None:
            adopter._count_drop(count)

    def _forward_after_fork(self) -> None:
        """In a forked child: let go of what the parent serves or forwards with, and forward
        to the parent (or whoever serves the port). The forwarder's thread starts with the
        child's first record: a child that never logs costs nothing."""
        found: Rendezvous | None = None
        if self.state is HandlerState.SERVING:
            server = self._server
            assert server is not None
            api_key = self._options.keys[0] if self._generated else None
            keys = keys_fingerprint(self._options.keys)
            found = Rendezvous(os.getppid(), self._secret, api_key, keys=keys)
            server.abandon_after_fork()
            self._server = None
        if self._forwarder is not None:
            found = found or self._forwarder.rendezvous
            self._forwarder.abandon_after_fork()
        self._forwarder = self._sink = self._new_forwarder(found)
        self.state = HandlerState.FORWARDING

    def _append_after_fork(self) -> None:
        """In a forked child of a process appending to Redis: the parent's appender thread
        is not here, so append with a new one of the child's own (gunicorn's ``--preload``)."""
        old = self._appender
        assert old is not None
        new = appender(self, old.url_with_password, old.stream, self._options)
        self._appender = self._sink = new
        new.start()

    @staticmethod
    def _say(line: str) -> None:
        say(line)

    @classmethod
    def _say_once(cls, line: str) -> None:
        """:meth:`_say`, unless this process has said ``line`` already (a configuration run
        twice, as Django's autoreloader child does, says it once)."""
        with _said_lock:
            if line in _said:
                return
            if len(_said) < MAX_SAID:
                _said.add(line)
        cls._say(line)


def appender(handler: Roles, backend: str, stream: str, options: ServerOptions) -> StreamAppender:
    """The Redis appender for ``backend=``; ``ValueError`` for a bad URL or stream name, or
    without redis-py."""
    try:
        from .sinks._redis import StreamAppender, check_url
    except ImportError:
        raise ValueError("backend= needs redis-py: pip install 'wslogging[redis]'") from None
    check_url(backend)
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"stream must be a non-empty string, not {stream!r}")
    return StreamAppender(
        backend,
        stream,
        maxlen=options.history,
        queue_size=options.queue_size,
        keep_level=options.keep_level,
        dropped=lambda: handler._dropped,
        count_drops=handler._count_drop,
    )
