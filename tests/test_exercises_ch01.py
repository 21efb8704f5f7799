"""Chapter 1's self-checking exercises (book/ch1_evidence.md): the book's own solution passes each
check, and plausible wrong answers fail with a verdict that names the case, never the expected value."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch1_evidence.md"
EXERCISES = {  # check name: (exercise label, the answer's name)
    "ch1-lg-evidence": ("ex-code-lg-evidence", "log_evidence_exact"),
    "ch1-mc-evidence": ("ex-code-mc-evidence", "log_evidence_mc"),
}


def expected_numbers(name: str) -> list[str]:
    """The hidden expected values of every case, as a learner might see them printed."""
    out = []
    for case in _get(name).cases():
        for v in torch.as_tensor(case.expected).double().flatten().tolist():
            if abs(v) > 1e-12:
                out += [f"{v:.4g}", f"{v:.6g}", f"{v:.4f}", repr(v)]
    return [s for s in out if sum(c.isdigit() for c in s) >= 4]  # "1" is not a leak


def assert_rejected(name: str, answer) -> str:
    verdict = check(name, answer)
    assert not verdict.passed and verdict.attempted, verdict.message
    assert verdict.failed_case is not None
    assert re.search(rf"case {verdict.failed_case} of \d+ \(", verdict.message), verdict.message
    for number in expected_numbers(name):
        assert number not in verdict.message, (number, verdict.message)
    return verdict.message


def test_the_chapter_has_these_exercises():
    found = {name: (label, answer) for label, name, answer in self_checking_exercises(CHAPTER)}
    assert found == EXERCISES


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_book_solution_passes(name):
    label, answer = EXERCISES[name]
    verdict = check(name, solution_namespace(CHAPTER, label)[answer])
    assert verdict.passed, verdict.message


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_placeholder_is_not_answered_yet(name):
    def placeholder(*args):
        ...  # your code here

    verdict = check(name, placeholder)
    assert not verdict.passed and not verdict.attempted
    assert "not answered yet" in verdict.message


# ---- wrong answers to log_evidence_exact --------------------------------------------------------


def evidence_sigma_not_squared(x, W, b, sigma):
    """sigma_x where the covariance needs sigma_x^2."""
    cov = W @ W.T + sigma * torch.eye(W.shape[0], dtype=W.dtype)
    return MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def evidence_at_z_zero(x, W, b, sigma):
    """The likelihood at z = 0, the prior's mean, instead of the integral over z."""
    return Normal(b, sigma).log_prob(x).sum(-1)


@pytest.mark.parametrize("wrong", [evidence_sigma_not_squared, evidence_at_z_zero])
def test_wrong_evidence_is_rejected(wrong):
    assert_rejected("ch1-lg-evidence", wrong)


# ---- wrong answers to log_evidence_mc -----------------------------------------------------------


def _log_lik(x, W, b, sigma, z):
    return Normal(z @ W.T + b, sigma).log_prob(x).sum(-1)


def mc_mean_of_logs(x, W, b, sigma, z):
    """The average log-likelihood: a lower bound (Jensen), not log p-hat(x)."""
    return _log_lik(x, W, b, sigma, z).mean()


def mc_sum_not_mean(x, W, b, sigma, z):
    """log of the sum of the likelihoods: the - log S is missing."""
    return _log_lik(x, W, b, sigma, z).logsumexp(0)


def mc_outside_log_space(x, W, b, sigma, z):
    """exp, average, log: right formula, but the likelihoods underflow to 0 on informative data."""
    return _log_lik(x, W, b, sigma, z).exp().mean().log()


@pytest.mark.parametrize("wrong", [mc_mean_of_logs, mc_sum_not_mean])
def test_wrong_monte_carlo_estimate_is_rejected(wrong):
    message = assert_rejected("ch1-mc-evidence", wrong)
    assert "case 1 of 4" in message


def test_monte_carlo_outside_log_space_fails_on_the_informative_case():
    message = assert_rejected("ch1-mc-evidence", mc_outside_log_space)
    assert "case 3 of 4 (an informative observation" in message
    assert "NaN or infinite" in message


def test_the_exercises_are_cheap_and_deterministic():
    for name in EXERCISES:
        first, second = _get(name).cases(), _get(name).cases()
        for a, b in zip(first, second):
            assert torch.equal(torch.as_tensor(a.expected), torch.as_tensor(b.expected))
            assert len(first) >= 3 and math.isfinite(float(torch.as_tensor(a.expected).sum()))
