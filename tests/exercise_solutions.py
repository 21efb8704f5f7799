"""The book's own solutions to its self-checking exercises, read from the chapters.

A self-checking exercise in a chapter is an ``{exercise}`` directive with a ``:label:``, a code cell
that calls ``check("<name>", <answer>)``, and a ``{solution} <label>`` directive whose only ```python
block is the book's answer. :func:`solution_namespace` executes that block in a fresh namespace, so a
test can hand the book's own answer to the checker exactly as a learner would.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

_SOLUTION = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution\}\s+(?P<label>\S+)\s*$")
_PYTHON = re.compile(r"^```python\s*\n(?P<code>.*?)^```\s*$", re.S | re.M)
#: ``check("name", answer)`` in a code cell.
CHECK_CALL = re.compile(r"""^check\(\s*["'](?P<name>[^"']+)["']\s*,\s*(?P<answer>\w+)\s*\)\s*$""", re.M)


def solution_block(path: Path, exercise_label: str) -> str:
    """The body of the ``{solution} exercise_label`` directive of a chapter."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        m = _SOLUTION.match(line.rstrip("\n"))
        if m and m.group("label") == exercise_label:
            fence = m.group("fence")
            for j in range(i + 1, len(lines)):
                if lines[j].rstrip("\n") == fence:
                    return "".join(lines[i + 1 : j])
            raise AssertionError(f"{path.name}: the solution of {exercise_label} is not closed by {fence}")
    raise AssertionError(f"{path.name}: no {{solution}} {exercise_label}")


def solution_code(path: Path, exercise_label: str) -> str:
    """The only ```python block of the solution of ``exercise_label``."""
    blocks = _PYTHON.findall(solution_block(path, exercise_label))
    if len(blocks) != 1:
        raise AssertionError(
            f"{Path(path).name}: the solution of {exercise_label} has {len(blocks)} python blocks, not 1"
        )
    return blocks[0]


def solution_namespace(path: Path, exercise_label: str) -> dict:
    """The namespace after executing the book's solution of ``exercise_label`` in a fresh one."""
    namespace: dict = {"__name__": f"solution_{exercise_label.replace('-', '_')}"}
    exec(compile(solution_code(path, exercise_label), f"{Path(path).name}:{exercise_label}", "exec"),
         namespace)
    return namespace


def self_checking_exercises(path: Path) -> list[tuple[str, str, str]]:
    """``(exercise label, check name, answer name)`` for each code cell of a chapter that calls ``check``.

    The exercise is the last ``{exercise}`` directive above the cell.
    """
    text = Path(path).read_text(encoding="utf-8")
    found = []
    for m in CHECK_CALL.finditer(text):
        before = text[: m.start()]
        labels = re.findall(r"\{exercise\}[^\n]*\n(?::[^\n]*\n)*?:label:\s*(\S+)", before)
        if not labels:
            raise AssertionError(f"{Path(path).name}: check({m.group('name')!r}) follows no exercise")
        found.append((labels[-1], m.group("name"), m.group("answer")))
    return found
