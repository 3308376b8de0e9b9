"""``wslogging serve``: this machine's collector, or every endpoint served from a Redis
stream."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import signal
import sys
import threading
from typing import Any

from .. import _rendezvous
from .._auth import configured_keys
from ._common import EXIT_CANNOT_SERVE, EXIT_INTERRUPTED, EXIT_USAGE, KEY_ENV, count, port_number

# Where serve reads the Redis URL from when --redis is not given.
REDIS_URL_ENV = "WSLOGGING_REDIS_URL"
# How long serve may take to end its streams when stopped.
SERVE_CLOSE_TIMEOUT = 2.0


def add_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="hold a port for every program of this user (a collector), or serve a Redis stream",
        description=(
            "Without a Redis URL: this machine's collector. It holds the port and its history, "
            "and every program of the same user whose WebSocketHandler is configured on that "
            "port forwards its records here instead of serving them itself, so short-lived "
            "scripts and programs restarted on every change are one stream (ids going on, one "
            "epoch, no gap), for as long as the collector runs. "
            "With --redis (or $WSLOGGING_REDIS_URL): serve every endpoint of wslogging "
            "(WebSocket, SSE, JSON, the web viewer) from a Redis stream that "
            "WebSocketHandler(backend='redis://...') appends to, on any number of hosts. "
            "Several serve processes may read the same stream. Record ids are the stream's "
            "ids, so clients resume across restarts from what Redis keeps. An unreachable "
            "Redis is retried without end (one line says so). "
            "Ctrl-C or SIGTERM stop it."
        ),
    )
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="redis://[:password@]host:port/db, rediss:// for TLS, or unix:///path (default: "
        f"${REDIS_URL_ENV}, which keeps a password out of the process list; neither: serve "
        "as this machine's collector)",
    )
    serve.add_argument(
        "--stream", default="wslogging", help="the stream's key (default: %(default)s)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port",
        type=port_number,
        default=3000,
        help="port; 0 picks a free one (default: %(default)s)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"a key clients may use; repeatable (default: ${KEY_ENV}, comma-separated; "
        "on loopback without either, a random key is made up, kept for the port and printed)",
    )
    serve.add_argument(
        "--history",
        type=count,
        default=10000,
        metavar="N",
        help="newest records held for replay, loaded from the stream at start "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--max-clients",
        type=count,
        default=1000,
        metavar="N",
        help="streams open at once; more get 503 (default: %(default)s)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="refuse WebSocket handshakes from other Origins; repeatable",
    )
    serve.add_argument("--certfile", metavar="PEM", help="serve https/wss with this certificate")
    serve.add_argument("--keyfile", metavar="PEM", help="the certificate's private key")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (status 130) or SIGTERM (status 0): a Redis stream with a Redis
    URL, else this machine's collector."""
    from .._auth import is_loopback_host
    from .._hub import SlowClientPolicy
    from ..server import ServerOptions

    url = args.redis or os.environ.get(REDIS_URL_ENV)
    keys = configured_keys(args.api_key or None, KEY_ENV, os.environ)
    generated = not keys
    kept = ""
    if generated:
        if not is_loopback_host(args.host):
            print(
                f"wslogging serve: refusing to serve on {args.host}, which is not loopback, "
                f"without an API key (--api-key or ${KEY_ENV})",
                file=sys.stderr,
            )
            return EXIT_USAGE
        made_up, kept = _rendezvous.made_up_key(args.host, args.port)
        keys = [made_up]
    options = ServerOptions(
        host=args.host,
        port=args.port,
        keys=tuple(keys),
        history=args.history,
        queue_size=10000,  # what forwarding programs send, on its way into history
        client_queue_size=1000,
        slow_client=SlowClientPolicy.DROP,
        heartbeat=15.0,
        max_clients=args.max_clients,
        max_clients_per_key=args.max_clients,
        allowed_origins=frozenset(args.allowed_origin) if args.allowed_origin else None,
        allow_query_token=True,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
    )
    with_key = f" with API key {keys[0]}{kept}" if generated else ""
    if url:
        return _serve_redis(args, url, options, with_key)
    return _collect(options, keys[0] if generated else None, with_key)


def _serve_redis(args: argparse.Namespace, url: str, options: Any, with_key: str) -> int:
    """Serve the Redis stream ``args.stream`` at ``url``."""
    from ..server import LogServer

    try:
        from ..sinks._redis import StreamReader, check_url, mask_url
    except ImportError:
        print("wslogging serve: needs redis-py: pip install 'wslogging[redis]'", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_url(url)
    except ValueError as exc:
        print(f"wslogging serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    server = LogServer(
        dataclasses.replace(options, queue_size=1), lambda: 0, StreamReader(url, args.stream)
    )
    if not _start(server, options):
        return EXIT_CANNOT_SERVE
    return _serve_until_stopped(
        server,
        SERVE_CLOSE_TIMEOUT,
        f"serving the stream {args.stream!r} of {mask_url(url)} at {server.url}/{with_key}",
    )


def _collect(options: Any, made_up_key: str | None, with_key: str) -> int:
    """Serve the port as this machine's collector: every program of this user configured on
    it forwards its records here (the rendezvous file says ``collector``)."""
    from ..server import LogServer

    secret = _rendezvous.new_secret()
    server = LogServer(options, lambda: 0, ingest_secret=secret, backend="collector")
    if not _start(server, options):
        return EXIT_CANNOT_SERVE
    try:
        _rendezvous.write(
            options.host,
            server.port,
            _rendezvous.Rendezvous(os.getpid(), secret, made_up_key, collector=True),
        )
    except OSError as exc:
        server.close(0.0)
        _say_serve(f"cannot publish the collector for programs to find it: {exc}")
        return EXIT_CANNOT_SERVE
    try:
        return _serve_until_stopped(
            server,
            SERVE_CLOSE_TIMEOUT,
            f"collecting the records of every program of this user configured on port "
            f"{server.port}, at {server.url}/{with_key}",
        )
    finally:
        _rendezvous.remove(options.host, server.port, secret)


def _start(server: Any, options: Any) -> bool:
    """Start ``server``; whether it serves (if not, one line says why, and who holds the
    port when it is a wslogging server of this user)."""
    try:
        server.start()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        holder = ""
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            with contextlib.suppress(_rendezvous.RendezvousError):
                found = _rendezvous.read(options.host, options.port)
                if found is not None and _rendezvous.pid_exists(found.pid):
                    holder = f": process {found.pid} serves it; stop it first"
        _say_serve(f"cannot serve on {options.host}:{options.port} ({reason}){holder}")
        return False
    return True


def _say_serve(line: str) -> None:
    print(f"wslogging serve: {line}", file=sys.stderr, flush=True)


def _serve_until_stopped(server: Any, timeout: float, ready: str) -> int:
    """Say ``ready``, wait for SIGINT or SIGTERM, then close ``server``; the exit status.
    The line comes once the signals are caught: whoever reads it may stop serve at once."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _say_serve(ready)
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close(timeout)
    return EXIT_INTERRUPTED if received[0] == signal.SIGINT else 0
