"""The ``wslogging`` command line (also ``python -m wslogging``): ``tail``, ``demo``,
``serve`` and ``mcp``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import logging.config
import os
import random
import re
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _rendezvous, _tail
from ._auth import configured_keys
from ._version import __version__
from .handler import WebSocketHandler

# The environment variable the handler reads keys from by default; the demo reads it too.
KEY_ENV = "WSLOGGING_API_KEY"
# Highest --rate the demo accepts: beyond it, one logging thread cannot keep the pace anyway.
MAX_RATE = 10000.0
# A key made only of these characters is shown inside double quotes, as users expect to see it;
# any other is quoted by shlex so that the printed commands still paste as they are.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._~+/=:-]+")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, not {port}")
    return port


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < rate <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"rate must be more than 0 and at most {MAX_RATE:g}")
    return rate


def build_parser(prog: str = "wslogging") -> argparse.ArgumentParser:
    """The argument parser: one subparser per command, each with ``func`` set to its runner.

    A new command is one more ``add_parser`` call here and one ``_run_<name>`` function.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Tail a running Python app's logs live over WebSocket and Server-Sent Events.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run a small app that logs, and print how to watch it",
        description=(
            "Run a small app whose logging is configured through logging.config.dictConfig "
            "with wslogging.WebSocketHandler, and log at every level until Ctrl-C. Prints the "
            "URL, the API key and ready-to-paste commands to watch the stream."
        ),
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    demo.add_argument(
        "--port", type=_port, default=3000, help="port; 0 picks a free one (default: %(default)s)"
    )
    demo.add_argument(
        "--rate",
        type=_rate,
        default=5.0,
        help="records per second, about (default: %(default)g)",
    )
    demo.add_argument(
        "--key",
        default=None,
        help=f"API key clients must send (default: ${KEY_ENV} if set, else one made up and "
        "kept for the next run on this port)",
    )
    demo.set_defaults(func=_run_demo)
    _add_tail(commands)
    _add_serve(commands)
    _add_mcp(commands)
    return parser


def _add_tail(commands: Any) -> None:
    tail = commands.add_parser(
        "tail",
        help="follow a live log stream in the terminal",
        description=(
            "Follow the log stream of an app that uses wslogging.WebSocketHandler. Records go "
            "to stdout (coloured by level on a terminal), status lines to stderr. It "
            "reconnects by itself and resumes after the last record it printed; records the "
            "server could not keep are announced with a gap line. Ctrl-C stops it."
        ),
    )
    _add_server(tail)
    filters = tail.add_argument_group("filters (applied by the server)")
    filters.add_argument("--level", help="minimum level: a name (warning) or a number (30)")
    filters.add_argument(
        "--logger",
        action="append",
        default=[],
        metavar="NAME",
        help="logger and its children (app matches app.db); repeat for several",
    )
    filters.add_argument(
        "--category", action="append", default=[], metavar="NAME", help="exact category; repeatable"
    )
    filters.add_argument("--grep", metavar="TEXT", help="only messages containing TEXT")
    filters.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a structured field whose text is VALUE (status=500); repeatable",
    )
    filters.add_argument(
        "--pid",
        action="append",
        default=[],
        metavar="PID",
        help="only records of this process (one of several workers); repeatable",
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--since", metavar="ID", help="replay the records after this id first (0: all history)"
    )
    start.add_argument(
        "-n",
        "--lines",
        type=_count,
        default=10,
        metavar="N",
        help="show the newest N records from history first (default: %(default)s)",
    )
    output = tail.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print records as JSON lines")
    output.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help=(
            "colour by level, and the app's own colours (SGR) in its text: auto (on a "
            "terminal, unless $NO_COLOR is set), always or never (then they are stripped)"
        ),
    )
    output.add_argument("-q", "--quiet", action="store_true", help="no status lines on stderr")
    tail.add_argument("--cafile", metavar="PEM", help="CA certificates to verify https/wss with")
    tail.set_defaults(func=_run_tail)


def _add_server(command: argparse.ArgumentParser) -> None:
    """The arguments that name the server a client command asks, and its key."""
    command.add_argument(
        "url",
        nargs="?",
        default=_tail.DEFAULT_URL,
        help="the app's base URL (http, https, ws or wss; default: %(default)s)",
    )
    command.add_argument(
        "--key",
        help=f"API key (default: ${KEY_ENV}, its first key, which keeps it out of the "
        "process list; else, for a loopback URL, the key a wslogging server of this user made "
        "up for that port)",
    )


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return count


def main(argv: Sequence[str] | None = None, prog: str = "wslogging") -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    No command prints the help to stderr and returns 2, as a usage error does.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return func(args)


# -- wslogging tail -----------------------------------------------------------------------


def _use_color(choice: str, out: Any) -> bool:
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(out.isatty())


def _client_key(args: argparse.Namespace, command: str) -> tuple[str | None, str | None]:
    """The key a client command sends, and the file it was read from if it was: ``--key``,
    else ``$WSLOGGING_API_KEY`` (its first key), else, for a loopback URL only, the key a
    wslogging server of this same user made up for that port (see
    :func:`_rendezvous.local_key`), said on stderr unless ``--quiet``."""
    keys = configured_keys(args.key, KEY_ENV, os.environ)
    if keys:
        return keys[0], None
    try:
        found = _rendezvous.local_key(*_tail.host_port(args.url))
    except _tail.TailError:
        return None, None  # a bad URL: the command itself says so
    except _rendezvous.RendezvousError as exc:  # never read, never sent
        print(f"wslogging {command}: not using a kept key: {exc}", file=sys.stderr)
        return None, None
    if found is None:
        return None, None
    if not getattr(args, "quiet", False):
        print(f"wslogging {command}: using the API key kept in {found[1]}", file=sys.stderr)
    return found[0], str(found[1])


def _run_tail(args: argparse.Namespace) -> int:
    key, key_source = _client_key(args, "tail")
    options = _tail.Options(
        url=args.url,
        key=key,
        key_source=key_source,
        level=args.level,
        loggers=args.logger,
        categories=args.category,
        grep=args.grep,
        fields=args.field,
        pids=args.pid,
        since=args.since,
        lines=0 if args.since is not None else args.lines,
        json=args.json,
        color=not args.json and _use_color(args.color, sys.stdout),
        quiet=args.quiet,
        cafile=args.cafile,
    )
    return _tail.run(options)


# -- wslogging serve ----------------------------------------------------------------------

# Where serve reads the Redis URL from when --redis is not given.
REDIS_URL_ENV = "WSLOGGING_REDIS_URL"
# Exit statuses of serve: 1 when it cannot serve at all, 2 for bad input, 130 after Ctrl-C.
EXIT_CANNOT_SERVE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# How long serve may take to end its streams when stopped.
SERVE_CLOSE_TIMEOUT = 2.0


def _add_serve(commands: Any) -> None:
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
        "--port", type=_port, default=3000, help="port; 0 picks a free one (default: %(default)s)"
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
        type=_count,
        default=10000,
        metavar="N",
        help="newest records held for replay, loaded from the stream at start "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--max-clients",
        type=_count,
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
    serve.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (status 130) or SIGTERM (status 0): a Redis stream with a Redis
    URL, else this machine's collector."""
    from ._auth import is_loopback_host
    from ._hub import SlowClientPolicy
    from .server import ServerOptions

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
    from .server import LogServer

    try:
        from ._redis import StreamReader, check_url, mask_url
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
    from .server import LogServer

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


# -- wslogging mcp ------------------------------------------------------------------------

MCP_MISSING = "wslogging mcp needs the mcp extra: pip install 'wslogging[mcp]'"


def _add_mcp(commands: Any) -> None:
    mcp = commands.add_parser(
        "mcp",
        help="let AI assistants read the logs (a Model Context Protocol server over stdio)",
        description=(
            "A Model Context Protocol server on stdin/stdout, for AI assistants and coding "
            "agents (Claude Code, Cursor, VS Code, ...): their MCP client starts it and calls "
            "its tools get_logs (recent records, filtered), wait_for_logs (returns as soon as "
            "matching records are logged) and get_stats, which ask the running wslogging "
            "server at URL. Results are bounded for a model's context. Needs the mcp extra: "
            "pip install 'wslogging[mcp]'."
        ),
    )
    _add_server(mcp)
    mcp.add_argument("--cafile", metavar="PEM", help="CA certificates to verify https with")
    mcp.set_defaults(func=_run_mcp)


def _run_mcp(args: argparse.Namespace) -> int:
    try:
        from . import _mcp
    except ImportError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in ("mcp", "pydantic"):
            raise
        print(MCP_MISSING, file=sys.stderr)
        return EXIT_USAGE
    return _mcp.run(args.url, _client_key(args, "mcp")[0], args.cafile)


# -- wslogging demo -----------------------------------------------------------------------


def _demo_keys(key: str | None, host: str, port: int) -> tuple[list[str], str]:
    """``--key``, else the keys in ``$WSLOGGING_API_KEY``, else the key made up for
    ``host:port`` (kept for the next run; see :func:`_rendezvous.made_up_key`), with a note
    on where it is kept."""
    keys = configured_keys(key, KEY_ENV, os.environ)
    if keys:
        return keys, ""
    made_up, kept = _rendezvous.made_up_key(host, port)
    return [made_up], kept


def _quoted_header(key: str) -> str:
    header = f"Authorization: Bearer {key}"
    return f'"{header}"' if _PLAIN_KEY.fullmatch(key) else shlex.quote(header)


def _watch_text(url: str, key: str, rate: float, kept: str = "") -> str:
    """What the demo prints on start: where it serves, the key, and commands to watch it."""
    header = _quoted_header(key)
    ws_url = "ws" + url[len("http") :]
    per_second = "record per second" if rate == 1 else "records per second"
    return "\n".join(
        [
            f"wslogging demo: streaming logs at {url} (about {rate:g} {per_second})",
            f"API key: {key}{kept}",
            "",
            f"Watch it live in a browser: open {url}/ and enter the key,",
            "or from another terminal:",
            f"  {KEY_ENV}={shlex.quote(key)} wslogging tail {url}",
            "or with Server-Sent Events:",
            f"  curl -N -H {header} {url}/api/get-logs-stream",
            "or over a WebSocket (https://github.com/vi/websocat):",
            f"  websocat -H {header} {ws_url}/ws/logs",
            "or fetch the latest records as one JSON page:",
            f"  curl -H {header} {url}/api/logs",
            "",
            "Press Ctrl-C to stop.",
        ]
    )


_PATHS = ("/", "/api/orders", "/api/orders/42", "/api/users/me", "/api/invoices", "/healthz")
_USERS = ("alice", "bob", "carol", "dave", "erin")
_QUEUES = ("emails", "thumbnails", "exports")


class _Demo:
    """Logs one plausible record per call to :meth:`step`, at every level, with extras."""

    def __init__(self) -> None:
        # Made-up demo data, not security: a plain PRNG is what is wanted.
        self.rng = random.Random()  # noqa: S311
        self.http = logging.getLogger("demo.http")
        self.db = logging.getLogger("demo.db")
        self.auth = logging.getLogger("demo.auth")
        self.billing = logging.getLogger("demo.billing")
        self.worker = logging.getLogger("demo.worker")
        self.count = 0

    def _request(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "request_id": secrets.token_hex(4),
            "user": rng.choice(_USERS),
            "method": rng.choice(("GET", "GET", "GET", "POST", "DELETE")),
            "path": rng.choice(_PATHS),
        }

    def step(self) -> None:
        """Log one record; which kind is chosen at random, most of them INFO."""
        self.count += 1
        kinds: list[tuple[Callable[[], None], float]] = [
            (self._debug_query, 20),
            (self._info_request, 35),
            (self._info_payment, 10),
            (self._warning_slow, 10),
            (self._warning_login, 6),
            (self._error_upstream, 8),
            (self._exception, 4),
            (self._critical_queue, 2),
        ]
        funcs, weights = zip(*kinds, strict=True)
        self.rng.choices(funcs, weights)[0]()

    def _debug_query(self) -> None:
        rows, ms = self.rng.randint(0, 500), round(self.rng.uniform(0.2, 40), 2)
        self.db.debug(
            "SELECT returned %d rows in %.2f ms",
            rows,
            ms,
            extra={"request_id": secrets.token_hex(4), "rows": rows, "duration_ms": ms},
        )

    def _info_request(self) -> None:
        request = self._request()
        status = self.rng.choice((200, 200, 200, 201, 204, 304, 404))
        request.update(status=status, duration_ms=round(self.rng.uniform(1, 120), 2))
        self.http.info("%s %s -> %d", request["method"], request["path"], status, extra=request)

    def _info_payment(self) -> None:
        amount = round(self.rng.uniform(5, 500), 2)
        invoice = f"INV-{self.rng.randint(1000, 9999)}"
        self.billing.info(
            "invoice %s paid: %.2f EUR",
            invoice,
            amount,
            extra={
                "category": "billing",
                "invoice": invoice,
                "amount": amount,
                "currency": "EUR",
                "user": self.rng.choice(_USERS),
            },
        )

    def _warning_slow(self) -> None:
        request = self._request()
        request.update(status=200, duration_ms=round(self.rng.uniform(800, 4000), 2))
        self.http.warning(
            "slow request: %s %s took %.0f ms",
            request["method"],
            request["path"],
            request["duration_ms"],
            extra=request,
        )

    def _warning_login(self) -> None:
        user = self.rng.choice(_USERS)
        self.auth.warning(
            "failed login for %s",
            user,
            extra={"category": "security", "user": user, "attempt": self.rng.randint(1, 5)},
        )

    def _error_upstream(self) -> None:
        request = self._request()
        request.update(status=502, duration_ms=round(self.rng.uniform(5000, 30000), 2))
        self.http.error(
            "upstream timed out: %s %s -> 502", request["method"], request["path"], extra=request
        )

    def _exception(self) -> None:
        request = self._request()
        request.update(path="/api/orders/latest", status=500)
        try:
            int(request["path"].rsplit("/", 1)[-1])
        except ValueError:
            request["duration_ms"] = round(self.rng.uniform(1, 50), 2)
            self.http.exception("cannot parse the order id in %s", request["path"], extra=request)

    def _critical_queue(self) -> None:
        queue = self.rng.choice(_QUEUES)
        self.worker.critical(
            "queue %s is full; dropping jobs",
            queue,
            extra={"category": "jobs", "queue": queue, "depth": 10000},
        )


def _demo_config(host: str, port: int, keys: list[str]) -> dict[str, Any]:
    """The ``dictConfig`` the demo app uses: one WebSocketHandler on the root logger."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "live": {
                "class": "wslogging.WebSocketHandler",
                "level": "DEBUG",
                "host": host,
                "port": port,
                "api_keys": keys,
            }
        },
        "root": {"level": "DEBUG", "handlers": ["live"]},
    }


def _run_demo(args: argparse.Namespace) -> int:
    """Serve and log until Ctrl-C (or SIGTERM), then close the handler and return 0.

    Returns 1 if the port cannot be served (the handler has said why on stderr).
    """
    keys, kept = _demo_keys(args.key, args.host, args.port)
    logging.config.dictConfig(_demo_config(args.host, args.port, keys))
    root = logging.getLogger()
    handler = next(h for h in root.handlers if isinstance(h, WebSocketHandler))
    if not handler.serving:
        # The demo serves or stops: it never forwards to whatever else serves its port.
        in_use = handler.role == "forwarding"
        root.removeHandler(handler)
        handler.close()
        reason = f"port {args.port} is served by another process" if in_use else "see above"
        print(f"wslogging demo: could not start ({reason}); try --port 0", file=sys.stderr)
        return 1
    print(_watch_text(handler.url, keys[0], args.rate, kept), flush=True)

    # SIGTERM (as from `timeout` or a service manager) stops the demo as Ctrl-C does.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    if main_thread:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo = _Demo()
    interval = 1.0 / args.rate
    try:
        next_at = time.monotonic()
        while True:
            demo.step()
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind (suspended?): do not burst to catch up
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        root.removeHandler(handler)
        handler.close()
    print(f"\nwslogging demo: stopped after {demo.count} records", flush=True)
    return 0
