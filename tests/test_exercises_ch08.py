"""Chapter 8's self-checking exercises: the book's own solutions pass, plausible wrong answers fail."""

from __future__ import annotations

import re
import time

import pytest
import torch
import torch.nn.functional as F

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check, names
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch8_richer_posteriors.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-posteriors-full-kl", "ch8-full-kl", "full_kl"),
    ("ex-posteriors-iaf-log-q", "ch8-iaf-log-q", "iaf_log_q"),
]


def _kl(mu, logvar, M, *, sigma=None, half=0.5, use_M=True, logdet_factor=1.0):
    """The closed form with one thing changed (the right answer with the defaults)."""
    d = mu.shape[-1]
    sigma = (0.5 * logvar).exp() if sigma is None else sigma
    eye = torch.eye(d, dtype=mu.dtype)
    L = ((eye + M) if use_M else eye) * sigma.unsqueeze(-2)
    log_det = logdet_factor * 2 * sigma.log().sum(-1)
    return half * (L.pow(2).sum((-2, -1)) + mu.pow(2).sum(-1) - d - log_det)


#: Plausible mistakes, per exercise.
WRONG = {
    "ch8-full-kl": {
        "missing 1/2": lambda mu, lv, M: _kl(mu, lv, M, half=1.0),
        "log-variance used as a log standard deviation":
            lambda mu, lv, M: _kl(mu, lv, M, sigma=lv.exp()),
        "M ignored (the diagonal KL)": lambda mu, lv, M: _kl(mu, lv, M, use_M=False),
        "log det L used for log det L L^T": lambda mu, lv, M: _kl(mu, lv, M, logdet_factor=0.5),
    },
    "ch8-iaf-log-q": {
        "sign error (log-det added)":
            lambda log_q0, s, shift=1.5: log_q0 + F.logsigmoid(s + shift).sum((0, -1)),
        "the shift forgotten": lambda log_q0, s, shift=1.5: log_q0 - F.logsigmoid(s).sum((0, -1)),
        "log of the sigmoid (underflows in float32)":
            lambda log_q0, s, shift=1.5: log_q0 - torch.sigmoid(s + shift).log().sum((0, -1)),
        "only the last step":
            lambda log_q0, s, shift=1.5: log_q0 - F.logsigmoid(s[-1] + shift).sum(-1),
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
