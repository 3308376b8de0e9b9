"""wslogging's own lines on stderr: whole, one per event."""

from __future__ import annotations

import io

import pytest

from wslogging._stderr import say


class Writes(io.StringIO):
    """A stderr that records each write call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_a_line_is_one_write_with_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    """One write call per line, newline included, so that another process's line cannot
    come between the text and its newline; a newline inside becomes a space."""
    stderr = Writes()
    monkeypatch.setattr("sys.stderr", stderr)
    say("two\nlines  in one")
    assert ["wslogging: two lines in one\n"] == stderr.calls


@pytest.mark.parametrize("stderr", [None, io.StringIO()])
def test_no_usable_stderr_is_no_error(monkeypatch: pytest.MonkeyPatch, stderr: object) -> None:
    """No stderr (``pythonw``), or a closed one: the line is lost, never an exception."""
    if isinstance(stderr, io.StringIO):
        stderr.close()
    monkeypatch.setattr("sys.stderr", stderr)
    say("nobody hears this")
