"""Sphinx extension: every page's download menu offers the whole book as one PDF.

``make pdf`` builds the book with Jupyter Book's LaTeX builder into ``_build/latex/<name>.pdf`` and
copies that file to the root of the HTML output (``_build/html/<name>.pdf``), where ``<name>`` is the
target of ``latex.latex_documents.targetname`` in ``_config.yml`` (``elbo-book.tex`` gives
``elbo-book.pdf``: the only place the name is written). This extension adds, to the download menu of
sphinx-book-theme on every page that has one (the arrow in the page header), an entry "Book (.pdf)"
(icon ``fas fa-book``, label ``download-book-pdf-button``) with a relative URL to that file, just
before the theme's own ".pdf" entry, which prints the current page and is relabelled "Print page"
so that the two cannot be confused.

The link is written whether or not the PDF exists when the HTML is built (the PDF is built by a
separate, slower command, ``make pdf``, usually after the HTML): a link is not a resource the page
loads, so the HTML build and its checks do not depend on it.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from sphinx.application import Sphinx

DOWNLOAD_GROUP = "download-buttons"
PRINT_LABEL = "download-pdf-button"
BOOK_PDF_LABEL = "download-book-pdf-button"


def pdf_name(app: Sphinx) -> str:
    """The PDF's file name: the LaTeX target of the book (``latex_documents``) with ``.pdf``."""
    documents = app.config.latex_documents or []
    target = documents[0][1] if documents and len(documents[0]) > 1 else f"{app.config.project}.tex"
    return PurePosixPath(target).with_suffix(".pdf").name


def _add_book_pdf(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree) -> None:
    if app.builder.format != "html":
        return
    group = next(
        (b for b in context.get("header_buttons", []) if b.get("label") == DOWNLOAD_GROUP), None
    )
    if group is None:  # a page without a source (search, genindex), or use_download_button is off
        return
    buttons = group["buttons"]
    if any(b.get("label") == BOOK_PDF_LABEL for b in buttons):
        return
    entry = {
        "type": "link",
        "url": context["pathto"](pdf_name(app), 1),
        "text": "Book (.pdf)",
        "tooltip": "Download the whole book as one PDF",
        "icon": "fas fa-book",
        "label": BOOK_PDF_LABEL,
    }
    printing = next((i for i, b in enumerate(buttons) if b.get("label") == PRINT_LABEL), None)
    if printing is None:
        buttons.append(entry)
        return
    buttons[printing] = {**buttons[printing], "text": "Print page"}
    buttons.insert(printing, entry)


def setup(app: Sphinx) -> dict:
    # sphinx-book-theme builds the download menu at priority 501; this runs after it.
    app.connect("html-page-context", _add_book_pdf, priority=610)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
