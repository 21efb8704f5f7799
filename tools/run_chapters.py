#!/usr/bin/env python3
"""Execute every chapter of The ELBO Book once, in parallel, and fill the build's execution cache.

    .venv/bin/python tools/run_chapters.py                   # every chapter, 2 at a time
    .venv/bin/python tools/run_chapters.py --jobs 1          # one after the other
    .venv/bin/python tools/run_chapters.py book/ch3_elbo.md  # some chapters only

This is the chapter stage of ``make test`` (``make test-chapters``). What it guarantees:

* **Which chapters.** The pages of ``_toc.yml`` whose ``.md`` source is a MyST Markdown notebook, decided
  by myst-nb's own test (:func:`myst_nb.core.read.is_myst_markdown_notebook`): exactly the pages the
  Jupyter Book build executes.
* **How each runs.** Top to bottom in a fresh kernel (one kernel per chapter, started for it and shut
  down after it), with the chapter's folder (``book/``) as working directory, each cell with the build's
  timeout, through the function the build itself executes notebooks with
  (:func:`jupyter_cache.executors.utils.single_nb_execution`). A cell tagged ``raises-exception`` may
  raise, as in the build; any other error fails the chapter.
* **Failures name the place.** A failing cell or self-check (an ``assert``) prints

      FAILED book/<chapter>.md, code cell <n> (line <L> of the .md): <exception>

  followed by the cell's source and the traceback (``n`` counts code cells from 0, ``L`` is the line of
  the cell's ``{code-cell}`` fence). The other chapters still run; the exit status is 1 at the end.
* **The build reuses the results.** Each chapter is read exactly as myst-nb reads it for the build (the
  same reader, with the Markdown and notebook configuration Jupyter Book derives from ``_config.yml``),
  so the executed notebook gets the same jupyter-cache key (a hash of its code cells and kernelspec).
  A chapter that passed is stored in the build's cache (``_build/.jupyter_cache``) with its execution
  time, as myst-nb stores it; the strict build that follows reads every chapter from there and executes
  nothing (``--check-build-log`` verifies that from the build's log). A chapter that failed is not
  stored.

Order: two chapters run at a time (``--jobs``), longest first, except that a chapter listed in
:data:`AFTER` waits until the chapter it depends on has finished (chapter 7 reuses the model chapter 6
trains, through :func:`vaelib.fit_cached`, so it would otherwise train it a second time).

Exit status: 0 when every chapter passed, 1 when any failed, 2 for a usage error (an unknown chapter, an
unreadable configuration, or ``--check-build-log`` finding an execution or a page not read from cache).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses as dc
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]

#: A chapter that must start only after another has finished: ``{later: earlier}``, as paths relative to
#: the book's root. Chapter 7 evaluates the model chapter 6 trains; with the two in sequence, chapter 7
#: reads it from :func:`vaelib.fit_cached` instead of training it again (a lock file would keep two
#: concurrent trainings correct, but the second would still wait for the first).
AFTER: dict[str, str] = {"book/ch7_evaluation.md": "book/ch6_generative.md",
                         "book/ch9_tighter_bounds.md": "book/ch8_richer_posteriors.md",
                         "book/ch10_learned_priors.md": "book/ch9_tighter_bounds.md",
                         "book/ch11_hierarchy.md": "book/ch10_learned_priors.md"}

#: Rough execution seconds of the long chapters on a 2-core laptop, used only to start the longest
#: first (a chapter that has to wait for another counts towards the one it waits for). Chapters not
#: listed count as :data:`DEFAULT_SECONDS`.
SECONDS_HINT: dict[str, float] = {"book/ch6_generative.md": 60.0, "book/ch7_evaluation.md": 40.0,
                                  "book/ch8_richer_posteriors.md": 60.0, "book/ch9_tighter_bounds.md": 55.0,
                                  "book/ch10_learned_priors.md": 45.0,
                                  "book/ch11_hierarchy.md": 50.0, "book/ch12_diffusion.md": 70.0}
DEFAULT_SECONDS = 15.0

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ---- configuration and reading, as the build does ----------------------------------------------------


@dc.dataclass(frozen=True)
class BookConfig:
    """What the runner needs from the book's configuration (``_config.yml`` through Jupyter Book)."""

    root: Path
    md_config: Any  # myst_parser.config.main.MdParserConfig
    nb_config: Any  # myst_nb.core.config.NbParserConfig
    cache_path: Path


def load_config(root: Path, build_dir: Path | None = None) -> BookConfig:
    """The Markdown and notebook configuration the Jupyter Book build of ``root`` uses.

    Jupyter Book turns ``_config.yml`` into Sphinx settings (:func:`jupyter_book.config.get_final_config`,
    what ``jupyter-book build`` and ``jupyter-book config sphinx`` call); myst-parser and myst-nb then
    build their configuration objects from the ``myst_*`` and ``nb_*`` settings, with their own defaults
    for the rest. The same is done here. The cache path is myst-nb's default, ``<build>/.jupyter_cache``
    (the folder above Sphinx's output folder ``<build>/html``), unless ``execute.cache`` sets one.
    """
    from jupyter_book.config import get_final_config
    from myst_nb.core.config import NbParserConfig
    from myst_parser.config.main import MdParserConfig

    config_file = root / "_config.yml"
    sphinx_config, _ = get_final_config(
        user_yaml=config_file if config_file.is_file() else None,
        cli_config={"latex_individualpages": False},
        sourcedir=root,
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
    nb_config = NbParserConfig(**nb_values)
    build_dir = build_dir or root / "_build"
    cache = nb_config.execution_cache_path
    cache_path = (root / cache) if cache else build_dir / ".jupyter_cache"
    return BookConfig(root, MdParserConfig(**md_values), nb_config, cache_path.resolve())


def toc_chapters(root: Path) -> list[Path]:
    """The ``.md`` files of ``_toc.yml``'s pages that are MyST notebooks, in reading order."""
    from myst_nb.core.read import is_myst_markdown_notebook
    from sphinx_external_toc.parsing import parse_toc_yaml

    chapters = []
    for docname in parse_toc_yaml(root / "_toc.yml").keys():
        path = root / docname
        if path.suffix != ".md":
            path = path.with_name(path.name + ".md")
        if path.is_file() and is_myst_markdown_notebook(path.read_text(encoding="utf-8")):
            chapters.append(path)
    return chapters


@dc.dataclass
class Chapter:
    """A chapter read as the build reads it, with the configuration it executes under."""

    path: Path  # absolute path of the .md
    rel: str  # path relative to the book's root, e.g. book/ch1_evidence.md
    notebook: Any  # nbformat.NotebookNode, with metadata.source_map
    read_fmt: dict | None  # how jupyter-cache's project records say to read it
    cwd: str | None  # working directory of the kernel (None: a temporary folder)
    timeout: int | None
    allow_errors: bool
    excluded: str | None = None  # the execution_excludepatterns entry that matches, if any


def read_chapter(path: Path, config: BookConfig) -> Chapter:
    """Read ``path`` as myst-nb's Sphinx parser does, and resolve its execution settings.

    The same reader (:func:`myst_nb.core.read.create_nb_reader`) with the same Markdown configuration;
    then, as the parser does, the kernel-name aliases and the notebook-level ``mystnb`` overrides of the
    notebook configuration (which may set ``execution_timeout``, ``execution_allow_errors``, ...).
    """
    from myst_nb.core.nb_to_tokens import nb_node_to_dict
    from myst_nb.core.read import create_nb_reader

    text = path.read_text(encoding="utf-8")
    reader = create_nb_reader(str(path), config.md_config, config.nb_config, text)
    if reader is None:
        raise ValueError(f"{path} is not a notebook myst-nb can read")
    notebook = reader.read(text)
    nb_config = config.nb_config
    kernel_name = notebook.metadata.get("kernelspec", {}).get("name", None)
    if kernel_name is not None and nb_config.kernel_rgx_aliases:
        for rgx, alias in nb_config.kernel_rgx_aliases.items():
            if re.fullmatch(rgx, kernel_name):
                notebook.metadata["kernelspec"]["name"] = alias
                break
    if nb_config.metadata_key in notebook.metadata:
        overrides = nb_node_to_dict(notebook.metadata[nb_config.metadata_key])
        overrides.pop("output_folder", None)
        nb_config = nb_config.copy(**overrides)
    excluded = next(
        (p for p in nb_config.execution_excludepatterns if PurePosixPath(path.as_posix()).match(p)), None
    )
    return Chapter(
        path=path,
        rel=_rel(path, config.root),
        notebook=notebook,
        read_fmt=reader.read_fmt,
        cwd=None if nb_config.execution_in_temp else str(path.parent),
        timeout=nb_config.execution_timeout,
        allow_errors=nb_config.execution_allow_errors,
        excluded=excluded,
    )


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# ---- execution (in a worker process) ------------------------------------------------------------------


@dc.dataclass
class Outcome:
    """What executing one chapter gave (picklable: it comes back from a worker process)."""

    rel: str
    seconds: float
    notebook_json: str  # the executed notebook (outputs included), nbformat JSON
    failed_cell: int | None = None  # index into notebook.cells of the cell that failed
    error: str | None = None  # "ExceptionName: message"
    details: str | None = None  # the kernel's traceback (or the runner's, if the kernel died)


def execute(rel: str, notebook_json: str, cwd: str | None, timeout: int | None, allow_errors: bool) -> Outcome:
    """Run one notebook top to bottom in a fresh kernel; never raises for a failing chapter."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    nb = nbformat.reads(notebook_json, as_version=4)
    current: list[int] = []

    def on_cell_start(cell: Any, cell_index: int) -> None:
        if cell.cell_type == "code":
            current.append(cell_index)

    start = time.perf_counter()
    error = details = None
    try:
        with tempfile.TemporaryDirectory() if cwd is None else contextlib.nullcontext(cwd) as work_dir:
            result = single_nb_execution(
                nb,
                cwd=os.path.abspath(work_dir),
                timeout=timeout,
                allow_errors=allow_errors,
                meta_override=True,
                on_cell_start=on_cell_start,
            )
        seconds = result.time
        if result.err is not None:
            error, details = _describe(result.err, nb, current[-1] if current else None)
        else:
            unrendered = _unrendered_figure(nb)
            if unrendered is not None:
                current.append(unrendered)
                error = ("a matplotlib figure failed to draw (IPython showed its text, '<Figure size ...>', "
                         "instead of an image): a mathtext error in a label or title is the usual cause")
                details = error
    except Exception as exc:  # the kernel died, could not start, ...: still a failure of this chapter
        seconds = time.perf_counter() - start
        error = f"{type(exc).__name__}: {exc}".strip()
        details = traceback.format_exc()
    return Outcome(
        rel=rel,
        seconds=seconds,
        notebook_json=nbformat.writes(nb),
        failed_cell=(current[-1] if current else None) if error else None,
        error=error,
        details=details,
    )


_FIGURE_TEXT = re.compile(r"<Figure size \d+(?:\.\d+)?x\d+(?:\.\d+)? with \d+ Axes>")


def _unrendered_figure(nb: Any) -> int | None:
    """The index of the first cell with a figure output that has only its text form (no image): IPython's
    fallback when drawing the figure raised, which neither execution nor the build reports."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            # A figure glued with myst_nb.glue is stored under "application/papermill.record/<mime type>".
            texts = [v for k, v in data.items() if k == "text/plain" or k.endswith("/text/plain")]
            text = "".join("".join(v) if isinstance(v, list) else str(v) for v in texts)
            if _FIGURE_TEXT.search(text) and not any("image/" in k for k in data):
                return index
    return None


def _describe(err: BaseException, nb: Any, cell_index: int | None) -> tuple[str, str]:
    """One line naming the exception, and the kernel's traceback without terminal colours."""
    if cell_index is not None:
        for output in nb.cells[cell_index].get("outputs", []):
            if output.get("output_type") == "error":
                tb = "\n".join(output.get("traceback", []))
                return f"{output.get('ename')}: {output.get('evalue')}", _ANSI.sub("", tb)
    # No error output (a timeout, a kernel that died): nbclient's own exception says what happened.
    ename = getattr(err, "ename", None) or type(err).__name__
    lines = str(err).strip().splitlines()
    evalue = getattr(err, "evalue", None) or (lines[-1] if lines else "")
    return f"{ename}: {evalue}", _ANSI.sub("", str(err))


# ---- scheduling ---------------------------------------------------------------------------------------


def schedule_order(rels: Sequence[str]) -> list[str]:
    """Chapters by priority: the longest chain of work starting at a chapter first (see :data:`AFTER`)."""

    def chain(rel: str, seen: frozenset[str] = frozenset()) -> float:
        later = [r for r, earlier in AFTER.items() if earlier == rel and r in rels and r not in seen]
        own = SECONDS_HINT.get(rel, DEFAULT_SECONDS)
        return own + max((chain(r, seen | {rel}) for r in later), default=0.0)

    return sorted(rels, key=lambda r: -chain(r))


def run(chapters: list[Chapter], jobs: int, cache_path: Path) -> list[Outcome]:
    """Execute the chapters (``jobs`` at a time), store each that passed in the cache, report as they end."""
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from jupyter_cache.executors.utils import single_nb_execution  # noqa: F401  (imported once, see below)

    by_rel = {c.rel: c for c in chapters}
    pending = schedule_order(list(by_rel))
    waiting_for = {r: AFTER[r] for r in pending if AFTER.get(r) in by_rel}
    finished: set[str] = set()
    outcomes: list[Outcome] = []
    cache = get_cache(str(cache_path))
    total = len(pending)
    t0 = time.perf_counter()

    def ready(idle: bool) -> list[str]:
        """Chapters that may start now, in priority order (when nothing is running, at least one)."""
        free = [r for r in pending if waiting_for.get(r) is None or waiting_for[r] in finished]
        return free or (pending[:1] if idle else [])

    def args(rel: str) -> tuple:
        c = by_rel[rel]
        return (rel, nbformat.writes(c.notebook), c.cwd, c.timeout, c.allow_errors)

    def done(outcome: Outcome) -> None:
        finished.add(outcome.rel)
        outcomes.append(outcome)
        chapter = by_rel[outcome.rel]
        status = "passed" if outcome.error is None else "FAILED"
        print(
            f"[{len(outcomes)}/{total}] {outcome.rel} {status} in {outcome.seconds:.1f} s "
            f"(at {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        if outcome.error is None:
            executed = nbformat.reads(outcome.notebook_json, as_version=4)
            # As myst-nb does when it executes a notebook in 'cache' mode: a project record for the
            # source, then the executed notebook under the hash of its code, with its execution time
            # (the build's execution-statistics table reads it).
            record = cache.add_nb_to_project(str(chapter.path), read_data=chapter.read_fmt or {})
            cache.cache_notebook_bundle(
                CacheBundleIn(executed, record.uri, data={"execution_seconds": outcome.seconds}),
                check_validity=False,
                overwrite=True,
            )
        else:
            print(failure_report(chapter, outcome), flush=True)

    if jobs <= 1:
        while pending:
            rel = ready(idle=True)[0]
            pending.remove(rel)
            done(execute(*args(rel)))
        return outcomes

    # Workers are forked on Linux: they start at once, with nbclient and jupyter-cache already imported
    # (a fresh interpreter spends about 3 s importing nbformat). The parent has started no kernel and
    # no thread yet, and the workers never touch the cache's database (only the parent writes to it).
    # Elsewhere (macOS, Windows), fork is unsafe or missing: fresh interpreters are spawned instead.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    context = multiprocessing.get_context(method)
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        running: dict[cf.Future[Outcome], str] = {}
        while pending or running:
            for rel in ready(idle=not running):
                if len(running) >= jobs:
                    break
                pending.remove(rel)
                running[pool.submit(execute, *args(rel))] = rel
            completed, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in completed:
                rel = running.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker process itself died
                    outcome = Outcome(rel, 0.0, nbformat.writes(by_rel[rel].notebook),
                                      error=f"{type(exc).__name__}: {exc}", details=traceback.format_exc())
                done(outcome)
    return outcomes


# ---- reporting ----------------------------------------------------------------------------------------


def cell_position(chapter: Chapter, cell_index: int | None) -> tuple[int | None, int | None]:
    """(code cell number counted from 0, 1-based line of its ``{code-cell}`` fence in the ``.md``).

    The line comes from the ``source_map`` myst-nb's reader stores in the notebook's metadata (the line
    of each cell's opening fence, the same number ``conftest.py``'s collector reports).
    """
    if cell_index is None:
        return None, None
    cells = chapter.notebook.cells
    number = sum(1 for c in cells[:cell_index] if c.cell_type == "code")
    source_map = chapter.notebook.metadata.get("source_map") or []
    line = source_map[cell_index] if cell_index < len(source_map) else None
    return number, line


def failure_report(chapter: Chapter, outcome: Outcome) -> str:
    number, line = cell_position(chapter, outcome.failed_cell)
    if number is None:
        where = f"FAILED {outcome.rel} (before any code cell ran)"
        source = ""
    else:
        where = f"FAILED {outcome.rel}, code cell {number} (line {line} of the .md)"
        source = chapter.notebook.cells[outcome.failed_cell].source
    rule = "-" * 78
    parts = [f"{where}: {outcome.error}"]
    if source:
        parts += [rule, source, rule]
    if outcome.details:
        parts.append(outcome.details.rstrip())
    return "\n".join(parts) + "\n"


def summary(outcomes: list[Outcome], chapters: list[Chapter], wall: float) -> str:
    by_rel = {c.rel: c for c in chapters}
    width = max((len(o.rel) for o in outcomes), default=10)
    lines = ["", f"{'chapter':<{width}}  seconds  result"]
    for o in sorted(outcomes, key=lambda o: [c.rel for c in chapters].index(o.rel)):
        if o.error is None:
            result = "passed"
        else:
            number, line = cell_position(by_rel[o.rel], o.failed_cell)
            result = "FAILED" + (f" at code cell {number} (line {line})" if number is not None else "")
        lines.append(f"{o.rel:<{width}}  {o.seconds:7.1f}  {result}")
    failed = sum(o.error is not None for o in outcomes)
    lines.append(
        f"{len(outcomes)} chapters, {len(outcomes) - failed} passed, {failed} failed; "
        f"{sum(o.seconds for o in outcomes):.1f} s of execution in {wall:.1f} s"
    )
    return "\n".join(lines)


def check_build_log(log: Path, chapters: list[Path], root: Path) -> list[str]:
    """Problems in a build log where every chapter should have come from the cache.

    myst-nb logs ``Using cached notebook`` for a page whose executed notebook it found in the cache, and
    ``Executing notebook`` before it executes one (``Starting inline execution client`` in inline mode).
    """
    lines = _ANSI.sub("", log.read_text(encoding="utf-8", errors="replace")).splitlines()
    problems = []
    for line in lines:
        if "Executing notebook" in line or "Starting inline execution client" in line:
            problems.append(f"the build executed a notebook: {line.strip()}")
    for path in chapters:
        # "<absolute path of the source>: Using cached notebook: ID=<n> [mystnb]"
        rel = _rel(path, root)
        pattern = re.compile(rf"(^|/){re.escape(rel)}: Using cached notebook")
        if not any(pattern.search(line) for line in lines):
            problems.append(f"the build did not read {rel} from the execution cache")
    return problems


# ---- command line -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Execute the book's chapters, each once in a fresh kernel, and fill the build's "
        "execution cache.",
        epilog="Exit status: 0 all passed, 1 a chapter failed, 2 usage error.",
    )
    parser.add_argument("chapters", nargs="*", type=Path,
                        help="chapter .md files (default: every MyST notebook page of _toc.yml)")
    parser.add_argument("--jobs", "-j", type=int, default=2, help="chapters at a time (default 2)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the book's root (default: this repository)")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="the build folder whose .jupyter_cache is filled (default: <root>/_build)")
    parser.add_argument("--no-cache", action="store_true", help="execute only; store nothing")
    parser.add_argument("--report-json", type=Path, default=None,
                        help="also write the per-chapter seconds and results to this JSON file")
    parser.add_argument("--check-build-log", type=Path, default=None, metavar="LOG",
                        help="execute nothing: check that the build whose output is LOG read every "
                        "chapter from the cache and executed none")
    opts = parser.parse_args(argv)
    root = opts.root.resolve()

    try:
        paths = [p.resolve() for p in opts.chapters] if opts.chapters else toc_chapters(root)
    except Exception as exc:
        print(f"run_chapters: cannot read {root / '_toc.yml'}: {exc}", file=sys.stderr)
        return 2
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"run_chapters: no such chapter: {', '.join(missing)}", file=sys.stderr)
        return 2
    if not paths:
        print("run_chapters: no chapters (no MyST notebook page in _toc.yml)", file=sys.stderr)
        return 2

    if opts.check_build_log is not None:
        problems = check_build_log(opts.check_build_log, paths, root)
        for problem in problems:
            print(f"run_chapters: {problem}", file=sys.stderr)
        if problems:
            print("run_chapters: the strict build must read every chapter from the cache that "
                  "`make test-chapters` filled and execute nothing", file=sys.stderr)
            return 2
        print(f"run_chapters: the build read all {len(paths)} chapters from the cache and executed none")
        return 0

    build_dir = opts.build_dir.resolve() if opts.build_dir else None
    config = load_config(root, build_dir)
    chapters = [read_chapter(p, config) for p in paths]
    for chapter in [c for c in chapters if c.excluded]:
        print(f"{chapter.rel}: excluded from execution by {chapter.excluded!r}, as in the build")
    chapters = [c for c in chapters if not c.excluded]
    cache_path = Path(tempfile.mkdtemp(prefix="run-chapters-cache-")) if opts.no_cache else config.cache_path
    jobs = max(1, min(opts.jobs, len(chapters)))
    print(f"Executing {len(chapters)} chapters, {jobs} at a time, each in a fresh kernel "
          f"(cache: {cache_path})", flush=True)
    t0 = time.perf_counter()
    outcomes = run(chapters, jobs, cache_path)
    wall = time.perf_counter() - t0
    print(summary(outcomes, chapters, wall), flush=True)
    if opts.report_json is not None:
        by_rel = {c.rel: c for c in chapters}
        opts.report_json.write_text(json.dumps({
            "jobs": jobs,
            "wall_seconds": wall,
            "chapters": {
                o.rel: {"seconds": o.seconds, "passed": o.error is None, "error": o.error,
                        "code_cell": cell_position(by_rel[o.rel], o.failed_cell)[0],
                        "line": cell_position(by_rel[o.rel], o.failed_cell)[1]}
                for o in outcomes
            },
        }, indent=2) + "\n")
    failed = [o.rel for o in outcomes if o.error is not None]
    if failed:
        print(f"\n{len(failed)} chapter(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
