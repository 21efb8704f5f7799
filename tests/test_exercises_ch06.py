"""Chapter 6's self-checking exercises (book/ch6_generative.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value."""

from __future__ import annotations

import torch

from exercise_solutions import BOOK

CHAPTER = BOOK / "ch6_generative.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-gen-latent-path", "ch6-latent-path", "latent_path"),
    ("ex-gen-moment-gain", "ch6-moment-gain", "moment_gain"),
]


def _path(mu_a, mu_b, t):
    t = t.to(mu_a.dtype).unsqueeze(1)
    return (1 - t) * mu_a + t * mu_b


def _gain(mu, logvar, var_of_means=None, half=0.5, centred=True):
    mu_bar = mu.mean(0)
    S = (mu.pow(2) + logvar.exp()).mean(0)
    V = (var_of_means(mu) + logvar.exp().mean(0)) if var_of_means else S - mu_bar.pow(2)
    return half * (S - 1 - torch.log(V if centred else S))


#: Plausible mistakes, per exercise.
WRONG = {
    "ch6-latent-path": {
        "the two ends swapped": lambda a, b, steps: _path(b, a, torch.linspace(0, 1, steps)),
        "the last step missing (t = k / steps)":
            lambda a, b, steps: _path(a, b, torch.arange(steps) / steps),
        "one step too many (steps + 1 points)":
            lambda a, b, steps: _path(a, b, torch.linspace(0, 1, steps + 1)),
    },
    "ch6-moment-gain": {
        "the sample variance (n - 1) for Var(mu)":
            lambda mu, lv: _gain(mu, lv, var_of_means=lambda m: m.var(0)),
        "missing 1/2": lambda mu, lv: _gain(mu, lv, half=1.0),
        "S used for V (the mean's square forgotten)": lambda mu, lv: _gain(mu, lv, centred=False),
        "|log-variance| used as the variance": lambda mu, lv: _gain(mu, lv.abs().log()),
        "a sum over the images instead of a mean":
            lambda mu, lv: 0.5 * ((mu.pow(2) + lv.exp()).sum(0) - 1
                                  - torch.log((mu.pow(2) + lv.exp()).sum(0) - mu.sum(0).pow(2))),
    },
}
