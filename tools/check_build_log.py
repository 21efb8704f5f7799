#!/usr/bin/env python3
"""Check that a build read every chapter from the execution cache and executed none.

    .venv/bin/python tools/check_build_log.py _build/build.log

The last step of ``make test-build``. ``make test-chapters`` has executed every chapter under nbval and
stored each that passed in the build's jupyter-cache (``conftest.py``); the strict build that follows
must take every chapter from there. myst-nb logs ``<source>: Using cached notebook`` for a page whose
executed notebook it found in the cache, and ``Executing notebook`` before it executes one (``Starting
inline execution client`` in inline mode). This script fails (exit status 2) when the log shows an
execution, or lacks ``Using cached notebook`` for a page of ``_toc.yml`` that is a MyST notebook: a
chapter changed after it was run, or one that failed and was not stored, can never reach the book
unchecked.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def toc_chapters(root: Path) -> list[str]:
    """The ``.md`` sources of ``_toc.yml``'s pages that myst-nb executes, relative to ``root``."""
    from myst_nb.core.read import is_myst_markdown_notebook
    from sphinx_external_toc.parsing import parse_toc_yaml

    chapters = []
    for docname in parse_toc_yaml(root / "_toc.yml").keys():
        path = root / f"{docname}.md"
        if path.is_file() and is_myst_markdown_notebook(path.read_text(encoding="utf-8")):
            chapters.append(path.relative_to(root).as_posix())
    return chapters


def problems(log_text: str, chapters: list[str]) -> list[str]:
    lines = _ANSI.sub("", log_text).splitlines()
    found = [f"the build executed a notebook: {line.strip()}" for line in lines
             if "Executing notebook" in line or "Starting inline execution client" in line]
    for rel in chapters:
        pattern = re.compile(rf"(^|/){re.escape(rel)}: Using cached notebook")
        if not any(pattern.search(line) for line in lines):
            found.append(f"the build did not read {rel} from the execution cache")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the build's output (jupyter-book build ... | tee LOG)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the book's root (default: this repository)")
    opts = parser.parse_args(argv)
    chapters = toc_chapters(opts.root.resolve())
    if not chapters:
        print("check_build_log: no chapter (no MyST notebook page in _toc.yml)", file=sys.stderr)
        return 2
    found = problems(opts.log.read_text(encoding="utf-8", errors="replace"), chapters)
    for problem in found:
        print(f"check_build_log: {problem}", file=sys.stderr)
    if found:
        print("check_build_log: the strict build must read every chapter from the cache that "
              "`make test-chapters` filled and execute nothing", file=sys.stderr)
        return 2
    print(f"check_build_log: the build read all {len(chapters)} chapters from the cache and executed none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
