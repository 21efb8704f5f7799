"""Consistency of the book's sources with the library (fast; runs with the unit tests)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reference_documents_every_public_module():
    """book/reference.md has an automodule section for every public module of vaelib/."""
    modules = sorted([p.stem for p in (ROOT / "vaelib").glob("*.py") if not p.stem.startswith("_")]
                     + [p.parent.name for p in (ROOT / "vaelib").glob("*/__init__.py")])
    reference = (ROOT / "book" / "reference.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. automodule:: vaelib\.(\w+)", reference, flags=re.M))
    missing = [m for m in modules if m not in documented]
    assert not missing, f"add a section to book/reference.md for: {', '.join('vaelib.' + m for m in missing)}"
    stale = sorted(documented - set(modules))
    assert not stale, f"book/reference.md documents modules that no longer exist: {stale}"


CHAPTERS = sorted((ROOT / "book").glob("ch*_*.md"))
_CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.S | re.M)


def test_no_chapter_calls_glue_itself():
    """Numbers and figures for the prose are recorded by vaelib.checks (holds, close, record), in the
    line that computes or checks them; a reader meets no bare glue(...) calls."""
    assert len(CHAPTERS) >= 12
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in CHAPTERS
        for cell in _CODE_CELL.findall(path.read_text(encoding="utf-8"))
        for line in cell.splitlines()
        if re.search(r"\bglue\(|from myst_nb import", line)
    ]
    assert not offenders, "use vaelib.checks.record/holds/close instead:\n" + "\n".join(offenders)
