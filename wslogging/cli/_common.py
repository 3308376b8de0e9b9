"""What the client and server commands share: the key's environment variable, argument
types, the URL and ``--key`` arguments, and finding the key a client sends."""

from __future__ import annotations

import argparse
import os
import sys

from .. import _rendezvous
from .._auth import configured_keys
from . import _tail

# The environment variable the handler reads keys from by default; the commands read it too.
KEY_ENV = "WSLOGGING_API_KEY"
# Exit statuses: 1 when a command cannot do its job at all, 2 for bad input, 130 after Ctrl-C.
EXIT_CANNOT_SERVE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, not {port}")
    return port


def count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return count


def add_server(command: argparse.ArgumentParser) -> None:
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


def client_key(args: argparse.Namespace, command: str) -> tuple[str | None, str | None]:
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
