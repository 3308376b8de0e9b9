"""The ``wslogging`` command line (also ``python -m wslogging``): ``tail``, ``demo``,
``serve`` and ``mcp``, a module each (``mcp``'s needs the ``mcp`` extra and is imported
only to run it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .._version import __version__
from . import _clients, _demo, _serve
from ._clients import MCP_MISSING

__all__ = ["MCP_MISSING", "build_parser", "main"]


def build_parser(prog: str = "wslogging") -> argparse.ArgumentParser:
    """The argument parser: one subparser per command, each with ``func`` set to its runner.

    A new command is one more module with an ``add_parser(commands)`` called here, which sets
    its runner as ``func``.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Tail a running Python app's logs live over WebSocket and Server-Sent Events.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _demo.add_parser(commands)
    _clients.add_tail(commands)
    _serve.add_parser(commands)
    _clients.add_mcp(commands)
    return parser


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
