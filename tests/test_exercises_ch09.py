"""Chapter 9's self-checking exercises (book/ch9_tighter_bounds.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value."""

from __future__ import annotations

import torch

from exercise_solutions import BOOK

CHAPTER = BOOK / "ch9_tighter_bounds.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-bounds-weights-ess", "ch9-weights-ess", "normalised_weights"),
    ("ex-bounds-snr-draws", "ch9-snr", "gradient_snr"),
]


def _naive_weights(log_w):
    w = log_w.exp()  # underflows to 0 for log-weights hundreds of nats below zero
    w_tilde = w / w.sum(-1, keepdim=True)
    return w_tilde, 1 / w_tilde.pow(2).sum(-1)


#: Plausible mistakes, per exercise.
WRONG = {
    "ch9-weights-ess": {
        "exponentiated without subtracting the largest log-weight": _naive_weights,
        "ESS as the sum of the squared weights (no reciprocal)":
            lambda log_w: (torch.softmax(log_w, -1), torch.softmax(log_w, -1).pow(2).sum(-1)),
        "ESS as a fraction of K":
            lambda log_w: (torch.softmax(log_w, -1),
                           1 / torch.softmax(log_w, -1).pow(2).sum(-1) / log_w.shape[-1]),
        "normalised over the batch, not the draws":
            lambda log_w: (torch.softmax(log_w, 0), 1 / torch.softmax(log_w, 0).pow(2).sum(-1)),
    },
    "ch9-snr": {
        "the biased (divisor R) standard deviation":
            lambda g: g.mean(0).abs() / g.std(0, unbiased=False),
        "no absolute value (a sign error)": lambda g: g.mean(0) / g.std(0),
        "the variance instead of the standard deviation": lambda g: g.mean(0).abs() / g.var(0),
        "the standard error instead of the standard deviation":
            lambda g: g.mean(0).abs() / (g.std(0) / len(g) ** 0.5),
    },
}
