"""Chapter 3's self-checking exercises (book/ch3_elbo.md): the book's own solution passes each check,
and plausible wrong answers fail with a verdict that names the case, never the expected value."""

from __future__ import annotations

import re

import pytest
import torch
from torch.distributions import Normal

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch3_elbo.md"
EXERCISES = {  # check name: (exercise label, the answer's name)
    "ch3-linear-gaussian-elbo": ("ex-code-elbo-linear-gaussian", "elbo_linear_gaussian"),
    "ch3-mean-field-gap": ("ex-code-mean-field-gap", "mean_field_gap"),
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


# ---- wrong answers to elbo_linear_gaussian ------------------------------------------------------


def _terms(x, W, b, sigma, mu, S):
    log_lik = Normal(W @ mu + b, sigma).log_prob(x).sum()
    spread = torch.trace(W @ S @ W.T) / (2 * sigma**2)
    prior = 0.5 * (mu @ mu + torch.trace(S))
    return log_lik, spread, prior, 0.5 * torch.logdet(S), mu.shape[0] / 2


def elbo_without_d_half(*args):
    """The entropy's d/2 forgotten."""
    log_lik, spread, prior, half_logdet, _ = _terms(*args)
    return log_lik - spread - prior + half_logdet


def elbo_without_spread(*args):
    """The likelihood at the mean of q only: tr(W S W^T) / (2 sigma^2) forgotten."""
    log_lik, _, prior, half_logdet, d_half = _terms(*args)
    return log_lik - prior + half_logdet + d_half


def elbo_logdet_sign(*args):
    """The entropy's log-determinant with the wrong sign."""
    log_lik, spread, prior, half_logdet, d_half = _terms(*args)
    return log_lik - spread - prior - half_logdet + d_half


@pytest.mark.parametrize("wrong", [elbo_without_d_half, elbo_without_spread, elbo_logdet_sign])
def test_wrong_elbo_is_rejected(wrong):
    assert_rejected("ch3-linear-gaussian-elbo", wrong)


# ---- wrong answers to mean_field_gap ------------------------------------------------------------


def gap_without_half(M):
    """The bracket of eq. (eq-mean-field-gap) without its factor 1/2."""
    return M.diagonal().log().sum() - torch.logdet(M)


def gap_of_the_covariance(M):
    """The covariance's diagonal where the precision's is due: the forward-KL gap."""
    C = torch.linalg.inv(M)
    return 0.5 * (C.diagonal().log().sum() - torch.logdet(C))


def gap_sign_error(M):
    return 0.5 * (torch.logdet(M) - M.diagonal().log().sum())


@pytest.mark.parametrize("wrong", [gap_without_half, gap_sign_error])
def test_wrong_gap_is_rejected(wrong):
    assert "case 1 of 4" in assert_rejected("ch3-mean-field-gap", wrong)


def test_the_covariance_gap_passes_in_two_dimensions_and_fails_in_four():
    message = assert_rejected("ch3-mean-field-gap", gap_of_the_covariance)
    assert "case 2 of 4 (a random 4 x 4 precision matrix" in message
