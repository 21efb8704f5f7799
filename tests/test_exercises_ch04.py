"""Chapter 4's self-checking exercises (book/ch4_reconstruction_regularisation.md): the book's own
solution passes each check, and plausible wrong answers fail with a verdict that names the case,
never the expected value."""

from __future__ import annotations

import math
import re

import pytest
import torch

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check
from vaelib.exercises._checker import _get

CHAPTER = BOOK / "ch4_reconstruction_regularisation.md"
EXERCISES = {  # check name: (exercise label, the answer's name)
    "ch4-bernoulli-reconstruction": ("ex-code-bernoulli-reconstruction", "bernoulli_log_likelihood"),
    "ch4-gaussian-reconstruction": ("ex-code-gaussian-reconstruction", "gaussian_log_likelihood"),
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


# ---- wrong answers to bernoulli_log_likelihood --------------------------------------------------


def bernoulli_through_probabilities(x, logits):
    """The formula with pi = sigmoid(logit) first: log(0) = -inf once pi rounds to 0 or 1."""
    pi = torch.sigmoid(logits)
    return (x * pi.log() + (1 - x) * (1 - pi).log()).sum(-1)


def bernoulli_mean_over_pixels(x, logits):
    """nats per pixel where the book counts nats per image."""
    log_p = x * torch.nn.functional.logsigmoid(logits) + (1 - x) * torch.nn.functional.logsigmoid(-logits)
    return log_p.mean(-1)


def bernoulli_cross_entropy(x, logits):
    """The binary cross-entropy loss: the log-likelihood with its sign flipped."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def test_probabilities_first_fails_only_on_the_confident_decoder():
    message = assert_rejected("ch4-bernoulli-reconstruction", bernoulli_through_probabilities)
    assert "case 3 of 3 (3 binary images of 50 pixels from a confident decoder" in message
    assert "NaN or infinite" in message


@pytest.mark.parametrize("wrong", [bernoulli_mean_over_pixels, bernoulli_cross_entropy])
def test_wrong_bernoulli_term_is_rejected(wrong):
    assert "case 1 of 3" in assert_rejected("ch4-bernoulli-reconstruction", wrong)


# ---- wrong answers to gaussian_log_likelihood ---------------------------------------------------


def gaussian_sigma_not_squared(x, x_hat, sigma):
    """The standard deviation where eq. (gaussian-log-likelihood) has the variance."""
    D = x.shape[-1]
    return -D / 2 * math.log(2 * math.pi * sigma) - (x - x_hat).pow(2).sum(-1) / (2 * sigma)


def gaussian_without_constant(x, x_hat, sigma):
    """Only the squared error: the -D/2 log(2 pi sigma^2) forgotten."""
    return -(x - x_hat).pow(2).sum(-1) / (2 * sigma**2)


def gaussian_mean_over_pixels(x, x_hat, sigma):
    """nats per pixel where the book counts nats per image."""
    return (-0.5 * math.log(2 * math.pi * sigma**2) - (x - x_hat).pow(2) / (2 * sigma**2)).mean(-1)


@pytest.mark.parametrize("wrong", [gaussian_sigma_not_squared, gaussian_without_constant,
                                   gaussian_mean_over_pixels])
def test_wrong_gaussian_term_is_rejected(wrong):
    assert_rejected("ch4-gaussian-reconstruction", wrong)
