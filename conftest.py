"""Pytest configuration of The ELBO Book: nbval over the chapters, and the browser check's option.

The chapters under nbval
------------------------
The chapters are MyST Markdown notebooks (``book/*.md`` with a Jupytext header whose ``format_name`` is
``myst``, myst-nb's own test of whether the build executes a page). nbval reads only ``.ipynb`` files, so
the collector below reads each chapter as the Jupyter Book build does and hands it to nbval::

    pytest --nbval-lax book/ch3_elbo.md            # one chapter, cell by cell
    pytest --nbval-lax book -n 2                   # every chapter, two at a time (pytest-xdist)
    pytest --nbval-lax book -n 2 --book-cache _build/.jupyter_cache   # what `make test-chapters` runs

What it guarantees:

* **Which chapters, read how.** Every MyST notebook under ``book/``, read with myst-nb's reader and the
  Markdown and notebook configuration Jupyter Book derives from ``_config.yml``, so its code cells are
  exactly those the build executes (and hashes: see ``--book-cache``). A page matched by
  ``execute.exclude_patterns`` is not executed, as in the build.
* **How each runs.** Top to bottom in a fresh kernel (nbval starts one per chapter and stops it after),
  with the chapter's folder, ``book/``, as working directory, each cell with the build's timeout
  (``execute.timeout``). A cell tagged ``raises-exception`` may raise; any other error fails it.
* **Failures name the place.** Each code cell is one test item, ``book/<chapter>.md::Cell <n>`` (n counts
  code cells from 0). A failing cell or self-check fails its item with the chapter file, the cell number,
  the line of its ``{code-cell}`` fence in the ``.md``, its source and the traceback; the later cells of
  that chapter are skipped (they would only fail because of it). A figure that IPython showed as text
  (``<Figure size ...>``, because drawing it raised) fails its cell too. ``--nbval-lax`` checks that cells
  run; the chapters check their numbers themselves (``vaelib.checks``).
* **Two at a time, in a useful order.** Under pytest-xdist (``-n 2``) every cell of a chapter goes to the
  same worker, in order, and a chapter that reuses another's training through ``vaelib.fit_cached``
  (:data:`CHAINS`) runs after it on the same worker (:func:`pytest_xdist_make_scheduler`); the longest
  work starts first (:data:`SECONDS_HINT`).
* **The build reuses the results** (``--book-cache DIR``). When every cell of a chapter has passed, the
  chapter, with the outputs nbval received, is stored in the jupyter-cache at ``DIR`` as myst-nb stores
  an executed notebook: a project record for the source and the notebook under the hash of its code cells
  and kernelspec, with its execution time. The strict build that follows reads every chapter from there
  and executes nothing (``tools/check_build_log.py`` checks its log). A chapter with a failed or skipped
  cell is not stored. At the end a table lists each chapter's time and result.

Without ``--nbval``/``--nbval-lax`` no chapter is collected, so ``pytest tests`` runs only the unit tests.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import time
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent
BOOK = ROOT / "book"

# Generated notebook copies (``jupytext --to ipynb``) would run each chapter twice.
collect_ignore_glob = ["book/**/*.ipynb", "book/*.ipynb"]

#: Chapters that reuse a training of an earlier chapter through ``vaelib.fit_cached``, in order. Each chain
#: runs on one worker, one chapter after the other, so that the later chapter reads the model instead of
#: waiting for the lock of a concurrent training (which it would report on stderr, a build warning).
CHAINS: tuple[tuple[str, ...], ...] = (
    ("book/ch6_generative.md", "book/ch7_evaluation.md"),
    ("book/ch8_richer_posteriors.md", "book/ch9_tighter_bounds.md", "book/ch10_learned_priors.md",
     "book/ch11_hierarchy.md"),
)

#: Seconds of the long chapters in one serial pass on 2 cores (benchmarks/make_test.py, 2026-12-07), used
#: only to start the longest work first; chapters not listed count as :data:`DEFAULT_SECONDS`.
SECONDS_HINT: dict[str, float] = {
    "book/ch6_generative.md": 43.0, "book/ch7_evaluation.md": 33.0, "book/ch8_richer_posteriors.md": 38.0,
    "book/ch9_tighter_bounds.md": 37.0, "book/ch10_learned_priors.md": 29.0, "book/ch11_hierarchy.md": 39.0,
    "book/ch12_diffusion.md": 61.0, "book/ch4_reconstruction_regularisation.md": 17.0,
    "book/ch3_elbo.md": 14.0,
}
DEFAULT_SECONDS = 8.0

_FIGURE_TEXT = re.compile(r"<Figure size \d+(?:\.\d+)?x\d+(?:\.\d+)? with \d+ Axes>")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--book-html",
        action="store",
        default=None,
        metavar="DIR",
        help="built HTML of the book (e.g. _build/html) for tests/test_book_html.py; "
        "without it those browser tests are skipped. `make test` passes it after a cold build.",
    )
    parser.addoption(
        "--book-cache",
        action="store",
        default=None,
        metavar="DIR",
        help="with --nbval-lax: store each chapter whose cells all passed in the jupyter-cache DIR "
        "(the build's is _build/.jupyter_cache), as the Jupyter Book build stores an executed notebook.",
    )


def _nbval_active(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False))


def pytest_configure(config: pytest.Config) -> None:
    if not _nbval_active(config):
        return
    # The build's cell timeout, unless one was given on the command line.
    if str(config.option.nbval_cell_timeout) == "2000":  # nbval's default
        timeout = book_config().nb_config.execution_timeout
        if timeout:
            config.option.nbval_cell_timeout = timeout
    # Under pytest-xdist, every cell of a chapter must run in one kernel, in order: see
    # pytest_xdist_make_scheduler. Its work units go out in the order of collection (longest first).
    if getattr(config.option, "numprocesses", None):
        if config.getvalue("dist") == "each":
            raise pytest.UsageError("--dist each would run every chapter on every worker")
        config.option.loadscopereorder = False
    if not _is_xdist_worker(config):
        config.pluginmanager.register(ChapterSummary(config), "book-chapter-summary")


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """(pytest-xdist, in the controller) Chapters as work units: all cells of a chapter go to one worker,
    in order, and so does every chapter of a chain (:data:`CHAINS`), in the chain's order.

    xdist's own ``--dist loadgroup`` would do this with ``xdist_group`` marks, but with pytest 9.2 the
    group never reaches the item's id (xdist 3.8 sets a private attribute pytest no longer reads), so
    every cell became its own unit. This is xdist's ``loadscope`` scheduler with the chapter (or the
    first chapter of its chain) as the scope, which is what the hook is for.
    """
    if not _nbval_active(config):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ChapterScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return _chain_of(path)[0] if path.endswith(".md") else nodeid

    return ChapterScheduling(config, log)


# ---- reading a chapter as the build does ----------------------------------------------------------------


@functools.cache
def book_config() -> Any:
    """The Markdown and notebook configuration of the Jupyter Book build of this book.

    Jupyter Book turns ``_config.yml`` into Sphinx settings (:func:`jupyter_book.config.get_final_config`,
    what ``jupyter-book build`` calls); myst-parser and myst-nb build their configuration objects from the
    ``myst_*`` and ``nb_*`` settings, with their own defaults for the rest. The same is done here.
    """
    from types import SimpleNamespace

    from jupyter_book.config import get_final_config
    from myst_nb.core.config import NbParserConfig
    from myst_parser.config.main import MdParserConfig

    sphinx_config, _ = get_final_config(
        user_yaml=ROOT / "_config.yml", cli_config={"latex_individualpages": False}, sourcedir=ROOT
    )
    md_values = {
        name: sphinx_config.get(f"myst_{name}", default)
        for name, default, field in MdParserConfig().as_triple()
        if "sphinx" not in field.metadata.get("omit", [])
    }
    nb_values = {
        name: sphinx_config.get(f"nb_{name}", default)
        for name, default, field in NbParserConfig().as_triple()
        if not field.metadata.get("sphinx_exclude")
    }
    return SimpleNamespace(md_config=MdParserConfig(**md_values), nb_config=NbParserConfig(**nb_values))


def read_chapter(path: Path) -> tuple[Any, dict | None, Any]:
    """(notebook, read format, notebook configuration) of ``path``, as myst-nb's Sphinx parser reads it.

    The same reader (:func:`myst_nb.core.read.create_nb_reader`) with the same Markdown configuration;
    then, as the parser does, the kernel-name aliases and the notebook-level ``mystnb`` overrides of the
    notebook configuration. The notebook's ``source_map`` holds the line of each cell's opening fence.
    """
    from myst_nb.core.nb_to_tokens import nb_node_to_dict
    from myst_nb.core.read import create_nb_reader

    config = book_config()
    text = path.read_text(encoding="utf-8")
    reader = create_nb_reader(str(path), config.md_config, config.nb_config, text)
    if reader is None:
        raise ValueError(f"{path} is not a notebook myst-nb can read")
    notebook = reader.read(text)
    nb_config = config.nb_config
    kernel_name = notebook.metadata.get("kernelspec", {}).get("name")
    if kernel_name is not None and nb_config.kernel_rgx_aliases:
        for rgx, alias in nb_config.kernel_rgx_aliases.items():
            if re.fullmatch(rgx, kernel_name):
                notebook.metadata["kernelspec"]["name"] = alias
                break
    if nb_config.metadata_key in notebook.metadata:
        overrides = nb_node_to_dict(notebook.metadata[nb_config.metadata_key])
        overrides.pop("output_folder", None)
        nb_config = nb_config.copy(**overrides)
    return notebook, reader.read_fmt, nb_config


def is_myst_notebook(path: Path) -> bool:
    """True for a MyST Markdown notebook: the files myst-nb executes when it builds the book."""
    from myst_nb.core.read import is_myst_markdown_notebook

    return is_myst_markdown_notebook(path.read_text(encoding="utf-8"))


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if not _nbval_active(parent.config) or file_path.suffix != ".md":
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


# ---- order and grouping under pytest-xdist ----------------------------------------------------------------


def _chain_of(rel: str) -> tuple[str, ...]:
    return next((chain for chain in CHAINS if rel in chain), (rel,))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Chapters by the work of their chain, longest first; a chain's chapters in order."""
    if not _nbval_active(config):
        return
    chapters = [it for it in items if getattr(it, "chapter", None) is not None]
    if not chapters:
        return
    present = {it.chapter for it in chapters}

    def key(item: Any) -> tuple:
        chain = [rel for rel in _chain_of(item.chapter) if rel in present]
        work = sum(SECONDS_HINT.get(rel, DEFAULT_SECONDS) for rel in chain)
        return (-work, chain[0], chain.index(item.chapter), item.cell_num)

    others = [it for it in items if getattr(it, "chapter", None) is None]
    items[:] = sorted(chapters, key=key) + others


# ---- the collector ---------------------------------------------------------------------------------------


def _unrendered_figure(outputs: list) -> bool:
    """True if an output is a matplotlib figure with only its text form (``<Figure size ...>``, no image):
    IPython's fallback when drawing the figure raised, which neither execution nor the build reports."""
    for output in outputs:
        data = output.get("data", {})
        # A figure glued with myst_nb.glue is stored under "application/papermill.record/<mime type>".
        texts = [v for k, v in data.items() if k == "text/plain" or k.endswith("/text/plain")]
        text = "".join("".join(v) if isinstance(v, list) else str(v) for v in texts)
        if _FIGURE_TEXT.search(text) and not any("image/" in k for k in data):
            return True
    return False


@functools.cache
def _markdown_notebook_class():
    """Build the collector lazily, so plain ``pytest tests`` does not import nbval's machinery."""
    from nbval.plugin import IPyNbCell, IPyNbFile, NbCellError, find_comment_markers, find_metadata_tags

    class MarkdownNotebookCell(IPyNbCell):
        """An nbval cell whose failure names the chapter file, the cell and its line."""

        @property
        def chapter(self) -> str:
            return self.parent.relpath

        def runtest(self):
            # Once a cell has failed, the later cells of that chapter would fail only because of it
            # (NameError, ...): skip them, so the report points at the first, real failure.
            failed = self.parent.first_failed_cell
            if failed is not None:
                self.parent.complete = False
                pytest.skip(f"cell {failed} of this chapter failed")
            try:
                super().runtest()
                if _unrendered_figure(self.test_outputs or []):
                    self.raise_cell_error(
                        "a matplotlib figure failed to draw (IPython showed its text, '<Figure size ...>', "
                        "instead of an image): a mathtext error in a label or title is the usual cause")
            except pytest.skip.Exception:  # NBVAL_SKIP / nbval-skip: not a failure, but not the build's run
                self.parent.complete = False
                raise
            except BaseException as exc:
                self.parent.first_failed_cell = self.cell_num
                self.parent.complete = False
                self.user_properties.append(("error", self._error_line(exc)))
                raise
            self.parent.outputs[self.cell_num] = self.test_outputs

        def _error_line(self, exc: BaseException) -> str:
            """``ExceptionName: message`` of the kernel's error, or of the failure itself."""
            for output in self.test_outputs or []:
                if output.get("output_type") == "error":
                    lines = [ln for ln in _ANSI.sub("", str(output.get("evalue", ""))).splitlines() if ln.strip()]
                    return f"{output.get('ename')}: {lines[0].strip() if lines else ''}".rstrip(": ")
            text = str(exc) if isinstance(exc, NbCellError) else f"{type(exc).__name__}: {exc}"
            return (text.strip().splitlines() or [type(exc).__name__])[0]

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
        """nbval's notebook collector, reading a MyST Markdown notebook as the Jupyter Book build does."""

        first_failed_cell: int | None = None
        complete = True

        def collect(self):
            self.relpath = _rel(self.path)
            # As nbval's IPyNbFile.collect, which can only read .ipynb files.
            self.nb, self.read_fmt, nb_config = read_chapter(self.path)
            if any(PurePosixPath(self.path.as_posix()).match(p) for p in nb_config.execution_excludepatterns):
                return  # the build does not execute it either
            if nb_config.execution_in_temp:
                raise pytest.UsageError(f"{self.relpath}: execute.run_in_temp is set; the chapters run in book/")
            self.outputs: dict[int, list] = {}
            code_cells = [(i, c) for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]
            source_map = self.nb.metadata.get("source_map") or []
            # myst-nb's reader records the 1-based line of each cell's opening fence.
            self.cell_lines = {n: source_map[i] for n, (i, _) in enumerate(code_cells) if i < len(source_map)}
            for cell_num, (_, cell) in enumerate(code_cells):
                options = defaultdict(bool, find_metadata_tags(cell.metadata))
                options.update(dict(find_comment_markers(cell.source)))
                options.setdefault("check", self.compare_outputs)
                yield MarkdownNotebookCell.from_parent(
                    self, name=f"Cell {cell_num}", cell_num=cell_num, cell=cell, options=options
                )

        def setup(self):
            self.started = time.perf_counter()
            try:
                super().setup()
            except RuntimeError as exc:
                # nbval's setup only starts the kernel. One that dies before it answers (seen once, in a
                # fresh clone's unit stage, when two workers started kernels at the same instant) has
                # run none of the chapter's code: start it once more, and say so. A second failure
                # fails the chapter.
                import warnings

                warnings.warn(f"{self.relpath}: the kernel failed to start ({exc}); starting it again",
                              RuntimeWarning, stacklevel=1)
                self.kernel = None
                super().setup()

        def teardown(self):
            try:
                super().teardown()
            finally:
                cache = self.config.option.book_cache
                n_code = sum(c.cell_type == "code" for c in self.nb.cells)
                if cache and self.complete and len(self.outputs) == n_code:
                    store_executed(self, Path(cache), time.perf_counter() - self.started)

    return MarkdownNotebook


# ---- storing a chapter that passed in the build's cache -----------------------------------------------------


def executed_notebook(chapter: Any) -> Any:
    """The chapter as read, with each code cell's outputs and execution count from nbval's run."""
    notebook = copy.deepcopy(chapter.nb)
    count = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs = [copy.deepcopy(o) for o in chapter.outputs[count]]
        count += 1
        for output in outputs:
            if output.get("output_type") == "execute_result":
                output["execution_count"] = count
        cell.outputs = outputs
        cell.execution_count = count
    return notebook


def store_executed(chapter: Any, cache_path: Path, seconds: float) -> None:
    """Store the executed chapter as myst-nb does in 'cache' mode: a project record for the source, then
    the notebook under the hash of its code, with its execution time (the build's statistics table reads
    it). Workers write one at a time (an exclusive lock beside the cache)."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_path.with_name(cache_path.name + ".lock")):
        cache = get_cache(str(cache_path))
        record = cache.add_nb_to_project(str(chapter.path), read_data=chapter.read_fmt or {})
        cache.cache_notebook_bundle(
            CacheBundleIn(executed_notebook(chapter), record.uri, data={"execution_seconds": seconds}),
            check_validity=False,
            overwrite=True,
        )


@contextlib.contextmanager
def _exclusive(lock_file: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: one worker at a time is then up to the caller (-n 1)
        yield
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- the table at the end ----------------------------------------------------------------------------------


class ChapterSummary:
    """Collects the cell reports (in the controller under xdist) and prints one line per chapter: its
    seconds (setup, cells and teardown, kernel start and stop included) and its result."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.seconds: dict[str, float] = defaultdict(float)
        self.failure: dict[str, str] = {}
        self.skipped: dict[str, int] = defaultdict(int)
        self.started = time.perf_counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        path = report.nodeid.split("::", 1)[0]
        if not path.endswith(".md"):
            return
        self.seconds[path] += report.duration
        if report.failed and path not in self.failure:
            where = report.location[2] if report.location else report.nodeid
            cell = where.split("::", 1)[-1]
            error = dict(report.user_properties).get("error", "")
            self.failure[path] = f"FAILED at {cell.replace('Cell', 'code cell')}: {error}".rstrip(": ")
        elif report.skipped and report.when == "call":
            self.skipped[path] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.seconds:
            return
        from jupyter_cache import get_cache

        cache = self.config.option.book_cache
        stored = set()
        if cache and Path(cache).exists():
            stored = {_rel(Path(r.uri)) for r in get_cache(str(cache)).list_cache_records()}
        width = max(len(p) for p in self.seconds)
        write = terminalreporter.write_line
        write("")
        write(f"{'chapter':<{width}}  seconds  result")
        natural = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)]  # noqa: E731
        for path in sorted(self.seconds, key=natural):
            if path in self.failure:
                result = self.failure[path]
            elif not cache:
                result = "passed"
            elif path in stored:
                result = "passed, stored in the execution cache"
            elif self.skipped.get(path):
                result = f"passed, {self.skipped[path]} cell(s) skipped: not stored"
            else:
                result = "passed, NOT stored"
            write(f"{path:<{width}}  {self.seconds[path]:7.1f}  {result}")
        failed = len(self.failure)
        write(f"{len(self.seconds)} chapters, {len(self.seconds) - failed} passed, {failed} failed; "
              f"{sum(self.seconds.values()):.1f} s of execution in {time.perf_counter() - self.started:.1f} s"
              + (f" (cache: {cache})" if cache else ""))
