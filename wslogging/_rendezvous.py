"""Where worker processes of one user find the process serving a port: a private file per port.

The serving process writes ``<host>-<port>.json`` into a directory only its user can reach,
holding its pid, a random *ingest secret* (what a forwarder proves it knows, see
:mod:`wslogging._ingest`) and, when the API key was made up rather than configured, that key,
so that a process taking the port over keeps accepting it. Other processes of the same user on
the same host read it to forward their records; nobody else can read or plant it.

The directory is ``$WSLOGGING_RUNTIME_DIR`` when set, else ``$XDG_RUNTIME_DIR/wslogging``,
else ``<cache>/wslogging/<hostname>``, ``<cache>`` being ``$XDG_CACHE_HOME`` or
``~/.cache``: a place other users cannot create first (as they could a name in the shared
temporary directory, and so stop forwarding), and one per host, since a home directory may
be shared between hosts whose processes do not reach each other. It is created with mode
0700; one that is a symlink, belongs to another user or is open to the group or others is
refused (:class:`RendezvousError`), and so is a file that is. Files are written whole (a temporary
file, then a rename) and opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RUNTIME_DIR_ENV = "WSLOGGING_RUNTIME_DIR"
# A rendezvous file is a few hundred bytes; anything larger is not one of ours.
MAX_FILE = 4096
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9.-]")


class RendezvousError(OSError):
    """The rendezvous directory or file cannot be trusted or used; the text says why."""


@dataclass(frozen=True)
class Rendezvous:
    """What the serving process tells the others."""

    pid: int
    secret: str
    api_key: str | None = None

    def to_json(self) -> bytes:
        data = {"pid": self.pid, "secret": self.secret, "api_key": self.api_key}
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Rendezvous:
        """Parse a file's bytes; ``ValueError`` names what is wrong."""
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        pid, secret, api_key = value.get("pid"), value.get("secret"), value.get("api_key")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError("pid must be a positive integer")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ValueError("secret must be a string of 16 characters or more")
        if api_key is not None and not isinstance(api_key, str):
            raise ValueError("api_key must be a string or null")
        return cls(pid, secret, api_key)


def new_secret() -> str:
    """A fresh ingest secret (256 bits)."""
    return secrets.token_urlsafe(32)


def runtime_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The directory rendezvous files live in (not created or checked here);
    :class:`RendezvousError` if there is neither a runtime directory nor a home."""
    configured = environ.get(RUNTIME_DIR_ENV, "").strip()
    if configured:
        return Path(configured)
    xdg = environ.get("XDG_RUNTIME_DIR", "").strip()
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return Path(xdg) / "wslogging"
    host = _UNSAFE_NAME.sub("_", os.uname().nodename) or "localhost"
    return _cache_home(environ) / "wslogging" / host


def _cache_home(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME``, else ``~/.cache`` (relative paths are ignored, as the XDG base
    directory specification says)."""
    cache = environ.get("XDG_CACHE_HOME", "").strip()
    if os.path.isabs(cache):
        return Path(cache)
    home = environ.get("HOME", "").strip()
    if not os.path.isabs(home):
        with contextlib.suppress(KeyError):  # a user id with no account (some containers)
            home = pwd.getpwuid(os.getuid()).pw_dir
    if not os.path.isabs(home):
        raise RendezvousError(
            f"no directory for rendezvous files: set XDG_RUNTIME_DIR or {RUNTIME_DIR_ENV}"
        )
    return Path(home) / ".cache"


def _check_private(info: os.stat_result, what: str, path: Path) -> None:
    if info.st_uid != os.getuid():
        raise RendezvousError(f"{what} {path} belongs to another user")
    if info.st_mode & 0o077:
        raise RendezvousError(
            f"{what} {path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            "it must be 0700 for a directory, 0600 for a file"
        )


def private_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The rendezvous directory, created 0700 if missing; :class:`RendezvousError` if it is
    not a directory of this user's that only this user can reach."""
    path = runtime_dir(environ)
    try:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=True)
        info = os.lstat(path)
    except OSError as exc:
        raise RendezvousError(f"cannot use {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise RendezvousError(f"{path} is not a directory (a symlink is refused)")
    _check_private(info, "directory", path)
    return path


def file_name(host: str, port: int) -> str:
    """The file name for ``host:port`` (characters other than letters, digits, ``.`` and
    ``-`` become ``_``)."""
    return f"{_UNSAFE_NAME.sub('_', host)}-{port}.json"


def write(
    host: str, port: int, rendezvous: Rendezvous, environ: Mapping[str, str] = os.environ
) -> None:
    """Publish ``rendezvous`` for ``host:port``, replacing any earlier file whole."""
    directory = private_dir(environ)
    final = directory / file_name(host, port)
    temporary = directory / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(rendezvous.to_json())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read(host: str, port: int, environ: Mapping[str, str] = os.environ) -> Rendezvous | None:
    """The rendezvous for ``host:port``, or ``None`` when there is none (or it is being
    replaced). :class:`RendezvousError` if the directory or the file cannot be trusted or
    the file is not a rendezvous at all."""
    path = private_dir(environ) / file_name(host, port)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RendezvousError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RendezvousError(f"{path} is not a regular file")
        _check_private(info, "file", path)
        data = source.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise RendezvousError(f"{path} is larger than {MAX_FILE} bytes")
    try:
        return Rendezvous.from_json(data)
    except ValueError as exc:
        raise RendezvousError(f"{path} is not a wslogging rendezvous file: {exc}") from None


def wait_for(
    host: str, port: int, timeout: float, environ: Mapping[str, str] = os.environ
) -> Rendezvous | None:
    """:func:`read`, polled for up to ``timeout`` seconds until there is a file of a live
    process: one that has just bound the port writes its file right after, and the file of
    a process killed outright stays behind."""
    deadline = time.monotonic() + timeout
    while True:
        found = read(host, port, environ)
        if found is not None and pid_exists(found.pid):
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie, not yet reaped, counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove(host: str, port: int, secret: str, environ: Mapping[str, str] = os.environ) -> None:
    """Delete the file for ``host:port`` if it is still the one with ``secret`` (another
    process may have taken the port over and written its own since). Never raises."""
    with contextlib.suppress(OSError):
        current = read(host, port, environ)
        if current is not None and secrets.compare_digest(current.secret, secret):
            os.unlink(private_dir(environ) / file_name(host, port))
