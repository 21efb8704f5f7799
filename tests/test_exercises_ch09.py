"""Chapter 9's self-checking exercises: the book's own solutions pass, plausible wrong answers fail."""

from __future__ import annotations

import re
import time

import pytest
import torch

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check, names
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch9_tighter_bounds.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-bounds-weights-ess", "ch9-weights-ess", "normalised_weights"),
    ("ex-bounds-snr-draws", "ch9-snr", "gradient_snr"),
]


def _naive_weights(log_w):
    w = log_w.exp()  # underflows to 0 for log-weights hundreds of nats below zero
    w_tilde = w / w.sum(-1, keepdim=True)
    return w_tilde, 1 / w_tilde.pow(2).sum(-1)


#: Plausible mistakes, per exercise.
WRONG = {
    "ch9-weights-ess": {
        "exponentiated without subtracting the largest log-weight": _naive_weights,
        "ESS as the sum of the squared weights (no reciprocal)":
            lambda log_w: (torch.softmax(log_w, -1), torch.softmax(log_w, -1).pow(2).sum(-1)),
        "ESS as a fraction of K":
            lambda log_w: (torch.softmax(log_w, -1),
                           1 / torch.softmax(log_w, -1).pow(2).sum(-1) / log_w.shape[-1]),
        "normalised over the batch, not the draws":
            lambda log_w: (torch.softmax(log_w, 0), 1 / torch.softmax(log_w, 0).pow(2).sum(-1)),
    },
    "ch9-snr": {
        "the biased (divisor R) standard deviation":
            lambda g: g.mean(0).abs() / g.std(0, unbiased=False),
        "no absolute value (a sign error)": lambda g: g.mean(0) / g.std(0),
        "the variance instead of the standard deviation": lambda g: g.mean(0).abs() / g.var(0),
        "the standard error instead of the standard deviation":
            lambda g: g.mean(0).abs() / (g.std(0) / len(g) ** 0.5),
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
    def placeholder(*args, **kwargs):
        ...

    verdict = check(name, placeholder)
    assert not verdict.passed and not verdict.attempted
    assert "not answered yet" in verdict.message


def _leaves(value):
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _expected_numbers(name: str) -> list[str]:
    """The expected values of every hidden case, as a verdict would print them (3 significant digits).

    Whole numbers below 10 (a weight of exactly 1, an ESS of 1) are left out: they tell nothing and
    appear in any verdict ("result 1", "1e-05").
    """
    numbers = {f"{v:.3g}" for case in _get(name).cases() for leaf in _leaves(case.expected)
               for v in leaf.reshape(-1).tolist()}
    return sorted(n for n in numbers if not re.fullmatch(r"-?\d", n))


@pytest.mark.parametrize(("name", "mistake"), [(n, m) for n in WRONG for m in WRONG[n]])
def test_a_plausible_wrong_answer_fails_and_names_a_case(name, mistake):
    verdict = check(name, WRONG[name][mistake])
    assert not verdict.passed and verdict.attempted, f"{mistake} passed"
    assert re.search(r"case \d+ of \d+ \(", verdict.message), verdict.message
    assert verdict.failed_case is not None
    # what the verdict says after the case's description (which names shapes, not values)
    said = verdict.message.split(_get(name).cases()[verdict.failed_case - 1].description, 1)[1]
    for number in _expected_numbers(name):
        assert not re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", said), (
            f"the verdict shows an expected value {number}: {verdict.message}")


@pytest.mark.parametrize("name", [name for _, name, _ in EXERCISES])
def test_the_cases_are_deterministic_and_cheap(name):
    _get(name).cases()  # the first call pays for PyTorch's lazy initialisation (linalg, distributions)
    start = time.perf_counter()
    first, second = _get(name).cases(), _get(name).cases()
    assert time.perf_counter() - start < 0.5
    assert 3 <= len(first) <= 6
    assert len({case.description for case in first}) == len(first)
    for a, b in zip(first, second):
        assert a.description == b.description and a.kwargs == b.kwargs
        assert all(torch.equal(x, y) for x, y in zip(a.args, b.args))
        assert all(torch.equal(x, y) for x, y in zip(_leaves(a.expected), _leaves(b.expected)))
