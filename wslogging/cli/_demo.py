"""``wslogging demo``: a small app that logs at every level through ``dictConfig``, and
prints how to watch it."""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from typing import Any

from .. import _rendezvous
from .._auth import configured_keys
from ..handler import WebSocketHandler
from ._common import KEY_ENV, port_number

# Highest --rate the demo accepts: beyond it, one logging thread cannot keep the pace anyway.
MAX_RATE = 10000.0
# A key made only of these characters is shown inside double quotes, as users expect to see it;
# any other is quoted by shlex so that the printed commands still paste as they are.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._~+/=:-]+")


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < rate <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"rate must be more than 0 and at most {MAX_RATE:g}")
    return rate


def add_parser(commands: Any) -> None:
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
        "--port",
        type=port_number,
        default=3000,
        help="port; 0 picks a free one (default: %(default)s)",
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
    demo.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
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
