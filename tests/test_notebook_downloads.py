"""Every chapter page of the built book offers the chapter as ``.ipynb`` (_ext/notebook_downloads.py).

Needs the built book:

    pytest tests/test_notebook_downloads.py --book-html=_build/html

(skipped without ``--book-html``; with it, a missing build is a failure). For every page of
``_toc.yml`` whose source is a MyST notebook (myst-nb's own test, as the build decides), it checks
that the page's download menu (sphinx-book-theme's ``div.dropdown-download-buttons``) has an
``.ipynb`` entry beside the ``.md`` one, with a relative link (so it works from ``file://``) to a
file that exists in the built HTML; that the file is a valid notebook (``nbformat.validate``) with no
outputs; and that its cells are those of ``jupytext.read`` of the chapter's ``.md`` (the conversion
``jupytext --to ipynb`` makes). Pages that are plain Markdown get no ``.ipynb``.
"""

from __future__ import annotations

import html.parser
import posixpath
import urllib.parse
from pathlib import Path

import jupytext
import nbformat
import pytest

from book_toc import is_notebook, toc_docnames

ROOT = Path(__file__).resolve().parents[1]




PAGES = toc_docnames()
NOTEBOOKS = [d for d in PAGES if is_notebook(d)]
PLAIN = [d for d in PAGES if (ROOT / f"{d}.md").is_file() and not is_notebook(d)]


class DownloadMenu(html.parser.HTMLParser):
    """Collects ``(text, href)`` of the links inside ``<div class="dropdown-download-buttons">``."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # > 0 while inside the menu's div: the number of open divs
        self.menus = 0
        self.links: list[list[str]] = []
        self._in_link = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            if self.depth:
                self.depth += 1
            elif "dropdown-download-buttons" in (attrs.get("class") or "").split():
                self.depth, self.menus = 1, self.menus + 1
        elif tag == "a" and self.depth:
            self.links.append(["", attrs.get("href") or ""])
            self._in_link = True

    def handle_endtag(self, tag):
        if tag == "div" and self.depth:
            self.depth -= 1
        elif tag == "a":
            self._in_link = False

    def handle_data(self, data):
        if self._in_link:
            self.links[-1][0] += data.strip()


def download_menu(page: Path) -> tuple[int, dict[str, str]]:
    parser = DownloadMenu()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.menus, {text: href for text, href in parser.links}


def _resolve(html_dir: Path, docname: str, href: str) -> Path:
    parts = urllib.parse.urlsplit(href)
    assert not parts.scheme and not parts.netloc and not href.startswith("/"), (
        f"{docname}: download link {href!r} is not relative (it must work from file://)"
    )
    here = posixpath.dirname(docname)
    return html_dir / posixpath.normpath(posixpath.join(here, urllib.parse.unquote(parts.path)))




def test_chapters_are_notebooks():
    assert NOTEBOOKS, "no page of _toc.yml is a MyST notebook"


@pytest.mark.parametrize("docname", NOTEBOOKS)
def test_chapter_offers_ipynb(docname, html_dir):
    page = html_dir / f"{docname}.html"
    assert page.is_file(), f"{docname} is in _toc.yml but {page} was not built"
    menus, links = download_menu(page)
    assert menus == 1, f"{docname}: {menus} download menus in the page header"
    assert ".ipynb" in links, f"{docname}: the download menu has no .ipynb entry: {links}"
    assert ".md" in links, f"{docname}: the download menu has no .md entry: {links}"
    ipynb = _resolve(html_dir, docname, links[".ipynb"])
    md = _resolve(html_dir, docname, links[".md"])
    assert ipynb.is_file(), f"{docname}: {links['.ipynb']} -> {ipynb} does not exist"
    assert md.is_file(), f"{docname}: {links['.md']} -> {md} does not exist"
    assert ipynb.parent == md.parent and ipynb.stem == md.stem, (ipynb, md)

    nb = nbformat.read(ipynb, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)  # raises ValidationError on an invalid notebook
    assert nb.nbformat == 4, nb.nbformat

    source_path = ROOT / f"{docname}.md"
    if source_path.stat().st_mtime > ipynb.stat().st_mtime:
        pytest.fail(f"{docname}.md changed after {html_dir} was built: rebuild", pytrace=False)
    source = jupytext.read(str(source_path))
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code == [c.source for c in source.cells if c.cell_type == "code"], (
        f"{docname}: the code cells of the .ipynb differ from the chapter's"
    )
    assert [(c.cell_type, c.source, c.metadata) for c in nb.cells] == [
        (c.cell_type, c.source, c.metadata) for c in source.cells
    ], f"{docname}: the cells of the .ipynb differ from jupytext.read of the chapter"
    assert nb.metadata.get("kernelspec") == source.metadata.get("kernelspec")
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code"), (
        f"{docname}: the downloaded notebook has outputs (it must hold inputs only)"
    )


@pytest.mark.parametrize("docname", PLAIN)
def test_plain_page_offers_no_ipynb(docname, html_dir):
    page = html_dir / f"{docname}.html"
    assert page.is_file(), f"{docname} is in _toc.yml but {page} was not built"
    _, links = download_menu(page)
    assert ".ipynb" not in links, f"{docname} is plain Markdown but offers {links['.ipynb']}"
    assert not (html_dir / "_sources" / f"{docname}.ipynb").exists()
