"""``wslogging tail``: the real command in a subprocess against a live server in this process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shlex
import signal
import socket
import sys
import unicodedata
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from _escapes import COLOURED, ESCAPES
from _records import make_entry
from conftest import KEY, TIMEOUT, async_wait_until

import wslogging
from wslogging import _rendezvous
from wslogging.cli import _tail

log = logging.getLogger("app.tail")


class TailProcess:
    """A running ``python -m wslogging tail``: its stdout read line by line, stderr collected."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.errors: list[str] = []
        self._stderr = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.errors.append(raw.decode())

    @property
    def stderr(self) -> str:
        return "".join(self.errors)

    async def line(self) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), TIMEOUT)
        assert raw, f"tail ended early; stderr: {self.stderr}"
        return raw.decode().rstrip("\n")

    async def lines_until(self, last: Callable[[str], bool]) -> list[str]:
        """Lines up to and including the first one for which ``last`` is true."""
        lines = [await self.line()]
        while not last(lines[-1]):
            lines.append(await self.line())
        return lines

    async def said(self, text: str) -> None:
        """Wait until a status line on stderr contains ``text``."""
        await async_wait_until(lambda: text in self.stderr)

    async def finish(self, sig: int | None = signal.SIGINT) -> int:
        """Send ``sig`` (if any) and return the exit status, stderr read to the end."""
        if sig is not None:
            self.process.send_signal(sig)
        status = await asyncio.wait_for(self.process.wait(), TIMEOUT)
        await asyncio.wait_for(self._stderr, TIMEOUT)
        return status


@pytest.fixture
async def tail() -> AsyncIterator[Callable[..., Any]]:
    started: list[TailProcess] = []

    async def start(
        *args: str, key: str | None = KEY, env: dict[str, str] | None = None
    ) -> TailProcess:
        env = {
            k: v
            for k, v in (os.environ if env is None else env).items()
            if k not in ("WSLOGGING_API_KEY", "NO_COLOR")
        }
        if key is not None:
            env["WSLOGGING_API_KEY"] = key
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wslogging",
            "tail",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        started.append(TailProcess(process))
        return started[-1]

    yield start
    for running in started:
        if running.process.returncode is None:
            running.process.kill()
            await running.process.wait()
        running._stderr.cancel()


async def following(tail: Callable[..., Any], url: str, *args: str) -> TailProcess:
    """A tail that has connected and got its ``hello`` (so records logged now reach it)."""
    process: TailProcess = await tail(url, *args)
    await process.said("following ")
    return process


async def logged(handler: wslogging.WebSocketHandler, text: str, count: int) -> None:
    """Log ``text 0`` .. ``text count-1`` and wait until the server holds them in history."""
    for n in range(count):
        log.info("%s %d", text, n)
    await async_wait_until(lambda: len(handler._server.hub.history) == count)


async def test_prints_what_is_logged_and_stops_on_ctrl_c(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any]
) -> None:
    process = await following(tail, handler.url, "-n", "0")
    log.info("order %s placed", 42, extra={"user": "alice", "total": 9.5})
    log.warning("disk at %d%%", 91, extra={"styled": "disk at \x1b[1m%d%%\x1b[0m"})
    try:
        raise ValueError("bad order id")
    except ValueError:
        log.exception("could not parse")
    lines = await process.lines_until(lambda line: "ValueError: bad order id" in line)

    assert "INFO     app.tail: order 42 placed user=alice total=9.5" in lines[0]
    assert 'WARNING  app.tail: disk at 91% styled="disk at %d%%"' in lines[1]
    assert "ERROR    app.tail: could not parse" in lines[2]
    assert lines[3] == "    Traceback (most recent call last):"  # indented under its record
    assert not any("\x1b" in line for line in lines)  # a pipe gets no colours
    assert await process.finish(signal.SIGINT) == _tail.EXIT_INTERRUPTED
    assert "Traceback" not in process.stderr
    await async_wait_until(lambda: handler._server is not None and not handler._server.hub.clients)


async def test_sigterm_stops_it_too(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any]
) -> None:
    process = await tail(handler.url, "-q", "--since", "0")
    log.info("connected")
    assert (await process.line()).endswith("connected")
    assert await process.finish(signal.SIGTERM) == _tail.EXIT_INTERRUPTED
    assert process.stderr == ""  # --quiet: no status lines, and no traceback


async def test_filters_apply_and_json_prints_records_as_sent(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any]
) -> None:
    process = await following(
        tail,
        handler.url,
        "--json",
        "--level",
        "warning",
        "--logger",
        "app",
        "--field",
        "user=alice",
        "-n",
        "0",
    )
    log.warning("wrong user", extra={"user": "bob"})
    logging.getLogger("other").warning("wrong logger", extra={"user": "alice"})
    log.info("too low", extra={"user": "alice"})
    log.error("this one", extra={"user": "alice"})
    (line,) = await process.lines_until(lambda line: True)
    record = json.loads(line)
    assert (record["type"], record["log"], record["fields"]) == (
        "log",
        "this one",
        {"user": "alice"},
    )
    assert await process.finish() == _tail.EXIT_INTERRUPTED


async def test_pid_option_keeps_one_process(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any]
) -> None:
    process = await following(tail, handler.url, "--json", "--pid", "4243", "-n", "0")
    handler.enqueue(make_entry("from 4242", pid=4242))
    handler.enqueue(make_entry("from 4243", pid=4243))
    (line,) = await process.lines_until(lambda line: True)
    assert ("from 4243", 4243) == (json.loads(line)["log"], json.loads(line)["pid"])
    assert await process.finish() == _tail.EXIT_INTERRUPTED


async def test_survives_a_server_restart_and_shows_the_gap(
    configure: Callable[..., wslogging.WebSocketHandler], tail: Callable[..., Any]
) -> None:
    first = configure()
    port = first.port
    process = await following(tail, first.url, "-n", "0")
    log.info("before the restart")
    assert "before the restart" in await process.line()

    # A new dictConfig closes the old handler (its clients get 1001) and serves the same port.
    second = configure(port=port)
    assert second is not first
    assert second.serving
    log.info("after the restart")
    lines = await process.lines_until(lambda line: "after the restart" in line)

    assert lines[0] == "--- gap: an unknown number of records missed (the server restarted) ---"
    assert "after the restart" in lines[-1]
    await process.said("connection closed (1001")
    assert process.stderr.count("following ") == 2
    assert await process.finish() == _tail.EXIT_INTERRUPTED


async def test_waits_for_a_server_that_is_not_up_yet(
    configure: Callable[..., wslogging.WebSocketHandler], tail: Callable[..., Any]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on (until the handler below)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await tail(f"127.0.0.1:{port}", "-n", "0")
    await process.said("cannot connect")
    handler = configure(port=port)
    await process.said("following ")
    log.info("it came up")
    assert "it came up" in await process.line()
    assert process.stderr.count("cannot connect") == 1  # said once, not at every retry
    assert await process.finish() == _tail.EXIT_INTERRUPTED
    assert handler.serving


async def test_lines_shows_the_newest_records_first_then_follows(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any]
) -> None:
    await logged(handler, "old", 5)
    process = await tail(handler.url, "-n", "2")
    assert (await process.line()).endswith("old 3")
    assert (await process.line()).endswith("old 4")
    await process.said("following ")
    log.info("new")
    assert (await process.line()).endswith("app.tail: new")
    assert await process.finish() == _tail.EXIT_INTERRUPTED


async def test_since_replays_from_history(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any]
) -> None:
    await logged(handler, "kept", 3)
    process = await tail(handler.url, "--since", "0")
    lines = [await process.line() for _ in range(3)]
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["0", "1", "2"]
    assert await process.finish() == _tail.EXIT_INTERRUPTED


@pytest.mark.parametrize(
    ("key", "said"),
    [("wrong", "refused: invalid API key"), (None, "refused: missing API key")],
)
async def test_a_bad_key_ends_it_with_status_2(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any], key: str | None, said: str
) -> None:
    process = await tail(handler.url, "-n", "0", key=key)
    assert await process.finish(sig=None) == _tail.EXIT_USAGE
    assert said in process.stderr
    assert "Traceback" not in process.stderr
    if key:
        assert key not in process.stderr.replace("invalid", "")


async def test_a_key_revoked_while_following_ends_it(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any]
) -> None:
    process = await following(tail, handler.url, "-n", "0")
    handler.set_api_keys(["another-key"])
    assert await process.finish(sig=None) == _tail.EXIT_USAGE
    assert "refused: API key revoked" in process.stderr


async def test_a_bad_key_on_the_history_request_ends_it_too(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any]
) -> None:
    process = await tail(handler.url, "-n", "5", key="wrong")
    assert await process.finish(sig=None) == _tail.EXIT_USAGE
    assert "refused: invalid API key" in process.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--level", "loud"], "unknown level 'loud'"),
        (["--field", "nokey"], "--field takes KEY=VALUE"),
        (["--pid", "x"], "pid must be a positive integer"),
        (["ftp://localhost"], "unsupported URL scheme 'ftp'"),
    ],
)
async def test_bad_options_end_it_before_connecting(
    tail: Callable[..., Any], args: list[str], said: str
) -> None:
    process = await tail(*args)
    assert await process.finish(sig=None) == _tail.EXIT_USAGE
    assert said in process.stderr
    assert "cannot connect" not in process.stderr


async def test_colours_and_escapes_on_request(
    handler: wslogging.WebSocketHandler, tail: Callable[..., Any]
) -> None:
    process = await following(tail, handler.url, "--color", "always", "-n", "0")
    log.error("\x1b[35mpink\x1b[0m red\x1b[2Jcleared\nsecond line")
    line = await process.line()
    assert line.startswith("\x1b[2m")  # the time, dimmed
    assert "\x1b[1;31mERROR   \x1b[0m" in line
    assert "\x1b[35mpink\x1b[0m red" in line  # the app's own colour passes
    assert "red\\x1b[2Jcleared" in line  # the message cannot drive the terminal
    assert await process.line() == "    second line\x1b[0m"  # nor forge a line of its own
    assert await process.finish() == _tail.EXIT_INTERRUPTED


async def test_follows_over_tls_with_its_ca_and_refuses_without(
    configure: Callable[..., wslogging.WebSocketHandler],
    tail: Callable[..., Any],
    tmp_path: Path,
) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = (tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem"))
    certificate.cert_chain_pems[0].write_to_path(certfile)
    certificate.private_key_pem.write_to_path(keyfile)
    authority.cert_pem.write_to_path(cafile)
    handler = configure(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))

    untrusting = await tail(handler.url, "-n", "0")
    assert await untrusting.finish(sig=None) == _tail.EXIT_USAGE
    assert "certificate is not trusted" in untrusting.stderr

    process = await following(tail, handler.url, "--cafile", str(cafile), "-n", "0")
    assert "following wss://127.0.0.1:" in process.stderr
    log.info("over tls")
    assert (await process.line()).endswith("app.tail: over tls")
    assert await process.finish() == _tail.EXIT_INTERRUPTED


# -- the parts, without a server ----------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("localhost:3000", "ws://localhost:3000/ws/logs"),
        ("http://127.0.0.1:3000", "ws://127.0.0.1:3000/ws/logs"),
        ("https://logs.example.com/", "wss://logs.example.com/ws/logs"),
        ("https://example.com/app/", "wss://example.com/app/ws/logs"),
        ("ws://h:1/ws/logs?level=error", "ws://h:1/ws/logs?level=error"),
        ("WSS://h/ws/logs", "wss://h/ws/logs"),
    ],
)
def test_stream_url(typed: str, url: str) -> None:
    assert _tail.stream_url(typed) == url


@pytest.mark.parametrize("typed", ["ftp://h", "http://", "https://:443/"])
def test_stream_url_refuses(typed: str) -> None:
    with pytest.raises(_tail.TailError):
        _tail.stream_url(typed)


def test_parse_fields() -> None:
    assert _tail.parse_fields(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    for bad in ("a", "=1"):
        with pytest.raises(_tail.TailError, match="KEY=VALUE"):
            _tail.parse_fields([bad])


@pytest.mark.parametrize(
    ("frame", "line"),
    [
        ({"missed": 1, "reason": "slow_client"}, "1 record missed (this client fell behind)"),
        ({"missed": 7, "reason": "history"}, "7 records missed (older than the server's history)"),
        ({"missed": None, "reason": "new\x1b"}, "records missed (new\\x1b)"),
        ({"missed": 3, "reason": "overflow"}, "3 records missed (the app logged faster than"),
        (
            {"missed": 3, "reason": "overflow", "levels": {"INFO": 2, "DEBUG": 1}},
            "took records: 2 INFO, 1 DEBUG) ---",
        ),
        ({"missed": None, "reason": "source"}, "missed (lost before they reached this server)"),
    ],
)
def test_gap_notice(frame: dict[str, Any], line: str) -> None:
    out = io.StringIO()
    _tail.Printer(out, as_json=False, color=False).gap({"type": "gap", **frame}, "")
    assert out.getvalue().startswith("--- gap: ")
    assert line in out.getvalue()


def test_record_with_odd_values_still_prints() -> None:
    out = io.StringIO()
    frame = {"type": "log", "time": "not a time", "levelno": None, "fields": {"k": "a b"}}
    _tail.Printer(out, as_json=False, color=True).record(frame, "")
    assert "not a time" in out.getvalue()
    assert 'k="a b"' in out.getvalue()


async def test_the_command_the_demo_prints_follows_it(tail: Callable[..., Any]) -> None:
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "wslogging", "demo", "--port", "0", "--rate", "100"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "WSLOGGING_API_KEY"},
    )
    try:
        assert demo.stdout is not None
        command = ""
        while "wslogging tail" not in command:
            command = (await asyncio.wait_for(demo.stdout.readline(), TIMEOUT)).decode()
            assert command, "the demo printed no tail command"
        assignment, _, rest = command.strip().partition(" wslogging tail ")
        key = assignment.removeprefix("WSLOGGING_API_KEY=")
        process = await tail(*shlex.split(rest), key=key)
        records: list[str] = []
        while len(records) < 5:
            line = await process.line()
            if not line.startswith("    "):  # not a traceback's continuation line
                records.append(line)
        assert all(" demo." in line for line in records), records
        assert await process.finish() == _tail.EXIT_INTERRUPTED
    finally:
        demo.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(demo.wait(), TIMEOUT) == 0


def _printed(text: str, *, color: bool) -> str:
    """What ``tail`` prints for a record whose message, field and traceback are ``text``."""
    out = io.StringIO()
    frame = {"levelno": 20, "level": "INFO", "time": "t", "logger": "app", "log": text}
    frame |= {"fields": {"color_message": text}, "exc": text}
    _tail.Printer(out, as_json=False, color=color).record(frame, "")
    return out.getvalue()


@pytest.mark.parametrize("color", [True, False])
@pytest.mark.parametrize(("name", "escape"), ESCAPES)
def test_control_sequences_are_shown_escaped(name: str, escape: str, color: bool) -> None:
    """Every control character but tab and newline reaches the terminal escaped, in the
    message, the fields and the traceback, with colour on or off; only SGR passes."""
    printed = _printed(f"before{escape}after", color=color)
    own = re.sub("\x1b\\[[0-9;]*m", "", printed)  # tail's own colours and resets
    controls = [c for c in own if unicodedata.category(c) in ("Cc", "Cf") and c != "\n"]
    assert [] == controls
    shown = repr(escape[0])[1:-1]  # as Python writes it: \x1b, \u202e, ...
    assert 3 == own.count(f"before{shown}")


def test_app_colours_pass_to_a_colour_terminal() -> None:
    """The app's own SGR colours reach a colour terminal as sent, each use ended by a reset."""
    printed = _printed(COLOURED, color=True)
    assert 3 == printed.count("\x1b[31mGET /boom HTTP/1.1\x1b[0m \x1b[1;36mbold cyan\x1b[0m")
    message = printed.split(" app: ", 1)[1]
    assert message.startswith(COLOURED + "\x1b[0m")


def test_app_colours_are_stripped_without_colour() -> None:
    """Without colour (``--color never``, a pipe) the app's SGR sequences are dropped."""
    printed = _printed(COLOURED, color=False)
    assert "\x1b" not in printed
    assert "t INFO     app: GET /boom HTTP/1.1 bold cyan plain" in printed
    assert 'color_message="GET /boom HTTP/1.1 bold cyan plain"' in printed


async def _demo(port: int, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    """``wslogging demo --port PORT`` with no key configured, and the key it printed."""
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "wslogging", "demo", "--port", str(port), "--rate", "50"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    assert demo.stdout is not None
    line = ""
    while not line.startswith("API key: "):
        line = (await asyncio.wait_for(demo.stdout.readline(), TIMEOUT)).decode()
        assert line, "the demo printed no key"
    return demo, line.removeprefix("API key: ").split()[0]


async def test_tail_needs_no_key_for_a_local_demo_even_across_its_restarts(
    tail: Callable[..., Any], tmp_path: Path
) -> None:
    """The README's flow: run the demo, tail it with no key given, restart the demo: the
    made-up key is kept (and said where), so the tail goes on instead of being refused."""
    runtime = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "WSLOGGING_API_KEY"}
    env[_rendezvous.RUNTIME_DIR_ENV] = str(runtime)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demos = []
    try:
        demo, key = await _demo(port, env)
        demos.append(demo)
        process = await tail(f"127.0.0.1:{port}", "-n", "0", key=None, env=env)
        await process.said(f"using the API key kept in {runtime / f'127.0.0.1-{port}.key'}")
        assert " demo." in await process.line()
        demo.send_signal(signal.SIGINT)
        assert 0 == await asyncio.wait_for(demo.wait(), TIMEOUT)
        await process.said("connection closed")
        demo, again = await _demo(port, env)
        demos.append(demo)
        assert key == again
        await process.lines_until(lambda line: "the server restarted" in line)
        assert " demo." in await process.line()
        assert process.process.returncode is None, process.stderr
        assert await process.finish() == _tail.EXIT_INTERRUPTED
    finally:
        for demo in demos:
            if demo.returncode is None:
                os.killpg(demo.pid, signal.SIGKILL)
                await demo.wait()
