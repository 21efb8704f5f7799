"""Chapter 11's self-checking exercises: the book's own solutions pass, plausible wrong answers fail."""

from __future__ import annotations

import re

import pytest

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check, names
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch11_hierarchy.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-hierarchy-upper-kl", "ch11-upper-kl", "upper_kl"),
    ("ex-hierarchy-lower-kl", "ch11-lower-kl", "lower_kl"),
]


def _log_normal(z, mu, logvar):
    return -0.5 * (logvar + (z - mu).pow(2) / logvar.exp())


#: Plausible mistakes, per exercise.
WRONG = {
    "ch11-upper-kl": {
        "missing 1/2": lambda mu, lv: (mu.pow(2) + lv.exp() - 1 - lv).sum(-1).mean(0),
        "sum over the draws": lambda mu, lv: 0.5 * (mu.pow(2) + lv.exp() - 1 - lv).sum(-1).sum(0),
        "log-variance used as a standard deviation":
            lambda mu, lv: 0.5 * (mu.pow(2) + lv.pow(2) - 1 - (lv.pow(2)).log()).sum(-1).mean(0),
        "sign of the log-variance term":
            lambda mu, lv: 0.5 * (mu.pow(2) + lv.exp() - 1 + lv).sum(-1).mean(0),
    },
    "ch11-lower-kl": {
        "log p minus log q (a sign error)":
            lambda z, mq, lq, mp, lp: (_log_normal(z, mp, lp) - _log_normal(z, mq, lq)).sum(-1).mean(0),
        "sum over the draws":
            lambda z, mq, lq, mp, lp: (_log_normal(z, mq, lq) - _log_normal(z, mp, lp)).sum(-1).sum(0),
        "missing 1/2 on the log-variances":
            lambda z, mq, lq, mp, lp: ((-lq - 0.5 * (z - mq).pow(2) / lq.exp())
                                       - (-lp - 0.5 * (z - mp).pow(2) / lp.exp())).sum(-1).mean(0),
        "mean over the dimensions":
            lambda z, mq, lq, mp, lp: (_log_normal(z, mq, lq) - _log_normal(z, mp, lp)).mean(-1).mean(0),
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
        ...

    verdict = check(name, placeholder)
    assert not verdict.passed and not verdict.attempted
    assert "not answered yet" in verdict.message


def _expected_numbers(name: str) -> list[str]:
    """The expected values of every hidden case, as the verdict would print them (3 significant digits)."""
    out = []
    for case in _get(name).cases():
        for v in case.expected.reshape(-1).tolist():
            out.append(f"{v:.3g}")
    return out


@pytest.mark.parametrize(("name", "mistake"), [(n, m) for n in WRONG for m in WRONG[n]])
def test_a_plausible_wrong_answer_fails_and_names_a_case(name, mistake):
    verdict = check(name, WRONG[name][mistake])
    assert not verdict.passed and verdict.attempted, f"{mistake} passed"
    assert re.search(r"case \d+ of \d+ \(", verdict.message), verdict.message
    assert verdict.failed_case is not None
    # what the verdict says after the case's description (which names shapes, not values)
    # and before the tolerances it states
    said = verdict.message.split(_get(name).cases()[verdict.failed_case - 1].description, 1)[1]
    said = said.split("allowed:")[0]
    for number in _expected_numbers(name):
        assert not re.search(rf"(?<![\d.e-]){re.escape(number)}(?![\d.e])", said), (
            f"the verdict shows an expected value {number}: {verdict.message}")


def test_the_cases_are_deterministic_and_cheap():
    import time

    for name in ("ch11-upper-kl", "ch11-lower-kl"):
        start = time.perf_counter()
        first, second = _get(name).cases(), _get(name).cases()
        assert time.perf_counter() - start < 0.5
        assert 3 <= len(first) <= 6
        for a, b in zip(first, second):
            assert a.description == b.description
            assert all((x == y).all() for x, y in zip(a.args, b.args))
            assert (a.expected == b.expected).all()
