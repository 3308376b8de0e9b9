"""Whether a process joins the wslogging server on its port, or says why not: pure.

One port, one app. A process that finds its port served by a wslogging server of its user
(see :mod:`wslogging._rendezvous`) forwards its records there only when the two belong
together, by the first rule that applies:

1. the server is a collector (``wslogging serve`` without Redis): it takes any program;
2. the server is this process's parent: it started this one (Flask's or Django's reloader,
   uvicorn's main process, a process manager), whatever the keys;
3. both have keys configured, and the same key set;
4. neither has a key configured (both made theirs up) and they have the same parent (workers
   of one process manager; pid 1 aside: orphans and daemons share it) or run the same
   program (``sys.argv[0]``, a file by its absolute path: the same script started twice).

Two made-up keys say nothing about belonging: the key made up for a port is kept for the
user (see :func:`wslogging._rendezvous.kept_key`), so that every unconfigured program on
that port has the same one, the demo and the app alike.

Otherwise it does not join: it says which process holds the port and why, and drops its
records (counted). Children forked from the serving process forward without asking (they
are the same program); so does a forwarder reconnecting to the server it joined, or to one
with the same keys as that one (one of its fellow workers, after a takeover).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._rendezvous import Rendezvous, keys_fingerprint


@dataclass(frozen=True)
class Joiner:
    """The process about to forward, as the rules see it."""

    pid: int
    parent: int
    program: str
    keys: tuple[str, ...]
    # Its key was made up: none is configured.
    generated: bool
    history: int


def refusal(server: Rendezvous, joiner: Joiner) -> str | None:
    """``None`` when ``joiner`` belongs with ``server`` (see the module docstring), else why
    not, as words that follow "a wslogging server" in a line to the user."""
    if server.collector or server.pid == joiner.parent:
        return None
    made_up = server.api_key is not None
    if joiner.generated and made_up:
        if (server.parent == joiner.parent and joiner.parent > 1) or (
            server.program is not None and server.program == joiner.program
        ):
            return None
        return "of another program (neither has an API key configured)"
    if server.keys is not None and server.keys == keys_fingerprint(joiner.keys):
        return None
    if joiner.generated:
        return "with API keys configured, where this program has none"
    if made_up:
        return "with a made-up API key, where this program has keys configured"
    return "with other API keys"


def differences(server: Rendezvous, joiner: Joiner) -> list[str]:
    """The options of ``joiner`` that differ from the server's in ways that matter (they take
    effect only when it serves the port itself): ``api_keys``, ``history``."""
    different = []
    # A made-up key was never printed: nobody uses it, so it cannot matter.
    if not joiner.generated and server.keys != keys_fingerprint(joiner.keys):
        different.append("api_keys")
    if server.history is not None and server.history != joiner.history:
        different.append("history")
    return different


def describe(pid: int, program: str | None) -> str:
    """``process 4242 (manage.py)``: a process as a line to the user names it (a module run
    with ``-m`` by its package: ``flask``, not ``__main__.py``)."""
    path = (program or "").rstrip("/")
    name = os.path.basename(path)
    if name == "__main__.py":
        name = os.path.basename(os.path.dirname(path)) or name
    return f"process {pid} ({name})" if name else f"process {pid}"
