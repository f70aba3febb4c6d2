"""Sphinx configuration for avalanche-neuromod."""

import os
import sys
import tempfile

sys.path.insert(0, os.path.abspath(".."))
# Avalanche writes ~/.avalanche/config.json on import; keep docs builds clean.
os.environ.setdefault("HOME", tempfile.mkdtemp())

project = "avalanche-neuromod"
author = "avalanche-neuromod developers"
copyright = "2026, avalanche-neuromod developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Avalanche's own classes carry docstrings in their own conventions.
suppress_warnings = ["myst.header"]
nitpicky = False
html_theme = "furo"
html_title = "avalanche-neuromod"
