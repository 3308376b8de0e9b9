"""The rendezvous directory and files: private to their user, written whole, read untrusting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TIMEOUT

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


def test_who_serves_round_trips_and_unknown_fields_are_ignored(env: dict[str, str]) -> None:
    """The fields that say who serves and how read back as written; a field of a later
    version is ignored."""
    written = Rendezvous(
        os.getpid(),
        "s" * 43,
        keys=_rendezvous.keys_fingerprint(["a", "b"]),
        history=500,
        parent=os.getppid(),
        program="/srv/app.py",
        collector=True,
    )
    _rendezvous.write(HOST, PORT, written, env)
    assert written == _rendezvous.read(HOST, PORT, env)
    path = Path(env[_rendezvous.RUNTIME_DIR_ENV]) / "127.0.0.1-3000.json"
    path.write_bytes(b'{"pid": 7, "secret": "ssssssssssssssssssss", "later": [1]}')
    assert Rendezvous(7, "s" * 20) == _rendezvous.read(HOST, PORT, env)


def test_keys_fingerprint() -> None:
    """The same set in any order is one fingerprint; another set is another; no key shows."""
    fingerprint = _rendezvous.keys_fingerprint(["key-one", "key-two"])
    assert fingerprint == _rendezvous.keys_fingerprint(["key-two", "key-one", "key-two"])
    assert fingerprint != _rendezvous.keys_fingerprint(["key-one"])
    assert fingerprint != _rendezvous.keys_fingerprint(["key-one,key-two"])
    assert "key" not in fingerprint


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
        (b'{"pid": 1, "secret": "ssssssssssssssssssss", "keys": []}', "keys must be"),
        (b'{"pid": 1, "secret": "ssssssssssssssssssss", "history": -1}', "history must be"),
        (b'{"pid": 1, "secret": "ssssssssssssssssssss", "parent": true}', "parent must be"),
        (b'{"pid": 1, "secret": "ssssssssssssssssssss", "collector": 1}', "collector must be"),
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


def test_a_made_up_key_is_kept_and_reused(env: dict[str, str]) -> None:
    """The first run makes the key up and keeps it (0600); the next run gets it back."""
    key, path, reused = _rendezvous.kept_key(HOST, PORT, env)
    again = _rendezvous.kept_key(HOST, PORT, env)
    mode = path.stat().st_mode & 0o777
    assert (False, 0o600, f"{key}\n", (key, path, True)) == (
        reused,
        mode,
        path.read_text(),
        again,
    )
    assert Path(env[_rendezvous.RUNTIME_DIR_ENV]) / "127.0.0.1-3000.key" == path


def test_processes_starting_at_once_get_one_key(env: dict[str, str]) -> None:
    """Workers started together (gunicorn without --preload) all serve with the same key:
    the first to keep one wins, the others read it."""
    code = (
        "import sys; from wslogging import _rendezvous;"
        "print(_rendezvous.kept_key('127.0.0.1', 3000)[0])"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ | env
        )
        for _ in range(6)
    ]
    keys = {process.communicate(timeout=TIMEOUT)[0].strip() for process in processes}
    assert [_rendezvous.kept_key(HOST, PORT, env)[0]] == list(keys)


@pytest.mark.parametrize("problem", ["mode", "owner", "symlink", "content"])
def test_a_key_file_that_is_not_private_is_never_used(
    env: dict[str, str], tmp_path: Path, problem: str
) -> None:
    """A key file others could read, or plant, is refused; made_up_key then serves with a
    new key for this run and says why, and a client gets no key from it."""
    _, path, _ = _rendezvous.kept_key(HOST, PORT, env)
    if problem == "mode":
        path.chmod(0o640)
    elif problem == "owner":
        if os.getuid() != 0:
            pytest.skip("only root can give a file to another user")
        os.chown(path, 65534, 65534)
    elif problem == "symlink":
        target = tmp_path / "planted"
        target.write_text("planted\n")
        target.chmod(0o600)
        path.unlink()
        path.symlink_to(target)
    else:
        path.write_text("two, keys\n")
    with pytest.raises(RendezvousError):
        _rendezvous.kept_key(HOST, PORT, env)
    key, note = _rendezvous.made_up_key(HOST, PORT, env)
    assert (True, True, False) == (
        note.startswith(" (new for this run: "),
        str(path) in note,
        key in (path.read_text(), "planted"),
    )
    with pytest.raises(RendezvousError):
        _rendezvous.local_key("localhost", PORT, env)


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 0), ("0.0.0.0", 3000)])
def test_no_key_is_kept_for_port_0_or_beyond_loopback(
    env: dict[str, str], host: str, port: int
) -> None:
    """Port 0 is a new port every run, and off loopback a key must be configured: nothing
    is kept, and the key is new each time."""
    first, second = (
        _rendezvous.made_up_key(host, port, env),
        _rendezvous.made_up_key(host, port, env),
    )
    assert ("", "", False) == (first[1], second[1], first[0] == second[0])
    assert not Path(env[_rendezvous.RUNTIME_DIR_ENV]).exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]"])
def test_a_client_finds_the_key_kept_for_a_local_port(env: dict[str, str], host: str) -> None:
    """A client of a loopback URL finds the key kept for that port under whichever loopback
    name the server was bound to."""
    key, path, _ = _rendezvous.kept_key("127.0.0.1", PORT, env)
    assert (key, path) == _rendezvous.local_key(host.strip("[]"), PORT, env)
    assert _rendezvous.local_key(host.strip("[]"), PORT + 1, env) is None


def test_a_live_servers_made_up_key_comes_first(env: dict[str, str]) -> None:
    """The key a running server made up (in its rendezvous file: port 0, or a key file
    replaced since) wins over a kept one; a dead server's does not count."""
    kept = _rendezvous.kept_key(HOST, PORT, env)
    _rendezvous.write(HOST, PORT, Rendezvous(os.getpid(), "s" * 43, "live-key"), env)
    directory = Path(env[_rendezvous.RUNTIME_DIR_ENV])
    expected = ("live-key", directory / "127.0.0.1-3000.json")
    assert expected == _rendezvous.local_key(HOST, PORT, env)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _rendezvous.write(HOST, PORT, Rendezvous(gone.pid, "s" * 43, "live-key"), env)
    assert kept[:2] == _rendezvous.local_key(HOST, PORT, env)


def test_a_remote_url_never_gets_a_kept_key(env: dict[str, str]) -> None:
    """Only a loopback URL is given a kept key, whatever files there are."""
    for host in ("192.0.2.7", "logs.example.com"):
        directory = _rendezvous.private_dir(env)
        path = directory / _rendezvous.key_file_name(host, PORT)
        path.write_text("secret\n")
        path.chmod(0o600)
        assert _rendezvous.local_key(host, PORT, env) is None


def test_a_client_creates_nothing(env: dict[str, str]) -> None:
    """Looking for a key where no server ever ran creates no directory."""
    assert _rendezvous.local_key(HOST, PORT, env) is None
    assert not Path(env[_rendezvous.RUNTIME_DIR_ENV]).exists()
