"""Chapter 8's self-checking exercises (book/ch8_richer_posteriors.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from exercise_solutions import BOOK

CHAPTER = BOOK / "ch8_richer_posteriors.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-posteriors-full-kl", "ch8-full-kl", "full_kl"),
    ("ex-posteriors-iaf-log-q", "ch8-iaf-log-q", "iaf_log_q"),
]


def _kl(mu, logvar, M, *, sigma=None, half=0.5, use_M=True, logdet_factor=1.0):
    """The closed form with one thing changed (the right answer with the defaults)."""
    d = mu.shape[-1]
    sigma = (0.5 * logvar).exp() if sigma is None else sigma
    eye = torch.eye(d, dtype=mu.dtype)
    L = ((eye + M) if use_M else eye) * sigma.unsqueeze(-2)
    log_det = logdet_factor * 2 * sigma.log().sum(-1)
    return half * (L.pow(2).sum((-2, -1)) + mu.pow(2).sum(-1) - d - log_det)


#: Plausible mistakes, per exercise.
WRONG = {
    "ch8-full-kl": {
        "missing 1/2": lambda mu, lv, M: _kl(mu, lv, M, half=1.0),
        "log-variance used as a log standard deviation":
            lambda mu, lv, M: _kl(mu, lv, M, sigma=lv.exp()),
        "M ignored (the diagonal KL)": lambda mu, lv, M: _kl(mu, lv, M, use_M=False),
        "log det L used for log det L L^T": lambda mu, lv, M: _kl(mu, lv, M, logdet_factor=0.5),
    },
    "ch8-iaf-log-q": {
        "sign error (log-det added)":
            lambda log_q0, s, shift=1.5: log_q0 + F.logsigmoid(s + shift).sum((0, -1)),
        "the shift forgotten": lambda log_q0, s, shift=1.5: log_q0 - F.logsigmoid(s).sum((0, -1)),
        "log of the sigmoid (underflows in float32)":
            lambda log_q0, s, shift=1.5: log_q0 - torch.sigmoid(s + shift).log().sum((0, -1)),
        "only the last step":
            lambda log_q0, s, shift=1.5: log_q0 - F.logsigmoid(s[-1] + shift).sum(-1),
    },
}
