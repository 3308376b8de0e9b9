"""The client commands, ``tail`` and ``mcp``: their arguments and how they are run."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from . import _tail
from ._common import EXIT_USAGE, add_server, client_key, count

# -- wslogging tail -----------------------------------------------------------------------


def add_tail(commands: Any) -> None:
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
    add_server(tail)
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
        type=count,
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
    tail.set_defaults(func=run_tail)


def use_color(choice: str, out: Any) -> bool:
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(out.isatty())


def run_tail(args: argparse.Namespace) -> int:
    key, key_source = client_key(args, "tail")
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
        color=not args.json and use_color(args.color, sys.stdout),
        quiet=args.quiet,
        cafile=args.cafile,
    )
    return _tail.run(options)


# -- wslogging mcp ------------------------------------------------------------------------

MCP_MISSING = "wslogging mcp needs the mcp extra: pip install 'wslogging[mcp]'"


def add_mcp(commands: Any) -> None:
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
    add_server(mcp)
    mcp.add_argument("--cafile", metavar="PEM", help="CA certificates to verify https with")
    mcp.set_defaults(func=run_mcp)


def run_mcp(args: argparse.Namespace) -> int:
    try:
        from . import _mcp
    except ImportError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in ("mcp", "pydantic"):
            raise
        print(MCP_MISSING, file=sys.stderr)
        return EXIT_USAGE
    return _mcp.run(args.url, client_key(args, "mcp")[0], args.cafile)
