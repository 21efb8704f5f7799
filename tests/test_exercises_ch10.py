"""Chapter 10's self-checking exercises: the book's own solutions pass, plausible wrong answers fail."""

from __future__ import annotations

import math
import re
import time

import pytest
import torch

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check, names
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch10_learned_priors.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-priors-mixture-log-prob", "ch10-mixture-log-prob", "mixture_log_prob"),
    ("ex-priors-surgery-mi", "ch10-mutual-information", "mutual_information"),
]


def _mixture(z, logits, means, logvars, *, normalise=True, std=None, half=0.5, stable=True):
    """The mixture's log-density with one thing changed (the right answer with the defaults)."""
    log_pi = torch.log_softmax(logits, -1) if normalise else logits
    var = logvars.exp() if std is None else std.pow(2)
    log_normal = -(half * (math.log(2 * math.pi) + var.log())
                   + 0.5 * (z.unsqueeze(-2) - means).pow(2) / var).sum(-1)
    if stable:
        return torch.logsumexp(log_pi + log_normal, -1)
    return (log_pi + log_normal).exp().sum(-1).log()


def _mi(log_q, *, minus_log_n=True, log_mean=True, reduce="mean"):
    """The mutual information with one thing changed (the right answer with the defaults)."""
    n = log_q.shape[0]
    own = torch.diagonal(log_q, dim1=0, dim2=1).T
    if log_mean:
        aggregate = torch.logsumexp(log_q, 1) - (math.log(n) if minus_log_n else 0.0)
    else:
        aggregate = log_q.mean(1)
    return getattr(own - aggregate, reduce)()


#: Plausible mistakes, per exercise.
WRONG = {
    "ch10-mixture-log-prob": {
        "the logits used as log-weights (not normalised)":
            lambda *a: _mixture(*a, normalise=False),
        "log-variances used as standard deviations":
            lambda z, lo, m, lv: _mixture(z, lo, m, lv, std=lv),
        "missing 1/2 on the log-variance": lambda *a: _mixture(*a, half=1.0),
        "log of a sum of exponentials (underflows far from the components)":
            lambda *a: _mixture(*a, stable=False),
    },
    "ch10-mutual-information": {
        "log-sum-exp instead of log-mean-exp (log N forgotten)":
            lambda log_q: _mi(log_q, minus_log_n=False),
        "the mean of the log-densities instead of the log of their mean":
            lambda log_q: _mi(log_q, log_mean=False),
        "a sum over codes where a mean is due": lambda log_q: _mi(log_q, reduce="sum"),
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
