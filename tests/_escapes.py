"""Log text that tries to drive a terminal or a page: what ``tail`` and the viewer must defuse.

Each entry is ``(name, text)``; the text sits between two plain words so that a test can see
what is left of it.
"""

from __future__ import annotations

ESCAPES = [
    ("clear screen", "\x1b[2J"),
    ("cursor up", "\x1b[3A"),
    ("OSC 0 title", "\x1b]0;owned\x07"),
    ("OSC 8 hyperlink", "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"),
    ("OSC 52 clipboard", "\x1b]52;c;cm0gLXJmIH4=\x07"),
    ("bell", "\x07"),
    ("carriage return", "\rforged"),
    ("C1 CSI", "\x9b2J"),
    ("right-to-left override", "\u202e"),
    ("left-to-right mark", "\u200e"),
    ("right-to-left mark", "\u200f"),
]
# Colour and bold: the SGR sequences that werkzeug and uvicorn write into their messages.
COLOURED = "\x1b[31mGET /boom HTTP/1.1\x1b[0m \x1b[1;36mbold cyan\x1b[0m plain"
