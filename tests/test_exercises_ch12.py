"""Chapter 12's self-checking exercises (book/ch12_diffusion.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value. Below, the tests only this chapter needs."""

from __future__ import annotations

import pytest
import torch

from exercise_solutions import BOOK, assert_cases_deterministic
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


@pytest.mark.parametrize("name", [name for _, name, _ in EXERCISES])
def test_the_cases_mix_float32_and_float64(name):
    cases = assert_cases_deterministic(name)
    assert len({case.args[0].dtype for case in cases}) == 2, "float32 and float64 cases"


def test_the_naive_snr_difference_passes_too():
    """exp(lambda_s) - exp(lambda_t) is right, if less accurate than expm1: it must not be rejected."""
    verdict = check("ch12-step-kl", lambda x, xh, ls, lt: 0.5 * (ls.exp() - lt.exp()) * _sq(x, xh))
    assert verdict.passed, verdict.message
