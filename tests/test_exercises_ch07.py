"""Chapter 7's self-checking exercises (book/ch7_evaluation.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value."""

from __future__ import annotations

import math

import torch

from exercise_solutions import BOOK

CHAPTER = BOOK / "ch7_evaluation.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-eval-iwae-bound", "ch7-iwae-bound", "iwae_bound"),
    ("ex-eval-paired-se", "ch7-paired-se", "paired_se"),
]

#: Plausible mistakes, per exercise.
WRONG = {
    "ch7-iwae-bound": {
        "the mean of the log-weights (the ELBO's estimate, not L_K)": lambda log_w: log_w.mean(0),
        "a sum where a mean is due (no - log K)": lambda log_w: torch.logsumexp(log_w, 0),
        "the weights formed directly (underflow)": lambda log_w: log_w.exp().mean(0).log(),
        "the wrong dimension": lambda log_w: torch.logsumexp(log_w, 1) - math.log(log_w.shape[1]),
    },
    "ch7-paired-se": {
        "the two SEs combined as if independent":
            lambda a, b: math.sqrt((a.var() + b.var()).item() / len(a)),
        "the population standard deviation (divisor n)":
            lambda a, b: ((b - a).std(unbiased=False) / math.sqrt(len(a))).item(),
        "the standard deviation, not the standard error": lambda a, b: (b - a).std().item(),
    },
}
