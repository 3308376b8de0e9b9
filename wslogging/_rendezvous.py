"""Where worker processes of one user find the process serving a port: a private file per port.

The serving process writes ``<host>-<port>.json`` into a directory only its user can reach,
holding its pid, a random *ingest secret* (what a forwarder proves it knows, see
:mod:`wslogging._ingest`) and, when the API key was made up rather than configured, that key,
so that a process taking the port over keeps accepting it. It also says who serves and how,
for a process to decide whether it belongs with that server (see :mod:`wslogging._belonging`):
a fingerprint of the key set (a hash, never the keys), the history size, the server's parent
pid and program (``sys.argv[0]``), and whether it is a collector that takes any program of
its user. Other processes of the same user on the same host read it to forward their records;
nobody else can read or plant it.

A key made up for a fixed port is also kept in ``<host>-<port>.key`` (the key alone, on one
line), which outlives the process: the next run on that port makes up no new key but reuses it,
and ``wslogging tail`` / ``mcp`` of the same user read it (or the live server's rendezvous file)
to ask a loopback server without being given a key (see :func:`kept_key`, :func:`local_key`).

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
import dataclasses
import hashlib
import json
import os
import pwd
import re
import secrets
import stat
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._auth import generate_key, is_loopback_host

RUNTIME_DIR_ENV = "WSLOGGING_RUNTIME_DIR"
# A rendezvous file is a few hundred bytes; anything larger is not one of ours.
MAX_FILE = 4096
# The longest program name kept (a path).
MAX_PROGRAM = 1024
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9.-]")
# What a kept key may be: printable, and nothing that would split it (comma, white space).
_KEY = re.compile(r"[!-+\--~]{1,1024}")
# The names a client's loopback URL may use for a server bound to any of them.
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class RendezvousError(OSError):
    """The rendezvous directory or file cannot be trusted or used; the text says why."""


@dataclass(frozen=True)
class Rendezvous:
    """What the serving process tells the others."""

    pid: int
    secret: str
    # The key, when it was made up rather than configured.
    api_key: str | None = None
    # keys_fingerprint() of the keys served; the history size; the server's parent pid and
    # program; a collector (``wslogging serve`` without Redis) takes any program of its user.
    keys: str | None = None
    history: int | None = None
    parent: int | None = None
    program: str | None = None
    collector: bool = False

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Rendezvous:
        """Parse a file's bytes; ``ValueError`` names what is wrong. Fields it does not know
        (of a later version) are ignored; those it knows are checked."""
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        pid, secret = value.get("pid"), value.get("secret")
        if not isinstance(pid, int) or not _is_count(pid) or pid <= 0:
            raise ValueError("pid must be a positive integer")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ValueError("secret must be a string of 16 characters or more")
        for name in ("api_key", "keys", "program"):
            if value.get(name) is not None and not isinstance(value[name], str):
                raise ValueError(f"{name} must be a string or null")
        for name in ("history", "parent"):
            if value.get(name) is not None and not _is_count(value[name]):
                raise ValueError(f"{name} must be a non-negative integer or null")
        if not isinstance(value.get("collector", False), bool):
            raise ValueError("collector must be true or false")
        return cls(
            pid,
            secret,
            value.get("api_key"),
            keys=value.get("keys"),
            history=value.get("history"),
            parent=value.get("parent"),
            program=(value.get("program") or "")[:MAX_PROGRAM] or None,
            collector=value.get("collector", False),
        )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def keys_fingerprint(keys: Iterable[str]) -> str:
    """A fingerprint of a key set (order and repeats aside), to tell whether two processes
    serve the same keys without writing the keys down."""
    digest = hashlib.sha256(b"wslogging keys")
    for key in sorted(set(keys)):
        encoded = key.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return digest.hexdigest()[:32]


def this_program() -> str:
    """This process's program as the rendezvous names it: ``sys.argv[0]``, as an absolute
    path when it is a file (``manage.py``, ``/venv/bin/gunicorn``), else as it is (``-c``)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    if os.path.isfile(argv0):
        argv0 = os.path.abspath(argv0)
    return argv0[:MAX_PROGRAM]


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
    _write_private(private_dir(environ) / file_name(host, port), rendezvous.to_json())


def _read_private(path: Path) -> bytes | None:
    """The bytes of ``path``, a regular file of this user's that only this user can read, or
    ``None`` if there is none; :class:`RendezvousError` if it cannot be trusted."""
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
    return data


def _write_private(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` whole (0600: a temporary file, then a rename). With
    ``replace=False`` an existing file is left as it is; whether ``data`` was written."""
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)  # fails if there is one: never two keys for one port
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def read(host: str, port: int, environ: Mapping[str, str] = os.environ) -> Rendezvous | None:
    """The rendezvous for ``host:port``, or ``None`` when there is none (or it is being
    replaced). :class:`RendezvousError` if the directory or the file cannot be trusted or
    the file is not a rendezvous at all."""
    path = private_dir(environ) / file_name(host, port)
    data = _read_private(path)
    if data is None:
        return None
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


def key_file_name(host: str, port: int) -> str:
    """The name of the file that keeps the key made up for ``host:port``."""
    return f"{_UNSAFE_NAME.sub('_', host)}-{port}.key"


def _parse_key(data: bytes, path: Path) -> str:
    text = data.decode("utf-8", "replace").strip()
    if not _KEY.fullmatch(text):
        raise RendezvousError(f"{path} does not hold one API key (printable, no comma or space)")
    return text


def kept_key(
    host: str, port: int, environ: Mapping[str, str] = os.environ
) -> tuple[str, Path, bool]:
    """The key to serve ``host:port`` with when none is configured: the one kept for it by an
    earlier run, else a new one, kept now (0600) for the runs after. Returns the key, the
    file and whether the key was there already. Processes that start at once (gunicorn's
    workers) all get the same key: the first to write it wins, the others read it.
    :class:`RendezvousError` if the directory or the file cannot be trusted or written."""
    path = private_dir(environ) / key_file_name(host, port)
    for _ in range(3):  # another process may remove the file between our link and our read
        data = _read_private(path)
        if data is not None:
            return _parse_key(data, path), path, True
        key = generate_key()
        try:
            written = _write_private(path, f"{key}\n".encode(), replace=False)
        except OSError as exc:
            raise RendezvousError(f"cannot keep the key in {path}: {exc.strerror}") from None
        if written:
            return key, path, False
    raise RendezvousError(f"{path} keeps changing")


def local_key(
    host: str, port: int, environ: Mapping[str, str] = os.environ
) -> tuple[str, Path] | None:
    """For a client asking ``host:port``: the key a wslogging server of this user serves it
    with when that key was made up (the live server's rendezvous file, else the file that
    keeps it), and the file it was read from; ``None`` for a host that is not loopback, or
    when there is no such key. Never creates anything; :class:`RendezvousError` if a file or
    the directory is there but cannot be trusted."""
    if not is_loopback_host(host):
        return None
    directory = runtime_dir(environ)
    if not os.path.lexists(directory):
        return None
    directory = private_dir(environ)
    names = dict.fromkeys([host.strip("[]").lower(), *_LOOPBACK_HOSTS])
    for name in names:
        found = read(name, port, environ)
        if found is not None and found.api_key and pid_exists(found.pid):
            return found.api_key, directory / file_name(name, port)
    for name in names:
        path = directory / key_file_name(name, port)
        data = _read_private(path)
        if data is not None:
            return _parse_key(data, path), path
    return None


def made_up_key(host: str, port: int, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The key to serve ``host:port`` with when none is configured, and a note on where it
    is kept, for the one line that prints it (`` (kept in PATH)``, `` (reused from PATH)``).

    On a fixed loopback port the key is kept (see :func:`kept_key`) and reused by later
    runs, so the clients that have it keep working across restarts. With port 0 (a new port
    every run) it is new every run, as it is on any other host (where serving needs a
    configured key) and when the directory cannot be used (the note says why). Never raises.
    """
    if port == 0 or not is_loopback_host(host):
        return generate_key(), ""
    try:
        key, path, reused = kept_key(host, port, environ)
    except RendezvousError as exc:
        return generate_key(), f" (new for this run: {exc})"
    return key, f" ({'reused from' if reused else 'kept in'} {path})"
