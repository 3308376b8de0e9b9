"""The recipes the documentation shows, run as users run them: the real program (gunicorn,
uvicorn, Django's runserver, structlog) in a subprocess, on free ports, and a real WebSocket
client on the wslogging port checking what arrives. docs/configuration.rst shows each recipe
file whole."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import AUTH, KEY, TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DJANGO = EXAMPLES / "django_project"
CONFIGURATION = ROOT / "docs" / "configuration.rst"

Frame = dict[str, Any]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


def append_line(path: Path, line: str) -> None:
    with path.open("a") as out:
        out.write(f"{line}\n")


def shown_block(path: Path) -> str:
    """``path``'s text as the documentation shows it: a block indented by four spaces."""
    lines = path.read_text().splitlines()
    return "\n".join(f"    {line}" if line else "" for line in lines)


@pytest.mark.parametrize(
    "name",
    [
        "gunicorn.conf.py",
        "uvicorn_log_config.yaml",
        "fastapi_app.py",
        "django_project/shop/settings.py",
    ],
)
def test_the_docs_show_each_recipe_as_the_tests_run_it(name: str) -> None:
    """A recipe in docs/configuration.rst is the file these tests run, whole and unchanged."""
    assert shown_block(EXAMPLES / name) in CONFIGURATION.read_text()


class Program:
    """A program started in a session of its own (so that its children, a reloader's or a
    server's workers, go with it), its output kept in a file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], output: Path) -> None:
        self.output = output
        with output.open("wb") as out:
            self.process = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to the whole group, as a terminal's Ctrl-C or a service manager; SIGKILL
        after :data:`TIMEOUT`."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # children a reloader left behind
            os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Program]]:
    """Start ``args`` with ``$WSLOGGING_PORT`` and ``$WSLOGGING_API_KEY`` set; every
    program is stopped (and its group killed) at the end of the test."""
    started: list[Program] = []

    def run(args: list[str], cwd: Path, log_port: int, **env: str) -> Program:
        environ = {**os.environ, "WSLOGGING_PORT": str(log_port), "WSLOGGING_API_KEY": KEY}
        environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
        environ.update(env)
        output = tmp_path / f"output-{len(started)}.txt"
        started.append(Program(args, cwd, environ, output))
        return started[-1]

    yield run
    for program in started:
        program.stop()


class Stream:
    """A WebSocket client of ``/ws/logs`` from the start of history, reconnecting (with the
    last id) if the serving process goes; keeps every log and gap frame."""

    def __init__(self, session: aiohttp.ClientSession, url: str, program: Program) -> None:
        self.session, self.url, self.program = session, url, program
        self.frames: list[Frame] = []
        self.hellos: list[Frame] = []
        self.since = "0"
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def logs(self) -> list[Frame]:
        return [frame for frame in self.frames if frame["type"] == "log"]

    async def until(self, condition: Callable[[list[Frame]], bool], what: str) -> list[Frame]:
        """Read until ``condition(logs)`` holds; fails after :data:`TIMEOUT`, with what did
        arrive and what the program printed."""
        if not await self.reached(condition, TIMEOUT):
            seen = [(f.get("pid"), f.get("logger"), f.get("log")) for f in self.frames]
            pytest.fail(f"no {what} within {TIMEOUT}s; got {seen}\n{self.program.text()}")
        return self.logs

    async def reached(self, condition: Callable[[list[Frame]], bool], seconds: float) -> bool:
        """Read until ``condition(logs)`` holds or ``seconds`` have passed; whether it holds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not condition(self.logs):
                    await self._next()
        return condition(self.logs)

    async def edit_until(
        self, path: Path, condition: Callable[[list[Frame]], bool], what: str
    ) -> list[Frame]:
        """Change ``path`` (a line added) until ``condition(logs)`` holds: a reloader that
        polls takes its first look at the files some time after it starts, and misses a change
        made before; fails after :data:`TIMEOUT`."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    append_line(path, "# changed")
                    if await self.reached(condition, 2.0):
                        return self.logs
        except TimeoutError:
            pytest.fail(f"no {what} within {TIMEOUT}s\n{self.program.text()}")

    async def _next(self) -> None:
        if self._ws is None:
            try:
                self._ws = await self.session.ws_connect(
                    f"{self.url}/ws/logs?since={self.since}", headers=AUTH
                )
            except aiohttp.ClientError:  # not serving yet, or between two servers
                assert self.program.process.poll() is None, self.program.text()
                await asyncio.sleep(0.05)
                return
        message = await self._ws.receive()
        if message.type is not aiohttp.WSMsgType.TEXT:
            self._ws = None
            return
        frame: Frame = json.loads(message.data)
        if frame["type"] == "hello":
            self.hellos.append(frame)
        elif frame["type"] in ("log", "gap"):
            self.frames.append(frame)
            self.since = str(frame.get("id", self.since))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()


async def get(session: aiohttp.ClientSession, url: str, program: Program) -> int:
    """GET ``url`` once the app answers (it may still be starting); its status."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                async with session.get(url) as response:
                    await response.read()
                    return response.status
            except aiohttp.ClientConnectionError:
                assert program.process.poll() is None, program.text()
                await asyncio.sleep(0.05)


def by(logger: str, text: str = "") -> Callable[[list[Frame]], bool]:
    """A condition: a record of ``logger`` whose message holds ``text`` has arrived."""
    return lambda logs: any(f["logger"] == logger and text in f["log"] for f in logs)


def one(logs: list[Frame], logger: str, text: str = "") -> Frame:
    """The last record of ``logger`` whose message holds ``text``."""
    return [f for f in logs if f["logger"] == logger and text in f["log"]][-1]


# -- gunicorn -------------------------------------------------------------------------------


async def test_gunicorn_logconfig_dict_streams_the_access_log(
    start: Callable[..., Program], session: aiohttp.ClientSession
) -> None:
    """examples/gunicorn.conf.py under real gunicorn with 2 workers: gunicorn's messages, the
    app's records and gunicorn's access lines (which ``"propagate": False`` turned off)
    arrive on the stream, from the master and the workers."""
    import gunicorn.config

    log_port, app_port = free_port(), free_port()
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{app_port}"]
    command += ["-c", str(EXAMPLES / "gunicorn.conf.py"), "--chdir", str(EXAMPLES)]
    if hasattr(gunicorn.config, "ControlSocketDisable"):  # gunicorn 25 on: not in $HOME
        command.append("--no-control-socket")
    program = start([*command, "wsgi_app:app"], EXAMPLES, log_port)
    stream = Stream(session, f"http://127.0.0.1:{log_port}", program)
    await stream.until(by("gunicorn.error", "Booting worker"), "gunicorn message")
    assert 200 == await get(session, f"http://127.0.0.1:{app_port}/orders/42", program)
    logs = await stream.until(by("gunicorn.access", "GET /orders/42"), "access line")
    master = one(logs, "gunicorn.error", "Starting gunicorn")["pid"]
    app, access = one(logs, "shop", "order looked up"), one(logs, "gunicorn.access")
    assert ({"path": "/orders/42"}, program.process.pid) == (app["fields"], master)
    assert master != app["pid"] == access["pid"]  # a worker's records, forwarded
    assert '"GET /orders/42 HTTP/1.1" 200' in access["log"]
    await stream.close()


# -- structlog ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stdlib", "direct"])
async def test_structlog_example_sends_each_thing_once(
    start: Callable[..., Program], session: aiohttp.ClientSession, mode: str
) -> None:
    """examples/structlog_app.py, set up as structlog's documentation says: ``log`` is the
    event alone, the pairs are fields (not the logger, level or timestamp again), and a
    traceback is in ``exc`` once, not in ``log`` as well."""
    log_port = free_port()
    program = start([sys.executable, str(EXAMPLES / "structlog_app.py"), mode], ROOT, log_port)
    stream = Stream(session, f"http://127.0.0.1:{log_port}", program)
    logs = await stream.until(by("shop.orders", "pricing failed"), "structlog exception")
    placed, failed = one(logs, "shop.orders", "order placed"), one(logs, "shop.orders", "failed")
    assert ("order placed", "INFO") == (placed["log"], placed["level"])
    assert {"order", "user", "total", "request_id"} == set(placed["fields"])
    assert ("pricing failed", "ERROR", None) == (failed["log"], failed["level"], placed["exc"])
    assert {"order", "user", "request_id"} == set(failed["fields"])
    assert 1 == failed["exc"].count("Traceback (most recent call last)")
    assert "KeyError" in failed["exc"]
    await stream.close()


# -- uvicorn and FastAPI --------------------------------------------------------------------


def uvicorn_config(tmp_path: Path, log_port: int) -> Path:
    """examples/uvicorn_log_config.yaml with its port (3000) replaced by ``log_port``, the
    one line it changes."""
    text = (EXAMPLES / "uvicorn_log_config.yaml").read_text()
    changed = text.replace("port: 3000\n", f"port: {log_port}\n")
    assert 1 == len(set(changed.splitlines()) - set(text.splitlines()))
    path = tmp_path / "uvicorn_log_config.yaml"
    path.write_text(changed)
    return path


@pytest.mark.parametrize("reload", [False, True])
async def test_fastapi_under_uvicorn(
    start: Callable[..., Program],
    session: aiohttp.ClientSession,
    tmp_path: Path,
    reload: bool,
) -> None:
    """examples/fastapi_app.py under real uvicorn with examples/uvicorn_log_config.yaml:
    uvicorn's messages (without their ``color_message`` copy), the app's records with their
    fields and traceback, and the access lines arrive. With ``--reload``, the reloader
    process serves the stream and the server process forwards to it; after a code change the
    new server process forwards too, on the same stream (no restart gap)."""
    log_port, app_port = free_port(), free_port()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    app_file = app_dir / "fastapi_app.py"
    app_file.write_text((EXAMPLES / "fastapi_app.py").read_text())
    command = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", str(app_port)]
    command += ["--log-config", str(uvicorn_config(tmp_path, log_port)), "--app-dir", str(app_dir)]
    if reload:
        command += ["--reload", "--reload-dir", str(app_dir)]
    program = start(command, tmp_path, log_port)
    app_url = f"http://127.0.0.1:{app_port}"
    stream = Stream(session, f"http://127.0.0.1:{log_port}", program)
    await stream.until(by("uvicorn.error", "Application startup complete"), "uvicorn startup")
    assert 200 == await get(session, f"{app_url}/orders/42", program)
    assert 503 == await get(session, f"{app_url}/broken", program)
    logs = await stream.until(by("uvicorn.access", "/broken"), "access lines")
    started = one(logs, "uvicorn.error", "Started server process")
    assert {} == started["fields"]  # no color_message
    assert {"order": 42} == one(logs, "shop.orders", "order looked up")["fields"]
    assert "RuntimeError: the payment service is down" in one(logs, "shop.orders", "failed")["exc"]
    assert '"GET /orders/42 HTTP/1.1" 200' in one(logs, "uvicorn.access", "/orders/42")["log"]
    if reload:
        server_pid = started["pid"]
        reloader = one(logs, "uvicorn.error", "Started reloader process")["pid"]
        assert (program.process.pid, True) == (reloader, server_pid != reloader)
        logs = await stream.edit_until(
            app_file,
            lambda logs: any(
                f["pid"] != server_pid and "Application startup complete" in f["log"] for f in logs
            ),
            "a new server process",
        )
        assert 200 == await get(session, f"{app_url}/orders/43", program)
        await stream.until(by("uvicorn.access", "/orders/43"), "access line after the reload")
        # The old server process dies by the SIGTERM it re-raises, with no goodbye to the
        # stream: that may be told as a gap(source), never as a restart.
        assert {"source"} >= {f["reason"] for f in stream.frames if f["type"] == "gap"}
        assert 1 == len({hello["epoch"] for hello in stream.hellos})
    await stream.close()


# -- Flask ----------------------------------------------------------------------------------


async def test_flask_reloader_and_edited_keys(
    start: Callable[..., Program], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """examples/flask_app.py under ``flask run --debug``: the reloader process serves the
    stream and the app process it starts forwards to it, quietly. After ``api_keys`` are
    edited in the code, the new app process still forwards (its records arrive under the old
    key) and says once, in one line, that the server's keys differ and what to do."""
    app_file = tmp_path / "flask_app.py"
    app_file.write_text((EXAMPLES / "flask_app.py").read_text())
    log_port, app_port = free_port(), free_port()
    command = [sys.executable, "-m", "flask", "--app", "flask_app", "run", "--debug"]
    program = start([*command, "--port", str(app_port)], tmp_path, log_port)
    app_url = f"http://127.0.0.1:{app_port}"
    stream = Stream(session, f"http://127.0.0.1:{log_port}", program)
    assert 200 == await get(session, f"{app_url}/orders/42", program)
    logs = await stream.until(by("shop", "order 42 looked up"), "the app's record")
    first_app = one(logs, "shop", "order 42 looked up")["pid"]
    assert first_app != program.process.pid  # the reloader's child
    assert [] == [line for line in program.text().splitlines() if "wslogging" in line]
    text = app_file.read_text()
    edited = text.replace('"port": PORT,', '"port": PORT, "api_keys": "edited-key",')
    assert edited != text
    app_file.write_text(edited)
    async with asyncio.timeout(TIMEOUT):
        while True:  # until the new app process answers
            await get(session, f"{app_url}/orders/7", program)
            if await stream.reached(
                lambda logs: any(
                    f["pid"] not in (first_app, program.process.pid) and "order 7" in f["log"]
                    for f in logs
                ),
                0.5,
            ):
                break
    said = [line for line in program.text().splitlines() if "wslogging" in line]
    assert 1 == len(said), said
    assert re.fullmatch(
        r"wslogging: process \d+ \(flask\) forwards its records to http://127\.0\.0\.1:"
        rf"{log_port}/, served by process {program.process.pid} \(flask\), whose api_keys "
        rf"differ from this process's; restart process {program.process.pid} \(flask\) to "
        "use these api_keys",
        said[0],
    ), said[0]
    await stream.close()


# -- Django ---------------------------------------------------------------------------------


@pytest.mark.parametrize("autoreload", [False, True])
async def test_django_runserver(
    start: Callable[..., Program],
    session: aiohttp.ClientSession,
    tmp_path: Path,
    autoreload: bool,
) -> None:
    """examples/django_project (its ``LOGGING``) under ``manage.py runserver``: runserver's
    access lines (``django.server``: the status as a field, not the socket it passes as
    ``request``), the app's records and Django's request errors with the traceback arrive.
    Under the autoreloader the first process serves the stream and the server process it
    starts forwards to it, and so does the one it starts after a code change."""
    project = tmp_path / "django_project"
    shutil.copytree(DJANGO, project)
    log_port, app_port = free_port(), free_port()
    command = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{app_port}"]
    if not autoreload:
        command.append("--noreload")
    program = start(command, project, log_port)
    app_url = f"http://127.0.0.1:{app_port}"
    stream = Stream(session, f"http://127.0.0.1:{log_port}", program)
    assert 200 == await get(session, f"{app_url}/orders/42", program)
    assert 500 == await get(session, f"{app_url}/broken", program)
    logs = await stream.until(by("django.server", "GET /broken"), "access lines")
    access = one(logs, "django.server", "GET /orders/42")
    assert ("INFO", 200) == (access["level"], access["fields"]["status_code"])
    assert "request" not in access["fields"]
    assert {"order": 42} == one(logs, "shop.orders", "order looked up")["fields"]
    error = one(logs, "django.request", "Internal Server Error: /broken")
    assert "RuntimeError: the payment service is down" in error["exc"]
    assert re.fullmatch(r"<WSGIRequest: GET '/broken'>", error["fields"]["request"])
    if autoreload:
        server_pid = access["pid"]
        assert server_pid != program.process.pid  # the reloader's child
        await stream.edit_until(
            project / "shop" / "urls.py",
            lambda logs: any(f["pid"] not in (server_pid, program.process.pid) for f in logs),
            "a record of the new server process",
        )
        assert 200 == await get(session, f"{app_url}/orders/43", program)
        await stream.until(by("django.server", "GET /orders/43"), "access line after reload")
        assert [] == [f for f in stream.frames if f["type"] == "gap"]
        assert 1 == len({hello["epoch"] for hello in stream.hellos})
        # A management command run while runserver is up joins its stream, quietly too.
        environ = {**os.environ, "WSLOGGING_PORT": str(log_port), "WSLOGGING_API_KEY": KEY}
        environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
        check = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "manage.py", "check"],
            cwd=project,
            env=environ,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert (0, "") == (check.returncode, check.stderr)
    # The first process serves (its key is configured: nothing to say); the children, which
    # configure LOGGING twice, and the command join it without a word.
    assert [] == [line for line in program.text().splitlines() if "wslogging" in line]
    await stream.close()
