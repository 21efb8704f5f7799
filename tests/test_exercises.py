"""vaelib.exercises: every chapter has self-checking exercises, and each accepts the book's own solution.

The per-chapter modules (tests/test_exercises_chNN.py) list each chapter's exercises (EXERCISES) and the
plausible wrong answers each check must reject (WRONG). This module checks what holds for all of them:

* every chapter of _toc.yml has at least one code cell ``check("<name>", <answer>)`` after an
  ``{exercise}``; every registered exercise is used by a chapter, and every name a chapter uses exists;
* the book's solution (the ``{solution}``'s python block, executed in a fresh namespace) passes;
* the placeholder (``...``) gets "not answered yet", never an error, so the chapter runs to the end;
* each chapter module lists exactly its chapter's exercises, and every wrong answer of WRONG is rejected
  with a verdict that names a case and never prints the expected values (a missing 1/2, a sign, a sum
  for a mean, a log-variance used as a scale, an exp or log that underflows, ...);
* every exercise's hidden cases are the same on every call;
* the checker leaves no global state behind (grad mode, default dtype, RNG).
"""

from __future__ import annotations

import importlib
import re

import pytest
import torch

from book_toc import myst_notebooks
from exercise_solutions import (ROOT, assert_cases_deterministic, assert_rejected, self_checking_exercises,
                                solution_namespace, wrong_answers)
from vaelib import exercises
from vaelib.exercises import Case, Exercise, Verdict, check, describe, names, register

CHAPTERS = [ROOT / f"{name}.md" for name in myst_notebooks() if re.search(r"ch\d+_", name)]
USES = [(path, *use) for path in CHAPTERS for use in self_checking_exercises(path)]
#: tests/test_exercises_chNN.py, one per chapter: its EXERCISES and WRONG answers.
MODULES = {path.stem: importlib.import_module(path.stem)
           for path in sorted((ROOT / "tests").glob("test_exercises_ch[0-9][0-9].py"))}
WRONG_ANSWERS = [(module, name, mistake) for module in MODULES for name, mistake in wrong_answers(MODULES[module].WRONG)]


def test_every_chapter_with_exercises_has_its_module():
    assert sorted(MODULES[m].CHAPTER for m in MODULES) == sorted({path for path, *_ in USES})


@pytest.mark.parametrize("module", MODULES)
def test_a_chapter_module_lists_exactly_its_chapters_exercises(module):
    chapter = MODULES[module]
    assert self_checking_exercises(chapter.CHAPTER) == chapter.EXERCISES
    assert set(chapter.WRONG) == {name for _, name, _ in chapter.EXERCISES}, "WRONG answers for each exercise"


@pytest.mark.parametrize(("module", "name", "mistake"), WRONG_ANSWERS)
def test_a_plausible_wrong_answer_fails_and_names_a_case(module, name, mistake):
    assert_rejected(name, MODULES[module].WRONG[name][mistake], mistake)


@pytest.mark.parametrize("name", sorted({name for _, _, name, _ in USES}))
def test_the_cases_are_deterministic(name):
    assert_cases_deterministic(name)


def test_every_chapter_has_a_self_checking_exercise():
    assert len(CHAPTERS) >= 12
    missing = [p.name for p in CHAPTERS if not self_checking_exercises(p)]
    assert not missing, f"chapters without a self-checking exercise: {missing}"


def test_every_registered_exercise_is_in_a_chapter_and_back():
    used = [name for *_, name, _answer in USES]
    assert len(used) == len(set(used)), "an exercise is checked in two places"
    assert sorted(used) == sorted(names()), (set(used) ^ set(names()))


@pytest.mark.parametrize("name", sorted(names()))
def test_what_a_learner_reads_cites_equations_by_number(name):
    """describe() shows the title and answer: "eq. (2.4)", never an internal label like "eq. (kl-gaussians)"."""
    text = describe(name)
    assert not re.search(r"\(\s*[A-Za-z][\w-]*-[\w-]*\)", text), text


@pytest.mark.parametrize("path, label, name, answer", USES,
                         ids=[f"{p.stem}:{n}" for p, _l, n, _a in USES])
def test_the_books_solution_passes(path, label, name, answer):
    namespace = solution_namespace(path, label)
    assert answer in namespace, f"{path.name}: the solution of {label} does not define {answer}"
    verdict = check(name, namespace[answer])
    assert verdict.passed and verdict.attempted, verdict.message
    assert "correct" in verdict.message


@pytest.mark.parametrize("path, label, name, answer", USES,
                         ids=[f"{p.stem}:{n}" for p, _l, n, _a in USES])
def test_the_placeholder_is_not_answered_yet(path, label, name, answer):
    ex = exercises._checker._REGISTRY[name]
    if ex.kind == "number":
        placeholder = ...
    else:
        def placeholder(*args, **kwargs):
            ...  # your code here
    verdict = check(name, placeholder)
    assert not verdict.passed and not verdict.attempted
    assert "not answered yet" in verdict.message


@pytest.mark.parametrize("path, label, name, answer", USES,
                         ids=[f"{p.stem}:{n}" for p, _l, n, _a in USES])
def test_the_chapter_runs_the_check_on_the_placeholder(path, label, name, answer):
    """The chapter's own cell defines the answer with ``...``: executing it shows "not answered yet"."""
    text = path.read_text(encoding="utf-8")
    cell = re.search(r"```\{code-cell\}[^\n]*\n((?:(?!```).)*?check\(\s*[\"']" + re.escape(name)
                     + r"[\"'].*?)```", text, re.S)
    assert cell, f"{path.name}: no code cell checks {name}"
    assert "..." in cell.group(1), f"{path.name}: the cell that checks {name} is not a placeholder"
    assert "solution" not in cell.group(1).lower()


# --- the checker itself, on a small exercise of its own ----------------------------------------------

def _square_cases():
    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn(4, generator=gen)
    x64 = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    return [Case("4 numbers, float32", (x32,), x32**2), Case("a 2x3 batch, float64", (x64,), x64**2)]


SQUARE = Exercise("test-square", "the square", "a function square(x)", "function", _square_cases,
                  atol=1e-6, rtol=1e-6)
NUMBER = Exercise("test-number", "one third", "a number", "number",
                  lambda: [Case("the number", (), 1 / 3)], atol=0.0, rtol=1e-3)


@pytest.fixture
def registered():
    """The two exercises above, registered for the duration of one test."""
    for ex in (SQUARE, NUMBER):
        register(ex)
    yield
    for ex in (SQUARE, NUMBER):
        exercises._checker._REGISTRY.pop(ex.name)


def test_right_wrong_and_broken_answers(registered):
    assert check("test-square", lambda x: x * x).passed
    v = check("test-square", lambda x: 2 * x)
    assert not v and v.attempted and v.failed_case == 1 and "case 1 of 2 (4 numbers, float32)" in v.message
    v = check("test-square", lambda x: x * x if x.dtype == torch.float32 else x * x + 1e-3)
    assert v.failed_case == 2 and "off by up to" in v.message and "% of the expected value's size" in v.message
    v = check("test-square", lambda x: (x * x).sum())
    assert "expected shape (4,), got ()" in v.message
    v = check("test-square", lambda x: x.numpy() ** 2)  # NumPy results are read as numbers
    assert v.passed
    v = check("test-square", lambda x: 1 / 0)
    assert "raised ZeroDivisionError" in v.message
    v = check("test-square", "x**2")
    assert "expected a function square(x), got a str" in v.message


def test_the_answer_cannot_spoil_later_cases(registered):
    def mutating(x):
        x.mul_(x)
        return x

    assert check("test-square", mutating).passed  # each call gets copies of the inputs


def test_the_verdict_never_shows_the_expected_values(registered):
    cases = _square_cases()
    for wrong in (lambda x: x * x + 0.5, lambda x: -x * x, lambda x: x):
        message = check("test-square", wrong).message
        for case in cases:
            for value in case.expected.reshape(-1).tolist():
                assert f"{value:.3g}" not in message and f"{value:.4f}" not in message


def test_numbers(registered):
    assert check("test-number", 0.33334).passed
    v = check("test-number", 0.34)
    assert not v and "within 10% of the answer" in v.message and "0.333" not in v.message
    assert "more than 50%" in check("test-number", 2.0).message
    assert "not answered yet" in check("test-number", ...).message
    assert "expected one number" in check("test-number", [1.0, 2.0]).message
    assert "not a finite number" in check("test-number", float("nan")).message
    assert check("test-number", torch.tensor(1 / 3, dtype=torch.float64)).passed


def test_unknown_names_and_registration_errors(registered):
    with pytest.raises(ValueError, match="no exercise named 'nope'.*test-square"):
        check("nope", 1.0)
    with pytest.raises(ValueError, match="already registered"):
        register(SQUARE)
    with pytest.raises(TypeError):
        register("test-square")
    with pytest.raises(ValueError, match="kind"):
        Exercise("x", "t", "a", "essay", _square_cases)
    assert "2 hidden case(s)" in describe("test-square")


def test_the_checker_leaves_no_global_state(registered):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    grad, dtype = torch.is_grad_enabled(), torch.get_default_dtype()

    for name in names():
        ex = exercises._checker._REGISTRY[name]
        check(name, ... if ex.kind == "number" else (lambda *a, **k: None))
    assert torch.equal(torch.random.get_rng_state(), before), "a checker drew from the global RNG"
    assert torch.is_grad_enabled() == grad and torch.get_default_dtype() == dtype
    assert isinstance(check("test-square", lambda x: x), Verdict)
