"""The book's table of contents, as the tests read it (shared by the built-book, download and lab tests).

``toc_docnames()`` lists every page of ``_toc.yml`` in reading order as a Sphinx docname
(``book/intro``, ``book/ch1_evidence``, ...); ``myst_notebooks()`` those whose source is a MyST Markdown
notebook, decided by myst-nb's own test, as the build decides.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from myst_nb.core.read import is_myst_markdown_notebook

ROOT = Path(__file__).resolve().parents[1]


def toc_docnames() -> list[str]:
    """Docnames of every page in ``_toc.yml``, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    return [str(Path(n).with_suffix("")) if Path(n).suffix in {".md", ".ipynb"} else n for n in names]


def is_notebook(docname: str) -> bool:
    """Whether the page's ``.md`` source is a MyST Markdown notebook (has a jupytext/kernelspec header)."""
    path = ROOT / f"{docname}.md"
    return path.is_file() and is_myst_markdown_notebook(path.read_text(encoding="utf-8"))


def myst_notebooks() -> list[str]:
    """Docnames of the pages of ``_toc.yml`` that are MyST notebooks: the executed chapters."""
    return [d for d in toc_docnames() if is_notebook(d)]
