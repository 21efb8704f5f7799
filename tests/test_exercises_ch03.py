"""Chapter 3's self-checking exercises (book/ch3_elbo.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value. Below, the tests only this chapter needs."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from exercise_solutions import BOOK, assert_rejected

CHAPTER = BOOK / "ch3_elbo.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-code-elbo-linear-gaussian", "ch3-linear-gaussian-elbo", "elbo_linear_gaussian"),
    ("ex-code-mean-field-gap", "ch3-mean-field-gap", "mean_field_gap"),
]


def _elbo(x, W, b, sigma, mu, S, *, spread=True, logdet_sign=1.0, d_half=True):
    """The ELBO of the linear Gaussian model with one thing changed (the right answer with the defaults)."""
    log_lik = Normal(W @ mu + b, sigma).log_prob(x).sum()
    spread_term = torch.trace(W @ S @ W.T) / (2 * sigma**2) if spread else 0.0
    prior = 0.5 * (mu @ mu + torch.trace(S))
    entropy = logdet_sign * 0.5 * torch.logdet(S) + (mu.shape[0] / 2 if d_half else 0.0)
    return log_lik - spread_term - prior + entropy


def gap_without_half(M):
    return M.diagonal().log().sum() - torch.logdet(M)


def gap_of_the_covariance(M):
    C = torch.linalg.inv(M)
    return 0.5 * (C.diagonal().log().sum() - torch.logdet(C))


def gap_sign_error(M):
    return 0.5 * (torch.logdet(M) - M.diagonal().log().sum())


#: Plausible mistakes, per exercise.
WRONG = {
    "ch3-linear-gaussian-elbo": {
        "the entropy's d/2 forgotten": lambda *args: _elbo(*args, d_half=False),
        "the likelihood at the mean of q only: tr(W S W^T) / (2 sigma^2) forgotten":
            lambda *args: _elbo(*args, spread=False),
        "the entropy's log-determinant with the wrong sign": lambda *args: _elbo(*args, logdet_sign=-1.0),
    },
    "ch3-mean-field-gap": {
        "the bracket of eq. (eq-mean-field-gap) without its factor 1/2": gap_without_half,
        "the covariance's diagonal where the precision's is due: the forward-KL gap": gap_of_the_covariance,
        "log det M minus the log-diagonal: the sign flipped": gap_sign_error,
    },
}


@pytest.mark.parametrize("wrong", [gap_without_half, gap_sign_error])
def test_a_wrong_gap_fails_on_the_first_case(wrong):
    assert "case 1 of 4" in assert_rejected("ch3-mean-field-gap", wrong)


def test_the_covariance_gap_passes_in_two_dimensions_and_fails_in_four():
    message = assert_rejected("ch3-mean-field-gap", gap_of_the_covariance)
    assert "case 2 of 4 (a random 4 x 4 precision matrix" in message
