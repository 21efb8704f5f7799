"""Consistency of the book's sources with the library (fast; runs with the unit tests)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reference_documents_every_public_module():
    """book/reference.md has an automodule section for every public module of vaelib/."""
    modules = sorted(p.stem for p in (ROOT / "vaelib").glob("*.py") if not p.stem.startswith("_"))
    reference = (ROOT / "book" / "reference.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. automodule:: vaelib\.(\w+)", reference, flags=re.M))
    missing = [m for m in modules if m not in documented]
    assert not missing, f"add a section to book/reference.md for: {', '.join('vaelib.' + m for m in missing)}"
    stale = sorted(documented - set(modules))
    assert not stale, f"book/reference.md documents modules that no longer exist: {stale}"
