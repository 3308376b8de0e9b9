"""WebSocketHandler: render each record on the app thread and hand it off; never block or raise."""

from __future__ import annotations

import dataclasses
import enum
import errno
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterable
from threading import get_ident
from typing import TYPE_CHECKING, Any

from . import _auth, _rendezvous
from ._belonging import Joiner, describe, differences, refusal
from ._filters import parse_level
from ._forwarder import Forwarder
from ._hub import SlowClientPolicy
from ._redact import RedactingFilter
from ._rendezvous import Rendezvous, RendezvousError, keys_fingerprint
from ._stderr import say
from ._wire import LogEntry, default_message, json_safe, render_record
from .server import LogServer, ServerOptions, ServerState, holds_logging_lock

if TYPE_CHECKING:
    from ._redis import StreamAppender

# How long close() may spend delivering what is queued before it gives up.
CLOSE_TIMEOUT = 2.0
# Records a thread may log from a signal handler (or __del__) while it is inside a hand-off;
# they go out right after it. More are dropped and counted.
REENTRANT_PARKED = 100
# How long a handler that finds its port in use waits for the process holding it to publish
# its rendezvous file (it does so right after binding) before it takes the holder for some
# other program.
JOIN_WAIT = 1.0

_handlers: weakref.WeakSet[WebSocketHandler] = weakref.WeakSet()
# Lines said once per process (see WebSocketHandler._say_once); bounded.
_said: set[str] = set()
_said_lock = threading.Lock()
MAX_SAID = 100
# Serving handlers closed by a reconfiguration (dictConfig, fileConfig), by port: their
# servers go on until a handler on the same port adopts them or the reconfiguration is over.
_parked: dict[int, WebSocketHandler] = {}
_parked_lock = threading.Lock()


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
_STREAMING = (HandlerState.SERVING, HandlerState.FORWARDING, HandlerState.APPENDING)
# What hands records on to its sink: a parked handler's server is still serving.
_ACCEPTING = (*_STREAMING, HandlerState.PARKED)


def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def _number(name: str, value: Any, kind: type[int] | type[float], minimum: float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, not {value!r}")
    return number


def _port(value: object) -> int:
    port: int = _number("port", value, int, 0)
    if port > 65535:
        raise ValueError(f"port must be 0 to 65535, not {value!r}")
    return port


def _keep_level(value: object) -> int | None:
    """``keep_level``: a level name or number, or ``None`` / ``""`` for no shedding."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        level = logging.getLevelNamesMapping().get(value.strip().upper())
        if level is None:
            raise ValueError(f"keep_level must be a level name or number, not {value!r}")
        return level
    return int(_number("keep_level", value, int, 0))


def _origins(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset(_auth.parse_keys(value))


class WebSocketHandler(logging.Handler):
    """A logging handler that serves the records it gets to live clients (SPEC §2).

    Every option is a plain keyword so ``dictConfig`` and ``fileConfig`` can build it; strings
    are accepted for numbers and booleans. Bad values raise ``ValueError`` from the constructor
    (a configuration error). Everything after that never raises into the app:

    - The constructor binds the port and returns; the server starts serving from its own
      daemon thread. If the port cannot be bound, one line goes to stderr and the handler
      becomes a no-op that counts what it drops (``records_dropped``).
    - :meth:`emit` renders the message, its extras and traceback on the calling thread and
      hands the result to a bounded queue without waiting; when the queue is full the record
      is dropped and counted. The handler lock is not taken (the hand-off is thread-safe), so
      a logging call never waits for another thread's, and a signal handler that logs never
      waits for its own thread (see :meth:`enqueue`).
    - Records logged by the server's own thread, and by ``wslogging.*`` loggers, are never
      streamed: that would loop.
    - :meth:`close` (``logging.shutdown()`` calls it at exit) delivers what is queued within
      about :data:`CLOSE_TIMEOUT` seconds, closes WebSockets with 1001 and ends SSE streams.
      It is idempotent; records after it are counted as dropped.
    - Reconfiguring keeps the server: ``dictConfig`` (and ``fileConfig``) close the handlers
      they replace, under logging's module lock, before they build the new ones. A serving
      handler on a fixed port closed that way *parks* its server instead of stopping it, and
      a new handler on the same port and host (and the same TLS files) built while it is
      parked *adopts* it: the same port, history, epoch, clients, forwarders and ingest
      secret, with the new keys and client limits applied at once (clients of a key no
      longer accepted are closed with 4401) and ``history``, ``queue_size``, ``keep_level``
      kept until the server starts afresh (one stderr line says so when they differ). A
      parked server nobody adopted stops as soon as the reconfiguration is over. So a
      settings reload, or gunicorn's HUP re-running ``logconfig_dict``, is invisible to
      clients. A ``close()`` outside a reconfiguration stops at once, as above.
    - With ``backend="redis://..."`` nothing is served and no port is bound: records are
      appended to the Redis stream ``stream`` (``XADD``, the stream bounded to about
      ``history`` entries) from a daemon thread, for ``wslogging serve --redis`` to serve.
      The queue, the drops and :meth:`close` behave as above; Redis being down costs records
      (counted), never a wait.

    With no key configured (``api_keys``, ``api_key_env``), a key is made up and printed in
    one stderr line; on a fixed loopback port it is kept for this user and port, and reused
    by later runs (see :func:`wslogging._rendezvous.made_up_key`).

    The message sent as ``log`` is the handler's formatter output when one is set; without
    one, it is the bare message (the traceback goes to ``exc`` instead of being repeated).
    """

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        host: str = "127.0.0.1",
        port: int | str = 3000,
        api_keys: str | Iterable[str] | None = None,
        api_key_env: str | None = "WSLOGGING_API_KEY",
        history: int | str = 10000,
        queue_size: int | str = 10000,
        client_queue_size: int | str = 1000,
        slow_client: str = "drop",
        heartbeat: float | str = 15.0,
        max_clients: int | str = 1000,
        max_clients_per_key: int | str | None = None,
        allowed_origins: str | Iterable[str] | None = None,
        allow_query_token: bool | str = True,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        backend: str | None = None,
        stream: str = "wslogging",
        keep_level: int | str | None = logging.WARNING,
    ) -> None:
        try:
            policy = SlowClientPolicy(slow_client)
        except ValueError:
            raise ValueError(
                f"slow_client must be 'drop' or 'disconnect', not {slow_client!r}"
            ) from None
        keys = _auth.configured_keys(api_keys, api_key_env, os.environ)
        generated = not keys and not backend
        kept = ""  # where a made-up key is kept, for the line that prints it
        if generated:
            key, kept = _rendezvous.made_up_key(str(host), _port(port))
            keys = [key]
        clients: int = _number("max_clients", max_clients, int, 0)
        per_key: int = clients
        if max_clients_per_key not in (None, ""):
            per_key = _number("max_clients_per_key", max_clients_per_key, int, 1)
        options = ServerOptions(
            host=str(host),
            port=_port(port),
            keys=tuple(keys),
            history=_number("history", history, int, 0),
            queue_size=_number("queue_size", queue_size, int, 1),
            client_queue_size=_number("client_queue_size", client_queue_size, int, 1),
            slow_client=policy,
            heartbeat=_number("heartbeat", heartbeat, float, 0.01),
            max_clients=clients,
            max_clients_per_key=per_key,
            allowed_origins=_origins(allowed_origins),
            allow_query_token=_bool("allow_query_token", allow_query_token),
            ssl_certfile=ssl_certfile or None,
            ssl_keyfile=ssl_keyfile or None,
            keep_level=_keep_level(keep_level),
        )
        appender = _appender(self, backend, stream, options) if backend else None
        # Only now, with every option valid, does the handler join logging's handler list.
        super().__init__(level)
        self.stream = stream
        self.state = HandlerState.FAILED
        # Reentrant, like the hand-off: a signal handler may count a drop while its thread
        # is counting one.
        self._drop_lock = threading.RLock()
        self._local = threading.local()
        self._dropped = 0
        # The handler that adopted this one's server (see _adopt): drops are counted there.
        self._adopter: WebSocketHandler | None = None
        self._options = options
        # 0: a port chosen by the system, which no later handler asks for by number.
        self._configured_port = options.port
        self._generated = generated
        # Taken (briefly, never while waiting for another thread) to change roles: close()
        # against a takeover on the forwarder's thread.
        self._role_lock = threading.Lock()
        self._secret = _rendezvous.new_secret()
        self._forwarder: Forwarder | None = None
        self._appender = appender
        # This process's server: None while it serves nothing (forwarding or appending).
        self._server: LogServer | None = None
        # Where records go: the server, the forwarder, or the Redis appender.
        self._sink: LogServer | Forwarder | StreamAppender
        if appender is not None:
            self._sink = appender
            appender.start()  # connects in its own thread; an outage is its business
            self.state = HandlerState.APPENDING
            _handlers.add(self)
            return
        parked = _unpark(options.port) if options.port else None
        if parked is not None:
            if self._adopt(parked, options):
                return
            # Another host, or other TLS files: stop it, and bind anew once it lets go.
            parked._stop_parked(restarting=True)
        server = LogServer(options, lambda: self._dropped, ingest_secret=self._secret)
        self._sink = server
        if not _auth.is_loopback_host(options.host) and generated:
            self._say(
                f"refusing to serve on {options.host}, which is not loopback, without an API key "
                f"configured (set api_keys or {api_key_env}); records will be dropped"
            )
            return
        try:
            server.start()
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                self._join()
                return
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._say(
                f"cannot serve on {options.host}:{options.port} ({reason}); "
                "records for this handler will be dropped and counted"
            )
            return
        self._server = server
        # With port=0: the port chosen, which a forked child forwards to (and takes over).
        self._options = dataclasses.replace(options, port=server.port)
        self._publish(server.port, options.keys, self._secret)
        self.state = HandlerState.SERVING
        _handlers.add(self)
        if generated:
            self._say(f"streaming logs at {self.url}/ with API key {keys[0]}{kept}")

    def _adopt(self, parked: WebSocketHandler, options: ServerOptions) -> bool:
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
        _handlers.add(self)
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
        _handlers.add(self)
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

    # -- public state ---------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether this process serves the port and streams (not forwarding, failed or
        closed)."""
        return self.state is HandlerState.SERVING

    @property
    def role(self) -> str:
        """``"serving"``, ``"forwarding"`` (to another process serving the port),
        ``"appending"`` (to a Redis stream, with ``backend=``), ``"failed"`` or ``"closed"``
        (a parked handler is closed: its server is another handler's now, or stops)."""
        return "closed" if self.state is HandlerState.PARKED else self.state.value

    @property
    def serving_pid(self) -> int | None:
        """The pid of the process serving this handler's records: this one while serving;
        while forwarding, the one the forwarder is connected to (``None`` while it is not)."""
        if self.state is HandlerState.SERVING:
            return os.getpid()
        if self.state is HandlerState.FORWARDING and self._forwarder is not None:
            return self._forwarder.server_pid
        return None

    @property
    def port(self) -> int:
        """The port being served (the chosen one when configured with ``port=0``), by this
        process or by the one it forwards to; 0 with ``backend=`` (nothing is served)."""
        return self._sink.port

    @property
    def url(self) -> str:
        """The base URL, as ``http://127.0.0.1:3000`` (no trailing slash), of this process's
        server or of the one it forwards to; with ``backend=``, the Redis URL, its password
        masked."""
        return self._sink.url

    @property
    def records_dropped(self) -> int:
        """Records that never reached a server: queue full, not forwardable, handler failed
        or closed."""
        return self._dropped

    def set_api_keys(self, api_keys: str | Iterable[str]) -> None:
        """Accept ``api_keys`` (a list, or one comma-separated string) instead of the keys
        configured so far; thread-safe. On return, requests with any other key are refused;
        streams opened with a key no longer accepted (or with a ticket issued for one) are
        closed soon after: WebSockets with 4401, SSE streams ended. Raises ``ValueError`` for
        no keys and ``TypeError`` for keys that are not strings, leaving the keys unchanged.

        The keys are this process's: a forwarding process keeps them for when it takes the
        port over, and the process serving now keeps its own (call this in every process, as
        a SIGHUP handler does in each worker). With ``backend=`` it raises ``RuntimeError``:
        keys belong to ``wslogging serve``.
        """
        keys = tuple(_auth.parse_keys(api_keys))
        if self._appender is not None:
            self._appender.set_keys(keys)  # a RuntimeError: nothing is served here
        with self._role_lock:
            # A forwarder that takes the port over later serves with these keys, and never
            # again with a made-up one (its own, or the one of a rendezvous file).
            self._options = dataclasses.replace(self._options, keys=keys)
            self._generated = False
            server, secret = self._server, self._secret
        if server is not None:
            server.set_keys(keys)
            self._publish(server.port, keys, secret)  # drops the made-up key from the file

    def _count_drop(self, count: int = 1) -> None:
        with self._drop_lock:
            adopter = self._adopter
            if adopter is None:
                self._dropped += count
        if adopter is not None:
            adopter._count_drop(count)

    def _lose(self) -> None:
        """A record lost on its way to the sink, before the hand-off: counted, and, where
        this process serves, told to clients as ``gap(overflow)``.

        Telling goes through the hand-off, whose lock this thread may hold already (a signal
        handler that logs while its thread is inside it): then the outer call tells, once
        it is out (see :meth:`enqueue`), rather than wait for a lock its own thread holds.
        """
        self._count_drop()
        local = self._local.__dict__
        if local.get("busy"):
            local["lost"] = local.get("lost", 0) + 1
        else:
            self._tell_lost(1)

    def _tell_lost(self, count: int) -> None:
        server = self._server
        if server is not None and self._sink is server:
            server.lost(count)

    # -- the logging path -----------------------------------------------------------------

    def filter(self, record: logging.LogRecord) -> logging.LogRecord | bool:  # type: ignore[override]
        """The handler's filters, with Python 3.12's rule on every version: a filter may
        return a record to use in place of the one it was given (as
        :class:`~wslogging.RedactingFilter` does). The record to emit, or ``False``."""
        for flt in self.filters:
            result = flt.filter(record) if hasattr(flt, "filter") else flt(record)
            if not result:
                return False
            if isinstance(result, logging.LogRecord):
                record = result
        return record

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit without the handler lock: :meth:`emit` is thread-safe, and taking
        the lock would let one logging thread wait on another (or on :meth:`close`)."""
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        """Render and hand off ``record``; every failure goes to ``handleError``."""
        try:
            thread = get_ident()
            forwarder = self._forwarder
            name = record.name
            if (
                thread == self._sink.thread_id
                or (forwarder is not None and thread == forwarder.thread_id)
                or (type(name) is str and name.startswith("wslogging") and _is_own(name))
            ):
                return
            self.enqueue(self.prepare(record))
        except Exception:
            self._lose()
            self.handleError(record)

    def prepare(self, record: logging.LogRecord) -> LogEntry:
        """Capture everything about ``record`` that must be read on the app thread."""
        message = self.format(record) if self.formatter is not None else default_message(record)
        return render_record(record, message)

    def enqueue(self, entry: LogEntry) -> None:
        """Hand ``entry`` to the server; a full queue (or a stopped server) counts a drop.

        Re-entrant: a signal handler or ``__del__`` that logs may run on this thread while it
        is inside the hand-off, which holds the queue's lock. Such an entry is parked (at most
        :data:`REENTRANT_PARKED` of them) and sent by the outer call as soon as it is done,
        rather than waiting for a lock its own thread holds.
        """
        if self.state not in _ACCEPTING:
            self._count_drop()
            return
        local = self._local.__dict__
        if local.get("busy"):
            parked = local.setdefault("parked", [])
            if len(parked) < REENTRANT_PARKED:
                parked.append(entry)
            else:
                self._lose()
            return
        local["busy"] = True
        try:
            if not self._sink.submit(entry):
                self._count_drop()
        finally:
            local["busy"] = False
        # Anything a signal parked (or lost) meanwhile, even after the submit and before busy
        # was cleared, is here now: send it rather than leave it for this thread's next record.
        if local.get("parked"):
            self._send_parked(local)
        if local.get("lost"):
            self._tell_lost(local.pop("lost"))

    def _send_parked(self, local: dict[str, Any]) -> None:
        """Send the entries parked by :meth:`enqueue`, in order, as it sends its own."""
        submit = self._sink.submit
        parked = local["parked"]
        while parked:
            local["busy"] = True
            try:
                while parked:
                    if not submit(parked.pop(0)):
                        self._count_drop()
            finally:
                local["busy"] = False
            # A signal may have parked an entry after the loop above and before busy was
            # cleared: go round again.

    def close(self) -> None:
        """Deliver what is queued (bounded), close every client, stop serving (another
        process forwarding to this one then takes the port over); a forwarder delivers what
        is queued to the serving process within the same bound. Idempotent.

        Called by a reconfiguration (under logging's module lock) on a fixed port, a serving
        handler parks its server instead, for the handler replacing it to adopt; it stops
        once the reconfiguration is over if none did (see the class docstring)."""
        with self._role_lock:
            state = self.state
            park = (
                state is HandlerState.SERVING
                and self._configured_port != 0
                and holds_logging_lock()
            )
            if state in _STREAMING:
                self.state = HandlerState.PARKED if park else HandlerState.CLOSED
            sink, secret = self._sink, self._secret
        if park:
            _handlers.discard(self)
            _park(self)
        elif state in _STREAMING:
            _handlers.discard(self)
            if state is HandlerState.SERVING:
                # First: once the server has let the port go, a forwarder may take it over
                # and publish its own file, which must not be the one removed here.
                _rendezvous.remove(self._options.host, sink.port, secret)
            sink.close(CLOSE_TIMEOUT)
        super().close()

    def broadcast(
        self,
        message: str,
        *,
        level: int | str = "INFO",
        category: str | None = None,
        **fields: Any,
    ) -> None:
        """Send one message to this handler's clients, bypassing loggers and filters."""
        levelno = parse_level(level)  # a FilterError, which is a ValueError, if unknown
        safe_fields = json_safe(fields)
        for flt in self.filters:  # no filter applies, but a redaction does
            if isinstance(flt, RedactingFilter):
                message = flt.redact_text(str(message))
                safe_fields = flt.redact_value(safe_fields)
        self.enqueue(
            LogEntry(
                log=str(message),
                levelno=levelno,
                level=logging.getLevelName(levelno),
                logger="broadcast",
                category=category or "broadcast",
                created=time.time(),
                fields=safe_fields,
            )
        )

    def __repr__(self) -> str:
        role = self.state.value
        if self.state is HandlerState.FORWARDING:
            pid = self.serving_pid
            role = f"forwarding to pid {pid}" if pid else "forwarding, not connected"
        return f"<WebSocketHandler {self.url} ({role})>"

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
            server.thread_id = None
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
        appender = _appender(self, old.url_with_password, old.stream, self._options)
        self._appender = self._sink = appender
        appender.start()


def _park(handler: WebSocketHandler) -> None:
    """Keep ``handler``'s server going while the reconfiguration that closed it lasts (see
    :meth:`WebSocketHandler.close`), and stop it then unless another handler adopted it."""
    port = handler.port
    with _parked_lock:
        _parked[port] = handler

    def stop_when_configured() -> None:
        # The reconfiguration holds logging's lock from before it closed the handler to after
        # it built the new ones: once this thread has the lock, it is over.
        with _logging_lock():
            pass
        with _parked_lock:
            if _parked.get(port) is not handler:
                return  # adopted
            del _parked[port]
        handler._stop_parked()

    threading.Thread(target=stop_when_configured, name="wslogging-parked", daemon=True).start()


def _unpark(port: int) -> WebSocketHandler | None:
    """The handler parked on ``port``, taken out of the parked ones; ``None`` if none."""
    with _parked_lock:
        return _parked.pop(port, None)


def _logging_lock() -> threading.RLock:
    lock: threading.RLock = logging._lock  # type: ignore[attr-defined]
    return lock


def _appender(
    handler: WebSocketHandler, backend: str, stream: str, options: ServerOptions
) -> StreamAppender:
    """The Redis appender for ``backend=``; ``ValueError`` for a bad URL or stream name, or
    without redis-py."""
    try:
        from ._redis import StreamAppender, check_url
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


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads, and may have been forked while a lock
    of theirs was held: its handlers get fresh locks, so that a child's logging call can never
    wait for a thread it lacks, and forward their records to the process serving the port
    (see :meth:`WebSocketHandler._forward_after_fork`), or, with ``backend=``, append them to
    Redis from a thread of their own. The child never keeps the parent's
    listening socket: the port frees when the parent exits, and a child takes it over; nor
    the servers of handlers parked by a reconfiguration going on in another thread."""
    global _parked_lock, _said_lock
    _parked_lock = threading.Lock()
    _said_lock = threading.Lock()
    for parked in _parked.values():
        if parked._server is not None:
            parked._server.abandon_after_fork()
        parked.state = HandlerState.CLOSED
    _parked.clear()
    for handler in list(_handlers):
        handler._drop_lock = threading.RLock()
        handler._local = threading.local()
        handler._role_lock = threading.Lock()
        handler._dropped = 0  # the parent's drops are the parent's (and already reported)
        try:
            if handler.state is HandlerState.APPENDING:
                handler._append_after_fork()
            elif handler.state in _STREAMING:
                handler._forward_after_fork()
        except Exception as exc:  # out of descriptors, say: this handler drops, the rest go on
            handler.state = HandlerState.FAILED
            handler._say(f"process {os.getpid()} cannot stream after the fork: {exc!r}")


os.register_at_fork(after_in_child=_after_fork_in_child)


def _is_own(name: object) -> bool:
    return isinstance(name, str) and (name == "wslogging" or name.startswith("wslogging."))


def _serving() -> list[WebSocketHandler]:
    handlers = [h for h in list(_handlers) if h.state in _STREAMING]
    if not handlers:
        raise RuntimeError(
            "no WebSocketHandler is serving: add one to your logging configuration first"
        )
    return handlers


def broadcast_log_sync(
    message: str, *, level: int | str = "INFO", category: str | None = None, **fields: Any
) -> None:
    """Send ``message`` to every client of every serving handler, from any thread, without
    waiting. Raises ``RuntimeError`` if no handler is serving."""
    for handler in _serving():
        handler.broadcast(message, level=level, category=category, **fields)


async def broadcast_log(
    message: str, *, level: int | str = "INFO", category: str | None = None, **fields: Any
) -> None:
    """Async form of :func:`broadcast_log_sync`, usable from any event loop; it never waits
    for clients (the hand-off is non-blocking)."""
    broadcast_log_sync(message, level=level, category=category, **fields)
