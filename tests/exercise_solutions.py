"""The book's own solutions to its self-checking exercises, read from the chapters, and what the
exercise tests share.

A self-checking exercise in a chapter is an ``{exercise}`` directive with a ``:label:``, a code cell
that calls ``check("<name>", <answer>)``, and a ``{solution} <label>`` directive whose only ```python
block is the book's answer. :func:`solution_namespace` executes that block in a fresh namespace, so a
test can hand the book's own answer to the checker exactly as a learner would.

The per-chapter modules (tests/test_exercises_chNN.py) list plausible wrong answers;
:func:`assert_rejected` checks that the verdict on each fails, names its case and never shows an
expected value (:func:`expected_numbers`), and :func:`assert_cases_deterministic` checks an
exercise's hidden cases.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from vaelib.exercises import Case, check
from vaelib.exercises._checker import _get

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


# --- the checks every chapter's exercise tests share ------------------------------------------------


def wrong_answers(wrong: dict[str, dict[str, object]]) -> list[tuple[str, str]]:
    """``(check name, mistake)`` for each plausible wrong answer of ``{check name: {mistake: answer}}``."""
    return [(name, mistake) for name in wrong for mistake in wrong[name]]


def _leaves(value) -> list:
    """The numbers and tensors of a case's expected value (a number, a tensor, or nested tuples)."""
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def expected_numbers(name: str) -> list[str]:
    """The hidden expected values of every case of exercise ``name``, as a verdict might print them.

    Each value's size is written to 3 significant digits (``.3g``, as the checker writes numbers) and,
    unless it is below 1e-12, also with ``.4g``, ``.6g``, ``.4f`` and ``repr``, keeping those with 4 digits
    or more. The sign is left off: a verdict that shows ``0.5`` where ``-0.5`` is expected leaks it too.
    """
    numbers = set()
    for case in _get(name).cases():
        for leaf in _leaves(case.expected):
            for v in torch.as_tensor(leaf).double().reshape(-1).abs().tolist():
                numbers.add(f"{v:.3g}")
                if v > 1e-12:
                    longer = (f"{v:.4g}", f"{v:.6g}", f"{v:.4f}", repr(v))
                    numbers.update(s for s in longer if _digits(s) >= 4)
    return sorted(numbers)


def what_the_verdict_says(name: str, verdict) -> str:
    """A failing verdict without what is not a value: the exercise's name, the failing case and its
    description (shapes and dtypes), the result's number, relative errors (percentages) and the
    exercise's stated tolerance."""
    exercise = _get(name)
    cases = exercise.cases()
    k = verdict.failed_case
    said = verdict.message.replace(f"{name}: ", "", 1)
    said = said.replace(f"case {k} of {len(cases)} ({cases[k - 1].description})", "")
    said = said.replace(f"allowed: {exercise.atol:g} + {exercise.rtol:g} x |expected|", "")
    return re.sub(r"result \d+: |[\d.]+(?:e[+-]\d+)?%", "", said)


def assert_rejected(name: str, answer, mistake: str = "") -> str:
    """The verdict on a wrong ``answer`` to exercise ``name`` fails, names the failing case ("case k of
    n (...)") and shows none of its expected values; returns the verdict's message.

    A number of 4 digits or more (``0.1234``) is a leak wherever it appears, the case's description
    included; a shorter one (``0.5``, ``12``) also occurs by chance, and is a leak where it stands alone
    in :func:`what_the_verdict_says`.
    """
    verdict = check(name, answer)
    assert not verdict.passed and verdict.attempted, f"{mistake or answer} passed: {verdict.message}"
    assert verdict.failed_case is not None, verdict.message
    assert re.search(rf"case {verdict.failed_case} of \d+ \(", verdict.message), verdict.message
    said = what_the_verdict_says(name, verdict)
    for number in expected_numbers(name):
        if _digits(number) >= 4:
            shown = number in verdict.message
        else:
            shown = re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", said) is not None
        assert not shown, f"{mistake}: the verdict shows an expected value {number}: {verdict.message}"
    return verdict.message


def same(x, y) -> bool:
    """Equal numbers, tensors (same dtype and values), or tuples, lists and dicts of them."""
    if isinstance(x, (tuple, list)):
        return type(x) is type(y) and len(x) == len(y) and all(map(same, x, y))
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y


def assert_cases_deterministic(name: str) -> list[Case]:
    """Exercise ``name`` has 3 to 6 hidden cases with distinct descriptions and finite expected values,
    the same on every call (no timing is asserted: timings on a shared machine are noise). Returns the
    cases."""
    exercise = _get(name)
    first, second = exercise.cases(), exercise.cases()
    assert 3 <= len(first) <= 6 and len(second) == len(first)
    assert len({case.description for case in first}) == len(first), "two cases share a description"
    for a, b in zip(first, second):
        assert a.description == b.description
        assert same(a.args, b.args) and same(a.kwargs, b.kwargs) and same(a.expected, b.expected)
        assert all(torch.isfinite(torch.as_tensor(leaf)).all() for leaf in _leaves(a.expected))
    return first
