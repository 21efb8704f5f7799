"""Sphinx extension: the book in LaTeX (``make pdf``), with the web pages' macros and numbers.

Jupyter Book's LaTeX builder (``--builder pdflatex``: Sphinx's LaTeX writer with
sphinx-jupyterbook-latex, then XeLaTeX) needs a few things the HTML build does not. All of them are
here, and none changes the HTML build (nor Sphinx's saved environment, which the two builds share):

**The math macros.** The book writes its macros once, for MathJax, in ``_config.yml``
(``sphinx.config.mathjax3_config.tex.macros``: ``name: body`` or ``name: [body, number of
arguments]``). For every build, this appends to ``latex_elements["preamble"]`` one definition per macro,

    \\providecommand{\\kldiv}{}\\renewcommand{\\kldiv}[2]{D_{\\mathrm{KL}}\\left(#1 ...\\right)}

read from that same setting, so the HTML and the PDF cannot disagree about a macro (a macro added for
MathJax is in the PDF at the next build). ``\\providecommand`` + ``\\renewcommand`` defines a name
whether or not LaTeX or a package already has it (the class of sphinx-jupyterbook-latex defines
``\\argmin``, ``\\Var``, ...; MathJax's definition wins, as on the web pages). A macro LaTeX cannot
take (a name that is not letters, a bad number of arguments) is a build warning.

**No texlive-fonts-extra.** The document class of sphinx-jupyterbook-latex (``jupyterBook.cls``) loads
``bbm`` (for its own ``\\RR``, ``\\NN``... , which the book does not use), a package only that 1.4 GB
Debian package has. The LaTeX builder writes a three-line ``bbm.sty`` beside the ``.tex`` that defines
``\\mathbbm`` as ``\\mathbb``; TeX finds the file in the build folder before any installed one, so the
output is the same with or without the real package.

**The web pages' numbers.** "Theorem 3.1", "Exercise 3.2", figures and equations numbered within
chapters, as on the pages (see :func:`_keep_numbering`); a reference to an exercise of another
chapter prints "Exercise 1.3" with a link, where sphinx-exercise alone prints "Exercise ??".

**A book's shape.** The root page opens as an unnumbered "Preface" (in the table of contents and the
running heads), not as untitled pages after the contents; the unnumbered parts of ``_toc.yml`` after
the numbered one (the appendices) are lettered, Appendix A, B, ...; the pages listed in the new
setting ``latex_leave_out`` (the API reference) are left out, and links to them become plain text;
the list of works follows the bibliography page's own text, not in a chapter of its own after it; a
table with given column widths breaks across pages instead of running past the foot of one.

**Proofs, solutions, live figures.** A proof prints as a proof ("*Proof.* ... □"), not as an
admonition box with an empty title bar; a solution's title keeps its space ("Solution to Exercise
1.1", not "Solution toExercise 1.1"); an output only a browser can show (the chapters' live figures,
whose text form is ``<IPython.core.display.HTML object>``) says so in one sentence.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)

BBM_STUB = (
    "% Written by _ext/latex_macros.py: jupyterBook.cls loads bbm for \\mathbbm (unused by the book).\n"
    "\\ProvidesPackage{bbm}[2026/01/01 stub: mathbbm is mathbb]\n"
    "\\providecommand{\\mathbbm}[1]{\\mathbb{#1}}\n"
)


def book_macros(config: Config) -> dict[str, Any]:
    """``mathjax3_config.tex.macros`` of the configuration (empty if there is none)."""
    return ((config.mathjax3_config or {}).get("tex") or {}).get("macros") or {}


#: A body that is one command applied to one braced argument: ``\\boldsymbol{\\mu}``, ``\\mathbb{E}``.
ONE_GROUP = re.compile(r"\\[A-Za-z]+\{[^{}]*\}")


def latex_definition(name: str, value: Any) -> str:
    """One MathJax macro as a LaTeX definition.

    ``("bx", "\\mathbf{x}")`` gives ``\\providecommand{\\bx}{}\\renewcommand{\\bx}{{\\mathbf{x}}}``;
    ``("kldiv", ["D(#1 \\| #2)", 2])`` gives ``...\\renewcommand{\\kldiv}[2]{D(#1 \\| #2)}``; a third
    element is the default of the first argument, as in MathJax and ``\\newcommand``. A body that is one
    command on one braced argument (``\\boldsymbol{\\mu}``, but not ``\\operatorname{diag}``, which must
    stay an operator) is braced once more: MathJax reads ``\\hat\\bmu`` as ``\\hat{\\boldsymbol{\\mu}}``,
    LaTeX only if the macro expands to one group (otherwise "Missing { inserted").
    """
    if not re.fullmatch(r"[A-Za-z]+", name):
        raise ValueError(f"macro name {name!r}: LaTeX can define only names made of letters")
    if isinstance(value, str):
        body, nargs, default = value, 0, None
    elif isinstance(value, (list, tuple)) and 1 <= len(value) <= 3 and isinstance(value[0], str):
        body = value[0]
        nargs = int(value[1]) if len(value) > 1 else 0
        default = value[2] if len(value) > 2 else None
    else:
        raise ValueError(f"macro {name!r}: expected a string or [body, number of arguments], got {value!r}")
    if not 0 <= nargs <= 9:
        raise ValueError(f"macro {name!r}: {nargs} arguments (LaTeX allows 0 to 9)")
    args = f"[{nargs}]" if nargs else ""
    if default is not None:
        args += f"[{default}]"
    if ONE_GROUP.fullmatch(body) and not body.startswith("\\operatorname"):
        body = "{" + body + "}"
    return f"\\providecommand{{\\{name}}}{{}}\\renewcommand{{\\{name}}}{args}{{{body}}}"


def latex_preamble(macros: dict[str, Any]) -> str:
    """The definitions of every macro that LaTeX can take; warns about the others."""
    lines = ["% The book's math macros, from _config.yml's mathjax3_config.tex.macros (_ext/latex_macros.py)"]
    for name, value in macros.items():
        try:
            lines.append(latex_definition(name, value))
        except ValueError as exc:
            LOGGER.warning(f"latex_macros: {exc}", type="latex_macros")
    lines.append(PDF_STRINGS)
    return "\n".join(lines) + "\n"


#: Section titles are also the PDF's bookmarks, plain text: a title with math, such as
#: "A full covariance: $\\bz = \\bmu + \\mathbf{L}\\beps$", keeps its letters there (z = μ + Lε), not
#: the names of the font commands its macros expand to.
PDF_STRINGS = (
    "% PDF bookmarks: math in section titles keeps its letters, without fonts (_ext/latex_macros.py)\n"
    "\\makeatletter\\pdfstringdefDisableCommands{"
    + "".join(f"\\let\\{c}\\@firstofone" for c in
              ("boldsymbol", "mathbf", "mathcal", "mathbb", "mathrm", "operatorname", "symbf", "symbfit"))
    + "\\let\\left\\@empty\\let\\right\\@empty\\let\\middle\\@empty}\\makeatother"
)


def _add_macros(app: Sphinx, config: Config) -> None:
    macros = book_macros(config)
    if not macros:
        return
    elements = dict(config.latex_elements or {})
    preamble = elements.get("preamble", "")
    elements["preamble"] = (preamble + "\n" if preamble else "") + latex_preamble(macros)
    config.latex_elements = elements


def _write_bbm_stub(app: Sphinx) -> None:
    if app.builder.format != "latex":
        return
    target = Path(app.outdir, "bbm.sty")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file() or target.read_text(encoding="utf-8") != BBM_STUB:
        target.write_text(BBM_STUB, encoding="utf-8")


def _remember_numbering(app: Sphinx, config: Config) -> None:
    app.latex_macros_numfig_secnum_depth = config.numfig_secnum_depth


def _keep_numbering(app: Sphinx) -> None:
    """Theorem 3.1 in the PDF as on the page, not Theorem 3.1.1.

    For a book whose table of contents has parts, sphinx-jupyterbook-latex makes the parts LaTeX
    ``\\part``s and raises ``numfig_secnum_depth`` by one, so that LaTeX still numbers figures,
    tables and equations within each chapter. But Sphinx numbers theorems, exercises and their
    references with that same setting, which would print "Theorem 3.1.1" for the HTML's "Theorem
    3.1" (and differ from the HTML build's settings, so that each build would re-read every page).
    This puts the setting back and gives LaTeX its numbering by chapter directly.
    """
    if app.builder.format != "latex":
        return
    depth = getattr(app, "latex_macros_numfig_secnum_depth", app.config.numfig_secnum_depth)
    if app.config.numfig_secnum_depth == depth:
        return
    app.config.numfig_secnum_depth = depth
    if app.config.latex_toplevel_sectioning == "part" and depth > 0:
        # sphinx.sty's option numfigreset (the LaTeX writer would pass depth - 1 under parts)
        app.builder.context["preamble"] += (
            "\n% Figures, tables and equations numbered within chapters (_ext/latex_macros.py)\n"
            f"\\makeatletter\\def\\spx@opt@numfigreset{{{depth}}}\\makeatother\n"
        )


# ---- the shape of the book ---------------------------------------------------------------------

PREFACE = "Preface"
PREFACE_LATEX = (
    f"\\chapter*{{{PREFACE}}}\\addcontentsline{{toc}}{{chapter}}{{{PREFACE}}}"
    f"\\markboth{{{PREFACE}}}{{{PREFACE}}}\n"
)


def _appendix_captions(app: Sphinx) -> list[str]:
    """Captions of the unnumbered parts of _toc.yml that follow a numbered one (the appendices)."""
    site_map = getattr(app.config, "external_site_map", None)
    if site_map is None:
        return []
    captions, after_numbered = [], False
    for subtree in site_map.root.subtrees:
        if subtree.numbered:
            after_numbered = True
        elif after_numbered and subtree.caption:
            captions.append(subtree.caption)
    return captions


def _unlink(reference: nodes.Element) -> None:
    """Replace a link by its text (kept as it was: emphasis, code, ...)."""
    reference.replace_self(nodes.inline("", "", *reference.children))


#: sphinxthebibliography without its own unnumbered chapter: the list continues the page that holds it.
BIBLIOGRAPHY_IN_PLACE = (
    "\\makeatletter\\renewenvironment{sphinxthebibliography}[1]"
    "{\\phantomsection\\let\\chapter\\@gobbletwo\\begin{thebibliography}{#1}}{\\end{thebibliography}}"
    "\\makeatother\n"
)


def _bibliography_in_place(app: Sphinx, doctree: nodes.document) -> None:
    """The list of works under the page that has the ``{bibliography}`` directive.

    Sphinx's LaTeX writer gathers every citation into one list at the end of the book (and
    sphinx-jupyterbook-latex moves it after the last page), under a chapter of its own: the
    bibliography page, the last appendix, would hold one sentence, then a blank page, then an
    unnumbered "Bibliography". This puts the list on that page, under its heading.
    """
    from sphinx.builders.latex.nodes import thebibliography

    try:
        pages = {key.docname for key in app.env.get_domain("cite").bibliographies}
    except Exception:  # no sphinxcontrib-bibtex
        return
    lists = [n for n in doctree.children if isinstance(n, thebibliography)]
    if len(pages) != 1 or not lists:
        return
    page = pages.pop()
    start = next((s for s in doctree.findall(addnodes.start_of_file) if s.get("docname") == page), None)
    section = next((c for c in start.children if isinstance(c, nodes.section)), None) if start else None
    if section is None:
        return
    section += nodes.raw("", BIBLIOGRAPHY_IN_PLACE, format="latex")
    for bibliography in lists:
        doctree.remove(bibliography)
        section += bibliography


def _shape_book(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """On the whole book's tree (the root document, with every page inlined): the preface's heading,
    the pages left out, the appendices' letters."""
    if app.builder.format != "latex" or docname != app.config.root_doc:
        return
    leave_out = set(app.config.latex_leave_out or [])
    for start in list(doctree.findall(addnodes.start_of_file)):
        if start.get("docname") in leave_out:
            start.parent.remove(start)
    if leave_out:
        for ref in list(doctree.findall(nodes.reference)):
            uri = ref.get("refuri", "")
            if uri.startswith("%") and uri[1:].split("#", 1)[0] in leave_out:
                _unlink(ref)

    root = next((s for s in doctree.findall(nodes.section) if s.get("docname") == docname), None)
    if root is not None:
        title = next((i for i, c in enumerate(root.children) if isinstance(c, nodes.title)), -1)
        root.insert(title + 1, nodes.raw("", PREFACE_LATEX, format="latex"))

    _bibliography_in_place(app, doctree)

    for caption in _appendix_captions(app)[:1]:
        for start in doctree.findall(addnodes.start_of_file):
            if start.get("docname") == caption and isinstance(start.parent, nodes.compound):
                wrapper = start.parent
                appendix = nodes.raw("", "\\appendix\n", format="latex")
                wrapper.parent.insert(wrapper.parent.index(wrapper), appendix)
                break


# ---- proofs, exercises, browser-only outputs ------------------------------------------------------

PROOF_END = "\\nobreak\\hspace*{\\fill}\\nobreak$\\square$"
BROWSER_ONLY = re.compile(r"<IPython\.core\.display\.(HTML|Javascript) object>")
BROWSER_ONLY_TEXT = ("This figure is live: it runs in the browser, in the HTML edition of the book "
                     "(the page of this chapter).")


class LatexProofs(SphinxPostTransform):
    """A proof as a proof: "*Proof.* ... □", not an admonition box with an empty title bar (in
    LaTeX, sphinx-proof gives the proof's box no title; its text starts with "Proof. ")."""

    default_priority = 400
    formats = ("latex",)

    def run(self, **kwargs: Any) -> None:
        from sphinx_proof.nodes import proof_node

        for proof in list(self.document.findall(proof_node)):
            for box in [c for c in proof.children if isinstance(c, nodes.admonition)]:
                body = list(box.children)
                first = body[0] if body and isinstance(body[0], nodes.paragraph) else None
                if first is not None and first.children and isinstance(first[0], nodes.Text):
                    text = str(first[0])
                    if text.startswith("Proof. "):
                        first.replace(first[0], nodes.Text(text[len("Proof. "):]))
                        first.insert(0, nodes.emphasis("", "Proof."))
                        first.insert(1, nodes.Text(" "))
                end = nodes.raw("", PROOF_END, format="latex")
                if body and isinstance(body[-1], nodes.paragraph):
                    body[-1] += end
                else:
                    body.append(nodes.paragraph("", "", end))
                box.replace_self(nodes.container("", *body, classes=["proof"]))


class LatexExerciseReferences(SphinxPostTransform):
    """A reference to an exercise of another page, as sphinx-exercise writes one to an exercise of
    the same page: its text ("Exercise 1.3") linked to the exercise. (sphinx-exercise turns only
    same-page references into that form; LaTeX's own ``\\ref`` to an exercise prints "??".)"""

    default_priority = 23  # after sphinx-exercise's own (22)
    formats = ("latex",)

    def run(self, **kwargs: Any) -> None:
        from sphinx_exercise.nodes import exercise_enumerable_node, exercise_latex_number_reference

        registry = getattr(self.env, "sphinx_exercise_registry", {})
        for ref in list(self.document.findall(nodes.reference)):
            uri = ref.get("refuri", "")
            if ref.get("refid") or not uri.startswith("%") or "#" not in uri:
                continue
            label = uri.split("#", 1)[1]
            target = registry.get(label)
            if not target or not isinstance(target.get("node"), exercise_enumerable_node):
                continue
            new = exercise_latex_number_reference()
            new.attributes.update(ref.attributes)
            new["refid"] = label
            new.extend(ref.children)
            ref.replace_self(new)


class LatexSolutionTitles(SphinxPostTransform):
    """"Solution to Exercise 1.1", not "Solution toExercise 1.1": sphinx-exercise puts the space
    inside the link (" Exercise 1.1"), where LaTeX's \\hyperref drops it; this moves it before."""

    default_priority = 24  # after sphinx-exercise's ResolveTitlesInSolutions (21)
    formats = ("latex",)

    def run(self, **kwargs: Any) -> None:
        from sphinx_exercise.nodes import solution_node

        for solution in self.document.findall(solution_node):
            title = solution.children[0] if solution.children else None
            if not isinstance(title, nodes.title):
                continue
            for before, link in zip(list(title.children), list(title.children)[1:]):
                if not (isinstance(before, nodes.Text) and isinstance(link, nodes.reference)):
                    continue
                first = link.children[0] if link.children else None
                if isinstance(first, nodes.Text) and first.startswith(" ") and not before.endswith(" "):
                    link.replace(first, nodes.Text(first.lstrip(" ")))
                    title.replace(before, nodes.Text(before + " "))


class LatexLongTables(SphinxPostTransform):
    """A table whose columns have given widths may break across pages (LaTeX's longtable).

    Sphinx makes a table a longtable only from 31 rows on; a shorter one is a ``tabular``, which
    cannot break, so that a table of a dozen rows of prose (the Reproducing appendix) ran past the
    foot of its page. A table with given widths keeps its columns (``\\X``) as a longtable; one in a
    box (an admonition, an exercise), where a longtable cannot go, stays as it is."""

    default_priority = 400
    formats = ("latex",)

    def run(self, **kwargs: Any) -> None:
        for table in self.document.findall(nodes.table):
            if "colwidths-given" not in table["classes"] or "longtable" in table["classes"]:
                continue
            parent = table.parent
            while parent is not None and not isinstance(parent, (nodes.Admonition, nodes.Sequential)):
                parent = parent.parent
            if parent is None:
                table["classes"].append("longtable")


class LatexBrowserOnlyOutputs(SphinxPostTransform):
    """An output only a browser can show (an HTML fragment with a script, whose text form is
    ``<IPython.core.display.HTML object>``) says where to see it."""

    default_priority = 400
    formats = ("latex",)

    def run(self, **kwargs: Any) -> None:
        for block in list(self.document.findall(nodes.literal_block)):
            if BROWSER_ONLY.fullmatch(block.astext().strip()):
                block.replace_self(nodes.paragraph("", "", nodes.emphasis("", BROWSER_ONLY_TEXT)))


def setup(app: Sphinx) -> dict:
    # Before sphinx-jupyterbook-latex's own config-inited handler (priority 500), which appends its
    # preamble (\usepackage{unicode-math}, ...) after whatever the preamble holds by then, and
    # changes numfig_secnum_depth in its builder-inited handler (500), which _keep_numbering undoes.
    app.connect("config-inited", _add_macros, priority=400)
    app.connect("config-inited", _remember_numbering, priority=400)
    app.connect("builder-inited", _keep_numbering, priority=600)
    app.connect("builder-inited", _write_bbm_stub)
    # Docnames (as in _toc.yml) that the PDF leaves out; links to them become plain text.
    app.add_config_value("latex_leave_out", [], "", [list])
    app.connect("doctree-resolved", _shape_book)
    app.add_post_transform(LatexProofs)
    app.add_post_transform(LatexExerciseReferences)
    app.add_post_transform(LatexSolutionTitles)
    app.add_post_transform(LatexLongTables)
    app.add_post_transform(LatexBrowserOnlyOutputs)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
