"""The first cell of every chapter: the book's math macros (and its numbering) for Jupyter.

The book defines its TeX macros once, in ``_config.yml`` (``sphinx.config.mathjax3_config.tex.macros``),
for the built pages. A chapter opened in JupyterLab (``make lab``) does not read ``_config.yml``, so
every MyST notebook of ``_toc.yml`` starts with one Markdown cell, tagged ``remove-cell`` (myst-nb
leaves it out of the book; the notebook downloads leave it out too), that defines them again:

* a MyST frontmatter block, read by jupyterlab-myst (``requirements-lab.txt``) from a notebook's
  first cell: ``math:`` (the macros) and, for a numbered chapter, ``numbering: enumerator: <n>.%s``
  (so that theorems, exercises, figures and equations read "Theorem 3.1", "(3.2)", as in the book).
  The block is indented, which YAML allows and which a plain Markdown renderer shows as a code block;
* one ``$\\renewcommand...$`` per macro, for a JupyterLab without jupyterlab-myst (its MathJax keeps
  definitions for the page; ``\\renewcommand``, because KaTeX, which jupyterlab-myst uses, already has
  the frontmatter's macros and refuses ``\\newcommand`` for them);
* one line for the reader, who sees this cell in Jupyter.

These tests read every chapter's first cell and check that both forms define exactly the macros of
``_config.yml``, with the same bodies and argument counts, and the chapter's number from ``_toc.yml``;
and that the cell is the text :func:`macro_cell` writes (on a failure, the message shows the cell to
paste, so the cells never drift from ``_config.yml``).
"""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest
import yaml

from book_toc import myst_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = myst_notebooks()  # docnames: book/intro, book/ch1_evidence, ...

NOTE = "*The book's math macros and numbering, for Jupyter (the book hides this cell; keep it first).*"
INDENT = "    "
_RENEW = re.compile(r"^\$\\renewcommand\{\\([A-Za-z]+)\}(?:\[(\d)\])?\{(.*)\}\$$")


def book_macros() -> dict[str, tuple[str, int]]:
    """``_config.yml``'s MathJax macros as ``{name: (body, number of arguments)}``."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    macros = config["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    out = {}
    for name, value in macros.items():
        if isinstance(value, list):  # MathJax's [body, nargs] (a third item, a default, is not used here)
            assert len(value) == 2, f"{name}: a macro with an optional argument has no KaTeX form"
            out[name] = (value[0], int(value[1]))
        else:
            out[name] = (value, 0)
    return out


def chapter_numbers() -> dict[str, int]:
    """The number of each chapter in a numbered part of ``_toc.yml`` (``book/ch3_elbo`` -> 3)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    numbers, n = {}, 0
    for part in toc.get("parts", []):
        if not part.get("numbered"):
            continue
        for entry in part.get("chapters", []):
            n += 1
            numbers[str(Path(entry["file"]).with_suffix(""))] = n
    return numbers


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def macro_cell(docname: str) -> str:
    """The first cell of ``docname`` (a docname of ``_toc.yml``, e.g. ``book/ch3_elbo``)."""
    macros = book_macros()
    lines = ["---", f"{INDENT}math:"]
    lines += [f"{INDENT}  {_quote(chr(92) + name)}: {_quote(body)}" for name, (body, _) in macros.items()]
    number = chapter_numbers().get(docname)
    if number is not None:
        lines += [f"{INDENT}numbering:", f"{INDENT}  enumerator: {number}.%s"]
    lines += ["---", "", NOTE]
    for name, (body, nargs) in macros.items():
        args = f"[{nargs}]" if nargs else ""
        lines.append(f"$\\renewcommand{{\\{name}}}{args}{{{body}}}$")
    return "\n".join(lines)


def _first_cell(docname: str):
    return jupytext.read(str(ROOT / f"{docname}.md")).cells[0]


def _parse(source: str) -> tuple[dict, dict[str, tuple[str, int]]]:
    """The frontmatter (a dict) and the ``\\renewcommand`` definitions of a macro cell."""
    lines = source.split("\n")
    assert lines[0] == "---", "the cell does not start with a frontmatter block (---)"
    end = lines.index("---", 1)
    front = yaml.safe_load("\n".join(lines[1:end]))
    renew = {}
    for line in lines[end + 1:]:
        m = _RENEW.match(line)
        if m:
            assert m.group(1) not in renew, f"\\{m.group(1)} is defined twice"
            renew[m.group(1)] = (m.group(3), int(m.group(2) or 0))
    return front, renew


def _nargs(body: str) -> int:
    return max((int(d) for d in re.findall(r"#(\d)", body)), default=0)


def test_every_notebook_is_checked():
    assert len(NOTEBOOKS) >= 13 and "book/ch3_elbo" in NOTEBOOKS, NOTEBOOKS
    assert chapter_numbers()["book/ch3_elbo"] == 3


def test_generated_cell_defines_the_macros():
    """macro_cell's own output parses back to _config.yml's macros (checks the writer itself)."""
    front, renew = _parse(macro_cell("book/ch3_elbo"))
    macros = book_macros()
    assert front["math"] == {"\\" + name: body for name, (body, _) in macros.items()}
    assert renew == macros
    assert front["numbering"] == {"enumerator": "3.%s"}
    assert "numbering" not in _parse(macro_cell("book/intro"))[0]


@pytest.mark.parametrize("docname", NOTEBOOKS, ids=[Path(d).name for d in NOTEBOOKS])
def test_first_cell_defines_the_book_macros(docname):
    cell = _first_cell(docname)
    assert cell.cell_type == "markdown", f"{docname}.md: the first cell is a {cell.cell_type} cell"
    assert cell.metadata.get("tags") == ["remove-cell"], (
        f"{docname}.md: the macro cell must be tagged remove-cell (and nothing else), so that the book "
        f"does not show it; its tags are {cell.metadata.get('tags')}")
    front, renew = _parse(cell.source)
    macros = book_macros()
    # jupyterlab-myst: frontmatter `math:` (KaTeX infers the number of arguments from #1, #2, ...)
    got = {name: (body, _nargs(body)) for name, body in (front.get("math") or {}).items()}
    want = {"\\" + name: spec for name, spec in macros.items()}
    assert got == want, (
        f"{docname}.md: the frontmatter's math: differs from _config.yml's macros: "
        f"missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}, "
        f"different {sorted(k for k in set(got) & set(want) if got[k] != want[k])}")
    # a plain JupyterLab: one $\renewcommand$ per macro
    assert renew == macros, (
        f"{docname}.md: the \\renewcommand lines differ from _config.yml's macros: "
        f"missing {sorted(set(macros) - set(renew))}, extra {sorted(set(renew) - set(macros))}, "
        f"different {sorted(k for k in set(renew) & set(macros) if renew[k] != macros[k])}")
    # numbering as in the book: chapter n numbers its theorems, exercises, equations n.1, n.2, ...
    number = chapter_numbers().get(docname)
    want_numbering = None if number is None else {"enumerator": f"{number}.%s"}
    assert front.get("numbering") == want_numbering, (docname, front.get("numbering"))
    assert set(front) <= {"math", "numbering"}, f"{docname}.md: unexpected frontmatter keys {sorted(front)}"


@pytest.mark.parametrize("docname", NOTEBOOKS, ids=[Path(d).name for d in NOTEBOOKS])
def test_first_cell_is_the_generated_text(docname):
    want = macro_cell(docname)
    got = _first_cell(docname).source
    assert got == want, (
        f"{docname}.md: its first cell is not the macro cell for _config.yml's macros. Put this cell "
        f"right after the header (a cell tagged remove-cell; in the .md file it starts with the line "
        f'+++ {{"tags": ["remove-cell"]}}):\n\n{want}\n')
