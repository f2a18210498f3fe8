"""The API reference, written from ``covjax.__all__`` when the build starts.

One page per implementation module that defines public symbols: the module's
docstring (a scheme's equations and references live there), then every public
symbol it defines, documented under its public name ``covjax.<name>``. A new
public symbol appears without editing the docs; one whose defining module
cannot be found stops the build with its name.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections import defaultdict
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer

import covjax

API_DIR = "api"


def defining_modules() -> dict[str, list[str]]:
    """Implementation module -> the public names it defines, in ``covjax.__all__`` order.

    A class or function names its module itself; a constant (a plain string)
    is attributed to the module ``covjax/__init__.py`` imports it from.
    """
    imported_from: dict[str, str] = {}
    for node in ast.parse(Path(covjax.__file__).read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imported_from[alias.asname or alias.name] = node.module
    modules: dict[str, list[str]] = defaultdict(list)
    for name in covjax.__all__:
        obj = getattr(covjax, name)
        module = getattr(obj, "__module__", None) if callable(obj) else None
        module = module or imported_from.get(name)
        if not module or not module.startswith("covjax."):
            raise RuntimeError(f"docs: cannot tell which module defines covjax.{name}")
        modules[module].append(name)
    return dict(modules)


def is_scheme_constructor(obj: object) -> bool:
    """A public function that returns a :class:`covjax.Weighting` (as annotated)."""
    annotation = getattr(obj, "__annotations__", {}).get("return")
    return inspect.isfunction(obj) and annotation in ("Weighting", covjax.Weighting)


def page_title(module: str) -> str:
    """The short name a module's docstring opens with ("CoV-Weighting: ..." -> "CoV-Weighting")."""
    first_line = (importlib.import_module(module).__doc__ or module).strip().splitlines()[0]
    title = re.split(r": | — | \(", first_line.replace("*", "").replace("`", ""))[0]
    return title.strip().rstrip(".")


def constant_comment(module: str, name: str) -> list[str]:
    """The ``#:`` comment above a module-level constant, as docstring lines."""
    comments = ModuleAnalyzer.for_module(module).find_attr_docs()
    return list(comments.get(("", name), []))


def symbol_rst(module: str, name: str) -> str:
    obj = getattr(covjax, name)
    if inspect.isclass(obj):
        # NamedTuple and dataclass fields are listed by the docstring's Attributes
        # section; autodoc's members would list them a second time.
        return f".. autoclass:: {name}\n   :show-inheritance:\n"
    if callable(obj):
        return f".. autofunction:: {name}\n"
    body = "\n".join(f"   {line}" for line in constant_comment(module, name))
    return f".. py:data:: {name}\n   :value: {obj!r}\n\n{body}\n"


def module_page(module: str, names: list[str]) -> str:
    title = page_title(module)
    return "\n".join(
        [
            title,
            "=" * len(title),
            "",
            f".. automodule:: {module}",
            "   :no-index:",
            "",
            ".. currentmodule:: covjax",
            "",
            *(symbol_rst(module, name) for name in names),
        ]
    )


def index_page(pages: dict[str, tuple[str, str, list[str]]]) -> str:
    def section(heading: str, page_names: list[str]) -> list[str]:
        rows = [name for page in page_names for name in pages[page][2]]
        return [
            heading,
            "-" * len(heading),
            "",
            ".. autosummary::",
            "   :nosignatures:",
            "",
            *(f"   {name}" for name in rows if callable(getattr(covjax, name))),
            "",
            ".. toctree::",
            "   :maxdepth: 1",
            "",
            *(f"   {page}" for page in page_names),
            "",
        ]

    schemes = sorted(
        (
            page
            for page, (_, _, names) in pages.items()
            if any(is_scheme_constructor(getattr(covjax, name)) for name in names)
        ),
        key=lambda page: pages[page][1].lower(),
    )
    core = [p for p in pages if p not in schemes]
    return "\n".join(
        [
            "API reference",
            "=============",
            "",
            "Every public symbol of ``covjax`` (``covjax.__all__``), generated from the",
            "docstrings. Each scheme's page opens with its equations and references.",
            "",
            ".. currentmodule:: covjax",
            "",
            *section("Training-step API", core),
            *section("Weighting schemes", schemes),
        ]
    )


def write_api_pages(app: Sphinx) -> None:
    out = Path(app.srcdir) / API_DIR
    out.mkdir(exist_ok=True)
    pages = {
        module.rsplit(".", 1)[-1]: (module, page_title(module), names)
        for module, names in defining_modules().items()
    }
    expected = {f"{page}.rst" for page in pages} | {"index.rst"}
    for stale in out.glob("*.rst"):
        if stale.name not in expected:
            stale.unlink()
    texts = {
        f"{page}.rst": module_page(module, names) for page, (module, _, names) in pages.items()
    }
    texts["index.rst"] = index_page(pages)
    for filename, text in texts.items():
        path = out / filename
        if not path.exists() or path.read_text() != text:  # unchanged pages stay cached
            path.write_text(text)


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", write_api_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
