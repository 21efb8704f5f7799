"""Chapter 7's self-checking exercises: the book's own solutions pass, plausible wrong answers fail."""

from __future__ import annotations

import math
import re
import time

import pytest
import torch

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check, names
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch7_evaluation.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-eval-iwae-bound", "ch7-iwae-bound", "iwae_bound"),
    ("ex-eval-paired-se", "ch7-paired-se", "paired_se"),
]

#: Plausible mistakes, per exercise.
WRONG = {
    "ch7-iwae-bound": {
        "the mean of the log-weights (the ELBO's estimate, not L_K)": lambda log_w: log_w.mean(0),
        "a sum where a mean is due (no - log K)": lambda log_w: torch.logsumexp(log_w, 0),
        "the weights formed directly (underflow)": lambda log_w: log_w.exp().mean(0).log(),
        "the wrong dimension": lambda log_w: torch.logsumexp(log_w, 1) - math.log(log_w.shape[1]),
    },
    "ch7-paired-se": {
        "the two SEs combined as if independent":
            lambda a, b: math.sqrt((a.var() + b.var()).item() / len(a)),
        "the population standard deviation (divisor n)":
            lambda a, b: ((b - a).std(unbiased=False) / math.sqrt(len(a))).item(),
        "the standard deviation, not the standard error": lambda a, b: (b - a).std().item(),
    },
}


def test_the_chapter_checks_exactly_these_exercises():
    assert self_checking_exercises(CHAPTER) == EXERCISES
    assert {name for _, name, _ in EXERCISES} <= set(names())


@pytest.mark.parametrize(("label", "name", "answer"), EXERCISES)
def test_the_books_solution_passes(label, name, answer):
    solution = solution_namespace(CHAPTER, label)[answer]
    verdict = check(name, solution)
    assert verdict.passed, verdict.message
    assert "correct" in verdict.message


@pytest.mark.parametrize(("label", "name", "answer"), EXERCISES)
def test_the_placeholder_is_not_answered_yet(label, name, answer):
    def placeholder(*args):
        ...  # your code here

    verdict = check(name, placeholder)
    assert not verdict.passed and not verdict.attempted
    assert "not answered yet" in verdict.message


def _expected_numbers(name: str) -> list[str]:
    """The expected values of every hidden case, as a verdict would print them (3 significant digits)."""
    out = []
    for case in _get(name).cases():
        parts = case.expected if isinstance(case.expected, tuple) else (case.expected,)
        for part in parts:
            out += [f"{v:.3g}" for v in torch.as_tensor(part).reshape(-1).tolist()]
    return out


def _what_the_verdict_says(name, verdict) -> str:
    """The verdict without what is not a value: the case's description (shapes and dtypes), the case
    and result numbers, percentages (relative errors) and the stated tolerance."""
    said = verdict.message.replace(_get(name).cases()[verdict.failed_case - 1].description, "")
    said = re.sub(r"case \d+ of \d+|result \d+:|[\d.]+%|allowed:.*", "", said)
    return said


@pytest.mark.parametrize(("name", "mistake"), [(n, m) for n in WRONG for m in WRONG[n]])
def test_a_plausible_wrong_answer_fails_and_names_a_case(name, mistake):
    verdict = check(name, WRONG[name][mistake])
    assert not verdict.passed and verdict.attempted, f"{mistake} passed"
    assert re.search(r"case \d+ of \d+ \(", verdict.message), verdict.message
    assert verdict.failed_case is not None
    said = _what_the_verdict_says(name, verdict)
    for number in _expected_numbers(name):
        assert not re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", said), (
            f"the verdict shows an expected value {number}: {verdict.message}")


@pytest.mark.parametrize("name", [name for _, name, _ in EXERCISES])
def test_the_cases_are_deterministic_and_cheap(name):
    start = time.perf_counter()
    first, second = _get(name).cases(), _get(name).cases()
    assert time.perf_counter() - start < 0.5
    assert 3 <= len(first) <= 6
    assert len({case.description for case in first}) == len(first)
    for a, b in zip(first, second):
        assert a.description == b.description
        assert all(_same(x, y) for x, y in zip(a.args, b.args))
        assert _same(a.expected, b.expected)


def _same(x, y) -> bool:
    """Equal numbers, tensors (same dtype and values) or tuples of them."""
    if isinstance(x, tuple):
        return isinstance(y, tuple) and len(x) == len(y) and all(map(_same, x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y
