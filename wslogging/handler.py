"""WebSocketHandler: render each record on the app thread and hand it off; never block or raise."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
import time
from collections.abc import Iterable
from threading import get_ident
from typing import TYPE_CHECKING, Any

from . import _auth, _rendezvous, _roles
from ._filters import parse_level
from ._options import handler_options
from ._redact import RedactingFilter
from ._roles import ACCEPTING, CLOSE_TIMEOUT, STREAMING, HandlerState, Roles
from ._wire import LogEntry, default_message, json_safe, render_record
from .server import LogServer, ServerOptions, holds_logging_lock

if TYPE_CHECKING:
    pass

# Records a thread may log from a signal handler (or __del__) while it is inside a hand-off;
# they go out right after it. More are dropped and counted.
REENTRANT_PARKED = 100

# Serving handlers closed by a reconfiguration (dictConfig, fileConfig), by port: their
# servers go on until a handler on the same port adopts them or the reconfiguration is over.
_parked: dict[int, WebSocketHandler] = {}
_parked_lock = threading.Lock()


class WebSocketHandler(Roles):
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
        options, generated, kept = handler_options(
            host=host,
            port=port,
            api_keys=api_keys,
            api_key_env=api_key_env,
            history=history,
            queue_size=queue_size,
            client_queue_size=client_queue_size,
            slow_client=slow_client,
            heartbeat=heartbeat,
            max_clients=max_clients,
            max_clients_per_key=max_clients_per_key,
            allowed_origins=allowed_origins,
            allow_query_token=allow_query_token,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            keep_level=keep_level,
            made_up=not backend,
        )
        appender = _roles.appender(self, backend, stream, options) if backend else None
        # Only now, with every option valid, does the handler join logging's handler list.
        super().__init__(level)
        self.stream = stream
        self.state = HandlerState.FAILED
        # Reentrant, like the hand-off: a signal handler may count a drop while its thread
        # is counting one.
        self._drop_lock = threading.RLock()
        self._local = threading.local()
        self._dropped = 0
        self._adopter = None
        self._options = options
        self._configured_port = options.port
        self._generated = generated
        self._role_lock = threading.Lock()
        self._secret = _rendezvous.new_secret()
        self._forwarder = None
        self._appender = appender
        self._server = None
        if appender is not None:
            self._sink = appender
            appender.start()  # connects in its own thread; an outage is its business
            self.state = HandlerState.APPENDING
            self._register()
            return
        self._serve(options, generated, kept, api_key_env)

    def _serve(
        self, options: ServerOptions, generated: bool, kept: str, api_key_env: str | None
    ) -> None:
        """Serve the port: adopt the server a reconfiguration parked on it, or start one; if
        the port is in use, join the process serving it (see :meth:`Roles._join`)."""
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
        self._register()
        if generated:
            self._say(f"streaming logs at {self.url}/ with API key {options.keys[0]}{kept}")

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
        if self.state not in ACCEPTING:
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
            if state in STREAMING:
                self.state = HandlerState.PARKED if park else HandlerState.CLOSED
            sink, secret = self._sink, self._secret
        if park:
            _roles.handlers.discard(self)
            _park(self)
        elif state in STREAMING:
            _roles.handlers.discard(self)
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


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads, and may have been forked while a lock
    of theirs was held: its handlers get fresh locks, so that a child's logging call can never
    wait for a thread it lacks, and forward their records to the process serving the port
    (see :meth:`WebSocketHandler._forward_after_fork`), or, with ``backend=``, append them to
    Redis from a thread of their own. The child never keeps the parent's
    listening socket: the port frees when the parent exits, and a child takes it over; nor
    the servers of handlers parked by a reconfiguration going on in another thread."""
    global _parked_lock
    _parked_lock = threading.Lock()
    _roles.after_fork()
    for parked in _parked.values():
        if parked._server is not None:
            parked._server.abandon_after_fork()
        parked.state = HandlerState.CLOSED
    _parked.clear()
    for handler in list(_roles.handlers):
        handler._drop_lock = threading.RLock()
        handler._local = threading.local()
        handler._role_lock = threading.Lock()
        handler._dropped = 0  # the parent's drops are the parent's (and already reported)
        try:
            if handler.state is HandlerState.APPENDING:
                handler._append_after_fork()
            elif handler.state in STREAMING:
                handler._forward_after_fork()
        except Exception as exc:  # out of descriptors, say: this handler drops, the rest go on
            handler.state = HandlerState.FAILED
            handler._say(f"process {os.getpid()} cannot stream after the fork: {exc!r}")


os.register_at_fork(after_in_child=_after_fork_in_child)


def _is_own(name: object) -> bool:
    return isinstance(name, str) and (name == "wslogging" or name.startswith("wslogging."))


def _serving() -> list[WebSocketHandler]:
    handlers = [
        h for h in list(_roles.handlers) if isinstance(h, WebSocketHandler) and h.state in STREAMING
    ]
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
