"""The command line, run as users run it: a real subprocess."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import TIMEOUT, receive_json

import wslogging
from wslogging import _rendezvous
from wslogging.cli import main
from wslogging.cli._common import client_key


async def test_demo_streams_and_stops_cleanly(session: aiohttp.ClientSession) -> None:
    """`python -m wslogging demo` prints its URL and key, streams records at every level with
    fields, and exits 0 on Ctrl-C (SIGINT)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wslogging",
        "demo",
        "--port",
        "0",
        "--rate",
        "200",
        "--key",
        "demo-key",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    first = (await asyncio.wait_for(process.stdout.readline(), TIMEOUT)).decode()
    match = re.search(r"at (http://127\.0\.0\.1:\d+)", first)
    assert match is not None, first
    url = match.group(1)
    async with session.ws_connect(
        f"{url}/ws/logs", headers={"Authorization": "Bearer demo-key"}
    ) as ws:
        assert "hello" == (await receive_json(ws))["type"]
        levels = set()
        with_fields = 0
        while len(levels) < 4:
            record = await receive_json(ws)
            levels.add(record["level"])
            with_fields += bool(record["fields"])
        assert with_fields > 0
    process.send_signal(signal.SIGINT)
    assert 0 == await asyncio.wait_for(process.wait(), TIMEOUT)


def test_no_command_is_a_usage_error() -> None:
    """`wslogging` alone prints help and returns 2."""
    assert 2 == main([])


def test_demo_on_a_port_another_process_serves(
    handler: wslogging.WebSocketHandler,
) -> None:
    """A demo whose port is served by another wslogging process says so and exits 1: the
    demo serves, it never forwards."""
    result = subprocess.run(
        [sys.executable, "-m", "wslogging", "demo", "--port", str(handler.port), "--key", "k"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert 1 == result.returncode
    message = f"could not start (port {handler.port} is served by another process); try --port 0"
    assert message in result.stderr


@pytest.mark.parametrize(
    ("url", "given"),
    [("127.0.0.1:3000", True), ("http://localhost:3000", True), ("http://192.0.2.1:3000", False)],
)
def test_a_client_gets_the_kept_key_for_a_loopback_url_only(
    url: str,
    given: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """tail and mcp send the key kept for a local port when given none, and say where it
    is; a remote URL with the same port is never sent it."""
    monkeypatch.setenv(_rendezvous.RUNTIME_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.delenv("WSLOGGING_API_KEY", raising=False)
    key, path, _ = _rendezvous.kept_key("127.0.0.1", 3000)
    found = client_key(argparse.Namespace(url=url, key=None, quiet=False), "tail")
    expected = ((key, str(path)), f"wslogging tail: using the API key kept in {path}\n")
    assert (expected if given else ((None, None), "")) == (found, capsys.readouterr().err)


def test_an_explicit_key_wins_over_a_kept_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--key, then $WSLOGGING_API_KEY, come before any kept key."""
    monkeypatch.setenv(_rendezvous.RUNTIME_DIR_ENV, str(tmp_path / "run"))
    _rendezvous.kept_key("127.0.0.1", 3000)
    monkeypatch.setenv("WSLOGGING_API_KEY", "from-env")
    args = argparse.Namespace(url="127.0.0.1:3000", key=None, quiet=True)
    assert ("from-env", None) == client_key(args, "tail")
    args.key = "given"
    assert ("given", None) == client_key(args, "mcp")
