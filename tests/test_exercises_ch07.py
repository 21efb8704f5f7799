"""Chapter 7's self-checking exercises (book/ch7_evaluation.md): plausible wrong answers fail with a
verdict that names the case, never the expected value. (test_exercises.py checks the book's solutions.)"""

from __future__ import annotations

import math

import pytest
import torch

from exercise_solutions import (BOOK, assert_cases_deterministic, assert_rejected,
                                self_checking_exercises, wrong_answers)

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


def test_the_chapter_checks_exactly_these_exercises():
    assert self_checking_exercises(CHAPTER) == EXERCISES
    assert set(WRONG) == {name for _, name, _ in EXERCISES}


@pytest.mark.parametrize(("name", "mistake"), wrong_answers(WRONG))
def test_a_plausible_wrong_answer_fails_and_names_a_case(name, mistake):
    assert_rejected(name, WRONG[name][mistake], mistake)


@pytest.mark.parametrize("name", [name for _, name, _ in EXERCISES])
def test_the_cases_are_deterministic(name):
    assert_cases_deterministic(name)
