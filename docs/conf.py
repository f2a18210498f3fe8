"""Sphinx configuration of covjax's documentation (``make docs``).

The API reference is written at build time from ``covjax.__all__`` and the
docstrings (``_ext/api_pages.py``), and the notebooks are executed at build
time (myst-nb), so nothing rendered is stored in the repository.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sphinx.application import Sphinx

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # this checkout's covjax, not an installed copy
sys.path.insert(0, str(DOCS / "_ext"))

import covjax  # noqa: E402

project = "covjax"
author = "covjax authors"
copyright = "covjax authors"
release = covjax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "myst_nb",
    "api_pages",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "_ext"]
# COVJAX_DOCS_API_ONLY=1 builds the API reference alone (tests/test_docs_api.py).
if os.environ.get("COVJAX_DOCS_API_ONLY"):
    exclude_patterns += ["guides", "notebooks", "*.md"]
    root_doc = "api/index"

# Docstrings: Google style, signatures as written, members in source order.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autosummary_generate = False

# Markdown pages: $...$ maths in notebooks, heading anchors for links within a page.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# Notebooks run at every build (nothing stale is stored); a failing cell fails the build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_merge_streams = True

html_theme = "furo"
html_title = f"covjax {release}"
html_static_path: list[str] = []


def check_notebook_plots(app: Sphinx, exception: Exception | None) -> None:
    """Every executed notebook's page shows at least one plot (its figures became images)."""
    if exception is not None or app.builder.name != "html":
        return
    notebooks = sorted(name for name in app.env.found_docs if name.startswith("notebooks/"))
    without_plots = [
        name
        for name in notebooks
        if "<img" not in (Path(app.outdir) / f"{name}.html").read_text(encoding="utf-8")
    ]
    if without_plots:
        raise RuntimeError(f"docs: these notebooks rendered no plot: {without_plots}")


def setup(app: Sphinx) -> None:
    app.connect("build-finished", check_notebook_plots)
