"""Sphinx configuration for wslogging's documentation (``tox -e docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wslogging import __version__

project = "wslogging"
author = "the wslogging authors"
copyright = "2026, the wslogging authors"
version = release = __version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.doctest"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
exclude_patterns = ["_build"]
# Private modules are named in prose, not cross-referenced.
nitpicky = False

html_theme = "furo"
html_title = f"wslogging {version}"
html_static_path: list[str] = []
