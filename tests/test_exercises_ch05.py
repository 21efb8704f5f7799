"""Chapter 5's self-checking exercises (book/ch5_reparameterisation.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value."""

from __future__ import annotations

import math

import torch

from exercise_solutions import BOOK

CHAPTER = BOOK / "ch5_reparameterisation.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-ch5-sample-density", "ch5-reparameterised-sample", "reparameterised_sample"),
    ("ex-ch5-pathwise-by-hand", "ch5-pathwise-gradient", "pathwise_gradient"),
]


def _log_q(eps, logvar):
    return -0.5 * (math.log(2 * math.pi) + eps**2 + logvar).sum(-1)


def _pathwise(mu, logvar, a, eps, half=0.5, sign=1.0, reduce="mean"):
    sigma = torch.exp(0.5 * logvar)
    df_dz = sign * 2 * (mu + sigma * eps - a)
    terms = (df_dz, df_dz * half * sigma * eps)
    return tuple(t.mean(0) if reduce == "mean" else t.sum(0) for t in terms)


#: Plausible mistakes, per exercise.
WRONG = {
    "ch5-reparameterised-sample": {
        "log-variance used as a standard deviation":
            lambda mu, lv, eps: (mu + lv * eps, _log_q(eps, lv)),
        "missing 1/2 (the variance used as a standard deviation)":
            lambda mu, lv, eps: (mu + lv.exp() * eps, _log_q(eps, lv)),
        "the Jacobian term forgotten":
            lambda mu, lv, eps: (mu + (0.5 * lv).exp() * eps, _log_q(eps, 0 * lv)),
        "the Jacobian term with the wrong sign":
            lambda mu, lv, eps: (mu + (0.5 * lv).exp() * eps, _log_q(eps, -lv)),
    },
    "ch5-pathwise-gradient": {
        "missing 1/2 in the log-variance term": lambda *args: _pathwise(*args, half=1.0),
        "a sign error (a - z)": lambda *args: _pathwise(*args, sign=-1.0),
        "a sum over the draws instead of a mean": lambda *args: _pathwise(*args, reduce="sum"),
        "the exact gradient instead of the estimate":
            lambda mu, lv, a, eps: (2 * (mu - a), lv.exp()),
    },
}
