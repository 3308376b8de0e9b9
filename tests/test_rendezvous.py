"""The rendezvous directory and files: private to their user, written whole, read untrusting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wslogging import _rendezvous
from wslogging._rendezvous import Rendezvous, RendezvousError

HOST, PORT = "127.0.0.1", 3000


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment naming a runtime directory not created yet."""
    return {_rendezvous.RUNTIME_DIR_ENV: str(tmp_path / "run")}


def test_round_trip_in_a_new_private_dir(env: dict[str, str]) -> None:
    """The directory is made 0700, the file 0600, and reads back as written."""
    written = Rendezvous(os.getpid(), "s" * 43, "key")
    _rendezvous.write(HOST, PORT, written, env)
    directory = Path(env[_rendezvous.RUNTIME_DIR_ENV])
    modes = [
        directory.stat().st_mode & 0o777,
        (directory / "127.0.0.1-3000.json").stat().st_mode & 0o777,
    ]
    assert ([0o700, 0o600], written) == (modes, _rendezvous.read(HOST, PORT, env))


def test_missing_file_is_none(env: dict[str, str]) -> None:
    """No file: nobody serves (or has published yet)."""
    assert _rendezvous.read(HOST, PORT, env) is None


def test_dir_open_to_others_is_refused(env: dict[str, str]) -> None:
    """A directory others can reach is refused, named, and left as it is."""
    directory = Path(env[_rendezvous.RUNTIME_DIR_ENV])
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with pytest.raises(RendezvousError, match="open to other users"):
        _rendezvous.write(HOST, PORT, Rendezvous(1, "s" * 43), env)
    assert ([], 0o755) == (list(directory.iterdir()), directory.stat().st_mode & 0o777)


@pytest.mark.parametrize(
    ("variables", "cache"),
    [
        ({"XDG_CACHE_HOME": "{tmp}/cache", "HOME": "{tmp}/home"}, "{tmp}/cache"),
        ({"XDG_CACHE_HOME": "relative", "HOME": "{tmp}/home"}, "{tmp}/home/.cache"),
        ({"HOME": "{tmp}/home", "XDG_RUNTIME_DIR": "{tmp}/missing"}, "{tmp}/home/.cache"),
    ],
)
def test_without_a_runtime_dir_the_cache_home_is_used(
    tmp_path: Path, variables: dict[str, str], cache: str
) -> None:
    """With no (usable) XDG_RUNTIME_DIR the directory is a private one under the user's
    cache home, one per host, never a name in the shared temporary directory that another
    user could create first."""
    env = {name: value.format(tmp=tmp_path) for name, value in variables.items()}
    _rendezvous.write(HOST, PORT, Rendezvous(1, "s" * 43), env)
    directory = _rendezvous.private_dir(env)
    expected = Path(cache.format(tmp=tmp_path)) / "wslogging" / os.uname().nodename
    assert (expected, 0o700, 1) == (
        directory,
        directory.stat().st_mode & 0o777,
        getattr(_rendezvous.read(HOST, PORT, env), "pid", None),
    )


@pytest.mark.parametrize("taken_by", ["mode", "owner"])
def test_a_dir_created_first_by_someone_else_is_refused(tmp_path: Path, taken_by: str) -> None:
    """A rendezvous directory under the cache home that another user made (or made
    reachable to others) before this user's first process is refused, not used."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    directory = _rendezvous.runtime_dir(env)
    directory.mkdir(mode=0o700, parents=True)
    if taken_by == "mode":
        directory.chmod(0o777)
    elif os.getuid() == 0:
        os.chown(directory, 65534, 65534)  # nobody's
    else:
        pytest.skip("only root can give a directory to another user")
    problem = "open to other users" if taken_by == "mode" else "belongs to another user"
    with pytest.raises(RendezvousError, match=problem):
        _rendezvous.write(HOST, PORT, Rendezvous(1, "s" * 43), env)
    assert [] == list(directory.iterdir())


@pytest.mark.parametrize("where", ["/proc/wslogging", "{tmp}/file/wslogging"])
def test_a_dir_that_cannot_be_made_is_refused(tmp_path: Path, where: str) -> None:
    """A directory that cannot be made (/proc takes none, not even root's; a file is no
    parent) is a RendezvousError naming it, which turns forwarding off, never another
    error."""
    (tmp_path / "file").write_text("")
    env = {_rendezvous.RUNTIME_DIR_ENV: where.format(tmp=tmp_path)}
    with pytest.raises(RendezvousError, match="cannot use"):
        _rendezvous.read(HOST, PORT, env)


def test_symlinked_dir_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    """A symlink in place of the directory is refused, even to a private directory."""
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    Path(env[_rendezvous.RUNTIME_DIR_ENV]).symlink_to(target)
    with pytest.raises(RendezvousError, match="not a directory"):
        _rendezvous.read(HOST, PORT, env)


def test_file_open_to_others_is_refused(env: dict[str, str]) -> None:
    """A file others could have read (or written) is not trusted."""
    _rendezvous.write(HOST, PORT, Rendezvous(1, "s" * 43), env)
    path = Path(env[_rendezvous.RUNTIME_DIR_ENV]) / "127.0.0.1-3000.json"
    path.chmod(0o644)
    with pytest.raises(RendezvousError, match="open to other users"):
        _rendezvous.read(HOST, PORT, env)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not json", "Expecting value"),
        (b"[]", "not a JSON object"),
        (b'{"pid": "1", "secret": "ssssssssssssssssssss"}', "pid must be"),
        (b'{"pid": 1, "secret": "short"}', "secret must be"),
        (b'{"pid": 1, "secret": "ssssssssssssssssssss", "api_key": 5}', "api_key must be"),
        (b" " * 5000, "larger than"),
    ],
)
def test_malformed_file_is_refused(env: dict[str, str], content: bytes, problem: str) -> None:
    """A file that is not a rendezvous says what is wrong with it."""
    _rendezvous.private_dir(env)
    path = Path(env[_rendezvous.RUNTIME_DIR_ENV]) / "127.0.0.1-3000.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(RendezvousError, match=problem):
        _rendezvous.read(HOST, PORT, env)


def test_remove_only_if_still_ours(env: dict[str, str]) -> None:
    """A process removes its file, never one another process wrote since."""
    _rendezvous.write(HOST, PORT, Rendezvous(1, "theirs" * 8), env)
    _rendezvous.remove(HOST, PORT, "ours" * 8, env)
    assert _rendezvous.read(HOST, PORT, env) is not None
    _rendezvous.remove(HOST, PORT, "theirs" * 8, env)
    assert _rendezvous.read(HOST, PORT, env) is None


def test_wait_for_ignores_a_dead_process(env: dict[str, str]) -> None:
    """The file of a process that no longer exists (killed outright) is not a server."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: its pid names no process
    _rendezvous.write(HOST, PORT, Rendezvous(gone.pid, "s" * 43), env)
    assert _rendezvous.wait_for(HOST, PORT, 0.05, env) is None
    _rendezvous.write(HOST, PORT, Rendezvous(os.getpid(), "s" * 43), env)
    assert os.getpid() == getattr(_rendezvous.wait_for(HOST, PORT, 0.05, env), "pid", None)


@pytest.mark.parametrize(
    ("host", "name"), [("127.0.0.1", "127.0.0.1-80.json"), ("::1", "__1-80.json")]
)
def test_file_name(host: str, name: str) -> None:
    """Host characters a file name should not hold become ``_``."""
    assert name == _rendezvous.file_name(host, 80)
