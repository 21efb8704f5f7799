"""Chapter 2's self-checking exercises (book/ch2_vi_kl.md): the book's own solution passes each check,
and plausible wrong answers fail with a verdict that names the case, never the expected value."""

from __future__ import annotations

import re

import pytest
import torch

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch2_vi_kl.md"
EXERCISES = {  # check name: (exercise label, the answer's name)
    "ch2-gaussian-kl": ("ex-code-kl-gaussians", "kl_gaussians"),
    "ch2-mean-field-variances": ("ex-code-mean-field-variances", "mean_field_variances"),
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


# ---- wrong answers to kl_gaussians ----------------------------------------------------------------


def kl_without_half(mu_q, logvar_q, mu_p, logvar_p):
    """The bracket of eq. (kl-gaussians) summed, the factor 1/2 forgotten."""
    return (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def kl_logvar_as_sd(mu_q, logvar_q, mu_p, logvar_p):
    """The log-variances used as standard deviations."""
    var_q, var_p = logvar_q**2, logvar_p**2
    return 0.5 * (var_p.log() - var_q.log() + (var_q + (mu_q - mu_p) ** 2) / var_p - 1).sum(-1)


def kl_swapped(mu_q, logvar_q, mu_p, logvar_p):
    """KL(p || q): the two distributions in the wrong slots."""
    return 0.5 * (logvar_q - logvar_p + (logvar_p.exp() + (mu_q - mu_p) ** 2) / logvar_q.exp()
                  - 1).sum(-1)


def kl_mean_not_sum(mu_q, logvar_q, mu_p, logvar_p):
    """The average over coordinates where the divergence of the vectors is their sum."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp()
                  - 1).mean(-1)


@pytest.mark.parametrize("wrong", [kl_without_half, kl_logvar_as_sd, kl_swapped, kl_mean_not_sum])
def test_wrong_kl_is_rejected(wrong):
    assert_rejected("ch2-gaussian-kl", wrong)


# ---- wrong answers to mean_field_variances ------------------------------------------------------


def marginal_variances(Sigma):
    """The marginals Sigma_ii: the forward-KL fit, not the reverse one."""
    return Sigma.diagonal().clone()


def inverse_marginal_variances(Sigma):
    """1 / Sigma_ii: inverting the wrong matrix's diagonal."""
    return 1 / Sigma.diagonal()


@pytest.mark.parametrize("wrong", [marginal_variances, inverse_marginal_variances])
def test_wrong_mean_field_variances_are_rejected(wrong):
    message = assert_rejected("ch2-mean-field-variances", wrong)
    assert "case 1 of 4" in message
