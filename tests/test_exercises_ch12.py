"""Chapter 12's self-checking exercises: the book's own solutions pass, plausible wrong answers fail."""

from __future__ import annotations

import re
import time

import pytest
import torch

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check, names
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch12_diffusion.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-diffusion-forward-draw", "ch12-diffuse", "diffuse"),
    ("ex-diffusion-step-kl", "ch12-step-kl", "step_kl"),
]


def _sq(x, x_hat):
    return (x - x_hat).pow(2).sum(-1)


#: Plausible mistakes, per exercise.
WRONG = {
    "ch12-diffuse": {
        "alpha^2 and sigma^2 used as alpha and sigma (no square root)":
            lambda x, lam, eps: torch.sigmoid(lam)[:, None] * x + torch.sigmoid(-lam)[:, None] * eps,
        "alpha and sigma swapped (the sign of lambda)":
            lambda x, lam, eps: (torch.sigmoid(-lam).sqrt()[:, None] * x
                                 + torch.sigmoid(lam).sqrt()[:, None] * eps),
        "alpha = exp(lambda / 2), the square root of the SNR":
            lambda x, lam, eps: (lam / 2).exp()[:, None] * x + torch.sigmoid(-lam).sqrt()[:, None] * eps,
        "sigma = 1 - alpha (not variance preserving)":
            lambda x, lam, eps: (torch.sigmoid(lam).sqrt()[:, None] * x
                                 + (1 - torch.sigmoid(lam).sqrt())[:, None] * eps),
    },
    "ch12-step-kl": {
        "missing 1/2": lambda x, xh, ls, lt: (ls.exp() - lt.exp()) * _sq(x, xh),
        "SNR(t) - SNR(s) (a sign error)": lambda x, xh, ls, lt: 0.5 * (lt.exp() - ls.exp()) * _sq(x, xh),
        "lambda_s - lambda_t in place of SNR(s) - SNR(t)":
            lambda x, xh, ls, lt: 0.5 * (ls - lt) * _sq(x, xh),
        "a mean over the dimensions where the sum is due":
            lambda x, xh, ls, lt: 0.5 * (ls.exp() - lt.exp()) * (x - xh).pow(2).mean(-1),
        "the noise form's weight without the SNR(t) factor":
            lambda x, xh, ls, lt: 0.5 * torch.expm1(ls - lt) * _sq(x, xh),
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


def test_the_naive_snr_difference_passes_too():
    """exp(lambda_s) - exp(lambda_t) is right, if less accurate than expm1: it must not be rejected."""
    verdict = check("ch12-step-kl", lambda x, xh, ls, lt: 0.5 * (ls.exp() - lt.exp()) * _sq(x, xh))
    assert verdict.passed, verdict.message


def _expected_numbers(name: str) -> list[str]:
    """The expected values of every hidden case, as the verdict would print them (3 significant digits)."""
    return [f"{v:.3g}" for case in _get(name).cases() for v in case.expected.reshape(-1).tolist()]


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


@pytest.mark.parametrize("name", [name for _, name, _ in EXERCISES])
def test_the_cases_are_deterministic_and_cheap(name):
    start = time.perf_counter()
    first, second = _get(name).cases(), _get(name).cases()
    assert time.perf_counter() - start < 0.5
    assert 3 <= len(first) <= 6
    assert len({c.args[0].dtype for c in first}) == 2, "float32 and float64 cases"
    for a, b in zip(first, second):
        assert a.description == b.description
        assert all(torch.equal(x, y) for x, y in zip(a.args, b.args))
        assert torch.equal(a.expected, b.expected)
