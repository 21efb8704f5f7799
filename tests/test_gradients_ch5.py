"""Tests of :mod:`vaelib.gradients`: the score-function and pathwise gradient estimators (chapter 5).

Statistical checks compare an average of ``S`` per-draw estimates with the exact gradient in units of
its standard error (estimated from the draws). Every generator is seeded, so each test is
deterministic; 5 standard errors (two-sided tail 5.7e-7 for a normal average) keep a correct estimator
from failing on any of the seeds hypothesis tries, while a wrong factor misses by far more.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vaelib
from vaelib.gradients import GradientSamples, pathwise_grad, score_function_grad

DTYPE = torch.float64
ESTIMATORS = [score_function_grad, pathwise_grad]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quadratic(a: torch.Tensor):
    """f(z) = ||z - a||^2, one value per draw."""
    return lambda z: (z - a).pow(2).sum(-1)


def standard_error_ok(draws: torch.Tensor, truth: torch.Tensor, k: float = 5.0) -> bool:
    mean = draws.mean(0)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    return bool(((mean - truth).abs() < k * se).all())


# --- API, shapes, determinism ----------------------------------------------------------------


def test_exported_from_package():
    assert vaelib.score_function_grad is score_function_grad
    assert vaelib.pathwise_grad is pathwise_grad
    assert vaelib.GradientSamples is GradientSamples


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shape", [(1,), (3,), (2, 3), (4, 1, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtype(estimator, shape, dtype):
    mu = torch.zeros(shape, dtype=dtype)
    logvar = torch.zeros(shape, dtype=dtype)
    g = estimator(lambda z: z.pow(2).sum(-1), mu, logvar, 7, generator=gen(0))
    assert isinstance(g, GradientSamples)
    g_mu, g_logvar = g  # a NamedTuple unpacks
    for t in (g_mu, g_logvar):
        assert t.shape == (7, *shape)
        assert t.dtype == dtype
        assert not t.requires_grad


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_deterministic_under_seed(estimator):
    mu, logvar = torch.randn(2, 3, dtype=DTYPE), torch.randn(2, 3, dtype=DTYPE)
    f = quadratic(torch.ones(3, dtype=DTYPE))
    g1 = estimator(f, mu, logvar, 50, generator=gen(3))
    g2 = estimator(f, mu, logvar, 50, generator=gen(3))
    assert torch.equal(g1.mu, g2.mu) and torch.equal(g1.logvar, g2.logvar)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_same_draws_as_reparameterize(estimator):
    """With the same seed, f sees exactly the draws of vaelib.reparameterize."""
    mu, logvar = torch.randn(2, 3, dtype=DTYPE), torch.randn(2, 3, dtype=DTYPE)
    seen = []

    def f(z):
        seen.append(z.detach().clone())
        return z.sum(-1)

    estimator(f, mu, logvar, 11, generator=gen(4))
    z = vaelib.reparameterize(mu, logvar, 11, generator=gen(4))
    assert torch.equal(seen[0], z)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_no_side_effects_and_works_under_no_grad(estimator):
    mu = torch.randn(3, dtype=DTYPE, requires_grad=True)
    logvar = torch.randn(3, dtype=DTYPE, requires_grad=True)
    w = torch.randn(3, dtype=DTYPE, requires_grad=True)  # a parameter f closes over
    with torch.no_grad():
        g = estimator(lambda z: (z * w).sum(-1), mu, logvar, 5, generator=gen(1))
    assert torch.isfinite(g.mu).all() and torch.isfinite(g.logvar).all()
    assert mu.grad is None and logvar.grad is None and w.grad is None


# --- exact per-draw formulas -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_score_function_matches_gaussian_score(seed):
    """Per draw: f(z) (z - mu)/sigma^2 and f(z) 0.5((z-mu)^2/sigma^2 - 1), eq. gaussian-score."""
    g0 = gen(100 + seed)
    mu, logvar = torch.randn(2, 4, generator=g0, dtype=DTYPE), torch.randn(2, 4, generator=g0, dtype=DTYPE)
    f = quadratic(torch.randn(4, generator=g0, dtype=DTYPE))
    g = score_function_grad(f, mu, logvar, 200, generator=gen(seed))
    z = vaelib.reparameterize(mu, logvar, 200, generator=gen(seed))
    var = logvar.exp()
    fz = f(z).unsqueeze(-1)
    torch.testing.assert_close(g.mu, fz * (z - mu) / var, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g.logvar, fz * 0.5 * ((z - mu).pow(2) / var - 1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_pathwise_on_linear_f_is_exact(seed):
    """For f(z) = c.z every pathwise draw of d/dmu is exactly c; d/dlogvar is c * sigma * eps / 2."""
    g0 = gen(200 + seed)
    mu, logvar = torch.randn(3, 5, generator=g0, dtype=DTYPE), torch.randn(3, 5, generator=g0, dtype=DTYPE)
    c = torch.randn(5, generator=g0, dtype=DTYPE)
    g = pathwise_grad(lambda z: (z * c).sum(-1), mu, logvar, 40, generator=gen(seed))
    assert torch.equal(g.mu, c.expand(40, 3, 5))
    eps = torch.randn((40, 3, 5), generator=gen(seed), dtype=DTYPE)
    torch.testing.assert_close(g.logvar, c * 0.5 * torch.exp(0.5 * logvar) * eps, rtol=1e-12, atol=1e-12)


def test_pathwise_per_draw_quadratic():
    """For f = ||z - a||^2: d/dmu = 2(z - a), d/dlogvar = (z - a) sigma eps, per draw."""
    mu, logvar = torch.tensor([0.3, -1.0], dtype=DTYPE), torch.tensor([0.2, -0.4], dtype=DTYPE)
    a = torch.tensor([1.0, 2.0], dtype=DTYPE)
    g = pathwise_grad(quadratic(a), mu, logvar, 100, generator=gen(9))
    z = vaelib.reparameterize(mu, logvar, 100, generator=gen(9))
    torch.testing.assert_close(g.mu, 2 * (z - a), rtol=1e-12, atol=1e-12)
    # (z - a) * sigma * eps, with sigma * eps = z - mu
    torch.testing.assert_close(g.logvar, (z - a) * (z - mu), rtol=1e-10, atol=1e-10)


def test_baseline_shifts_each_draw_by_b_times_score():
    mu, logvar = torch.tensor([0.5], dtype=DTYPE), torch.tensor([0.1], dtype=DTYPE)
    f = quadratic(torch.tensor([-1.0], dtype=DTYPE))
    plain = score_function_grad(f, mu, logvar, 100, generator=gen(5))
    based = score_function_grad(lambda z: f(z) - 3.0, mu, logvar, 100, generator=gen(5))
    score = score_function_grad(lambda z: torch.ones(z.shape[:-1], dtype=DTYPE), mu, logvar, 100,
                                generator=gen(5))
    torch.testing.assert_close(plain.mu - based.mu, 3.0 * score.mu)
    torch.testing.assert_close(plain.logvar - based.logvar, 3.0 * score.logvar)


# --- unbiasedness (statistical, seeded) ---------------------------------------------------------


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    d=st.integers(1, 4),
    mu0=st.floats(-2, 2),
    logvar0=st.floats(-1.5, 1.0),
    a0=st.floats(-2, 2),
    seed=st.integers(0, 2**16),
)
def test_both_estimators_unbiased_on_quadratic(d, mu0, logvar0, a0, seed):
    """Average of 20,000 draws within 5 SE of eq. toy-gradient: 2(mu - a) and sigma^2."""
    spread = torch.linspace(-0.5, 0.5, d, dtype=DTYPE)
    mu, logvar, a = mu0 + spread, logvar0 - spread, a0 + 2 * spread
    truth_mu, truth_logvar = 2 * (mu - a), logvar.exp()
    for estimator in ESTIMATORS:
        g = estimator(quadratic(a), mu, logvar, 20_000, generator=gen(seed))
        assert standard_error_ok(g.mu, truth_mu)
        assert standard_error_ok(g.logvar, truth_logvar)


@pytest.mark.parametrize("seed", range(3))
def test_expected_score_is_zero(seed):
    mu, logvar = torch.tensor([1.0, -2.0, 0.0], dtype=DTYPE), torch.tensor([0.5, -1.0, 0.0], dtype=DTYPE)
    g = score_function_grad(lambda z: torch.ones(z.shape[:-1], dtype=DTYPE), mu, logvar, 50_000,
                            generator=gen(seed))
    assert standard_error_ok(g.mu, torch.zeros(3, dtype=DTYPE))
    assert standard_error_ok(g.logvar, torch.zeros(3, dtype=DTYPE))


# --- input validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_rejects_bad_input(estimator):
    mu, logvar = torch.zeros(3), torch.zeros(3)
    f = lambda z: z.sum(-1)  # noqa: E731
    with pytest.raises(TypeError, match="f must be callable"):
        estimator(3.0, mu, logvar)
    with pytest.raises(ValueError, match="same shape"):
        estimator(f, mu, torch.zeros(4))
    with pytest.raises(ValueError, match="n_samples"):
        estimator(f, mu, logvar, 0)
    with pytest.raises(TypeError, match="n_samples"):
        estimator(f, mu, logvar, 2.5)
    with pytest.raises(TypeError, match="generator"):
        estimator(f, mu, logvar, 2, generator=0)
    with pytest.raises(TypeError, match="floating-point"):
        estimator(f, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        estimator(f, torch.tensor([float("nan"), 0.0, 0.0]), logvar)
    with pytest.raises(ValueError, match="at least one dimension"):
        estimator(f, torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="one value per draw"):
        estimator(lambda z: z, mu, logvar, 2)  # (n, d) instead of (n,)
    with pytest.raises(ValueError, match="one value per draw"):
        estimator(lambda z: 1.0, mu, logvar, 2)


def test_pathwise_rejects_non_differentiable_f():
    with pytest.raises(ValueError, match="differentiabl"):
        pathwise_grad(lambda z: z.detach().sum(-1), torch.zeros(2), torch.zeros(2), 3)
