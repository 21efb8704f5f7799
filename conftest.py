"""Pytest configuration of The ELBO Book: the chapter runner and the browser check's option.

Chapter runner
--------------
The chapters are MyST Markdown notebooks (``book/**/*.md`` with a Jupytext header whose
``format_name`` is ``myst``, the same test myst-nb applies to decide a page is a notebook). nbval only
reads ``.ipynb`` files, so this collector reads each chapter with ``jupytext.read`` and hands it to nbval:

    pytest --nbval-lax book                 # every chapter, top to bottom, each in a fresh kernel
    pytest --nbval-lax book/intro.md        # one chapter

Each code cell is one test item, ``book/<chapter>.md::Cell <n>`` (n counts code cells from 0). The
kernel runs in the chapter's folder, ``book/``, exactly as in the Jupyter Book build and for a learner.
A failing cell fails its item with the chapter file, the cell number, the line where the cell starts
in the ``.md`` file, the cell's source and the traceback; the later cells of that chapter are then
skipped (they would only fail because of it). ``--nbval-lax`` checks that cells run; chapters check their numbers with ``assert`` statements
(stored outputs do not exist in a text notebook, so ``# NBVAL_CHECK_OUTPUT`` would check nothing).
Without ``--nbval``/``--nbval-lax`` no chapter is collected.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
BOOK = ROOT / "book"

# Generated notebook copies (``jupytext --to ipynb``) would run each chapter twice.
collect_ignore_glob = ["book/**/*.ipynb", "book/*.ipynb"]

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*\{code-cell\}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--book-html",
        action="store",
        default=None,
        metavar="DIR",
        help="built HTML of the book (e.g. _build/html) for tests/test_book_html.py; "
        "without it those browser tests are skipped. `make test` passes it after a cold build.",
    )


def _front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    import yaml

    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def is_myst_notebook(path: Path) -> bool:
    """True for a MyST Markdown notebook: the files myst-nb executes when it builds the book."""
    meta = _front_matter(path)
    fmt = (meta.get("jupytext") or {}).get("text_representation", {}).get("format_name")
    return fmt == "myst" or meta.get("file_format") == "mystnb"


def _code_cell_lines(path: Path) -> list[int]:
    """1-based line of each ``{code-cell}`` fence in the file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [i + 1 for i, line in enumerate(lines) if _FENCE.match(line)]


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    opt = parent.config.option
    if not (getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False)):
        return None
    if file_path.suffix != ".md":
        return None
    try:
        rel = file_path.resolve().relative_to(BOOK)
    except ValueError:
        return None
    if any(part.startswith((".", "_")) for part in rel.parts[:-1]):  # _build, .ipynb_checkpoints
        return None
    if not is_myst_notebook(file_path):
        return None
    return _markdown_notebook_class().from_parent(parent, path=file_path)


@functools.cache
def _markdown_notebook_class():
    """Build the collector lazily, so plain ``pytest tests`` does not import nbval's machinery."""
    from nbval.plugin import IPyNbCell, IPyNbFile, find_comment_markers, find_metadata_tags

    class MarkdownNotebookCell(IPyNbCell):
        """An nbval cell whose failure names the chapter file, the cell and its line."""

        def runtest(self):
            # Once a cell has failed, the later cells of that chapter would fail only because of it
            # (NameError, ...): skip them, so the report points at the first, real failure.
            failed = getattr(self.parent, "first_failed_cell", None)
            if failed is not None:
                pytest.skip(f"cell {failed} of this chapter failed")
            try:
                super().runtest()
            except pytest.skip.Exception:  # NBVAL_SKIP / nbval-skip: not a failure
                raise
            except Exception:
                self.parent.first_failed_cell = self.cell_num
                raise

        def reportinfo(self):
            line = self.parent.cell_lines.get(self.cell_num)
            where = f"{self.parent.relpath}::Cell {self.cell_num}"
            if line:
                where += f" (line {line})"
            return self.path, (line - 1 if line else None), where

        def repr_failure(self, excinfo, style=None):
            line = self.parent.cell_lines.get(self.cell_num)
            where = f"{self.parent.relpath}:{line}" if line else self.parent.relpath
            head = f"{where}: code cell {self.cell_num} failed"
            return f"{head}\n\n" + str(super().repr_failure(excinfo))

    class MarkdownNotebook(IPyNbFile):
        """nbval's notebook collector, reading a MyST Markdown notebook through Jupytext."""

        def collect(self):
            import jupytext

            # As nbval's IPyNbFile.collect, which can only read .ipynb files.
            self.nb = jupytext.read(str(self.path))
            self.relpath = self.path.relative_to(self.config.rootpath).as_posix()
            fences = _code_cell_lines(self.path)
            code_cells = [cell for cell in self.nb.cells if cell.cell_type == "code"]
            self.cell_lines = dict(enumerate(fences)) if len(fences) == len(code_cells) else {}
            for cell_num, cell in enumerate(code_cells):
                options = defaultdict(bool, find_metadata_tags(cell.metadata))
                options.update(dict(find_comment_markers(cell.source)))
                options.setdefault("check", self.compare_outputs)
                yield MarkdownNotebookCell.from_parent(
                    self, name=f"Cell {cell_num}", cell_num=cell_num, cell=cell, options=options
                )

    return MarkdownNotebook
