"""Chapter 12's self-checking exercises (book/ch12_diffusion.md): plausible wrong answers fail with a
verdict that names the case, never the expected value. (test_exercises.py checks the book's solutions.)"""

from __future__ import annotations

import pytest
import torch

from exercise_solutions import (BOOK, assert_cases_deterministic, assert_rejected,
                                self_checking_exercises, wrong_answers)
from vaelib.exercises import check

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
    assert set(WRONG) == {name for _, name, _ in EXERCISES}


@pytest.mark.parametrize(("name", "mistake"), wrong_answers(WRONG))
def test_a_plausible_wrong_answer_fails_and_names_a_case(name, mistake):
    assert_rejected(name, WRONG[name][mistake], mistake)


@pytest.mark.parametrize("name", [name for _, name, _ in EXERCISES])
def test_the_cases_are_deterministic(name):
    cases = assert_cases_deterministic(name)
    assert len({case.args[0].dtype for case in cases}) == 2, "float32 and float64 cases"


def test_the_naive_snr_difference_passes_too():
    """exp(lambda_s) - exp(lambda_t) is right, if less accurate than expm1: it must not be rejected."""
    verdict = check("ch12-step-kl", lambda x, xh, ls, lt: 0.5 * (ls.exp() - lt.exp()) * _sq(x, xh))
    assert verdict.passed, verdict.message
