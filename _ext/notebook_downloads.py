"""Sphinx extension: every chapter page offers its notebook as ``.ipynb`` in the download menu.

The chapters are MyST Markdown notebooks (``book/*.md`` with a Jupytext header). sphinx-book-theme's
download menu (the arrow in the page header) lists the page's source file (``.md``) and "print to
PDF"; it lists an ``.ipynb`` only for pages written as ``.ipynb`` (or with a launch button
configured, when it copies the *executed* notebook). This extension adds, for every page that myst-nb
reads as a notebook:

* ``_sources/<docname>.ipynb`` in the HTML output, beside the ``_sources/<docname>.md`` that Sphinx
  copies there: the chapter converted by Jupytext exactly as ``jupytext --to ipynb book/<page>.md``
  converts it (inputs only, no outputs), except that cell ids are derived from the page name and
  the cell's position instead of drawn at random, so that two builds write the same file;
* an entry ".ipynb" (icon ``fas fa-code``, label ``download-notebook-button``, as the theme's own)
  at the top of that page's download menu, with a relative URL, so it works from ``file://``.

Pages that are plain Markdown (no notebook header) get neither. Nothing is written into the source
tree: ``book/`` never holds an ``.ipynb`` (the build excludes them and git ignores them).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)

#: The label of sphinx-book-theme's download dropdown and of its notebook entry.
DOWNLOAD_GROUP = "download-buttons"
NOTEBOOK_LABEL = "download-notebook-button"


def is_markdown_notebook(path: Path) -> bool:
    """Whether myst-nb reads ``path`` as a notebook (a ``.md`` file with a notebook header)."""
    from myst_nb.core.read import is_myst_markdown_notebook

    if path.suffix != ".md" or not path.is_file():
        return False
    return is_myst_markdown_notebook(path.read_text(encoding="utf-8"))


def notebook_json(path: Path, docname: str) -> str:
    """The ``.ipynb`` text of a MyST Markdown notebook, as ``jupytext --to ipynb`` writes it."""
    import jupytext

    nb = jupytext.read(str(path))
    for index, cell in enumerate(nb.cells):
        if "id" in cell:  # nbformat >= 4.5: random ids would make every build differ
            cell["id"] = hashlib.sha1(f"{docname}:{index}".encode()).hexdigest()[:8]
    return jupytext.writes(nb, fmt="ipynb")


def _add_notebook_download(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree
) -> None:
    if doctree is None or not app.builder.format == "html" or pagename not in app.env.all_docs:
        return
    source = Path(app.env.doc2path(pagename))
    if not is_markdown_notebook(source):
        return
    group = next(
        (b for b in context.get("header_buttons", []) if b.get("label") == DOWNLOAD_GROUP), None
    )
    if group is None:  # not sphinx-book-theme, or use_download_button is off
        return

    relpath = f"{pagename}.ipynb"
    target = Path(app.outdir, "_sources", relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(notebook_json(source, pagename), encoding="utf-8")

    buttons = group["buttons"]
    if any(b.get("label") == NOTEBOOK_LABEL for b in buttons):
        return  # the theme already lists it (a launch button is configured): same URL, our file
    buttons.insert(
        0,
        {
            "type": "link",
            "url": f"{context['pathto']('_sources', 1)}/{relpath}",
            "text": ".ipynb",
            "tooltip": "Download notebook file",
            "icon": "fas fa-code",
            "label": NOTEBOOK_LABEL,
        },
    )


def setup(app: Sphinx) -> dict:
    # sphinx-book-theme builds the download menu at priority 501; this runs after it.
    app.connect("html-page-context", _add_notebook_download, priority=600)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
