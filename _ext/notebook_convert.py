"""A chapter of the book as a notebook for any Jupyter: MyST Markdown cells become plain Markdown.

``_ext/notebook_downloads.py`` calls :func:`convert_notebook` at build time on every chapter, with a
:class:`Resolver` that answers from Sphinx's resolved environment; the unit tests call it with a
:class:`StaticResolver` (plain dictionaries), so nothing here needs Sphinx.

What a stock Jupyter (no jupyterlab-myst, no Jupytext, no book extensions) cannot render, and what
this module makes of it, in the Markdown cells only (code cells are kept exactly as they are):

* roles: ``{ref}``, ``{doc}`` -> the text the book's page shows (a section title or the given text),
  with "(chapter 2, section 2.3)" after a reference to another page (the notebook has no links to
  the site: the book has no absolute URL); ``{eq}`` -> "(3.2)"; ``{numref}``, ``{prf:ref}`` ->
  "Exercise 3.3", "Theorem 3.1"; ``{cite:p}``/``{cite:t}`` -> "(Kingma and Welling, 2014)" /
  "Kingma and Welling (2014)", with the works cited listed in a last cell; Python roles -> ``code``
  with the HTML's text; ``{glue:text}``, ``{glue:md}``, ``{glue}`` -> the value the book printed
  (from the build's executed notebook), or a phrase saying the code below computes it;
* ``(label)=`` targets and ``%`` comments are dropped; headings carry the page's section numbers;
* directives: theorems and friends -> a bold "**Theorem 3.1 (title).**" paragraph and the body;
  proofs -> "*Proof.* ... ∎"; exercises -> "**Exercise 3.2 (title).**"; solutions -> an HTML
  ``<details>`` block "Solution to Exercise 3.2 (title)" (gated ``solution-start``/``-end`` pairs,
  which enclose code cells, -> a bold "Solution to ..." paragraph and an end line); admonitions ->
  an HTML ``<blockquote>`` with a bold title (``:class: dropdown`` -> ``<details>``); ``{math}`` and
  ``$$ ... $$ (label)`` -> ``$$ ... \\tag{3.2} $$``; ``{glue:figure}`` -> the figure (a cell
  attachment) and "**Figure 3.1.** caption"; ``{code-block}`` -> a fenced code block;
  ``{list-table}`` -> a Markdown table; any other directive -> its title in bold and its content.

Numbers (sections, equations, theorems, exercises, figures) are never counted here: the resolver
gives them, read from the build. Markdown inside HTML blocks (``<details>``, ``<blockquote>``) is
separated from the tags by blank lines, which CommonMark (and JupyterLab's renderer) needs to parse
it as Markdown; display math is never put behind ``>`` quote markers, which MathJax would see.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from dataclasses import dataclass, field
from typing import Any

import nbformat

# The MyST extensions of the book (_config.yml, parse.myst_enable_extensions): the parser must split
# the cells into blocks exactly as the build does.
BOOK_EXTENSIONS = ("amsmath", "colon_fence", "deflist", "dollarmath", "html_image", "substitution")

ADMONITIONS = {
    "note": "Note",
    "tip": "Tip",
    "hint": "Hint",
    "important": "Important",
    "warning": "Warning",
    "caution": "Caution",
    "attention": "Attention",
    "danger": "Danger",
    "error": "Error",
    "seealso": "See also",
    "admonition": "",
    "topic": "",
    "sidebar": "",
    "margin": "",
    "dropdown": "",  # sphinx-design
    "toggle": "",  # sphinx-togglebutton
    "card": "",
    "tab-item": "",
}
# Directives whose first line (after the name) is content, not an argument.
NO_ARGUMENT = {"note", "tip", "hint", "important", "warning", "caution", "attention", "danger", "error",
               "seealso", "prf:proof", "solution-end", "exercise-end", "toggle", "epigraph",
               "pull-quote", "highlights"}
QUOTES = {"epigraph", "pull-quote", "highlights"}
CODE_DIRECTIVES = {"code-block", "code", "sourcecode", "code-cell", "literalinclude"}
PY_ROLES = {"func", "meth", "class", "mod", "attr", "exc", "data", "obj", "const", "property",
            "type", "module", "function", "method"}
XREF_ROLES = {"ref", "numref", "eq", "doc", "prf:ref", "term", "any", "keyword", "math:numref"}
CODE_ROLES = {"code", "literal", "file", "samp", "command", "program", "envvar", "option", "regexp",
              "mimetype", "makevar", "kbd"}
GLUE_ROLES = {"glue", "glue:", "glue:any", "glue:text", "glue:md"}
IMAGE_MIMES = ("image/svg+xml", "image/png", "image/jpeg", "image/gif")
EXTENSIONS = {"image/svg+xml": "svg", "image/png": "png", "image/jpeg": "jpg", "image/gif": "gif"}

_DIRECTIVE_INFO = re.compile(r"^\{([^{}\s]+)\}\s*(.*)$", re.S)
_OPTION = re.compile(r"^:([\w.-]+):(?:\s+(.*?))?\s*$")
_EXPLICIT = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.S)
_INLINE = re.compile(
    r"""
    (?P<role>\{(?P<name>[A-Za-z][\w:+.-]*|glue:)\}(?P<tick>`+)(?P<content>.+?)(?P=tick)(?!`))
    | (?P<code>(?P<ctick>`+).+?(?P=ctick)(?!`))
    | (?P<dmath>\$\$.+?\$\$)
    | (?P<math>\$(?=\S)[^$]*?(?<=[^\s\\])\$)
    | (?P<esc>\\.)
    """,
    re.S | re.X,
)


@dataclass
class Xref:
    """A resolved cross-reference: the text the book's page shows, and, for a target on another
    page, where it is ("chapter 2, section 2.3"), since the notebook cannot link to it."""

    text: str
    where: str | None = None
    is_title: bool = False  # the text is the target's own title (set in italics), not the source's


class Resolver:
    """What the converter asks the build. Every method may return None (not known); the converter
    then writes what the source says (a label, a key), never a raw role."""

    def xref(self, role: str, target: str, title: str | None) -> Xref | None:
        """``role`` is one of ref, numref, eq, doc, prf:ref, term, any, keyword."""
        return None

    def cite(self, role: str, keys: str) -> str | None:
        """The text of ``{cite:p}`` (role "p"), ``{cite:t}`` ("t"), ... for comma-separated keys."""
        return None

    def works_cited(self, keys: list[str]) -> list[str]:
        """One Markdown line per cited work (label and bibliography entry), in the order given."""
        return []

    def glue(self, key: str, doc: str | None = None) -> dict[str, Any] | None:
        """The mime bundle glued under ``key`` by this page's notebook (or by page ``doc``)."""
        return None

    def number(self, kind: str, label: str | None, index: int) -> str | None:
        """The number the page shows for the ``index``-th (from 0) directive of ``kind`` on the page
        (``prf:theorem``, ``exercise``, ``figure``, ...), or for the one labelled ``label``."""
        return None

    def equation(self, label: str) -> str | None:
        """The number of the labelled display equation, without parentheses ("3.2")."""
        return None

    def section_number(self, index: int) -> str | None:
        """The number of the page's ``index``-th section (from 0) in the page's order ("3.2")."""
        return None

    def exercise(self, label: str) -> tuple[str | None, str | None] | None:
        """(number, title) of an exercise on another page, for a solution that targets it."""
        return None

    def exec_table(self) -> str | None:
        """myst-nb's execution statistics (``{nb-exec-table}``) as a Markdown table."""
        return None

    def image(self, path: str) -> tuple[str, bytes] | None:
        """(mime type, bytes) of an image file named by ``{figure}`` or ``{image}``."""
        return None


@dataclass
class StaticResolver(Resolver):
    """A resolver from plain dictionaries (for tests, and for a conversion without a build).

    ``xrefs`` maps (role, target) to a text or an :class:`Xref`; ``numbers`` maps (kind, label) or
    (kind, index) to a number; ``equations`` label -> number; ``sections`` the section numbers in
    order; ``glued`` key -> mime bundle; ``citations`` (role, keys) -> text; ``works`` key -> line.
    """

    xrefs: dict = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)
    equations: dict = field(default_factory=dict)
    sections: list = field(default_factory=list)
    glued: dict = field(default_factory=dict)
    citations: dict = field(default_factory=dict)
    works: dict = field(default_factory=dict)
    exercises: dict = field(default_factory=dict)

    def xref(self, role, target, title):
        found = self.xrefs.get((role, target))
        if found is None:
            return None
        found = found if isinstance(found, Xref) else Xref(found)
        return Xref(title, found.where) if title and role in ("ref", "doc") else found

    def cite(self, role, keys):
        return self.citations.get((role, keys))

    def works_cited(self, keys):
        return [self.works[k] for k in keys if k in self.works]

    def glue(self, key, doc=None):
        return self.glued.get(key)

    def number(self, kind, label, index):
        if label is not None and (kind, label) in self.numbers:
            return self.numbers[(kind, label)]
        return self.numbers.get((kind, index))

    def equation(self, label):
        return self.equations.get(label)

    def section_number(self, index):
        return self.sections[index] if index < len(self.sections) else None

    def exercise(self, label):
        return self.exercises.get(label)


def macro_definitions(macros: dict[str, Any]) -> str:
    r"""``\newcommand`` lines for MathJax from ``mathjax3_config.tex.macros`` (a value is the
    replacement text, or ``[text, n]`` for a macro of ``n`` arguments, or ``[text, n, default]``)."""
    lines = []
    for name, value in macros.items():
        if isinstance(value, (list, tuple)):
            text, nargs = value[0], int(value[1])
            default = f"[{value[2]}]" if len(value) > 2 else ""
            lines.append(f"\\newcommand{{\\{name}}}[{nargs}]{default}{{{text}}}")
        else:
            lines.append(f"\\newcommand{{\\{name}}}{{{value}}}")
    return "\n".join(lines)


def macro_cell_source(macros: dict[str, Any], extra: str = "") -> str:
    """The notebook's macro cell: the book's TeX macros for MathJax, in display math that shows
    nothing (MathJax keeps the definitions for every later cell, so the cell must come first)."""
    definitions = macro_definitions(macros) + (f"\n{extra}" if extra else "")
    names = ", ".join(f"`\\{name}`" for name in list(macros)[:4])
    return (
        f"*The book's TeX macros ({names}, ...), defined here for MathJax. Keep this cell first: "
        f"the math below needs it.*\n\n$$\n{definitions}\n$$"
    )


def _md_parser(extensions):
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    config = MdParserConfig(enable_extensions=set(extensions), dmath_double_inline=True)
    return create_md_parser(config, RendererHTML)


def split_options(content: str) -> tuple[dict[str, str], str]:
    """A directive's options (``:key: value`` lines or a ``---`` YAML block) and its body."""
    lines = content.split("\n")
    options: dict[str, str] = {}
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if end is not None:
            import yaml

            loaded = yaml.safe_load("\n".join(lines[1:end])) or {}
            if isinstance(loaded, dict):
                options = {str(k): "" if v is None else str(v) for k, v in loaded.items()}
            lines = lines[end + 1:]
    else:
        i = 0
        while i < len(lines) and (m := _OPTION.match(lines[i])):
            options[m.group(1)] = m.group(2) or ""
            i += 1
        lines = lines[i:]
    return options, "\n".join(lines).strip("\n")


def wrap_display_math(tex: str) -> str:
    """Display math as Sphinx's MathJax output wraps it: blank-line separated equations are
    aligned, an equation with ``\\\\`` line breaks goes into ``split``."""
    parts = [p.strip("\n") for p in tex.split("\n\n") if p.strip()]
    wrapped = [f"\\begin{{split}}{p}\\end{{split}}" if "\\\\" in p else p for p in parts]
    if len(wrapped) > 1:
        return "\\begin{aligned}" + "\\\\\n".join(wrapped) + "\\end{aligned}"
    return wrapped[0] if wrapped else ""


def _escape_text(text: str) -> str:
    """Plain text (a glued value) safe in Markdown: no emphasis, code, math or link syntax."""
    return re.sub(r"([\\`*_$\[\]<>|])", r"\\\1", text)


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


class Converter:
    """Converts the Markdown cells of one chapter; keeps state across cells (numbers by position,
    exercises for their solutions, the works cited)."""

    def __init__(self, resolver: Resolver, extensions=BOOK_EXTENSIONS, secnumber_suffix: str = ". "):
        self.resolver = resolver
        self.md = _md_parser(extensions)
        self.secnumber_suffix = secnumber_suffix
        self.counters: dict[str, int] = {}
        self.sections = 0
        self.exercises: dict[str, tuple[str | None, str]] = {}
        self.cited: list[str] = []
        self.attachments: dict[str, dict[str, str]] = {}
        self.gated: list[str] = []  # open solution-start / exercise-start headers
        self.unresolved: list[str] = []

    # ---- cells ------------------------------------------------------------------------------

    def markdown_cell(self, source: str) -> tuple[str, dict[str, dict[str, str]]]:
        """(converted Markdown, cell attachments) of one Markdown cell."""
        self.attachments = {}
        text = self.markdown(source, top=True)
        return text, self.attachments

    # ---- blocks -----------------------------------------------------------------------------

    def markdown(self, text: str, top: bool = False) -> str:
        tokens = self.md.parse(text, {})
        lines = text.split("\n")
        out: list[str] = []
        pos = 0
        for i, tok in enumerate(tokens):
            if tok.level != 0 or tok.map is None or tok.nesting == -1:
                continue
            start, end = tok.map
            if start < pos:
                continue
            if start > pos:
                out.append(self.inline("\n".join(lines[pos:start])))
            children = []
            if tok.nesting == 1:
                j = i + 1
                while j < len(tokens) and not (tokens[j].level == 0 and tokens[j].nesting == -1):
                    children.append(tokens[j])
                    j += 1
            out.append(self.block(tok, lines[start:end], top, children))
            pos = end
        if pos < len(lines):
            out.append(self.inline("\n".join(lines[pos:])))
        return "\n".join(part for part in out if part is not None).strip("\n")

    SPECIAL = ("myst_target", "math_block_label", "math_block", "myst_line_comment")

    def _special(self, children) -> bool:
        """Whether a container holds something that line-by-line inline conversion would miss."""
        return any(t.type in self.SPECIAL or (t.type in ("fence", "colon_fence") and t.info.strip().startswith("{"))
                   for t in children)

    def block(self, tok, lines: list[str], top: bool, children=()) -> str | None:
        kind = tok.type
        if kind in ("myst_target", "myst_line_comment", "myst_block_break"):
            return None
        if kind in ("fence", "colon_fence"):
            m = _DIRECTIVE_INFO.match(tok.info.strip())
            if m:
                return self.directive(m.group(1), m.group(2).strip(), tok.content)
            if kind == "colon_fence":  # ::: without a name: a plain container
                return self.markdown(tok.content)
            return "\n".join(lines)
        if kind == "math_block_label":
            return self.display_math(tok.content, tok.info.strip())
        if kind == "math_block":
            return self.display_math(tok.content, None)
        if kind in ("amsmath", "code_block", "html_block", "hr", "front_matter"):
            return "\n".join(lines)
        if kind == "heading_open":
            return self.heading(tok, lines, top)
        if kind in ("bullet_list_open", "ordered_list_open") and self._special(children):
            return self.list_block(lines, [t for t in children if t.type == "list_item_open" and t.level == 1])
        if kind == "blockquote_open" and self._special(children):
            inner = self.markdown("\n".join(re.sub(r"^\s*> ?", "", line) for line in lines))
            return self.container("blockquote", "", inner)
        return self.inline("\n".join(lines))

    def list_block(self, lines: list[str], items) -> str:
        """A list whose items hold directives, targets or display math: each item converted."""
        out: list[str] = []
        base = items[0].map[0] if items else 0
        pos = 0
        for item in items:
            start, end = item.map[0] - base, item.map[1] - base
            out.extend(lines[pos:start])
            first = lines[start]
            marker = re.match(r"^(\s*(?:[-*+]|\d+[.)])\s*)", first)
            indent = len(marker.group(1)) if marker else 0
            body = [first[indent:]] + [
                line[indent:] if line[:indent].strip() == "" else line.lstrip() for line in lines[start + 1:end]
            ]
            converted = self.markdown("\n".join(body)).split("\n")
            out.append(first[:indent] + converted[0])
            out.extend((" " * indent + line) if line.strip() else "" for line in converted[1:])
            pos = end
        out.extend(lines[pos:])
        return "\n".join(out)

    def heading(self, tok, lines: list[str], top: bool) -> str:
        level = int(tok.tag[1:])
        if tok.markup and tok.markup[0] in "=-":  # setext heading: the text lines without the rule
            title = " ".join(line.strip() for line in lines[:-1])
        else:
            title = re.sub(r"^\s*#+\s*", "", lines[0])
            title = re.sub(r"\s+#+\s*$", "", title)
        number = None
        if top:
            number = self.resolver.section_number(self.sections)
            self.sections += 1
        prefix = f"{number}{self.secnumber_suffix}" if number else ""
        return f"{'#' * level} {prefix}{self.inline(title.strip())}"

    def display_math(self, tex: str, label: str | None) -> str:
        body = wrap_display_math(tex)
        number = self.resolver.equation(label) if label else None
        if label and number is None:
            self.unresolved.append(f"equation {label}")
        tag = f"\n\\tag{{{number}}}" if number else ""
        return f"$$\n{body}{tag}\n$$"

    # ---- directives -------------------------------------------------------------------------

    def _next(self, kind: str) -> int:
        index = self.counters.get(kind, 0)
        self.counters[kind] = index + 1
        return index

    def _with_heading(self, head: str, body: str) -> str:
        """``head`` (bold) run into the body's first paragraph, or on its own line before it."""
        body = body.strip("\n")
        if not body:
            return head
        first = next((t for t in self.md.parse(body, {}) if t.level == 0 and t.map), None)
        if first is not None and first.type == "paragraph_open" and first.map[0] == 0:
            return f"{head} {body}"
        return f"{head}\n\n{body}"

    def _end_mark(self, body: str, mark: str) -> str:
        """``mark`` at the end of the body's last paragraph, or as a paragraph of its own."""
        body = body.rstrip("\n")
        blocks = [t for t in self.md.parse(body, {}) if t.level == 0 and t.map and t.nesting >= 0]
        if blocks and blocks[-1].type == "paragraph_open" and not body.endswith("$$"):
            return f"{body} {mark}"
        return f"{body}\n\n{mark}" if body else mark

    def directive(self, name: str, argument: str, content: str) -> str | None:
        options, body = split_options(content)
        if name in NO_ARGUMENT and argument:
            body = f"{argument}\n{body}" if body else argument
            argument = ""
        classes = set(options.get("class", "").split())
        handler = getattr(self, "d_" + re.sub(r"\W", "_", name), None)
        if handler is not None:
            return handler(name, argument, options, body, classes)
        if name.startswith("prf:"):
            return self.d_prf(name, argument, options, body, classes)
        if name in ADMONITIONS:
            return self.d_admonition(name, argument, options, body, classes)
        if name in QUOTES:
            return self.container("blockquote", "", self.markdown(body))
        if name in CODE_DIRECTIVES:
            return self.d_code(name, argument, options, body, classes)
        if name.startswith("glue"):
            return self.d_glue_any(name, argument, options, body, classes)
        # Anything else: its title in bold and its content, readable.
        head = f"**{self.inline(argument)}**" if argument else ""
        converted = self.markdown(body) if body else ""
        return "\n\n".join(p for p in (head, converted) if p) or None

    def d_prf(self, name, argument, options, body, classes):
        realtype = name.split(":", 1)[1]
        if realtype == "proof":
            return self._end_mark(self._with_heading("*Proof.*", self.markdown(body)), "∎")
        label = options.get("label") or None
        index = self._next(name)
        number = None if "nonumber" in options else self.resolver.number(name, label, index)
        head = realtype.replace("-", " ").title() + (f" {number}" if number else "")
        if argument:
            head += f" ({self.inline(argument)})"
        return self._with_heading(f"**{head}.**", self.markdown(body))

    def _exercise_head(self, name, argument, options) -> tuple[str, str | None, str]:
        label = options.get("label") or None
        index = self._next("exercise")
        number = None if "nonumber" in options else self.resolver.number("exercise", label, index)
        title = self.inline(argument) if argument else ""
        if label:
            self.exercises[label] = (number, title)
        head = "Exercise" + (f" {number}" if number else "") + (f" ({title})" if title else "")
        return head, number, title

    def d_exercise(self, name, argument, options, body, classes):
        if "hidden" in options:  # the page does not show it (and numbers it not)
            return None
        head, _, _ = self._exercise_head(name, argument, options)
        return self._with_heading(f"**{head}.**", self.markdown(body))

    def d_exercise_start(self, name, argument, options, body, classes):
        head, _, _ = self._exercise_head(name, argument, options)
        self.gated.append(head)
        return self._with_heading(f"**{head}.**", self.markdown(body))

    def _solution_title(self, target: str) -> str:
        if target in self.exercises:
            number, title = self.exercises[target]
        else:
            found = self.resolver.exercise(target)
            if found is None:
                self.unresolved.append(f"exercise {target}")
                return f"Solution to {target}"
            number, title = found
        return "Solution to Exercise" + (f" {number}" if number else "") + (f" ({title})" if title else "")

    def d_solution(self, name, argument, options, body, classes):
        if "hidden" in options:
            return None
        summary = self._solution_title(argument)
        return self.details(summary, self.markdown(body), open_=("dropdown" not in classes))

    def d_solution_start(self, name, argument, options, body, classes):
        title = self._solution_title(argument)
        self.gated.append(title)
        lead = f"**{title}.**"
        return self._with_heading(lead, self.markdown(body)) if body else lead

    def d_solution_end(self, name, argument, options, body, classes):
        title = self.gated.pop() if self.gated else "Solution"
        return f"*End of the {title[0].lower()}{title[1:]}.*"

    def d_exercise_end(self, name, argument, options, body, classes):
        if self.gated:
            self.gated.pop()
        return None

    def d_admonition(self, name, argument, options, body, classes):
        title = ADMONITIONS.get(name, "")
        if argument:
            title = self.inline(argument) if not title else f"{title}: {self.inline(argument)}"
        content = self.markdown(body)
        if "dropdown" in classes or name in ("dropdown", "toggle"):
            return self.details(title or "Details", content, open_=False, bold=True)
        head = f"**{title}**" if title else ""
        return self.container("blockquote", "", "\n\n".join(p for p in (head, content) if p))

    def details(self, summary: str, content: str, open_: bool = False, bold: bool = False) -> str:
        summary = html.escape(_one_line(summary), quote=False)
        if bold:
            summary = f"<b>{summary}</b>"
        # (JupyterLab gives <details> no margin: without one the next paragraph touches the summary)
        tag = f'<details{" open" if open_ else ""} style="margin-bottom: 1em">'
        return self.container(tag, f"<summary>{summary}</summary>", content, close="</details>")

    @staticmethod
    def container(tag: str, head: str, content: str, close: str | None = None) -> str:
        """An HTML block around Markdown: blank lines separate the tags from the Markdown inside."""
        if not tag.startswith("<"):
            close = close or f"</{tag}>"
            tag = f"<{tag}>"
        return f"{tag}{head}\n\n{content.strip()}\n\n{close}"

    def d_math(self, name, argument, options, body, classes):
        tex = f"{argument}\n{body}" if argument else body
        return self.display_math(tex, options.get("label") or options.get("name") or None)

    def d_code(self, name, argument, options, body, classes):
        language = argument.split()[0] if argument else ("python" if name == "code-cell" else "")
        if name == "code-cell" and language in ("ipython3", "ipython"):
            language = "python"
        fence = "````" if "```" in body else "```"
        caption = options.get("caption")
        code = f"{fence}{language}\n{body}\n{fence}"
        return f"*{self.inline(caption)}*\n\n{code}" if caption else code

    def d_eval_rst(self, name, argument, options, body, classes):
        return f"```rst\n{body}\n```"

    def d_raw(self, name, argument, options, body, classes):
        return body if argument.strip() == "html" else None

    def d_only(self, name, argument, options, body, classes):
        return self.markdown(body) if "html" in argument or not argument else None

    def d_toctree(self, name, argument, options, body, classes):
        return None

    d_tableofcontents = d_toctree

    def d_bibliography(self, name, argument, options, body, classes):
        return "*(The book's Bibliography page lists every work the book cites.)*"

    def d_nb_exec_table(self, name, argument, options, body, classes):
        table = self.resolver.exec_table()
        return table or "*(On the book's page, a table of the execution time of every chapter.)*"

    def d_list_table(self, name, argument, options, body, classes):
        rows = []
        for row_tok in self._list_items(body):
            rows.append([_one_line(self.markdown(cell)).replace("|", "\\|") for cell in self._list_items(row_tok)])
        if not rows:
            return self.markdown(body)
        width = max(len(r) for r in rows)
        rows = [r + [""] * (width - len(r)) for r in rows]
        header_rows = int(options.get("header-rows", "0") or 0)
        head = rows[0] if header_rows else [""] * width
        data = rows[1:] if header_rows else rows
        table = "\n".join(
            ["| " + " | ".join(head) + " |", "|" + "---|" * width]
            + ["| " + " | ".join(r) + " |" for r in data]
        )
        title = f"**{self.inline(argument)}**\n\n" if argument else ""
        return title + table

    def _list_items(self, text: str) -> list[str]:
        """The source of each item of the (first) bullet list in ``text``, unindented."""
        lines = text.split("\n")
        items = []
        tokens = self.md.parse(text, {})
        depth = None
        for tok in tokens:
            if tok.type == "bullet_list_open" and depth is None:
                depth = tok.level
            elif tok.type == "list_item_open" and depth is not None and tok.level == depth + 1:
                start, end = tok.map
                item = lines[start:end]
                first = re.sub(r"^\s*[-*+]\s?", "", item[0])
                indent = len(item[0]) - len(item[0].lstrip()) + 2
                rest = [line[indent:] if line[:indent].strip() == "" else line.lstrip() for line in item[1:]]
                items.append("\n".join([first, *rest]).strip("\n"))
            elif tok.type == "bullet_list_close" and tok.level == depth:
                break
        return items

    def d_table(self, name, argument, options, body, classes):
        label = options.get("name") or None
        number = self.resolver.number("table", label, self._next("table"))
        caption = f"**Table {number}.** " if number else ""
        caption += self.inline(argument) if argument else ""
        return "\n\n".join(p for p in (caption.strip(), self.markdown(body)) if p)

    def _figure(self, image_md: str, label: str | None, caption_md: str, kind: str = "figure") -> str:
        number = self.resolver.number(kind, label, self._next(kind))
        head = f"**Figure {number}.**" if number else ""
        caption = " ".join(p for p in (head, caption_md) if p)
        return "\n\n".join(p for p in (image_md, caption) if p)

    def _attach(self, key: str, mime: str, data: str | bytes) -> str:
        ext = EXTENSIONS.get(mime, "bin")
        stem = re.sub(r"[^\w.-]", "_", key) or "image"
        name = f"{stem}.{ext}"
        n = 2
        while name in self.attachments and self.attachments[name] != {mime: data}:
            name, n = f"{stem}-{n}.{ext}", n + 1
        if isinstance(data, bytes):
            data = data.decode("utf-8") if mime == "image/svg+xml" else base64.b64encode(data).decode("ascii")
        elif mime != "image/svg+xml":
            data = "".join(data.split())  # base64 lines as nbformat stores them
        self.attachments[name] = {mime: data}
        return name

    def _image_md(self, key: str, bundle: dict[str, Any] | None, alt: str) -> str | None:
        if not bundle:
            return None
        mime = next((m for m in IMAGE_MIMES if m in bundle), None)
        if mime is None:
            return None
        name = self._attach(key, mime, bundle[mime])
        alt = _one_line(alt).replace("[", "(").replace("]", ")")
        return f"![{alt}](attachment:{name})"

    def d_glue_figure(self, name, argument, options, body, classes):
        key = argument.strip()
        bundle = self.resolver.glue(key)
        alt = options.get("alt") or (_one_line(body) if body else key)
        image = self._image_md(key, bundle, alt)
        if image is None:
            if bundle is None:
                self.unresolved.append(f"glue {key}")
            image = "*(The figure is drawn by the code above when you run the notebook.)*"
        return self._figure(image, options.get("name") or None, self.markdown(body) if body else "")

    def d_figure(self, name, argument, options, body, classes):
        path = argument.strip()
        found = self.resolver.image(path)
        alt = options.get("alt") or ""
        if found is not None:
            mime, data = found
            image = f"![{_one_line(alt)}](attachment:{self._attach(path.rsplit('/', 1)[-1], mime, data)})"
        else:
            image = f"*(Image: {path}, in the repository's `book/` folder.)*"
        if name == "image":
            return image
        return self._figure(image, options.get("name") or None, self.markdown(body) if body else "")

    d_image = d_figure

    def d_glue_any(self, name, argument, options, body, classes):
        key = argument.strip()
        bundle = self.resolver.glue(key)
        if bundle is None:
            self.unresolved.append(f"glue {key}")
            return "*(A value the code above computes.)*"
        if name == "glue:math" and "text/latex" in bundle:
            return self.display_math(str(bundle["text/latex"]).strip().strip("$"), options.get("label"))
        return self.bundle(key, bundle, inline=False)

    d_glue = d_glue_any

    def bundle(self, key: str, bundle: dict[str, Any], inline: bool, fmt: str = "") -> str:
        """A glued value as Markdown, by the priority of myst-nb's HTML output."""
        if "text/markdown" in bundle:
            text = str(bundle["text/markdown"])
            return self.inline(text.strip()) if inline else self.markdown(text)
        image = self._image_md(key, bundle, key)
        if image:
            return image
        if "text/latex" in bundle:
            tex = str(bundle["text/latex"]).strip()
            return tex if tex.startswith("$") else f"${tex}$"
        if "text/plain" in bundle:
            text = format_plain(str(bundle["text/plain"]), fmt)
            return _escape_text(text) if inline else f"```\n{text}\n```"
        return "*(a value the code above computes)*"

    # ---- inline ---------------------------------------------------------------------------

    def inline(self, text: str) -> str:
        return _INLINE.sub(self._inline_match, text)

    def _inline_match(self, m: re.Match) -> str:
        if m.group("role") is None:
            return m.group(0)
        name, content = m.group("name"), m.group("content")
        before, after = m.string[:m.start()].rstrip()[-1:], m.string[m.end():].lstrip()[:1]
        self._in_parentheses = before == "(" and after == ")"
        try:
            return self.role(name, content)
        except RecursionError:  # a glued value that quotes itself
            return content

    def role(self, name: str, content: str) -> str:
        base = name.split(":", 1)[1] if name.startswith(("py:", "std:")) else name
        if name in GLUE_ROLES:
            return self.r_glue(name, content)
        if name.startswith("cite"):
            return self.r_cite(name, content)
        if base in XREF_ROLES:
            return self.r_xref(base, content)
        if base in PY_ROLES or name.startswith("py:"):
            return self.r_python(base, content)
        if name == "math":
            return f"${content}$"
        if name in CODE_ROLES:
            title = _EXPLICIT.match(content)
            return f"`{title.group(1) if title else content}`"
        if name in ("emphasis", "dfn"):
            return f"*{content}*"
        if name in ("strong", "guilabel", "menuselection"):
            return f"**{content}**"
        if name in ("sub", "subscript"):
            return f"<sub>{html.escape(content)}</sub>"
        if name in ("sup", "superscript"):
            return f"<sup>{html.escape(content)}</sup>"
        if name == "abbr":
            m = re.match(r"^(.*?)\s*\((.*)\)$", content, re.S)
            return f"{m.group(1)} ({m.group(2)})" if m else content
        explicit = _EXPLICIT.match(content)
        return explicit.group(1) if explicit else content

    def r_xref(self, role: str, content: str) -> str:
        explicit = _EXPLICIT.match(content)
        title, target = (explicit.group(1), explicit.group(2).strip()) if explicit else (None, content.strip())
        found = self.resolver.xref(role, target, title)
        if found is None:
            self.unresolved.append(f"{role} {target}")
            text = title or target
            return f"({text})" if role == "eq" and not title else text
        text = found.text
        if role in ("ref", "doc") and found.is_title:
            text = f"*{text}*"
        if role in ("ref", "doc") and found.where:
            where = found.where
            # "Chapter 2" needs no "(chapter 2)"; "Chapter 2" to a section still gets its section.
            chapter = re.match(r"chapter (\S+)(?:, (.*))?$", where)
            if chapter and f"chapter {chapter.group(1)}" in found.text.lower():
                where = chapter.group(2)
            if where:
                # inside parentheses already: "(Title, chapter 1)", not "(Title (chapter 1))"
                text = f"{text}, {where}" if getattr(self, "_in_parentheses", False) else f"{text} ({where})"
        return text

    def r_cite(self, name: str, content: str) -> str:
        role = name.split(":", 1)[1] if ":" in name else "p"
        keys = [k.strip() for k in content.split(",") if k.strip()]
        for key in keys:
            if key not in self.cited:
                self.cited.append(key)
        text = self.resolver.cite(role, content.strip())
        if text is None:
            self.unresolved.append(f"cite {content}")
            return f"[{content}]"
        return text

    def r_python(self, role: str, content: str, add_parens: bool = True) -> str:
        explicit = _EXPLICIT.match(content)
        if explicit:
            title = explicit.group(1)
        else:
            target = content.strip()
            if target.startswith("~"):
                title = target[1:].rsplit(".", 1)[-1]
            else:
                title = target.lstrip(".")
            if role in ("func", "meth", "function", "method") and add_parens and not title.endswith(")"):
                title += "()"
        return f"`{title}`"

    def r_glue(self, name: str, content: str) -> str:
        content = content.strip()
        fmt = ""
        if name in ("glue:text", "glue:md"):
            key, _, fmt = content.rpartition(":")
            if not key:
                key, fmt = content, ""
        else:
            key = content
        doc = None
        if "::" in key:
            doc, key = key.split("::", 1)
        bundle = self.resolver.glue(key, doc)
        if bundle is None:
            self.unresolved.append(f"glue {key}")
            return "(a value computed by the code of this notebook)"
        if name == "glue:text":
            if "text/plain" not in bundle:
                return "(a value computed by the code of this notebook)"
            return _escape_text(format_plain(str(bundle["text/plain"]), fmt or "s"))
        if name == "glue:md":
            if "text/markdown" not in bundle:
                return "(a value computed by the code of this notebook)"
            return self.inline(str(bundle["text/markdown"]).strip())
        return self.bundle(key, bundle, inline=True)


def format_plain(text: str, fmt: str) -> str:
    """A glued ``text/plain`` value formatted as ``{glue:text}`` formats it (myst-nb's own code)."""
    try:
        from myst_nb.core.variables import format_plain_text
    except ImportError:  # pragma: no cover - myst-nb is a dependency of the book
        return text
    try:
        return format_plain_text(text, fmt)
    except (ValueError, TypeError):
        return text


def _is_removed(cell) -> bool:
    """A Markdown cell tagged ``remove-cell``: the page does not show it (for example the book's
    macros for a Jupyter that opens the ``.md``; the notebook's macro cell replaces them)."""
    tags = cell.get("metadata", {}).get("tags", [])
    return cell.cell_type == "markdown" and "remove-cell" in tags


def _extra_macros(cell_source: str, known: set[str]) -> str:
    """Definitions in a dropped macro cell for macros that ``_config.yml`` does not define."""
    extra = []
    for m in re.finditer(r"\\(?:re)?newcommand\s*\{?\\([A-Za-z]+)\}?", cell_source):
        if m.group(1) in known:
            continue
        # the whole definition: \newcommand{\x}[n]{...} with balanced braces
        i, depth, end = m.end(), 0, None
        while i < len(cell_source):
            ch = cell_source[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
            i += 1
        if end:
            extra.append(cell_source[m.start():end])
    return "\n".join(extra)


def cell_id(docname: str, index: int) -> str:
    return hashlib.sha1(f"{docname}:{index}".encode()).hexdigest()[:8]


def convert_notebook(
    nb: nbformat.NotebookNode,
    resolver: Resolver,
    *,
    docname: str,
    macros: dict[str, Any],
    header: str,
    extensions=BOOK_EXTENSIONS,
    secnumber_suffix: str = ". ",
) -> tuple[nbformat.NotebookNode, Converter]:
    """The notebook for any Jupyter: ``header`` (a Markdown cell), the macro cell, the chapter's
    cells converted (code cells unchanged, Markdown cells converted, Markdown cells tagged
    ``remove-cell`` dropped), and the works cited. Cell ids depend on ``docname`` and position."""
    converter = Converter(resolver, extensions, secnumber_suffix)
    cells = []
    extra = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and _is_removed(cell):
            extra.append(_extra_macros(cell.source, set(macros)))
            continue
        if cell.cell_type == "markdown":
            source, attachments = converter.markdown_cell(cell.source)
            new = nbformat.v4.new_markdown_cell(source, metadata=dict(cell.metadata))
            if attachments:
                new["attachments"] = attachments
            cells.append(new)
        else:
            cells.append(cell)
    head = [
        nbformat.v4.new_markdown_cell(header, metadata={"tags": ["notebook-header"]}),
        nbformat.v4.new_markdown_cell(
            macro_cell_source(macros, "\n".join(e for e in extra if e)),
            metadata={"tags": ["book-macros"]},
        ),
    ]
    tail = []
    works = resolver.works_cited(converter.cited)
    if works:
        tail.append(nbformat.v4.new_markdown_cell(
            "**Works cited in this notebook** (the book's Bibliography page lists them all):\n\n"
            + "\n".join(f"- {w}" for w in works),
            metadata={"tags": ["works-cited"]},
        ))
    out = nbformat.v4.new_notebook(metadata=nb.metadata)
    out.nbformat, out.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    out.cells = head + cells + tail
    for index, cell in enumerate(out.cells):
        cell["id"] = cell_id(docname, index)
    return out, converter
