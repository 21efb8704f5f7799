"""One search box per page: the built pages' header and sidebar (static HTML, no browser).

Needs the built book:

    pytest tests/test_page_header.py --book-html=_build/html

(skipped without ``--book-html``; with it, a missing build is a failure).

What counts as a search box (pydata-sphinx-theme's markup): any ``button.search-button__button``
(every button that opens the search dialog: the labelled field ``.search-button-field``
"Search Ctrl+K" and the magnifier icon ``.search-button``), any ``input[type=search]`` and any
``form.bd-search``. Where they are looked for:

* ``header#pst-header``, the theme's top navbar: **none**. pydata-sphinx-theme 0.17 puts a second
  "Search Ctrl+K" field there unless ``navbar_persistent`` is set (``_config.yml`` sets it to ``[]``);
  it sat above the sidebar's own field.
* ``#pst-primary-sidebar``, the left sidebar: **exactly one**, the field ``.search-button-field``.
* ``.bd-header-article``, the page header with the download, full-screen and theme buttons: **at most
  one**, the icon ``.search-button``.

The field and the icon are the two layouts of one search box: sphinx-book-theme's stylesheet shows
the field from 992 px wide (where the sidebar is shown) and hides the icon there, and below 992 px
(the sidebar is a drawer) shows the icon instead; the test checks those rules in the built
``sphinx-book-theme.css``, so exactly one search box is visible at any width. Not counted: the
search dialog itself (``dialog#pst-search-dialog``, the overlay both open) and the search page's own
search form in its content.
"""

from __future__ import annotations

import html.parser
import re
from pathlib import Path

import pytest

from book_toc import toc_docnames

ROOT = Path(__file__).resolve().parents[1]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}



PAGES = [*toc_docnames(), "search"]

# The regions of a page, as (name, test on one ancestor element (tag, id, classes)).
REGIONS = {
    "dialog": lambda tag, id_, cls: tag == "dialog" and id_ == "pst-search-dialog",
    "top navbar": lambda tag, id_, cls: tag == "header" and id_ == "pst-header",
    "article header": lambda tag, id_, cls: "bd-header-article" in cls,
    "sidebar": lambda tag, id_, cls: id_ == "pst-primary-sidebar",
}


class SearchControls(html.parser.HTMLParser):
    """Every search control of a page, with the region (see REGIONS) it is in, or "content"."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str, set[str]]] = []
        self.found: list[tuple[str, str]] = []  # (region, description)

    def _region(self) -> str:
        for name, test in REGIONS.items():
            if any(test(*element) for element in self.stack):
                return name
        return "content"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        if (
            (tag == "button" and "search-button__button" in classes)
            or (tag == "input" and attrs.get("type") == "search")
            or (tag == "form" and "bd-search" in classes)
        ):
            kind = next((c for c in ("search-button-field", "search-button", "bd-search")
                         if c in classes), f"{tag}[type={attrs.get('type')}]")
            self.found.append((self._region(), kind))
        if tag not in VOID:
            self.stack.append((tag, attrs.get("id") or "", classes))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):  # tolerate unclosed elements (<p>, <li>)
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return


def search_controls(page: Path) -> dict[str, list[str]]:
    parser = SearchControls()
    parser.feed(page.read_text(encoding="utf-8"))
    regions: dict[str, list[str]] = {name: [] for name in [*REGIONS, "content"]}
    for region, kind in parser.found:
        regions[region].append(kind)
    return regions




@pytest.mark.parametrize("docname", PAGES)
def test_one_search_box(docname, html_dir):
    page = html_dir / f"{docname}.html"
    assert page.is_file(), f"{page} was not built"
    found = search_controls(page)
    assert found["top navbar"] == [], (
        f"{docname}: a search box in the theme's top navbar (set html_theme_options.navbar_persistent "
        f"to [] in _config.yml): {found['top navbar']}"
    )
    assert found["sidebar"] == ["search-button-field"], f"{docname}: sidebar: {found['sidebar']}"
    assert found["article header"] in ([], ["search-button"]), (
        f"{docname}: page header: {found['article header']}"
    )


def test_field_and_icon_are_one_box_per_width(html_dir):
    """The sidebar field shows only >= 992 px, the header icon only below: never both, never none."""
    css = (html_dir / "_static" / "styles" / "sphinx-book-theme.css").read_text(encoding="utf-8")
    css = re.sub(r"\s+", "", css)
    assert re.search(r"(?<![\w-])\.search-button-field\{display:none[;}]", css), (
        "the theme no longer hides the sidebar search field on narrow screens"
    )
    blocks = re.findall(r"@media\(min-width:992px\)\{((?:[^{}]*\{[^{}]*\})*)\}", css)
    assert any(
        re.search(r"(?<![\w-])\.search-button\{display:none!important", b)
        and re.search(r"(?<![\w-])\.search-button-field\{display:flex", b)
        for b in blocks
    ), "the theme no longer swaps the header search icon for the sidebar field at 992 px"
