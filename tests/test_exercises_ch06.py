"""Chapter 6's self-checking exercises: the book's own solutions pass, plausible wrong answers fail."""

from __future__ import annotations

import re
import time

import pytest
import torch

from exercise_solutions import BOOK, self_checking_exercises, solution_namespace
from vaelib.exercises import check, names
from vaelib.exercises._checker import _get

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


def test_the_chapter_checks_exactly_these_exercises():
    assert self_checking_exercises(CHAPTER) == EXERCISES
    assert {name for _, name, _ in EXERCISES} <= set(names())


@pytest.mark.parametrize(("label", "name", "answer"), EXERCISES)
def test_the_books_solution_passes(label, name, answer):
    solution = solution_namespace(CHAPTER, label)[answer]
    verdict = check(name, solution)
    assert verdict.passed, verdict.message
    assert "correct" in verdict.message


@pytest.mark.parametrize(("label", "name", "answer"), EXERCISES)
def test_the_placeholder_is_not_answered_yet(label, name, answer):
    def placeholder(*args):
        ...  # your code here

    verdict = check(name, placeholder)
    assert not verdict.passed and not verdict.attempted
    assert "not answered yet" in verdict.message


def _expected_numbers(name: str) -> list[str]:
    """The expected values of every hidden case, as a verdict would print them (3 significant digits)."""
    out = []
    for case in _get(name).cases():
        parts = case.expected if isinstance(case.expected, tuple) else (case.expected,)
        for part in parts:
            out += [f"{v:.3g}" for v in torch.as_tensor(part).reshape(-1).tolist()]
    return out


def _what_the_verdict_says(name, verdict) -> str:
    """The verdict without what is not a value: the case's description (shapes and dtypes), the case
    and result numbers, percentages (relative errors) and the stated tolerance."""
    said = verdict.message.replace(_get(name).cases()[verdict.failed_case - 1].description, "")
    said = re.sub(r"case \d+ of \d+|result \d+:|[\d.]+%|allowed:.*", "", said)
    return said


@pytest.mark.parametrize(("name", "mistake"), [(n, m) for n in WRONG for m in WRONG[n]])
def test_a_plausible_wrong_answer_fails_and_names_a_case(name, mistake):
    verdict = check(name, WRONG[name][mistake])
    assert not verdict.passed and verdict.attempted, f"{mistake} passed"
    assert re.search(r"case \d+ of \d+ \(", verdict.message), verdict.message
    assert verdict.failed_case is not None
    said = _what_the_verdict_says(name, verdict)
    for number in _expected_numbers(name):
        assert not re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", said), (
            f"the verdict shows an expected value {number}: {verdict.message}")


@pytest.mark.parametrize("name", [name for _, name, _ in EXERCISES])
def test_the_cases_are_deterministic_and_cheap(name):
    start = time.perf_counter()
    first, second = _get(name).cases(), _get(name).cases()
    assert time.perf_counter() - start < 0.5
    assert 3 <= len(first) <= 6
    assert len({case.description for case in first}) == len(first)
    for a, b in zip(first, second):
        assert a.description == b.description
        assert all(_same(x, y) for x, y in zip(a.args, b.args))
        assert _same(a.expected, b.expected)


def _same(x, y) -> bool:
    """Equal numbers, tensors (same dtype and values) or tuples of them."""
    if isinstance(x, tuple):
        return isinstance(y, tuple) and len(x) == len(y) and all(map(_same, x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y
