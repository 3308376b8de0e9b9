"""The documentation's code: every Python example of README.rst and docs/ runs, every JSON
example parses, and the README stays a landing page that gives the two commands."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]

# Run before an example: the imports its page made earlier, every handler it builds on a free
# port instead of the one shown (3000 may be taken), and one serving ``handler`` for the
# examples that need one (broadcasting, rotating keys).
PRELUDE = """\
import json, logging, logging.config, pathlib, signal
import wslogging

handler = wslogging.WebSocketHandler(port=0, api_keys="test-key")
built = []
_init = wslogging.WebSocketHandler.__init__

def _init_on_a_free_port(self, *args, **options):
    options["port"] = 0
    _init(self, *args, **options)
    built.append(self)

wslogging.WebSocketHandler.__init__ = _init_on_a_free_port
"""
# Run after it: what each handler the example built did (``dictConfig`` closes the one above).
EPILOGUE = """
print(json.dumps([[h.role, h.records_dropped] for h in built]))
"""


def code_blocks(language: str) -> list[tuple[str, str]]:
    """Every ``.. code-block:: <language>`` of the pages, as (where, dedented code)."""
    blocks = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() != f".. code-block:: {language}":
                continue
            indent = len(line) - len(line.lstrip())
            body = []
            for text in lines[number + 1 :]:
                if text.strip() and len(text) - len(text.lstrip()) <= indent:
                    break
                body.append(text)
            code = textwrap.dedent("\n".join(body)).strip("\n")
            blocks.append((f"{page.relative_to(ROOT)}:{number + 1}", code + "\n"))
    return blocks


PYTHON = code_blocks("python")
JSON = code_blocks("json")


def test_the_pages_have_examples() -> None:
    """The search finds the examples (a broken search would pass every test below)."""
    assert len(PYTHON) >= 6
    assert len(JSON) >= 2


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[where for where, _ in PYTHON])
def test_each_python_example_runs(where: str, code: str) -> None:
    """An example runs as shown, and every handler it builds serves and drops nothing."""
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + code + EPILOGUE],
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT,
        cwd=ROOT,
    )

    assert (0, "") == (result.returncode, result.stderr if "Traceback" in result.stderr else "")
    handlers = json.loads(result.stdout.splitlines()[-1])
    assert [["serving", 0]] * len(handlers) == handlers


@pytest.mark.parametrize(("where", "code"), JSON, ids=[where for where, _ in JSON])
def test_each_json_example_parses(where: str, code: str) -> None:
    """A JSON example is JSON."""
    assert json.loads(code) is not None


def test_the_readme_is_a_landing_page_with_the_two_commands() -> None:
    """README.rst stays short and gives the run and test commands, on its first screen."""
    readme = (ROOT / "README.rst").read_text()
    first_screen = "\n".join(readme.splitlines()[:30])

    assert len(readme.encode()) <= 25_000
    assert "    pip install . && wslogging demo\n" in first_screen
    assert "    python -m pip install -e '.[test]' && python -m pytest\n" in first_screen
