"""Chapter 2's self-checking exercises (book/ch2_vi_kl.md): EXERCISES lists them and WRONG the plausible
wrong answers; tests/test_exercises.py checks that each is rejected with a verdict that names its case,
never the expected value. Below, the tests only this chapter needs."""

from __future__ import annotations

import pytest

from exercise_solutions import BOOK, assert_rejected

CHAPTER = BOOK / "ch2_vi_kl.md"

#: (exercise label in the chapter, check name, the answer's name)
EXERCISES = [
    ("ex-code-kl-gaussians", "ch2-gaussian-kl", "kl_gaussians"),
    ("ex-code-mean-field-variances", "ch2-mean-field-variances", "mean_field_variances"),
]


def _kl(mu_q, logvar_q, mu_p, logvar_p, *, half=0.5, reduce="sum"):
    """Eq. (kl-gaussians) with one thing changed (the right answer with the defaults)."""
    terms = logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1
    return half * getattr(terms, reduce)(-1)


#: Plausible mistakes, per exercise.
WRONG = {
    "ch2-gaussian-kl": {
        "the bracket of eq. (kl-gaussians) summed, the factor 1/2 forgotten":
            lambda *args: _kl(*args, half=1.0),
        "the log-variances used as standard deviations":
            lambda mu_q, lv_q, mu_p, lv_p: _kl(mu_q, lv_q.pow(2).log(), mu_p, lv_p.pow(2).log()),
        "KL(p || q): the two distributions in the wrong slots":
            lambda mu_q, lv_q, mu_p, lv_p: _kl(mu_p, lv_p, mu_q, lv_q),
        "the average over coordinates where the divergence of the vectors is their sum":
            lambda *args: _kl(*args, reduce="mean"),
    },
    "ch2-mean-field-variances": {
        "the marginals Sigma_ii: the forward-KL fit, not the reverse one":
            lambda Sigma: Sigma.diagonal().clone(),
        "1 / Sigma_ii: inverting the wrong matrix's diagonal": lambda Sigma: 1 / Sigma.diagonal(),
    },
}


@pytest.mark.parametrize("mistake", sorted(WRONG["ch2-mean-field-variances"]))
def test_a_wrong_mean_field_variance_fails_on_the_first_case(mistake):
    name = "ch2-mean-field-variances"
    assert "case 1 of 4" in assert_rejected(name, WRONG[name][mistake], mistake)
