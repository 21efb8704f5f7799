"""Every chapter page of the built book offers the chapter as ``.ipynb``, and that notebook reads like
the chapter in any Jupyter (_ext/notebook_downloads.py, _ext/notebook_convert.py).

Needs the built book:

    pytest tests/test_notebook_downloads.py --book-html=_build/html

(skipped without ``--book-html``; with it, a missing build is a failure). For every page of
``_toc.yml`` whose source is a MyST notebook (myst-nb's own test, as the build decides):

* the page's download menu (sphinx-book-theme's ``div.dropdown-download-buttons``) has an ``.ipynb``
  entry beside the ``.md`` one, with a relative link (so it works from ``file://``) to a file that
  exists in the built HTML;
* the file is a valid notebook (``nbformat.validate``) with no outputs, whose code cells are those of
  ``jupytext.read`` of the chapter's ``.md`` (source, tags and other metadata) and whose kernelspec is
  the chapter's;
* its first cell names the repository (``repository.url`` of ``_config.yml``) and says how to install
  ``vaelib`` from it; its second defines every TeX macro of ``mathjax3_config.tex.macros``, and every
  one of those macros that the notebook's math uses is defined there;
* no MyST is left in its Markdown cells (roles, directive fences, options, ``(label)=`` targets,
  ``{glue``);
* its numbers are the page's: the section numbers of its headings, the ``\\tag`` of its equations,
  the "Theorem 3.1"/"Exercise 3.2"/"Figure 3.1" of its bold headers, in order, equal the HTML page's
  section numbers, equation numbers and caption numbers; every glued value the page prints
  (``span.pasted-text``) is in the notebook's text, and every glued figure is embedded;
* in headless Chromium, the entry has a ``download`` attribute, and a click on it on the page opened
  from ``file://`` saves the notebook (the same bytes) instead of navigating to its JSON.

Pages that are plain Markdown get no ``.ipynb``. Every page links the repository in its header.
"""

from __future__ import annotations

import html
import html.parser
import posixpath
import re
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from book_toc import is_notebook, toc_docnames

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
REPO_BRANCH = CONFIG["repository"].get("branch", "main")
MACROS = CONFIG["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]

PAGES = toc_docnames()
NOTEBOOKS = [d for d in PAGES if is_notebook(d)]
PLAIN = [d for d in PAGES if (ROOT / f"{d}.md").is_file() and not is_notebook(d)]

# MyST that a stock Jupyter would show as literal text.
RAW_MYST = {
    "role": re.compile(r"\{[A-Za-z][\w:+.-]*\}`"),
    "directive fence": re.compile(r"^\s*(`{3,}|~{3,})\s*\{", re.M),
    "colon fence": re.compile(r"^\s*:{3,}\s*\{", re.M),
    "directive option": re.compile(r"^\s*:(label|class|name|tags|alt|width|figwidth|align|nonumber|dropdown)"
                                   r":(\s|$)", re.M),
    "target": re.compile(r"^\s*\([\w.:-]+\)=\s*$", re.M),
    "glue": re.compile(r"\{glue"),
}


class DownloadMenu(html.parser.HTMLParser):
    """Collects ``(text, href, attributes)`` of the links inside ``<div class="dropdown-download-buttons">``."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # > 0 while inside the menu's div: the number of open divs
        self.menus = 0
        self.links: list[list] = []
        self._in_link = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            if self.depth:
                self.depth += 1
            elif "dropdown-download-buttons" in (attrs.get("class") or "").split():
                self.depth, self.menus = 1, self.menus + 1
        elif tag == "a" and self.depth:
            self.links.append(["", attrs.get("href") or "", attrs])
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
    return parser.menus, {text: href for text, href, _ in parser.links}


def _resolve(html_dir: Path, docname: str, href: str) -> Path:
    parts = urllib.parse.urlsplit(href)
    assert not parts.scheme and not parts.netloc and not href.startswith("/"), (
        f"{docname}: download link {href!r} is not relative (it must work from file://)"
    )
    here = posixpath.dirname(docname)
    return html_dir / posixpath.normpath(posixpath.join(here, urllib.parse.unquote(parts.path)))


def notebook_of(html_dir: Path, docname: str) -> nbformat.NotebookNode:
    path = html_dir / "_sources" / f"{docname}.ipynb"
    assert path.is_file(), f"{docname}: {path} was not built"
    source = ROOT / f"{docname}.md"
    if source.stat().st_mtime > path.stat().st_mtime:
        pytest.fail(f"{docname}.md changed after {html_dir} was built: rebuild", pytrace=False)
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def markdown_of(nb) -> str:
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def without_code(text: str) -> str:
    """Markdown without fenced code blocks and inline code."""
    text = re.sub(r"(?ms)^\s*(`{3,}|~{3,}).*?^\s*\1", "", text)
    return re.sub(r"(`+).+?\1", "", text, flags=re.S)


def page_text(html_dir: Path, docname: str) -> str:
    """The page's article (the chapter's content), as HTML."""
    page = (html_dir / f"{docname}.html").read_text(encoding="utf-8")
    start = page.find('<article class="bd-article"')
    end = page.find("</article>", start)
    return page[start:end] if start >= 0 else page


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
    assert Path(f"{ipynb}.js").is_file(), f"{docname}: no {ipynb.name}.js (the file:// download reads it)"

    nb = notebook_of(html_dir, docname)
    nbformat.validate(nb)  # raises ValidationError on an invalid notebook
    assert nb.nbformat == 4, nb.nbformat

    source = jupytext.read(str(ROOT / f"{docname}.md"))
    assert [(c.source, c.metadata) for c in nb.cells if c.cell_type == "code"] == [
        (c.source, c.metadata) for c in source.cells if c.cell_type == "code"
    ], f"{docname}: the code cells of the .ipynb differ from the chapter's (source or tags)"
    assert nb.metadata.get("kernelspec") == source.metadata.get("kernelspec")
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code"), (
        f"{docname}: the downloaded notebook has outputs (it must hold inputs only)"
    )
    ids = [c.get("id") for c in nb.cells]
    assert len(set(ids)) == len(ids), f"{docname}: duplicate cell ids"


@pytest.mark.parametrize("docname", NOTEBOOKS)
def test_first_cell_says_where_to_get_vaelib(docname, html_dir):
    nb = notebook_of(html_dir, docname)
    first = nb.cells[0]
    assert first.cell_type == "markdown", f"{docname}: the first cell is a {first.cell_type} cell"
    assert REPO_URL in first.source, f"{docname}: the first cell does not name {REPO_URL}"
    assert f'pip install "vaelib[data] @ git+{REPO_URL}@{REPO_BRANCH}"' in first.source, first.source
    assert "requirements.txt" in first.source and "download.pytorch.org/whl/cpu" in first.source
    assert "The ELBO Book" in first.source
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if re.search(r"^\s*(from|import) myst_nb\b", code, re.M):
        assert "myst-nb" in first.source, f"{docname}: imports myst_nb, but the first cell does not say so"


@pytest.mark.parametrize("docname", NOTEBOOKS)
def test_macros_defined(docname, html_dir):
    nb = notebook_of(html_dir, docname)
    macro_cell = nb.cells[1].source
    defined = set(re.findall(r"\\newcommand\{\\([A-Za-z]+)\}", macro_cell))
    assert set(MACROS) <= defined, f"{docname}: the macro cell lacks {sorted(set(MACROS) - defined)}"
    kldiv = [m for m in re.findall(r"\\newcommand\{\\kldiv\}(\[\d\])", macro_cell)]
    assert kldiv == ["[2]"], f"{docname}: \\kldiv must take 2 arguments: {kldiv}"
    # No math before the macro cell, and every book macro the notebook uses is defined by it.
    assert "$" not in without_code(nb.cells[0].source)
    used = set(re.findall(r"\\([A-Za-z]+)", without_code(markdown_of(nb))))
    assert not (used & set(MACROS)) - defined


@pytest.mark.parametrize("docname", NOTEBOOKS)
def test_no_raw_myst(docname, html_dir):
    nb = notebook_of(html_dir, docname)
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"(`+)[^`]*?\{[^`]*?\1", "", cell.source)  # `{ref}` quoted as code is fine
        for name, pattern in RAW_MYST.items():
            for m in pattern.finditer(text):
                problems.append(f"cell {index}, {name}: {text[max(0, m.start() - 40):m.end() + 40]!r}")
        if "remove-cell" in cell.metadata.get("tags", []):
            problems.append(f"cell {index} is tagged remove-cell (the page does not show it)")
    assert not problems, f"{docname}: MyST left in the notebook:\n" + "\n".join(problems[:20])


def _html_numbers(article: str) -> dict[str, list[str]]:
    sections = re.findall(r'<h[1-6]><span class="section-number">([\d.]+?)\.? </span>', article)
    equations = re.findall(r'<span class="eqno">\(([^)<]+)\)', article)
    captions = []
    for kind, number in re.findall(r'<span class="caption-number">([A-Z][a-z]*\.?) ([\d.]+) </span>', article):
        captions.append(f"{'Figure' if kind == 'Fig.' else kind} {number}")
    return {"sections": sections, "equations": equations, "captions": captions}


def _notebook_numbers(nb) -> dict[str, list[str]]:
    text = markdown_of(nb)
    body = without_code(text)
    sections = re.findall(r"^#{1,6} ([\d.]+?)\.? \S", body, re.M)
    equations = re.findall(r"\\tag\{([^}]+)\}", body)
    captions = re.findall(r"^\*\*([A-Z][a-z]+ [\d.]+?)\.?[ *(]", body, re.M)
    return {"sections": sections, "equations": equations, "captions": captions}


@pytest.mark.parametrize("docname", NOTEBOOKS)
def test_numbers_are_the_pages(docname, html_dir):
    nb = notebook_of(html_dir, docname)
    article = page_text(html_dir, docname)
    in_html, in_nb = _html_numbers(article), _notebook_numbers(nb)
    for what in ("sections", "equations", "captions"):
        assert in_nb[what] == in_html[what], (
            f"{docname}: the notebook's {what} differ from the page's:\n"
            f"  page:     {in_html[what]}\n  notebook: {in_nb[what]}"
        )


def test_a_theorem_and_an_equation():
    """The numbers the issue names, on the chapter whose numbers the book's text quotes."""
    assert "book/ch3_elbo" in NOTEBOOKS


@pytest.mark.parametrize("docname", ["book/ch3_elbo"])
def test_chapter_3_reads_like_the_page(docname, html_dir):
    nb = notebook_of(html_dir, docname)
    text = markdown_of(nb)
    assert "**Theorem 3.1 (The ELBO identity).**" in text
    assert "\\tag{3.2}" in text and "Rearranging gives (3.2)." in text
    assert "Its name will be justified by Corollary 3.1." in text
    assert re.search(r"<details[^>]*><summary>Solution to Exercise 3\.2 \(Why a bound for every q\?\)</summary>", text)
    assert re.search(r"!\[[^\]]*\]\(attachment:fig-em\.png\)\n\n\*\*Figure 3\.3\.\*\* EM for pPCA", text)


@pytest.mark.parametrize("docname", NOTEBOOKS)
def test_glued_values_present(docname, html_dir):
    nb = notebook_of(html_dir, docname)
    article = page_text(html_dir, docname)
    text = re.sub(r"\\(.)", r"\1", markdown_of(nb))  # Markdown escapes off
    pasted = [html.unescape(v) for v in re.findall(r'<span class="pasted-text">([^<]*)</span>', article)]
    missing = [v for v in pasted if v not in text]
    assert not missing, f"{docname}: glued values of the page missing from the notebook: {missing[:10]}"
    # every figure of the page is embedded (glued figures are attachments of their cell)
    figures = len(re.findall(r'<span class="caption-number">(?:Fig\.|Figure) ', article))
    embedded = sum(len(c.get("attachments", {})) for c in nb.cells if c.cell_type == "markdown")
    assert embedded >= figures, f"{docname}: {figures} figures on the page, {embedded} in the notebook"


@pytest.mark.parametrize("docname", PLAIN)
def test_plain_page_offers_no_ipynb(docname, html_dir):
    page = html_dir / f"{docname}.html"
    assert page.is_file(), f"{docname} is in _toc.yml but {page} was not built"
    _, links = download_menu(page)
    assert ".ipynb" not in links, f"{docname} is plain Markdown but offers {links['.ipynb']}"
    assert not (html_dir / "_sources" / f"{docname}.ipynb").exists()


@pytest.mark.parametrize("docname", PAGES)
def test_page_links_the_repository(docname, html_dir):
    page = (html_dir / f"{docname}.html").read_text(encoding="utf-8")
    assert re.search(rf'<a href="{re.escape(REPO_URL)}/?"[^>]*\n?\s*class="[^"]*btn-source-repository-button',
                     page), f"{docname}: no link to {REPO_URL} in the page header"


def test_ipynb_downloads_from_file_url(html_dir, tmp_path):
    """The .ipynb entry, clicked on a page opened from file://, saves the notebook (a download, the
    same bytes as the built file) and leaves the page where it is."""
    from test_book_html import Chromium, _evaluate, _find_chromium, new_tab

    executable = _find_chromium()
    if executable is None:
        pytest.fail("Chromium not found: apt-get install -y chromium (or set CHROMIUM)", pytrace=False)
    docname = "book/ch3_elbo" if "book/ch3_elbo" in NOTEBOOKS else NOTEBOOKS[0]
    page = html_dir / f"{docname}.html"
    expected = (html_dir / "_sources" / f"{docname}.ipynb").read_bytes()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    profile = tempfile.mkdtemp(prefix="elbo-book-chromium-")
    chrome = Chromium(executable, profile, tmp_path / "chromium.log")
    try:
        chrome.send("Browser.setDownloadBehavior",
                    {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True})
        target, session = new_tab(chrome)
        start = len(chrome.events)
        chrome.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        chrome.wait_event("Page.loadEventFired", session, start, 60)
        link = _evaluate(chrome, session, """(() => {
            const a = document.querySelector('.dropdown-download-buttons a.btn-download-notebook-button');
            return a && {download: a.getAttribute('download'), target: a.getAttribute('target')}; })()""")
        assert link == {"download": Path(docname).name + ".ipynb", "target": None}, link
        _evaluate(chrome, session, "document.querySelector('a.btn-download-notebook-button').click()")
        deadline = time.monotonic() + 30
        saved = []
        while time.monotonic() < deadline:
            saved = [p for p in downloads.iterdir() if not p.name.endswith(".crdownload")]
            if saved:
                break
            time.sleep(0.2)
        assert [p.name for p in saved] == [Path(docname).name + ".ipynb"], (
            f"the click saved {saved} (from file://, a link without a working download opens the JSON)")
        assert saved[0].read_bytes() == expected
        url = _evaluate(chrome, session, "location.href")
        assert url == page.resolve().as_uri(), f"the page navigated to {url}"
        chrome.send("Target.closeTarget", {"targetId": target})
    finally:
        chrome.close()
        shutil.rmtree(profile, ignore_errors=True)
