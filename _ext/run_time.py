"""Sphinx extension: each chapter's opening box says how long the chapter takes to run, as measured.

A chapter opens with a "Learning goals" admonition. For every page that myst-nb executed (or took
from its execution cache, where ``make test``'s chapter stage stores the time it measured), this adds
one last line to that box:

    Run time: about 15 s, measured when this page was built (on 2 CPU cores).

The number is myst-nb's own record of the execution (``exec_data["runtime"]``, in seconds), never
typed by hand, so it changes when the chapter does. A chapter page (``book/chN_*.md``) that was
executed but has no "Learning goals" box, or whose execution left no time, is a build warning, which
the strict build turns into an error. The PDF's boxes say the same (the LaTeX builder resolves the
book as one tree, in which each chapter is found by its ``start_of_file`` node).
"""

from __future__ import annotations

import os
import re

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
GOALS_TITLE = "Learning goals"
CHAPTER = re.compile(r"(^|/)ch\d+_[^/]*$")


def run_time_text(seconds: float) -> str:
    """``seconds`` as a reader would say it: "about 8 s", "about 25 s", "about 1 min 10 s"."""
    if seconds < 10:
        return f"about {max(1, round(seconds))} s"
    rounded = int(5 * round(seconds / 5))
    if rounded < 60:
        return f"about {rounded} s"
    minutes, rest = divmod(rounded, 60)
    return f"about {minutes} min" + (f" {rest} s" if rest else "")


def _goals_box(doctree: nodes.Element) -> nodes.Element | None:
    for node in doctree.findall(nodes.admonition):
        titles = [c for c in node.children if isinstance(c, nodes.title)]
        if titles and titles[0].astext().strip() == GOALS_TITLE:
            return node
    return None


def _add_run_time(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Each page's own doctree (HTML); for the LaTeX builder, which resolves the whole book as one
    tree, each chapter inlined in it (a ``start_of_file`` node names its page)."""
    from sphinx import addnodes

    parts = [(node["docname"], node) for node in doctree.findall(addnodes.start_of_file)]
    for name, tree in parts or [(docname, doctree)]:
        _add_run_time_to(app, tree, name)


def _add_run_time_to(app: Sphinx, doctree: nodes.Element, docname: str) -> None:
    from myst_nb.sphinx_ import NbMetadataCollector

    data = NbMetadataCollector.get_exec_data(app.env, docname)
    if not CHAPTER.search(docname) or data is None:
        return
    runtime = data.get("runtime") if isinstance(data, dict) else getattr(data, "runtime", None)
    box = _goals_box(doctree)
    if box is None:
        LOGGER.warning(f"{docname}: no '{GOALS_TITLE}' admonition to hold the chapter's run time",
                       location=docname)
        return
    if runtime is None:
        LOGGER.warning(f"{docname}: myst-nb recorded no run time for this chapter", location=docname)
        return
    cores = os.cpu_count() or 1
    para = nodes.paragraph(
        "", "",
        nodes.strong(text="Run time: "),
        nodes.Text(f"{run_time_text(float(runtime))}, measured when this page was built "
                   f"(on {cores} CPU core{'s' if cores != 1 else ''})."),
        classes=["chapter-run-time"],
    )
    box += para


def setup(app: Sphinx) -> dict:
    app.connect("doctree-resolved", _add_run_time)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
