"""The build never lies: what `make test` and `make book` promise, proved on tiny throw-away books.

`make test` executes every chapter once (`make test-chapters`: `pytest --nbval-lax book -n 2` with the
collector and cache hook of conftest.py, each chapter in a fresh kernel with book/ as working directory)
and then builds every page strictly from those results (`make test-build`: `jupyter-book build -W -n`
reading every chapter from the execution cache, checked by tools/check_build_log.py). These tests run
the real Makefile targets and tools on books of two to four tiny pages, each in its own folder (a copy
of the Makefile, the book's configuration, conftest.py and the log check), and check what a user sees:
exit status, messages, build logs, built pages. They prove that

* a broken cell, or a failing self-check, in any one chapter fails `make test-chapters`, naming the
  chapter file, the code cell and the line of the `.md` where it starts, while the other chapters
  still run (and only they are cached);
* each chapter runs once per `make test`, in a fresh kernel, in book/; a chapter that reuses another's
  training (conftest.CHAINS) runs after it even two at a time;
* the strict build reads every chapter from the cache the chapter stage filled and executes nothing,
  and it fails when it would have to execute one (a chapter changed after the chapter stage ran);
* any Sphinx warning fails the strict build (a broken reference; a chapter writing to stderr, whose
  output comes from the cache);
* a change of vaelib (or of the pins) clears the caches, so the next build executes the chapters
  again and shows the new results; a change to one chapter re-executes only that chapter; an
  unchanged tree does not start the build at all;
* a failing cell fails `jupyter-book build` itself, cold and warm, and the pytest collector that
  authors use for one chapter (`pytest --nbval-lax book/<chapter>.md`) names the cell.

The throw-away folders get a stand-in `.venv/bin` whose `python` and `jupyter-book` hand over to this
interpreter's environment (and refuse `-m pip`, so nothing can be installed into it from there); its
install stamp is newer than the copied pins, so `make` never tries to create or update it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

FRONT = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""

HEADER = FRONT + """
# A page with a self-check

```{code-cell} ipython3
x = 1 + 1
```

```{code-cell} ipython3
assert x == 3, "self-check failed: x is not 3"
```
"""


def chapter(title: str, *cells: str, text: str = "Some text.") -> str:
    """A MyST notebook page: a title, a paragraph, and one code cell per argument."""
    body = "".join(f"\n```{{code-cell}} ipython3\n{cell}\n```\n" for cell in cells)
    return f"{FRONT}\n({title.lower().replace(' ', '-')})=\n# {title}\n\n{text}\n{body}"


def fence_line(text: str, code_cell: int) -> int:
    """1-based line of the ``{code-cell}`` fence of code cell ``code_cell`` (counted from 0)."""
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("```{code-cell}")]
    return lines[code_cell]


def _copy_config(dest: Path) -> None:
    for name in ("_config.yml", "_ext", "_static"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    (dest / "book").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "book" / "references.bib", dest / "book" / "references.bib")


def _tiny_book(tmp_path: Path, page: str) -> Path:
    """A copy of the book's configuration with a single page (for plain `jupyter-book build`)."""
    book = tmp_path / "book_root"
    book.mkdir()
    _copy_config(book)
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (book / "book" / "intro.md").write_text(page)
    return book


def tiny_repo(tmp_path: Path, pages: dict[str, str], *, git: bool = False) -> Path:
    """A throw-away project: the Makefile, the book's configuration, conftest.py and the log check, a
    one-module vaelib,
    and ``pages`` (``{"intro": text, ...}``; the first one is the root page) as book/<name>.md."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_config(repo)
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    (repo / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "check_build_log.py", repo / "tools" / "check_build_log.py")
    shutil.copy(ROOT / "conftest.py", repo / "conftest.py")
    (repo / "benchmarks").mkdir()
    for name in ("pyproject.toml", "requirements.txt", "requirements-lab.txt", "benchmarks/results.json",
                 "benchmarks/diffusion_digits.json", ".gitignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, repo / name)
    (repo / "vaelib").mkdir()
    (repo / "vaelib" / "elbo.py").write_text("ANSWER = 1\n")
    names = list(pages)
    toc = f"format: jb-book\nroot: book/{names[0]}\n"
    if names[1:]:
        toc += "chapters:\n" + "".join(f"  - file: book/{n}\n" for n in names[1:])
    (repo / "_toc.yml").write_text(toc)
    for name, text in pages.items():
        (repo / "book" / f"{name}.md").write_text(text)
    # The stand-in environment: this interpreter's tools, no pip, an install stamp newer than the pins.
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for tool in ("python", "jupyter-book"):
        script = venv_bin / tool
        script.write_text(
            "#!/bin/sh\n"
            'case "$1 $2" in "-m pip") echo "throw-away repo: no pip here" >&2; exit 1;; esac\n'
            f'exec "{BIN / tool}" "$@"\n'
        )
        script.chmod(0o755)
    stamp = repo / ".venv" / ".installed"
    stamp.touch()
    later = time.time() + 3600
    os.utime(stamp, (later, later))
    if git:
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def make(repo: Path, *targets: str, timeout: float = 400, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.pop("VAELIB_CACHE", None)
    args = ["make", "--no-print-directory", *targets, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


def output(run: subprocess.CompletedProcess) -> str:
    return run.stdout + run.stderr


def executed(repo: Path, log: str) -> list[str]:
    """The book/<page>.md files a build log says were executed."""
    return re.findall(r"(book/[\w.-]+\.md): Executing notebook", log)


def cached_uris(repo: Path) -> set[str]:
    """Sources of the notebooks stored in the repo's execution cache (jupyter-cache's public API)."""
    from jupyter_cache import get_cache

    path = repo / "_build" / ".jupyter_cache"
    if not path.exists():
        return set()
    return {Path(r.uri).relative_to(repo).as_posix() for r in get_cache(str(path)).list_cache_records()}


def summary_line(out: str, rel: str) -> str:
    """The line of `make test-chapters`' closing table for the chapter ``rel``."""
    lines = [line for line in out.splitlines() if re.match(rf"{re.escape(rel)}\s+\d+\.\d\s", line)]
    assert len(lines) == 1, f"no single summary line for {rel}:\n{out[-4000:]}"
    return lines[0]


# ---- make test-chapters: the chapters under nbval ---------------------------------------------------------

@needs_make
def test_a_failing_cell_fails_the_run_naming_chapter_cell_and_line(tmp_path):
    # A broken cell in one chapter, a failing self-check in another, and a third chapter that works.
    broken = "y = undefined_name + 1"
    self_check = 'assert x == 3, "self-check failed: x is not 3"'
    pages = {
        "intro": chapter("Intro", "print('intro ran')"),
        "ch_a": chapter("Chapter A", "x = 2", broken, "print('never reached')"),
        "ch_b": chapter("Chapter B", "x = 2", "print(x)", self_check),
    }
    repo = tiny_repo(tmp_path, pages)
    run = make(repo, "test-chapters")
    out = output(run)
    assert run.returncode != 0, out[-4000:]
    line_a, line_b = fence_line(pages["ch_a"], 1), fence_line(pages["ch_b"], 2)
    # The failure report of each chapter: file and line, cell, its source, the traceback.
    assert f"book/ch_a.md:{line_a}: code cell 1 failed" in out, out[-4000:]
    assert f"book/ch_b.md:{line_b}: code cell 2 failed" in out, out[-4000:]
    assert broken in out and self_check in out, "the report shows each failing cell's source"
    assert "Traceback" in out and "NameError" in out
    # The closing table: one line per chapter.
    assert summary_line(out, "book/ch_a.md").endswith(
        f"FAILED at code cell 1 (line {line_a}): NameError: name 'undefined_name' is not defined"), out[-4000:]
    assert summary_line(out, "book/ch_b.md").endswith(
        f"FAILED at code cell 2 (line {line_b}): AssertionError: self-check failed: x is not 3"), out[-4000:]
    # The later cells of a failed chapter are skipped, never run against a broken state.
    assert "never reached" not in out.replace("print('never reached')", "")
    # The chapter that works still ran, passed and was cached; the failing ones were not cached.
    assert summary_line(out, "book/intro.md").endswith("passed, stored in the execution cache"), out[-4000:]
    assert cached_uris(repo) == {"book/intro.md"}


@needs_make
def test_a_figure_that_fails_to_draw_fails_the_run(tmp_path):
    # matplotlib's mathtext cannot parse \frac12: drawing the figure raises inside IPython's formatter,
    # which then shows "<Figure size ...>" as text, or reports the error on the output channel: either fails the cell.
    figure = ("import matplotlib.pyplot as plt\nfrom IPython.display import display\n"
              "fig, ax = plt.subplots()\nax.set_title(r'$\\frac12$')\ndisplay(fig)\nplt.close(fig)")
    glued = ("import matplotlib.pyplot as plt\nfrom myst_nb import glue\n"
             "fig, ax = plt.subplots()\nax.set_title(r'$\\frac12$')\nglue('fig-x', fig, display=False)\n"
             "plt.close(fig)")
    pages = {"intro": chapter("Intro", "print('intro ran')"), "ch_a": chapter("Chapter A", "x = 2", figure),
             "ch_b": chapter("Chapter B", "x = 2", glued)}
    repo = tiny_repo(tmp_path, pages)
    run = make(repo, "test-chapters")
    out = output(run)
    assert run.returncode != 0, out[-4000:]
    # IPython reports the drawing error on the kernel's output channel, which nbval takes as the cell's
    # error (the cell itself finished); a figure left as text would fail the cell too (conftest.py).
    for name in ("ch_a", "ch_b"):
        line = fence_line(pages[name], 1)
        assert f"book/{name}.md:{line}: code cell 1 failed" in out, out[-4000:]
        assert re.search(rf"FAILED at code cell 1 \(line {line}\): (ValueError: .*frac|a matplotlib figure failed)",
                         summary_line(out, f"book/{name}.md")), out[-4000:]
    assert cached_uris(repo) == {"book/intro.md"}


@needs_make
def test_each_chapter_runs_once_and_a_chain_in_order_two_at_a_time(tmp_path):
    # Every execution of a chapter appends its name to a log in _build (which test-chapters empties
    # first). Chapter 7 of the book reuses chapter 6's training (conftest.CHAINS): here "ch7_evaluation"
    # needs the file "ch6_generative" writes after a pause, and two workers (JOBS=2) would start both
    # at once if the chain were not kept together.
    log = "open('../_build/runs.txt', 'a').write({!r} + '\\n')"
    goals = "```{admonition} Learning goals\nRun in order.\n```"  # a chapter page states its run time there
    pages = {
        "intro": chapter("Intro", log.format("intro")),
        "ch6_generative": chapter("Ch6", log.format("ch6"),
                                  "import time\ntime.sleep(3)\nopen('../_build/trained', 'w').write('model')",
                                  text=goals),
        "ch7_evaluation": chapter("Ch7", log.format("ch7"),
                                  "import os\nassert os.path.exists('../_build/trained'), 'ch7 ran before ch6 ended'",
                                  text=goals),
        "ch_c": chapter("Chapter C", log.format("ch_c")),
    }
    repo = tiny_repo(tmp_path, pages)
    run = make(repo, "test-chapters", JOBS="2")
    out = output(run)
    assert run.returncode == 0, out[-4000:]
    assert cached_uris(repo) == {f"book/{name}.md" for name in pages}
    run = make(repo, "test-build")
    assert run.returncode == 0, output(run)[-4000:]
    runs = (repo / "_build" / "runs.txt").read_text().split()
    assert sorted(runs) == ["ch6", "ch7", "ch_c", "intro"], f"each chapter once per run, not {runs}"
    assert runs.index("ch6") < runs.index("ch7")


def test_a_kernel_that_dies_at_start_is_started_once_more(tmp_path):
    """A kernel that dies before it answers has run nothing: conftest.py starts it once more, with a
    warning, and the chapter is judged by its cells. One that always dies fails the chapter."""
    repo = tiny_repo(tmp_path, {"intro": chapter("Intro", "print('ran in the second kernel')")})
    marker = tmp_path / "died-once"
    kernels = tmp_path / "jupyter" / "kernels"
    for name, dies in (("dies-once", f"not os.path.exists({str(marker)!r})"), ("dies-always", "True")):
        (kernels / name).mkdir(parents=True)
        start = ("import os, sys\n"
                 f"if {dies}:\n    open({str(marker)!r}, 'w').close()\n    sys.exit(1)\n"
                 "os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', '-f', sys.argv[1]])")
        (kernels / name / "kernel.json").write_text(json.dumps(
            {"argv": [sys.executable, "-c", start, "{connection_file}"], "display_name": name, "language": "python"}))
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter")}
    page = repo / "book" / "intro.md"
    text = page.read_text()
    for name, passes in (("dies-once", True), ("dies-always", False)):
        page.write_text(text.replace("name: python3", f"name: {name}"))
        run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "book/intro.md"],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        out = run.stdout + run.stderr
        assert (run.returncode == 0) == passes, out[-3000:]
        assert "book/intro.md: the kernel failed to start" in out, out[-3000:]


# ---- make test-build: the strict build from the chapter stage's cache -----------------------------------


@needs_make
def test_strict_build_reads_every_chapter_from_the_runner_cache_and_executes_nothing(tmp_path):
    pages = {
        "intro": chapter("Intro", "import os\nprint('cwd is', os.getcwd())"),
        "ch_a": chapter("Chapter A", "x = 41\nprint('answer', x + 1)"),
        # A fresh kernel: nothing of another chapter is defined. Run one at a time (JOBS=1), so that
        # a kernel shared between chapters would show.
        "ch_b": chapter("Chapter B", "assert 'x' not in globals(), 'kernel shared with chapter A'\n"
                        "import os\nassert os.path.basename(os.getcwd()) == 'book', os.getcwd()\n"
                        "print('fresh kernel in book/')"),
    }
    repo = tiny_repo(tmp_path, pages)
    run = make(repo, "test-chapters", JOBS="1")
    assert run.returncode == 0, output(run)[-4000:]
    assert cached_uris(repo) == {"book/intro.md", "book/ch_a.md", "book/ch_b.md"}

    run = make(repo, "test-build")
    out = output(run)
    assert run.returncode == 0, out[-4000:]
    log = (repo / "_build" / "build.log").read_text()
    assert executed(repo, log) == [], "the strict build executed a chapter"
    for name in pages:
        assert re.search(rf"book/{name}\.md: Using cached notebook", log), f"{name} not read from cache"
    assert "read all 3 chapters from the cache and executed none" in out
    html = (repo / "_build" / "html" / "book" / "intro.html").read_text()
    assert f"cwd is {repo / 'book'}" in html, "the kernel ran in book/"
    assert "answer 42" in (repo / "_build" / "html" / "book" / "ch_a.html").read_text()

    # A chapter whose code changed after the chapter stage ran is not in the cache: the strict build would
    # have to execute it, and that fails `make test-build` (stale results can never pass).
    (repo / "book" / "ch_a.md").write_text(pages["ch_a"].replace("x = 41", "x = 40"))
    run = make(repo, "test-build")
    out = output(run)
    assert run.returncode != 0, out[-4000:]
    assert "the build executed a notebook" in out and "ch_a.md" in out, out[-4000:]
    assert "the build did not read book/ch_a.md from the execution cache" in out


@needs_make
def test_a_warning_fails_the_strict_build(tmp_path):
    pages = {
        "intro": chapter("Intro", "print('intro')"),
        "ch_a": chapter("Chapter A", "print('fine')", text="See {ref}`no-such-label`."),
        # This page's output comes from the chapter stage's cache; the build still turns it into a warning.
        "ch_b": chapter("Chapter B", "import sys\nprint('oops', file=sys.stderr)"),
    }
    repo = tiny_repo(tmp_path, pages)
    run = make(repo, "test-chapters")
    assert run.returncode == 0, output(run)[-4000:]
    run = make(repo, "test-build")
    out = output(run)
    assert run.returncode != 0, f"warnings did not fail the strict build:\n{out[-4000:]}"
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert any("ch_a" in w and "undefined label" in w for w in warnings), out[-4000:]
    assert any("ch_b" in w and "stderr" in w for w in warnings), out[-4000:]
    assert executed(repo, out) == []
    assert not (repo / "_build" / ".book-fingerprint").exists(), "a failed build must not count as built"


# ---- make book: caches and changes ---------------------------------------------------------------------


@needs_make
@needs_git
def test_make_book_re_executes_after_a_library_change_and_only_a_changed_chapter(tmp_path):
    # The chapters show a number computed by the library (vaelib/elbo.py of the throw-away repo).
    reads_library = "import runpy\nprint('ANSWER =', runpy.run_path('../vaelib/elbo.py')['ANSWER'])"
    pages = {
        "intro": chapter("Intro", "print('intro')"),
        # (different code: jupyter-cache would give two chapters with the same code one entry)
        "ch_a": chapter("Chapter A", reads_library + "  # A"),
        "ch_b": chapter("Chapter B", reads_library + "  # B"),
    }
    repo = tiny_repo(tmp_path, pages, git=True)
    page_a = repo / "_build" / "html" / "book" / "ch_a.html"

    run = make(repo, "book")
    assert run.returncode == 0, output(run)[-4000:]
    assert sorted(executed(repo, output(run))) == ["book/ch_a.md", "book/ch_b.md", "book/intro.md"]
    assert "ANSWER = 1" in page_a.read_text()

    # Nothing changed: the build is not even started.
    start = time.monotonic()
    run = make(repo, "book")
    assert run.returncode == 0, output(run)[-4000:]
    assert "is up to date" in output(run) and "jupyter-book build" not in output(run)
    assert time.monotonic() - start < 5

    # A new library: the cache is cleared, every chapter runs again and shows the new result.
    (repo / "vaelib" / "elbo.py").write_text("ANSWER = 2\n")
    run = make(repo, "book")
    out = output(run)
    assert run.returncode == 0, out[-4000:]
    assert "clearing the execution cache" in out
    assert sorted(executed(repo, out)) == ["book/ch_a.md", "book/ch_b.md", "book/intro.md"]
    assert "ANSWER = 2" in page_a.read_text() and "ANSWER = 1" not in page_a.read_text()

    # One chapter's code changed: only that chapter is executed again.
    (repo / "book" / "ch_b.md").write_text(pages["ch_b"].replace("print(", "print('B:', "))
    run = make(repo, "book")
    out = output(run)
    assert run.returncode == 0, out[-4000:]
    assert executed(repo, out) == ["book/ch_b.md"], out[-4000:]


@needs_make
def test_library_change_clears_the_execution_cache(tmp_path):
    repo = tmp_path / "repo"
    (repo / "vaelib").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    (repo / "benchmarks").mkdir()
    for name in ("pyproject.toml", "requirements.txt", "benchmarks/results.json", "benchmarks/diffusion_digits.json"):
        shutil.copy(ROOT / name, repo / name)
    module = repo / "vaelib" / "elbo.py"
    module.write_text("ANSWER = 1\n")
    cache = repo / "_build" / ".jupyter_cache"
    trainings = repo / "_build" / "vaelib-cache"

    def cache_check() -> None:
        subprocess.run(["make", "--no-print-directory", "cache-check"], cwd=repo, check=True,
                       capture_output=True, text=True)

    cache_check()
    cache.mkdir(parents=True)
    (cache / "marker").write_text("executed notebooks")
    trainings.mkdir()
    cache_check()
    assert (cache / "marker").exists(), "an unchanged library must keep the cache"
    module.write_text("ANSWER = 2\n")
    cache_check()
    assert not cache.exists(), "a changed vaelib module must clear the execution cache"
    assert not trainings.exists(), "a changed vaelib module must clear vaelib.fit_cached's trainings"
    # The Performance page reads the benchmark results: new results must re-execute it.
    cache.mkdir(parents=True)
    cache_check()
    assert cache.exists()
    results = repo / "benchmarks" / "results.json"
    results.write_text(results.read_text().replace('"date"', '"date" ', 1))
    cache_check()
    assert not cache.exists(), "new benchmark results must clear the execution cache"
    # So must a change of the pins.
    cache.mkdir(parents=True)
    (repo / "requirements.txt").write_text((repo / "requirements.txt").read_text() + "\n")
    cache_check()
    assert not cache.exists(), "a change of requirements.txt must clear the execution cache"


# ---- jupyter-book itself, and nbval on one chapter, for authors ---------------------------------------


def test_failing_self_check_fails_the_build_naming_the_cell(tmp_path):
    book = _tiny_book(tmp_path, HEADER)
    for attempt in ("cold", "warm"):  # raise_on_error fails every build, not only a cold one
        run = subprocess.run(
            [str(BIN / "jupyter-book"), "build", ".", "-W", "-n", "--keep-going"],
            cwd=book, capture_output=True, text=True, timeout=300,
        )
        out = run.stdout + run.stderr
        assert run.returncode != 0, f"{attempt} build passed despite a failing cell:\n{out[-3000:]}"
        assert "self-check failed: x is not 3" in out, out[-3000:]
        assert "intro" in out


def test_chapter_runner_names_chapter_and_cell(tmp_path):
    """`pytest --nbval-lax book/<chapter>.md` (conftest.py), for authors working on one chapter."""
    chapter_file = ROOT / "book" / f"tmp_failing_{uuid.uuid4().hex[:8]}.md"
    chapter_file.write_text(HEADER)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", str(chapter_file)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
    finally:
        chapter_file.unlink()
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert f"{chapter_file.name}" in out and "code cell 1 failed" in out, out[-3000:]
    assert "self-check failed: x is not 3" in out
