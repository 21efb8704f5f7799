"""The identities chapter 1 (book/ch1_evidence.md) asserts, generalised over seeds, dimensions and noise
levels: the linear-Gaussian model's closed-form evidence and posterior (theorem thm-lg-exact) against
torch.distributions, Bayes' theorem, grid quadrature and Monte Carlo; and the chapter's exercises."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import MultivariateNormal

from vaelib.toy import (
    LinearGaussian,
    log_evidence_importance,
    log_evidence_quadrature,
    log_importance_weights,
    posterior_moments_quadrature,
)

F64 = torch.float64


def _model(seed: int, x_dim: int, z_dim: int, sigma: float, n: int = 3) -> tuple[LinearGaussian, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = LinearGaussian.random(x_dim, z_dim, sigma=sigma, generator=g)
    return m, m.sample(n, generator=g)[0]


def _grid_for(m: LinearGaussian, x: torch.Tensor, per_sd: float = 3.0, reach: float = 12.0) -> tuple[int, float]:
    """Nodes and half-width so that h <= (smallest posterior sd) / per_sd and the box holds the posterior
    out to `reach` standard deviations: then the trapezoid error is far below float64 rounding."""
    post = m.posterior(x)
    sd = torch.diagonal(post.covariance_matrix[0]).sqrt()
    bound = float((post.mean.abs().max(0).values + reach * sd).max())
    h = float(sd.min()) / per_sd
    return int(math.ceil(2 * bound / h)) + 1, bound


seeds = st.integers(0, 10_000)
sigmas = st.floats(0.5, 2.0)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, x_dim=st.integers(1, 8), z_dim=st.integers(1, 5), sigma=st.floats(0.05, 5.0))
def test_closed_form_evidence_equals_multivariate_normal(seed: int, x_dim: int, z_dim: int, sigma: float) -> None:
    """eq-lg-evidence: p(x) = N(x; b, WW^T + sigma^2 I), built independently of the library's d x d route."""
    m, x = _model(seed, x_dim, z_dim, sigma)
    cov = m.W @ m.W.T + sigma**2 * torch.eye(x_dim, dtype=F64)
    ref = MultivariateNormal(m.b, covariance_matrix=cov).log_prob(x)
    torch.testing.assert_close(m.log_evidence(x), ref, rtol=1e-11, atol=1e-10)
    torch.testing.assert_close(m.marginal().log_prob(x), ref, rtol=1e-11, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, x_dim=st.integers(1, 8), z_dim=st.integers(1, 5), sigma=st.floats(0.05, 5.0))
def test_bayes_theorem_pointwise(seed: int, x_dim: int, z_dim: int, sigma: float) -> None:
    """eq-bayes with eq-lg-posterior: log p(x, z) - log p(x) = log N(z; m, M^{-1}) at arbitrary z."""
    m, x = _model(seed, x_dim, z_dim, sigma)
    z = 2 * torch.randn(x.shape[0], z_dim, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    lhs = m.log_joint(x, z) - m.log_evidence(x)
    torch.testing.assert_close(lhs, m.posterior(x).log_prob(z), rtol=1e-10, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, x_dim=st.integers(1, 8), z_dim=st.integers(1, 5), sigma=st.floats(0.05, 5.0))
def test_posterior_formula(seed: int, x_dim: int, z_dim: int, sigma: float) -> None:
    """eq-lg-posterior: covariance M^{-1} with M = I + W^T W / sigma^2, mean M^{-1} W^T (x - b) / sigma^2."""
    m, x = _model(seed, x_dim, z_dim, sigma)
    M = torch.eye(z_dim, dtype=F64) + m.W.T @ m.W / sigma**2
    post = m.posterior(x)
    torch.testing.assert_close(post.covariance_matrix @ M, torch.eye(z_dim, dtype=F64).expand(3, -1, -1), rtol=0, atol=1e-10)
    mean = torch.linalg.solve(M, m.W.T @ (x - m.b).T).T / sigma**2
    torch.testing.assert_close(post.mean, mean, rtol=1e-10, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(seed=seeds, x_dim=st.integers(1, 5), z_dim=st.integers(1, 2), sigma=sigmas)
def test_quadrature_equals_closed_form(seed: int, x_dim: int, z_dim: int, sigma: float) -> None:
    """The chapter's check: trapezoid quadrature of eq-evidence and the normalised grid posterior agree
    with the closed forms to 1e-10 (the trapezoid error, ~exp(-2 pi^2 s^2/h^2), is far below that)."""
    m, x = _model(seed, x_dim, z_dim, sigma)
    G, bound = _grid_for(m, x)
    assert G**z_dim <= 2_000_000
    torch.testing.assert_close(log_evidence_quadrature(m, x, G, bound), m.log_evidence(x), rtol=0, atol=1e-10)
    mean, cov = posterior_moments_quadrature(m, x, G, bound)
    post = m.posterior(x)
    torch.testing.assert_close(mean, post.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(cov, post.covariance_matrix, rtol=0, atol=1e-10)


def test_quadrature_equals_closed_form_3d() -> None:
    """A 3-D latent, on a coarser grid (75**3 points): still accurate to 1e-8 nats."""
    m, x = _model(seed=7, x_dim=4, z_dim=3, sigma=1.5, n=2)
    G, bound = _grid_for(m, x, per_sd=2.0, reach=8.0)
    assert G <= 80, G
    torch.testing.assert_close(log_evidence_quadrature(m, x, G, bound), m.log_evidence(x), rtol=0, atol=1e-8)


def test_quadrature_on_the_chapter_grid() -> None:
    """The chapter's fixed grid (201 nodes on [-8, 8]) on the chapter's two models."""
    g = torch.Generator().manual_seed(0)
    for x_dim, z_dim in [(3, 1), (5, 2)]:
        m = LinearGaussian.random(x_dim, z_dim, sigma=0.5, generator=g)
        x = m.sample(4, generator=g)[0]
        torch.testing.assert_close(log_evidence_quadrature(m, x, 201, 8.0), m.log_evidence(x), rtol=0, atol=1e-10)


def test_coarse_quadrature_is_inaccurate() -> None:
    """The grid must resolve the posterior: with spacing larger than the posterior's width it is wrong."""
    m, x = _model(seed=1, x_dim=6, z_dim=2, sigma=0.1)
    err = (log_evidence_quadrature(m, x, n_points=11, bound=5.0) - m.log_evidence(x)).abs().max()
    assert err > 1e-3


@pytest.mark.parametrize("seed", range(12))
def test_monte_carlo_from_prior_within_standard_errors(seed: int) -> None:
    """eq-mc-prior: the prior Monte Carlo estimate is within 5 (delta-method) standard errors of the
    exact log-evidence, for several models; the se is in the right range (~ sqrt(relvar / S))."""
    z_dim = 1 + seed % 3
    m, x = _model(seed, x_dim=2 + seed % 3, z_dim=z_dim, sigma=1.0 + 0.25 * (seed % 4))
    S = 20_000
    est, se = log_evidence_importance(m, x, S, generator=torch.Generator().manual_seed(100 + seed))
    z_score = (est - m.log_evidence(x)) / se
    assert bool((z_score.abs() < 5).all()), z_score
    assert bool((se > 0).all())


def test_monte_carlo_z_scores_are_roughly_standard_normal() -> None:
    """Over many repetitions the standardised errors have mean ~0 and sd ~1 (the se is calibrated)."""
    m, x = _model(seed=3, x_dim=3, z_dim=2, sigma=1.0, n=1)
    R = 400
    est, se = log_evidence_importance(m, x.expand(R, -1), 5_000, generator=torch.Generator().manual_seed(0))
    z = (est - m.log_evidence(x)) / se
    assert abs(float(z.mean())) < 0.25
    assert 0.8 < float(z.std()) < 1.2


@settings(max_examples=25, deadline=None)
@given(seed=seeds, x_dim=st.integers(1, 6), z_dim=st.integers(1, 4), sigma=st.floats(0.1, 3.0))
def test_posterior_proposal_has_zero_variance(seed: int, x_dim: int, z_dim: int, sigma: float) -> None:
    """Exercise ex-posterior-proposal: with q = p(z|x) every weight equals p(x)."""
    m, x = _model(seed, x_dim, z_dim, sigma)
    log_w = log_importance_weights(m, x, 16, proposal=m.posterior(x), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(log_w, m.log_evidence(x).expand(16, -1), rtol=1e-11, atol=1e-10)
    est, se = log_evidence_importance(m, x, 16, proposal=m.posterior(x), generator=torch.Generator().manual_seed(seed))
    assert float(se.max()) < 1e-9


def _stacked(base: LinearGaussian, n_obs: int) -> LinearGaussian:
    return LinearGaussian(base.W.repeat(n_obs, 1), base.b.repeat(n_obs), base.sigma)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, x_dim=st.integers(1, 4), z_dim=st.integers(1, 3), sigma=sigmas, n_obs=st.integers(1, 50))
def test_stacked_observations_equal_averaged_model(seed: int, x_dim: int, z_dim: int, sigma: float, n_obs: int) -> None:
    """Exercise ex-stacked: N observations sharing z have the posterior of one observation x-bar with noise
    sigma / sqrt(N), and posterior precision I + N W^T W / sigma^2."""
    base, _ = _model(seed, x_dim, z_dim, sigma)
    xs = torch.randn(n_obs, x_dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    stacked = _stacked(base, n_obs).posterior(xs.reshape(1, -1))
    averaged = LinearGaussian(base.W, base.b, sigma / math.sqrt(n_obs)).posterior(xs.mean(0, keepdim=True))
    torch.testing.assert_close(stacked.mean, averaged.mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(stacked.covariance_matrix, averaged.covariance_matrix, rtol=1e-9, atol=1e-12)
    precision = torch.eye(z_dim, dtype=F64) + n_obs * base.W.T @ base.W / sigma**2
    torch.testing.assert_close(torch.linalg.inv(stacked.covariance_matrix[0]), precision, rtol=1e-8, atol=1e-8)


def _relvar(m: LinearGaussian, x: torch.Tensor) -> torch.Tensor:
    """eq-mc-relvar: Var_prior[p(x|z)] / p(x)^2."""
    half = LinearGaussian(m.W, m.b, m.sigma / math.sqrt(2))
    return torch.expm1(-m.x_dim / 2 * math.log(4 * math.pi * m.sigma**2) + half.log_evidence(x) - 2 * m.log_evidence(x))


@pytest.mark.parametrize("seed", range(4))
def test_relative_variance_formula(seed: int) -> None:
    """Exercise ex-relvar: eq-mc-relvar against the sample relative variance of 10^6 prior weights."""
    m, x = _model(seed, x_dim=2, z_dim=1 + seed % 2, sigma=1.5, n=2)
    log_w = log_importance_weights(m, x, 1_000_000, generator=torch.Generator().manual_seed(seed))
    w = torch.exp(log_w - m.log_evidence(x))  # w / p(x): mean 1
    empirical = w.var(0)
    torch.testing.assert_close(w.mean(0), torch.ones(2, dtype=F64), rtol=0, atol=0.02)
    torch.testing.assert_close(empirical, _relvar(m, x), rtol=0.1, atol=0.02)


def test_relative_variance_grows_with_observations() -> None:
    """The chapter's figure 2: more observations sharing z, a narrower posterior, a larger relative variance."""
    base, _ = _model(seed=5, x_dim=2, z_dim=2, sigma=1.0)
    xs = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=F64) + base.b
    rv = [float(_relvar(_stacked(base, n), xs[:n].reshape(1, -1))) for n in (1, 10, 100)]
    assert rv[0] < rv[1] < rv[2]
