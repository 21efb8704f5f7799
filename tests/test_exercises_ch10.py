"""Chapter 10's self-checking exercises (book/ch10_learned_priors.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value."""

from __future__ import annotations

import math

import torch

from exercise_solutions import BOOK

CHAPTER = BOOK / "ch10_learned_priors.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-priors-mixture-log-prob", "ch10-mixture-log-prob", "mixture_log_prob"),
    ("ex-priors-surgery-mi", "ch10-mutual-information", "mutual_information"),
]


def _mixture(z, logits, means, logvars, *, normalise=True, std=None, half=0.5, stable=True):
    """The mixture's log-density with one thing changed (the right answer with the defaults)."""
    log_pi = torch.log_softmax(logits, -1) if normalise else logits
    var = logvars.exp() if std is None else std.pow(2)
    log_normal = -(half * (math.log(2 * math.pi) + var.log())
                   + 0.5 * (z.unsqueeze(-2) - means).pow(2) / var).sum(-1)
    if stable:
        return torch.logsumexp(log_pi + log_normal, -1)
    return (log_pi + log_normal).exp().sum(-1).log()


def _mi(log_q, *, minus_log_n=True, log_mean=True, reduce="mean"):
    """The mutual information with one thing changed (the right answer with the defaults)."""
    n = log_q.shape[0]
    own = torch.diagonal(log_q, dim1=0, dim2=1).T
    if log_mean:
        aggregate = torch.logsumexp(log_q, 1) - (math.log(n) if minus_log_n else 0.0)
    else:
        aggregate = log_q.mean(1)
    return getattr(own - aggregate, reduce)()


#: Plausible mistakes, per exercise.
WRONG = {
    "ch10-mixture-log-prob": {
        "the logits used as log-weights (not normalised)":
            lambda *a: _mixture(*a, normalise=False),
        "log-variances used as standard deviations":
            lambda z, lo, m, lv: _mixture(z, lo, m, lv, std=lv),
        "missing 1/2 on the log-variance": lambda *a: _mixture(*a, half=1.0),
        "log of a sum of exponentials (underflows far from the components)":
            lambda *a: _mixture(*a, stable=False),
    },
    "ch10-mutual-information": {
        "log-sum-exp instead of log-mean-exp (log N forgotten)":
            lambda log_q: _mi(log_q, minus_log_n=False),
        "the mean of the log-densities instead of the log of their mean":
            lambda log_q: _mi(log_q, log_mean=False),
        "a sum over codes where a mean is due": lambda log_q: _mi(log_q, reduce="sum"),
    },
}
