"""Chapter 4's self-checking exercises (book/ch4_reconstruction_regularisation.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value. Below, the tests only this chapter needs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from exercise_solutions import BOOK, assert_rejected

CHAPTER = BOOK / "ch4_reconstruction_regularisation.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-code-bernoulli-reconstruction", "ch4-bernoulli-reconstruction", "bernoulli_log_likelihood"),
    ("ex-code-gaussian-reconstruction", "ch4-gaussian-reconstruction", "gaussian_log_likelihood"),
]


def bernoulli_through_probabilities(x, logits):
    pi = torch.sigmoid(logits)
    return (x * pi.log() + (1 - x) * (1 - pi).log()).sum(-1)


def bernoulli_mean_over_pixels(x, logits):
    return (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).mean(-1)


def bernoulli_cross_entropy(x, logits):
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def _gaussian(x, x_hat, sigma, *, var=None, constant=True, reduce="sum"):
    """Eq. (gaussian-log-likelihood) with one thing changed (the right answer with the defaults)."""
    var = sigma**2 if var is None else var
    log_p = -(x - x_hat).pow(2) / (2 * var) - (0.5 * math.log(2 * math.pi * var) if constant else 0.0)
    return getattr(log_p, reduce)(-1)


#: Plausible mistakes, per exercise.
WRONG = {
    "ch4-bernoulli-reconstruction": {
        "the formula with pi = sigmoid(logit) first: log(0) = -inf once pi rounds to 0 or 1":
            bernoulli_through_probabilities,
        "nats per pixel where the book counts nats per image": bernoulli_mean_over_pixels,
        "the binary cross-entropy loss: the log-likelihood with its sign flipped": bernoulli_cross_entropy,
    },
    "ch4-gaussian-reconstruction": {
        "the standard deviation where eq. (gaussian-log-likelihood) has the variance":
            lambda x, x_hat, sigma: _gaussian(x, x_hat, sigma, var=sigma),
        "only the squared error: the -D/2 log(2 pi sigma^2) forgotten":
            lambda *args: _gaussian(*args, constant=False),
        "nats per pixel where the book counts nats per image": lambda *args: _gaussian(*args, reduce="mean"),
    },
}


def test_probabilities_first_fails_only_on_the_confident_decoder():
    message = assert_rejected("ch4-bernoulli-reconstruction", bernoulli_through_probabilities)
    assert "case 3 of 3 (3 binary images of 50 pixels from a confident decoder" in message
    assert "NaN or infinite" in message


@pytest.mark.parametrize("wrong", [bernoulli_mean_over_pixels, bernoulli_cross_entropy])
def test_a_wrong_bernoulli_term_fails_on_the_first_case(wrong):
    assert "case 1 of 3" in assert_rejected("ch4-bernoulli-reconstruction", wrong)
