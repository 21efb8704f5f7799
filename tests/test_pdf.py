"""The whole book as one PDF (``make pdf``), read back as text with poppler's ``pdftotext``.

What a reader of the PDF must find: every chapter and appendix of ``_toc.yml`` by its title (but the
pages ``latex_leave_out`` leaves out), numbered theorems and equations ("Theorem 3.1", "(3.1)"), every
exercise's solution printed (not a collapsed "Click to show" bar), every figure as an image with its
numbered caption (a glued figure whose image is missing prints as the text "<Figure size 640x480 with 1
Axes>"), no "??" (a reference LaTeX could not resolve), and a book's length.

These checks read a built PDF and build nothing: ``make test-pdf`` builds it (``make pdf``) and runs
them with ``BOOK_PDF=_build/latex/elbo-book.pdf`` (the last stage of ``make test``); with ``BOOK_PDF`` set,
a missing PDF or poppler tool fails them. Without ``BOOK_PDF`` they are skipped, so that the unit stage
of ``make test`` never judges a PDF left over from an earlier build. The last tests check
_ext/latex_macros.py's macro definitions and need no PDF (nor TeX).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from book_toc import ROOT, toc_docnames

#: Pages of _toc.yml that the PDF leaves out on purpose (_config.yml: the API reference).
NOT_IN_PDF = set(yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["sphinx"]["config"]
                 .get("latex_leave_out", []))


def _pdf_path() -> Path:
    value = os.environ.get("BOOK_PDF")
    if not value:
        pytest.skip("the PDF checks run with `make test-pdf` (which builds the PDF first), or with "
                    "BOOK_PDF=_build/latex/elbo-book.pdf after `make pdf`")
    path = Path(value)
    if not path.is_absolute():
        path = ROOT / path
    # BOOK_PDF names the PDF to judge (make test-pdf, the last stage of make test): from here on a
    # missing PDF or tool is a failure, never a skip.
    if not path.is_file():
        pytest.fail(f"no PDF at {path} (BOOK_PDF): build it with `make pdf`")
    for tool in ("pdftotext", "pdfinfo"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian: apt-get install poppler-utils)")
    return path


@pytest.fixture(scope="module")
def pdf() -> Path:
    return _pdf_path()


@lru_cache(maxsize=None)
def _text(path: Path) -> str:
    """The PDF's text in reading order, one string (pdftotext's default, not -layout)."""
    return subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def text(pdf) -> str:
    return _text(pdf)


@pytest.fixture(scope="module")
def flat(text) -> str:
    """The text with every run of white space (line and page breaks too) as one space."""
    return re.sub(r"\s+", " ", text)


def page_title(docname: str) -> str:
    """The page's ``# `` heading (outside code cells and other fenced blocks), as the PDF prints it."""
    fence = None
    for line in (ROOT / f"{docname}.md").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        m = re.match(r"^(`{3,}|:{3,}|~{3,})", stripped)
        if m:
            if fence is None:
                fence = m.group(1)
            elif stripped == fence:
                fence = None
            continue
        if fence is None and line.startswith("# "):
            return line[2:].replace("`", "").strip()
    raise AssertionError(f"{docname}.md has no '# ' title")


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def test_pdf_is_the_configured_book(pdf):
    """The file is the one _config.yml names (latex.latex_documents.targetname)."""
    target = config()["latex"]["latex_documents"]["targetname"]
    assert pdf.name == Path(target).with_suffix(".pdf").name


def test_a_book_length(pdf):
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    assert pages > 100, f"{pdf.name} has only {pages} pages"


@pytest.mark.parametrize("docname", [d for d in toc_docnames() if d not in NOT_IN_PDF])
def test_every_page_of_the_toc_is_in_it(docname, flat):
    title = page_title(docname)
    assert re.sub(r"\s+", " ", title) in flat, f"{docname}: its title {title!r} is not in the PDF"


def test_numbered_theorems_and_equations(flat):
    assert "Theorem 3.1" in flat
    assert re.search(r"\(3\.1\)", flat), "no equation number (3.1) in the PDF"


def test_no_figure_printed_as_text(flat):
    found = re.findall(r"<Figure size [^>]*>", flat)
    assert not found, f"{len(found)} figure(s) printed as text instead of an image: {found[:3]}"


def test_every_chapter_says_its_run_time(flat):
    """Each chapter's "Learning goals" box ends with its measured run time (_ext/run_time.py), as in HTML."""
    chapters = [d for d in toc_docnames() if re.search(r"(^|/)ch\d+_", d)]
    found = re.findall(r"Run time: about \d+ (?:s|min)", flat)
    assert len(found) == len(chapters), f"{len(found)} run times for {len(chapters)} chapters"


def test_no_unresolved_reference(text):
    lines = [line for line in text.splitlines() if "??" in line]
    assert not lines, "unresolved references (??) in the PDF:\n" + "\n".join(lines[:10])


def _directives(pattern: str, docnames) -> int:
    """How many directives whose name matches ``pattern`` open a line of the pages ``docnames``."""
    opening = re.compile(rf"^(?:`{{3,}}|:{{3,}})\{{{pattern}\}}", re.M)
    return sum(len(opening.findall((ROOT / f"{d}.md").read_text(encoding="utf-8"))) for d in docnames)


def _solution_count() -> int:
    return _directives(r"solution(?:-start)?", toc_docnames())


def test_every_solution_is_printed(flat):
    """Each {solution} of the sources is in the PDF with its heading ("Solution to Exercise 3.2"), not
    collapsed: the text of the first solution of chapter 3 is there too."""
    expected = _solution_count()
    found = len(re.findall(r"Solution to\s*Exercise \d+\.\d+", flat))  # \s*: pdftotext may drop a space
    assert expected > 0
    assert found >= expected, f"{found} solutions in the PDF, {expected} in the chapters"
    assert "Click to show" not in flat


def _figure_count() -> int:
    """Figures placed in the pages that the PDF holds ({figure} and {glue:figure} directives)."""
    return _directives(r"(?:glue:)?figure", [d for d in toc_docnames() if d not in NOT_IN_PDF])


def test_every_figure_has_its_numbered_caption(flat):
    """Each figure of the sources is in the PDF under its number ("Fig. 3.1: EM for pPCA ...")."""
    numbers = set(re.findall(r"\b(?:Fig\.|Figure) (\d+\.\d+):", flat))
    expected = _figure_count()
    assert expected > 0
    assert len(numbers) >= expected, f"{len(numbers)} numbered captions in the PDF, {expected} figures"


# ---- the LaTeX side of the build (no PDF needed) ------------------------------------------------


def _latex_macros():
    import sys

    ext = str(ROOT / "_ext")
    if ext not in sys.path:
        sys.path.insert(0, ext)
    import latex_macros

    return latex_macros


def test_every_mathjax_macro_is_defined_for_latex():
    """_ext/latex_macros.py defines for LaTeX every macro that _config.yml defines for MathJax, with
    its number of arguments, and nothing else: the two cannot drift apart."""
    macros = config()["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    preamble = _latex_macros().latex_preamble(macros)
    defined = dict(re.findall(r"\\renewcommand\{\\([A-Za-z]+)\}(?:\[(\d)\])?", preamble))
    assert set(defined) == set(macros)
    for name, value in macros.items():
        nargs = value[1] if isinstance(value, list) else 0
        assert int(defined[name] or 0) == nargs, name


def test_a_macro_after_an_accent_is_one_group():
    """MathJax reads \\hat\\bmu as \\hat{\\boldsymbol{\\mu}}; LaTeX does only if the macro is one group."""
    m = _latex_macros()
    assert m.latex_definition("bmu", "\\boldsymbol{\\mu}").endswith("{{\\boldsymbol{\\mu}}}")
    assert m.latex_definition("diag", "\\operatorname{diag}").endswith("{\\operatorname{diag}}")
    assert m.latex_definition("kldiv", ["D(#1 \\| #2)", 2]).endswith("[2]{D(#1 \\| #2)}")
    with pytest.raises(ValueError):
        m.latex_definition("b1", "x")
