"""The build never lies: a failing cell or self-check fails the build and the chapter runner, naming the
chapter and the cell, and a change in vaelib invalidates the execution cache.

These run the real tools (jupyter-book, pytest + nbval, make) on tiny throw-away books, so they take a few
seconds each.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

HEADER = """---
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

# A page with a self-check

```{code-cell} ipython3
x = 1 + 1
```

```{code-cell} ipython3
assert x == 3, "self-check failed: x is not 3"
```
"""


def _tiny_book(tmp_path: Path, page: str) -> Path:
    """A copy of the book's configuration with a single page."""
    book = tmp_path / "book_root"
    (book / "book").mkdir(parents=True)
    for name in ("_config.yml", "_ext", "_static"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, book / name)
        else:
            shutil.copy(src, book / name)
    shutil.copy(ROOT / "book" / "references.bib", book / "book" / "references.bib")
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (book / "book" / "intro.md").write_text(page)
    return book


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
    chapter = ROOT / "book" / f"tmp_failing_{uuid.uuid4().hex[:8]}.md"
    chapter.write_text(HEADER)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", str(chapter)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
    finally:
        chapter.unlink()
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert f"{chapter.name}" in out and "code cell 1 failed" in out, out[-3000:]
    assert "self-check failed: x is not 3" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_library_change_clears_the_execution_cache(tmp_path):
    repo = tmp_path / "repo"
    (repo / "vaelib").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    (repo / "benchmarks").mkdir()
    for name in ("pyproject.toml", "requirements.txt", "benchmarks/results.json"):
        shutil.copy(ROOT / name, repo / name)
    module = repo / "vaelib" / "elbo.py"
    module.write_text("ANSWER = 1\n")
    cache = repo / "_build" / ".jupyter_cache"

    def cache_check() -> None:
        subprocess.run(["make", "--no-print-directory", "cache-check"], cwd=repo, check=True,
                       capture_output=True, text=True)

    cache_check()
    cache.mkdir(parents=True)
    (cache / "marker").write_text("executed notebooks")
    cache_check()
    assert (cache / "marker").exists(), "an unchanged library must keep the cache"
    module.write_text("ANSWER = 2\n")
    cache_check()
    assert not cache.exists(), "a changed vaelib module must clear the execution cache"
    # The Performance page reads the benchmark results: new results must re-execute it.
    cache.mkdir(parents=True)
    cache_check()
    assert cache.exists()
    results = repo / "benchmarks" / "results.json"
    results.write_text(results.read_text().replace('"date"', '"date" ', 1))
    cache_check()
    assert not cache.exists(), "new benchmark results must clear the execution cache"
