#!/usr/bin/env python3
"""How long `make test` takes against one pass over the chapters, and how fast `make book` is warm.

    .venv/bin/python benchmarks/make_test.py                 # about 15 minutes on 2 cores
    .venv/bin/python benchmarks/make_test.py --json benchmarks/make_test_results.json

Everything is measured in one run, on this machine, in a throw-away copy of the working tree (every
file git tracks or would track, uncommitted changes included), so that the real tree, its ``_build``
and its chapters are never touched and a concurrent edit cannot change what is measured. The copy
uses the project's ``.venv`` (a symbolic link; the copied pins get an mtime older than its install
stamps, so ``make`` never reinstalls anything) and imports its own copy of ``vaelib`` (``PYTHONPATH``).

1. **One pass**: every chapter executed once, one after the other, each in a fresh kernel, from empty
   caches: ``pytest --nbval-lax book`` without pytest-xdist and without storing anything (what the old
   ``make test`` did twice, once in ``pytest --nbval-lax book`` and once in the cold build).
2. **make test** from an empty ``_build``: all four stages. Goal: at most 2.2 times (1).
3. **make book, warm**, twice, right after (2), with nothing changed. Goal: at most 5 s. For the record,
   also ``jupyter-book build`` itself with nothing to do (what ``make book`` skips in that case).
4. **One chapter changed**: a Markdown line added to the chapter that ran fastest in (1): ``make book``
   must execute no chapter; then a comment added to its first code cell: exactly that chapter is
   executed again (counted from the build log's ``Executing notebook`` lines).

The goals are printed with PASS or FAIL; the exit status is 1 if ``make test`` itself failed or a goal
was missed. Timings are noisy on a shared machine: run it when nothing else is running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RATIO_GOAL = 2.2
WARM_GOAL_S = 5.0


def copy_tree(dest: Path) -> None:
    """Copy every file git tracks or would track (the working tree as it is), keeping mtimes."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    venv = ROOT / ".venv"
    (dest / ".venv").symlink_to(venv)
    # make decides by mtimes: the pins must be older than .venv's install stamps, or it would run pip
    # (into the real .venv, with `-e` pointing at the copy).
    stamps = [p.stat().st_mtime for p in venv.glob(".installed*")]
    if not stamps:
        sys.exit("benchmarks/make_test.py: .venv is not installed (run `make venv lab-install` first)")
    old = min(stamps) - 60
    for pin in ("requirements.txt", "pyproject.toml", "requirements-lab.txt"):
        if (dest / pin).exists():
            os.utime(dest / pin, (old, old))
    subprocess.run(["git", "init", "-q", str(dest)], check=True)  # make book's fingerprint needs git


def environment(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VAELIB_CACHE")}
    env["PYTHONPATH"] = str(copy)  # the copy's vaelib, not the editable install's
    env["PATH"] = f"{copy / '.venv' / 'bin'}:{env.get('PATH', '')}"
    return env


def timed(cmd: list[str], copy: Path, env: dict[str, str], log: Path, **extra_env: str) -> tuple[float, int, str]:
    """Run ``cmd`` in the copy; its output goes to ``log``. Returns (seconds, exit status, output)."""
    start = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(cmd, cwd=copy, env={**env, **extra_env}, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    return seconds, rc, log.read_text(errors="replace")


def executions(text: str) -> list[str]:
    return re.findall(r"(book/[\w.-]+\.md): Executing notebook", text)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the copy (its path is printed)")
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="elbo-make-test-"))
    copy = work / "book"
    copy.mkdir()
    logs = work / "logs"
    logs.mkdir()
    print(f"Copy of the working tree: {copy} (logs in {logs})", flush=True)
    copy_tree(copy)
    env = environment(copy)
    python = str(copy / ".venv" / "bin" / "python")
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()},
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    failed = False

    # (1) one serial pass over the chapters, from empty caches
    one_pass = work / "one-pass"
    seconds, rc, text = timed(
        [python, "-m", "pytest", "book", "--nbval-lax", "-p", "no:cacheprovider"],
        copy, env, logs / "one-pass.log", VAELIB_CACHE=str(one_pass / "vaelib-cache"),
    )
    # conftest.py's closing table: "<chapter>  <seconds>  <result>"
    per_chapter = {m.group(1): float(m.group(2))
                   for m in re.finditer(r"^(book/\S+\.md)\s+(\d+\.\d)\s+passed", text, flags=re.M)}
    results["one_pass_s"] = seconds
    results["one_pass_chapters_s"] = per_chapter
    print(f"(1) one pass over the chapters (serial nbval): {seconds:.1f} s" + ("" if rc == 0 else f"  [exit {rc}]"), flush=True)
    failed |= rc != 0

    # (2) make test, from an empty _build
    shutil.rmtree(copy / "_build", ignore_errors=True)
    seconds, rc, text = timed(["make", "--no-print-directory", "test"], copy, env, logs / "make-test.log")
    results["make_test_s"] = seconds
    results["make_test_rc"] = rc
    stages = re.search(r"==== make test passed in \d+ s:(.*)", text)
    results["make_test_stages_s"] = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"(test-\w+) (\d+) s", stages.group(1))
    } if stages else {}
    ratio = seconds / results["one_pass_s"]
    results["ratio"] = ratio if rc == 0 else None
    print(f"(2) make test: {seconds:.1f} s" + ("" if rc == 0 else f"  [FAILED, exit {rc}; see {logs / 'make-test.log'}]"), flush=True)
    if results["make_test_stages_s"]:
        print("    stages: " + ", ".join(f"{k} {v} s" for k, v in results["make_test_stages_s"].items()))
    if rc == 0:
        print(f"    ratio make test / one pass = {ratio:.2f} (goal <= {RATIO_GOAL}: {verdict(ratio <= RATIO_GOAL)})",
              flush=True)
    else:
        print("    ratio not measured: make test failed (the later measurements start from its _build)", flush=True)
    failed |= rc != 0 or ratio > RATIO_GOAL

    # (3) make book, warm, nothing changed; and jupyter-book itself with nothing to do
    warm = []
    for i in (1, 2):
        seconds, rc, text = timed(["make", "--no-print-directory", "book"], copy, env, logs / f"make-book-warm{i}.log")
        warm.append(seconds)
        failed |= rc != 0
    results["make_book_warm_s"] = warm
    ok = rc == 0 and max(warm) <= WARM_GOAL_S
    print(f"(3) make book, warm, unchanged tree: {', '.join(f'{s:.2f} s' for s in warm)} "
          f"(goal <= {WARM_GOAL_S:.0f} s: {verdict(ok)})", flush=True)
    failed |= not ok
    seconds, rc, text = timed(
        [str(copy / ".venv" / "bin" / "jupyter-book"), "build", ".", "-W", "-n", "--keep-going"],
        copy, env, logs / "jupyter-book-noop.log", VAELIB_CACHE=str(copy / "_build" / "vaelib-cache"),
    )
    results["jupyter_book_noop_s"] = seconds
    print(f"    (jupyter-book build itself with nothing to do, which make book then skips: {seconds:.1f} s)", flush=True)

    # (4) one chapter changed: text only, then code
    fastest = min(per_chapter, key=per_chapter.get) if per_chapter else "book/intro.md"
    path = copy / fastest
    original = path.read_text()
    path.write_text(original + "\nA harmless line added by benchmarks/make_test.py.\n")
    seconds, rc, text = timed(["make", "--no-print-directory", "book"], copy, env, logs / "make-book-text.log")
    ran = executions(text)
    results["text_change"] = {"chapter": fastest, "seconds": seconds, "executed": ran}
    ok = rc == 0 and ran == []
    print(f"(4) a Markdown line added to {fastest}: make book {seconds:.1f} s, executed {ran or 'nothing'} "
          f"(goal: nothing: {verdict(ok)})", flush=True)
    failed |= not ok
    # The comment goes last in the first code cell, just before its closing fence (after any options).
    text_now = path.read_text()
    cell = re.search(r"^(`{3,})\{code-cell\}[^\n]*\n.*?^(?=\1[ \t]*$)", text_now, flags=re.M | re.S)
    if cell is None:
        print(f"    {fastest} has no code cell: no code change measured")
    else:
        path.write_text(text_now[: cell.end()] + "# changed by benchmarks/make_test.py\n" + text_now[cell.end():])
        seconds, rc, text = timed(["make", "--no-print-directory", "book"], copy, env, logs / "make-book-code.log")
        ran = executions(text)
        results["code_change"] = {"chapter": fastest, "seconds": seconds, "executed": ran}
        ok = rc == 0 and ran == [fastest]
        print(f"    a comment added to its first code cell: make book {seconds:.1f} s, executed {ran} "
              f"(goal: only {fastest}: {verdict(ok)})", flush=True)
        failed |= not ok

    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"Results written to {opts.json}")
    if opts.keep:
        print(f"Kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
