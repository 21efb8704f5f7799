"""Chapter 1's self-checking exercises (book/ch1_evidence.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value. Below, the tests only this chapter needs."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from exercise_solutions import BOOK, assert_rejected

CHAPTER = BOOK / "ch1_evidence.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-code-lg-evidence", "ch1-lg-evidence", "log_evidence_exact"),
    ("ex-code-mc-evidence", "ch1-mc-evidence", "log_evidence_mc"),
]


def evidence_sigma_not_squared(x, W, b, sigma):
    cov = W @ W.T + sigma * torch.eye(W.shape[0], dtype=W.dtype)
    return MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def _log_lik(x, W, b, sigma, z):
    return Normal(z @ W.T + b, sigma).log_prob(x).sum(-1)


def mc_mean_of_logs(x, W, b, sigma, z):
    return _log_lik(x, W, b, sigma, z).mean()


def mc_sum_not_mean(x, W, b, sigma, z):
    return _log_lik(x, W, b, sigma, z).logsumexp(0)


def mc_outside_log_space(x, W, b, sigma, z):
    return _log_lik(x, W, b, sigma, z).exp().mean().log()


#: Plausible mistakes, per exercise.
WRONG = {
    "ch1-lg-evidence": {
        "sigma_x where the covariance needs sigma_x^2": evidence_sigma_not_squared,
        "the likelihood at z = 0, the prior's mean, instead of the integral over z":
            lambda x, W, b, sigma: Normal(b, sigma).log_prob(x).sum(-1),
    },
    "ch1-mc-evidence": {
        "the average log-likelihood: a lower bound (Jensen), not log p-hat(x)": mc_mean_of_logs,
        "log of the sum of the likelihoods: the - log S is missing": mc_sum_not_mean,
        "exp, average, log: right formula, but the likelihoods underflow to 0 on informative data":
            mc_outside_log_space,
    },
}


@pytest.mark.parametrize("wrong", [mc_mean_of_logs, mc_sum_not_mean])
def test_a_wrong_monte_carlo_estimate_fails_on_the_first_case(wrong):
    assert "case 1 of 4" in assert_rejected("ch1-mc-evidence", wrong)


def test_monte_carlo_outside_log_space_fails_on_the_informative_case():
    message = assert_rejected("ch1-mc-evidence", mc_outside_log_space)
    assert "case 3 of 4 (an informative observation" in message
    assert "NaN or infinite" in message
