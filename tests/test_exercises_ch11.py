"""Chapter 11's self-checking exercises (book/ch11_hierarchy.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value."""

from __future__ import annotations


from exercise_solutions import BOOK

CHAPTER = BOOK / "ch11_hierarchy.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-hierarchy-upper-kl", "ch11-upper-kl", "upper_kl"),
    ("ex-hierarchy-lower-kl", "ch11-lower-kl", "lower_kl"),
]


def _log_normal(z, mu, logvar):
    return -0.5 * (logvar + (z - mu).pow(2) / logvar.exp())


#: Plausible mistakes, per exercise.
WRONG = {
    "ch11-upper-kl": {
        "missing 1/2": lambda mu, lv: (mu.pow(2) + lv.exp() - 1 - lv).sum(-1).mean(0),
        "sum over the draws": lambda mu, lv: 0.5 * (mu.pow(2) + lv.exp() - 1 - lv).sum(-1).sum(0),
        "log-variance used as a standard deviation":
            lambda mu, lv: 0.5 * (mu.pow(2) + lv.pow(2) - 1 - (lv.pow(2)).log()).sum(-1).mean(0),
        "sign of the log-variance term":
            lambda mu, lv: 0.5 * (mu.pow(2) + lv.exp() - 1 + lv).sum(-1).mean(0),
    },
    "ch11-lower-kl": {
        "log p minus log q (a sign error)":
            lambda z, mq, lq, mp, lp: (_log_normal(z, mp, lp) - _log_normal(z, mq, lq)).sum(-1).mean(0),
        "sum over the draws":
            lambda z, mq, lq, mp, lp: (_log_normal(z, mq, lq) - _log_normal(z, mp, lp)).sum(-1).sum(0),
        "missing 1/2 on the log-variances":
            lambda z, mq, lq, mp, lp: ((-lq - 0.5 * (z - mq).pow(2) / lq.exp())
                                       - (-lp - 0.5 * (z - mp).pow(2) / lp.exp())).sum(-1).mean(0),
        "mean over the dimensions":
            lambda z, mq, lq, mp, lp: (_log_normal(z, mq, lq) - _log_normal(z, mp, lp)).mean(-1).mean(0),
    },
}
