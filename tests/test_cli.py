"""The command line, run as users run it: a real subprocess."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys

import aiohttp
from conftest import TIMEOUT, receive_json

import wslogging
from wslogging.cli import main


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
