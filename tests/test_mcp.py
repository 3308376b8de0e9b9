"""``wslogging mcp``: the real command, driven by the MCP SDK's own client over stdio, against a
real server (a handler in this process, or a worker process)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp
import pytest
from conftest import KEY, TIMEOUT, async_wait_until

import wslogging
from wslogging.cli import MCP_MISSING, _mcp

log = logging.getLogger("app.mcp")
WORKER = str(Path(__file__).with_name("_worker.py"))
# Where the MCP subprocess imports wslogging from: this checkout, as the tests do.
SOURCE = str(Path(__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def _quiet_sdk() -> None:
    """The SDK's client in this process logs its protocol at DEBUG: keep that out of the
    server's history, which the tests count on (the logging tree is restored after)."""
    logging.getLogger("mcp").setLevel(logging.WARNING)


def environment(**variables: str) -> dict[str, str]:
    """What the MCP client passes to the server it starts (it adds PATH, HOME and the like)."""
    return {"PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")]), **variables}


@asynccontextmanager
async def connected(params: mcp.StdioServerParameters) -> AsyncIterator[Any]:
    async with mcp.Client(params, read_timeout_seconds=TIMEOUT) as client:
        yield client


@asynccontextmanager
async def mcp_client(url: str, key: str | None = KEY, *args: str) -> AsyncIterator[Any]:
    """A connected MCP client of ``python -m wslogging mcp URL ARGS`` (with ``key`` in
    ``$WSLOGGING_API_KEY``)."""
    env = environment() if key is None else environment(WSLOGGING_API_KEY=key)
    command = ["-m", "wslogging", "mcp", url, *args]
    async with connected(
        mcp.StdioServerParameters(command=sys.executable, args=command, env=env)
    ) as client:
        yield client


async def call(client: Any, tool: str, **arguments: Any) -> tuple[str, dict[str, Any]]:
    """Call ``tool``, which must succeed; its text and its structured content."""
    result = await client.call_tool(tool, arguments)
    text = result.content[0].text
    assert not result.is_error, text
    return text, result.structured_content


async def fails(client: Any, tool: str, **arguments: Any) -> str:
    """Call ``tool``, which must answer with a tool error; its text."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    text: str = result.content[0].text
    return text


def messages(data: dict[str, Any]) -> list[str]:
    return [record["log"] for record in data["records"]]


async def logged(handler: wslogging.WebSocketHandler, *texts: str) -> None:
    """Wait until the server holds records with each of these messages in its history."""
    history = handler._server.hub.history

    def held() -> set[str]:
        entries = (history.get(i) for i in range(history.oldest_id, history.last_id + 1))
        return {entry.log for entry in entries if entry is not None}

    await async_wait_until(lambda: set(texts) <= held())


async def test_lists_its_tools_with_schemas(handler: wslogging.WebSocketHandler) -> None:
    """The three tools, each with typed, described parameters and an output schema."""
    async with mcp_client(handler.url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

    assert {"get_logs", "wait_for_logs", "get_stats"} == set(tools)
    filters = {"level", "logger", "category", "grep", "fields", "since", "limit"}
    get_logs = tools["get_logs"].input_schema["properties"]
    assert filters == set(get_logs)
    assert filters | {"timeout"} == set(tools["wait_for_logs"].input_schema["properties"])
    assert all(p.get("description") for p in get_logs.values())
    assert _mcp.MAX_RECORDS == get_logs["limit"]["maximum"]
    assert _mcp.DEFAULT_RECORDS == get_logs["limit"]["default"]
    for name in ("get_logs", "wait_for_logs"):
        output = tools[name].output_schema
        assert {"records", "next_since", "gaps", "left_out", "now"} <= set(output["properties"])
        assert tools[name].annotations.read_only_hint
    assert "object" == tools["get_stats"].output_schema["type"]


async def test_get_logs_honours_the_filters(handler: wslogging.WebSocketHandler) -> None:
    """Level, logger, category, grep and fields select records as the server's filter does."""
    logging.getLogger("app.db").info("query ran", extra={"rows": 3})
    logging.getLogger("app.db").warning("query slow", extra={"rows": 500})
    logging.getLogger("application").error("not under app")
    log.error("payment failed", extra={"category": "billing", "status": 500})
    log.info("payment ok", extra={"category": "billing", "status": 200})
    await logged(handler, "payment ok")
    async with mcp_client(handler.url) as client:
        _, by_level = await call(client, "get_logs", level="warning", logger=["app"])
        _, by_number = await call(client, "get_logs", level=40, logger=["app", "application"])
        _, by_category = await call(client, "get_logs", category=["billing"])
        _, by_grep = await call(client, "get_logs", grep="slow")
        text, by_field = await call(client, "get_logs", logger=["app"], fields={"status": 500})

    assert ["query slow", "payment failed"] == messages(by_level)
    assert ["not under app", "payment failed"] == messages(by_number)
    assert ["payment failed", "payment ok"] == messages(by_category)
    assert ["query slow"] == messages(by_grep)
    assert ["payment failed"] == messages(by_field)
    (record,) = by_field["records"]
    assert {"status": 500} == record["fields"]
    assert ("ERROR", "app.mcp", "billing") == (
        record["level"],
        record["logger"],
        record["category"],
    )
    assert record["time"].endswith("Z")
    line = text.splitlines()[1]
    assert line.endswith(' ERROR app.mcp: payment failed {"status": 500}')


async def test_get_logs_pages_with_limit_and_since(handler: wslogging.WebSocketHandler) -> None:
    """Without since: the newest ``limit``; with it, the records after it, up to ``limit``."""
    for n in range(5):
        log.info("step %d", n)
    await logged(handler, "step 4")
    async with mcp_client(handler.url) as client:
        _, newest = await call(client, "get_logs", logger=["app"], limit=2)
        _, first = await call(client, "get_logs", logger=["app"], since="0", limit=3)
        _, rest = await call(client, "get_logs", logger=["app"], since=first["next_since"])
        log.info("step 5")
        await logged(handler, "step 5")
        _, newer = await call(client, "get_logs", logger=["app"], since=newest["next_since"])

    assert ["step 3", "step 4"] == messages(newest)
    assert ["step 0", "step 1", "step 2"] == messages(first)
    assert first["records"][-1]["id"] == first["next_since"]
    assert ["step 3", "step 4"] == messages(rest)
    assert ["step 5"] == messages(newer)


async def test_wait_for_logs_returns_what_is_logged_during_the_wait(
    handler: wslogging.WebSocketHandler,
) -> None:
    """It returns as soon as a matching record is logged, not at the timeout, and not what
    was logged before the call."""
    log.info("deploy: ready (an earlier deploy)")
    await logged(handler, "deploy: ready (an earlier deploy)")
    async with mcp_client(handler.url) as client:
        started = time.monotonic()
        waiting = asyncio.create_task(
            call(client, "wait_for_logs", grep="ready", timeout=_mcp.MAX_WAIT)
        )
        await async_wait_until(lambda: handler._server.hub.clients)
        log.info("deploy: migrating")
        log.info("deploy: ready")
        text, data = await asyncio.wait_for(waiting, TIMEOUT)

    assert time.monotonic() - started < TIMEOUT
    assert ["deploy: ready"] == messages(data)
    assert data["records"][0]["id"] == data["next_since"]
    assert text.startswith("1 record arrived")


async def test_wait_for_logs_is_empty_at_the_timeout(handler: wslogging.WebSocketHandler) -> None:
    """Nothing matching within ``timeout``: no records, and the id to go on from (the key
    given with ``--key`` this time)."""
    log.info("something else")
    await logged(handler, "something else")
    async with mcp_client(handler.url, None, "--key", KEY) as client:
        _, before = await call(client, "get_logs", logger=["app"])
        started = time.monotonic()
        text, data = await call(client, "wait_for_logs", grep="ready", timeout=0.5)

    assert time.monotonic() - started >= 0.5
    assert [] == data["records"]
    assert before["next_since"] == data["next_since"]
    assert text.startswith("No matching record within 0.5 s.")


async def test_wait_for_logs_with_a_tiny_timeout_returns(
    handler: wslogging.WebSocketHandler,
) -> None:
    """A timeout that has passed before the first frame is read ends the wait, rather than
    waiting for a frame without end (aiohttp reads a timeout of 0 as none), and still gives
    the id to go on from."""
    async with mcp_client(handler.url) as client:
        _, before = await call(client, "get_logs")
        text, data = await call(client, "wait_for_logs", grep="ready", timeout=1e-6)

    assert [] == data["records"]
    assert before["next_since"] == data["next_since"]
    assert text.startswith("No matching record within")


async def test_wait_for_logs_since_misses_nothing_between_calls(
    handler: wslogging.WebSocketHandler,
) -> None:
    """Given the previous result's next_since, records logged between two calls come at once."""
    async with mcp_client(handler.url) as client:
        _, before = await call(client, "get_logs", logger=["app"])
        log.info("between 1")
        log.info("between 2")
        await logged(handler, "between 2")
        started = time.monotonic()
        _, data = await call(
            client, "wait_for_logs", logger=["app"], since=before["next_since"], timeout=60
        )

    assert time.monotonic() - started < TIMEOUT
    assert ["between 1", "between 2"] == messages(data)


async def test_records_the_server_lost_are_reported_as_gaps(
    configure: Callable[..., wslogging.WebSocketHandler],
) -> None:
    """A ``since`` older than the server's history gets the server's gap, in the structured
    result and in the text, from both tools."""
    handler = configure(history=2)
    for n in range(5):
        log.info("kept or not %d", n)
    await logged(handler, "kept or not 4")
    async with mcp_client(handler.url) as client:
        _, first = await call(client, "get_logs", logger=["app"], limit=1)
        for n in range(5, 10):
            log.info("kept or not %d", n)
        await logged(handler, "kept or not 9")
        text, page = await call(client, "get_logs", logger=["app"], since=first["next_since"])
        waited_text, waited = await call(
            client, "wait_for_logs", logger=["app"], since=first["next_since"], timeout=60
        )

    gap = {"missed": 3, "reason": "history"}
    assert [gap] == page["gaps"] == waited["gaps"]
    assert ["kept or not 8", "kept or not 9"] == messages(page) == messages(waited)
    assert "--- gap: 3 records missed (history) ---" == text.splitlines()[1]
    assert "--- gap: 3 records missed (history) ---" == waited_text.splitlines()[1]


async def test_long_records_are_cut_with_a_marker(handler: wslogging.WebSocketHandler) -> None:
    """A long message keeps its start, a long traceback its start and its end (where the
    exception is), each with the marker; a long field value is cut too."""
    try:
        raise ValueError("the end of the traceback " + "t" * 10_000)
    except ValueError:
        log.exception("m" * 10_000 + " the end of the message", extra={"body": "b" * 1000})
    await logged(handler, "m" * 10_000 + " the end of the message")
    async with mcp_client(handler.url) as client:
        text, data = await call(client, "get_logs", logger=["app"])
        _, waited = await call(client, "wait_for_logs", logger=["app"], since="0", timeout=60)

    (record,) = data["records"]
    assert "m" * _mcp.MESSAGE_MAX + "… [cut 8,023 characters]" == record["log"]
    assert record["exc"].startswith("Traceback (most recent call last):")
    assert "characters]…" in record["exc"]
    assert record["exc"].endswith("t" * 100)
    assert len(record["exc"]) < _mcp.TRACEBACK_HEAD + _mcp.TRACEBACK_TAIL + 40
    assert "b" * _mcp.FIELD_MAX + "… [cut 700 characters]" == record["fields"]["body"]
    assert "… [cut 8,023 characters]" in text
    assert len(text) < 10_000
    assert data["records"] == waited["records"]


async def test_a_bad_filter_is_a_tool_error_and_it_goes_on(
    handler: wslogging.WebSocketHandler,
) -> None:
    """A filter wslogging cannot use, or a since the server rejects (400), says why."""
    async with mcp_client(handler.url) as client:
        level = await fails(client, "get_logs", level="loud")
        waiting = await fails(client, "wait_for_logs", level="loud")
        since = await fails(client, "get_logs", since="not an id")
        limit = await fails(client, "get_logs", limit=_mcp.MAX_RECORDS + 1)
        await call(client, "get_logs")

    assert "bad filter: unknown level 'loud'" in level
    assert "bad filter: unknown level 'loud'" in waiting
    assert "the server rejected the request (400)" in since
    assert "limit" in limit


async def test_a_wrong_key_is_a_tool_error_and_it_goes_on(
    handler: wslogging.WebSocketHandler,
) -> None:
    """A refused key is said as such, on every tool, and the MCP server keeps answering."""
    async with mcp_client(handler.url, key="wrong-key") as client:
        first = await fails(client, "get_logs")
        waiting = await fails(client, "wait_for_logs", timeout=60)
        stats = await fails(client, "get_stats")
        assert 3 == len((await client.list_tools()).tools)
    async with mcp_client(handler.url, key=None) as client:
        missing = await fails(client, "get_logs")

    assert "the server refused the API key (401)" in first
    assert "the server refused the API key (401)" in waiting
    assert "the server refused the API key (401)" in stats
    assert "the server needs an API key (401)" in missing
    assert "WSLOGGING_API_KEY" in missing


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def worker() -> AsyncIterator[Callable[..., Any]]:
    """Start ``tests/_worker.py`` processes (a real server app) on a port; each is ended by
    closing its stdin, and killed at the end of the test if still running."""
    started: list[asyncio.subprocess.Process] = []

    async def start(port: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            WORKER,
            str(port),
            "0.05",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        assert "serving" == json.loads(line)["role"]
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
        await process.communicate()


async def test_a_server_down_and_back(worker: Callable[..., Any]) -> None:
    """While the server is down a call says it cannot reach it; once it is back, calls work,
    with no restart of the MCP server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = await worker(port)
    async with mcp_client(url) as client:
        _, up = await call(client, "wait_for_logs", grep="tick", timeout=60)
        assert app.stdin is not None
        app.stdin.close()
        assert 0 == await asyncio.wait_for(app.wait(), TIMEOUT)
        down = await fails(client, "get_logs")
        down_waiting = await fails(client, "wait_for_logs", timeout=60)
        await worker(port)
        _, back = await call(client, "wait_for_logs", grep="tick", timeout=60)
        _, stats = await call(client, "get_stats")

    assert up["records"][0]["log"].startswith("tick ")
    assert f"cannot reach the wslogging server at {url}/" in down
    assert f"cannot reach the wslogging server at {url}/" in down_waiting
    assert back["records"][0]["log"].startswith("tick ")
    assert back["records"][0]["pid"] != up["records"][0]["pid"]
    assert {"clients", "records_accepted", "records_dropped", "history_size"} <= set(stats)


async def test_the_documented_configuration_works(handler: wslogging.WebSocketHandler) -> None:
    """The ``mcpServers`` entry of docs/cli.rst, with this server's URL and key, starts a
    working MCP server."""
    page = (Path(SOURCE) / "docs" / "cli.rst").read_text()
    block = page[page.index('{\n      "mcpServers"') :]
    config = json.loads(block[: block.index("\n\n")])
    (entry,) = config["mcpServers"].values()
    script = Path(sys.executable).with_name(entry["command"])
    args = [arg.replace("http://127.0.0.1:3000", handler.url) for arg in entry["args"]]
    env = environment(**{k: v.replace("KEY", KEY) for k, v in entry["env"].items()})
    log.info("seen through the documented configuration")
    await logged(handler, "seen through the documented configuration")
    params = mcp.StdioServerParameters(command=str(script), args=args, env=env)
    async with connected(params) as client:
        _, data = await call(client, "get_logs", logger=["app"])

    assert ["seen through the documented configuration"] == messages(data)


def test_without_the_extra_it_says_which_to_install() -> None:
    """Without the SDK, one line names the extra, status 2."""
    blocked = "import sys; sys.modules['mcp'] = None; from wslogging.cli import main; "
    result = subprocess.run(
        [sys.executable, "-c", blocked + "sys.exit(main(['mcp']))"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONPATH": SOURCE},
    )
    assert (2, "", MCP_MISSING + "\n") == (result.returncode, result.stdout, result.stderr)


# -- the bounds, without a server ---------------------------------------------------------


def test_cut_keeps_the_start_or_both_ends() -> None:
    """Short text stays as it is; long text keeps its head (and tail) around the marker."""
    assert "abc" == _mcp.cut("abc", 3)
    assert "ab… [cut 1,998 characters]" == _mcp.cut("ab" + "c" * 1998, 2)
    assert "a… [cut 3 characters]…e" == _mcp.cut("abcde", 1, 1)


def _frame(n: int, size: int) -> dict[str, Any]:
    return {"type": "log", "id": str(n), "log": "x" * size, "level": "INFO", "levelno": 20}


def test_a_page_over_the_budget_leaves_records_out() -> None:
    """Past the budget the newest (paging forward) or the oldest (newest first) are left out,
    counted, and gaps are kept."""
    size = _mcp.MESSAGE_MAX
    count = _mcp.RESULT_BUDGET // size + 10
    forward, newest = _mcp.Page(), _mcp.Page()
    for page in (forward, newest):
        page.add_gap({"type": "gap", "missed": 3, "reason": "history"})
        for n in range(count):
            page.add_record(_frame(n, size))

    left_forward = forward.fit("first")
    left_newest = newest.fit("last")

    assert left_forward == left_newest > 10
    assert left_forward + len(forward.records) == count
    assert "0" == forward.records[0]["id"]
    assert str(count - 1) == newest.records[-1]["id"]
    assert [{"missed": 3, "reason": "history"}] == forward.gaps == newest.gaps
    text = forward.result("9", left_forward, "Summary.").content[0].text
    assert len(text) < _mcp.RESULT_BUDGET + size + 200
