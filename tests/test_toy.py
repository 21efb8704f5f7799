"""vaelib.toy: the linear-Gaussian model's closed forms against quadrature, direct Gaussian algebra and
Monte Carlo; the ELBO identity for arbitrary Gaussian q; probabilistic PCA as the maximum likelihood."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from vaelib import VAE
from vaelib import toy
from vaelib.toy import LinearGaussian, ppca

# Examples per property; VAELIB_HYPOTHESIS_EXAMPLES=2000 makes a soak run.
SETTINGS = settings(
    max_examples=int(os.environ.get("VAELIB_HYPOTHESIS_EXAMPLES", "40")), deadline=None, database=None
)
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _direct(lg: LinearGaussian):
    """Joint Gaussian of (z, x) written out in full: the reference for every closed form."""
    D, d = lg.x_dim, lg.z_dim
    cov_x = lg.W @ lg.W.T + lg.sigma**2 * torch.eye(D, dtype=F64)
    return cov_x, torch.linalg.inv(cov_x)


def _trapezoid_grid(bound: float, n: int, d: int):
    """Nodes ``(n**d, d)`` and log trapezoid weights ``(n**d,)`` on [-bound, bound]^d."""
    nodes = torch.linspace(-bound, bound, n, dtype=F64)
    w = torch.full((n,), 2 * bound / (n - 1), dtype=F64)
    w[0] = w[-1] = w[0] / 2
    grids = torch.meshgrid(*([nodes] * d), indexing="ij")
    weights = torch.meshgrid(*([w] * d), indexing="ij")
    z = torch.stack([g.reshape(-1) for g in grids], -1)
    log_w = sum(torch.log(wi.reshape(-1)) for wi in weights)
    return z, log_w


# --- evidence and posterior ----------------------------------------------------------------------


@pytest.mark.parametrize("z_dim, n_grid", [(1, 3001), (2, 301)])
def test_log_evidence_and_posterior_match_grid_quadrature(z_dim, n_grid):
    lg = LinearGaussian.random(3, z_dim, sigma=1.0, generator=_gen(z_dim))
    x, _ = lg.sample(3, generator=_gen(10))
    z, log_w = _trapezoid_grid(9.0, n_grid, z_dim)
    log_joint = lg.log_joint(x, z[:, None, :]) + log_w[:, None]  # (G, n)
    log_px = torch.logsumexp(log_joint, 0)
    torch.testing.assert_close(lg.log_evidence(x), log_px, rtol=0, atol=1e-8)
    # Bayes on the grid: posterior weights, then their mean and covariance.
    post_w = torch.exp(log_joint - log_px)  # (G, n), each column sums to 1
    mean = post_w.T @ z
    centred = z[:, None, :] - mean
    cov = torch.einsum("gn,gni,gnj->nij", post_w, centred, centred)
    post = lg.posterior(x)
    torch.testing.assert_close(post.mean, mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(post.covariance_matrix, cov, rtol=0, atol=1e-8)


def test_log_evidence_matches_the_full_covariance_gaussian():
    lg = LinearGaussian.random(6, 3, sigma=0.4, generator=_gen(0))
    x, _ = lg.sample(5, generator=_gen(1))
    cov_x, prec = _direct(lg)
    r = x - lg.b
    by_hand = -0.5 * (6 * math.log(2 * math.pi) + torch.logdet(cov_x) + ((r @ prec) * r).sum(-1))
    torch.testing.assert_close(lg.log_evidence(x), by_hand, rtol=0, atol=1e-10)
    torch.testing.assert_close(lg.log_evidence(x), lg.marginal().log_prob(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(lg.marginal().covariance_matrix, cov_x, rtol=0, atol=1e-12)


def test_posterior_matches_gaussian_conditioning():
    lg = LinearGaussian.random(5, 2, sigma=0.7, generator=_gen(2))
    x, _ = lg.sample(4, generator=_gen(3))
    _, prec = _direct(lg)
    # Cov(z, x) = W^T: mean = W^T Cov_x^{-1} (x - b), cov = I - W^T Cov_x^{-1} W.
    mean = (x - lg.b) @ prec @ lg.W
    cov = torch.eye(2, dtype=F64) - lg.W.T @ prec @ lg.W
    post = lg.posterior(x)
    assert post.batch_shape == (4,) and post.event_shape == (2,)
    torch.testing.assert_close(post.mean, mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(post.covariance_matrix, cov.expand(4, 2, 2), rtol=0, atol=1e-10)


def test_bayes_rule_pointwise():
    """log p(z|x) = log p(x, z) - log p(x) at arbitrary z."""
    lg = LinearGaussian.random(4, 2, sigma=0.5, generator=_gen(4))
    x, _ = lg.sample(3, generator=_gen(5))
    z = torch.randn(7, 3, 2, generator=_gen(6), dtype=F64)
    torch.testing.assert_close(
        lg.posterior(x).log_prob(z), lg.log_joint(x, z) - lg.log_evidence(x), rtol=0, atol=1e-10
    )


def test_densities_match_torch_distributions():
    lg = LinearGaussian.random(4, 2, sigma=0.3, generator=_gen(7))
    x, _ = lg.sample(3, generator=_gen(8))
    z = torch.randn(5, 3, 2, generator=_gen(9), dtype=F64)
    prior = Normal(torch.zeros(2, dtype=F64), 1.0)
    torch.testing.assert_close(lg.log_prior(z), prior.log_prob(z).sum(-1), rtol=0, atol=1e-12)
    lik = Normal(z @ lg.W.T + lg.b, lg.sigma).log_prob(x).sum(-1)
    torch.testing.assert_close(lg.log_likelihood(x, z), lik, rtol=0, atol=1e-12)
    torch.testing.assert_close(lg.log_joint(x, z), lik + lg.log_prior(z), rtol=0, atol=1e-12)
    # A single z broadcasts over the batch.
    assert lg.log_likelihood(x, z[0, 0]).shape == (3,)


def test_sample_has_the_model_distribution():
    lg = LinearGaussian.random(3, 2, sigma=0.5, generator=_gen(10))
    n = 40_000
    x, z = lg.sample(n, generator=_gen(11))
    assert x.shape == (n, 3) and z.shape == (n, 2) and x.dtype == F64
    cov_x, _ = _direct(lg)
    assert bool(((x.mean(0) - lg.b).abs() < 4 * torch.sqrt(torch.diagonal(cov_x) / n)).all())
    se = torch.sqrt((torch.outer(torch.diagonal(cov_x), torch.diagonal(cov_x)) + cov_x**2) / n)
    assert bool(((torch.cov(x.T) - cov_x).abs() < 4 * se).all())
    # x given z: the residual x - (Wz + b) is N(0, sigma^2 I), independent of z.
    resid = x - (z @ lg.W.T + lg.b)
    assert abs(float(resid.var()) - 0.25) < 4 * 0.25 * math.sqrt(2 / (3 * n))
    assert bool((torch.corrcoef(torch.cat([resid, z], 1).T)[:3, 3:].abs() < 4 / math.sqrt(n)).all())
    assert torch.equal(lg.sample(5, generator=_gen(1))[0], lg.sample(5, generator=_gen(1))[0])


def test_random_and_constructor():
    lg = LinearGaussian.random(4, 2, sigma=0.3, generator=_gen(0))
    assert (lg.x_dim, lg.z_dim, lg.sigma) == (4, 2, 0.3)
    assert lg.W.dtype == F64
    assert torch.equal(lg.W, LinearGaussian.random(4, 2, generator=_gen(0)).W)
    assert LinearGaussian.random(4, 2, dtype=torch.float32).W.dtype == torch.float32
    assert repr(lg) == "LinearGaussian(x_dim=4, z_dim=2, sigma=0.3)"
    with pytest.raises(ValueError, match="sigma must be > 0"):
        LinearGaussian(lg.W, lg.b, 0.0)
    with pytest.raises(ValueError, match="b must have shape"):
        LinearGaussian(lg.W, lg.b[:3], 1.0)
    with pytest.raises(TypeError, match="share a dtype"):
        LinearGaussian(lg.W, lg.b.float(), 1.0)
    # Half precision is refused up front (torch's linear algebra does not support it).
    with pytest.raises(TypeError, match="W must have dtype torch.float32 or torch.float64"):
        LinearGaussian(lg.W.half(), lg.b.half(), 1.0)
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64"):
        LinearGaussian.random(4, 2, dtype=torch.float16)


def test_from_vae_is_the_decoder_of_a_linear_gaussian_vae(linear_vae):
    model, lg = linear_vae(x_dim=5, z_dim=2, sigma=0.6, seed=0)
    got = LinearGaussian.from_vae(model)
    assert torch.equal(got.W, lg.W) and torch.equal(got.b, lg.b)
    assert got.sigma == pytest.approx(0.6, rel=1e-12)
    with pytest.raises(ValueError, match="linear Gaussian VAE"):
        LinearGaussian.from_vae(VAE(5, 2, hidden=(3,), likelihood="gaussian"))
    with pytest.raises(ValueError, match="linear Gaussian VAE"):
        LinearGaussian.from_vae(VAE(5, 2, hidden=()))


# --- the ELBO identity -----------------------------------------------------------------------------


@st.composite
def model_and_q(draw):
    d = draw(st.integers(1, 3))
    D = draw(st.integers(d + 1, 6))
    n = draw(st.integers(1, 4))
    sigma = draw(st.floats(0.1, 3.0))
    g = _gen(draw(st.integers(0, 2**31 - 1)))
    lg = LinearGaussian(
        torch.randn(D, d, generator=g, dtype=F64), torch.randn(D, generator=g, dtype=F64), sigma
    )
    x, _ = lg.sample(n, generator=g)
    q_mean = 2 * torch.randn(n, d, generator=g, dtype=F64)
    A = torch.randn(n, d, d, generator=g, dtype=F64)
    q_cov = A @ A.mT + 0.05 * torch.eye(d, dtype=F64)
    shared = draw(st.booleans())  # one (d, d) covariance for every row, or one per row
    return lg, x, q_mean, (q_cov[0] if shared else q_cov)


@SETTINGS
@given(model_and_q())
def test_elbo_plus_kl_to_the_posterior_is_the_evidence_for_any_gaussian_q(case):
    lg, x, q_mean, q_cov = case
    q = MultivariateNormal(q_mean, covariance_matrix=q_cov.expand(x.shape[0], -1, -1))
    elbo = lg.elbo(x, q_mean, q_cov)
    kl = kl_divergence(q, lg.posterior(x))
    log_px = lg.log_evidence(x)
    scale = float(log_px.abs().max() + kl.max() + 1)
    torch.testing.assert_close(elbo + kl, log_px, rtol=0, atol=1e-10 * scale)
    assert bool((elbo <= log_px + 1e-10 * scale).all())


def test_elbo_is_the_evidence_at_the_posterior():
    lg = LinearGaussian.random(5, 3, sigma=0.5, generator=_gen(0))
    x, _ = lg.sample(4, generator=_gen(1))
    post = lg.posterior(x)
    torch.testing.assert_close(lg.elbo(x, post.mean, post.covariance_matrix), lg.log_evidence(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(lg.elbo(x, post.mean, post.covariance_matrix[0]), lg.log_evidence(x), rtol=0, atol=1e-10)


def test_elbo_matches_monte_carlo_within_standard_errors():
    lg = LinearGaussian.random(4, 2, sigma=0.5, generator=_gen(2))
    x, _ = lg.sample(3, generator=_gen(3))
    q_mean = torch.tensor([[0.3, -0.2], [1.0, 0.0], [-0.5, 0.5]], dtype=F64)
    q_cov = torch.tensor([[0.5, 0.1], [0.1, 0.2]], dtype=F64)
    q = MultivariateNormal(q_mean, covariance_matrix=q_cov.expand(3, 2, 2))
    n = 50_000
    eps = torch.randn(n, 3, 2, generator=_gen(4), dtype=F64)
    z = q_mean + eps @ torch.linalg.cholesky(q_cov).T
    log_ratio = lg.log_joint(x, z) - q.log_prob(z)
    est, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    assert bool(((est - lg.elbo(x, q_mean, q_cov)).abs() < 4 * se).all())


def test_elbo_rejects_invalid_covariances():
    lg = LinearGaussian.random(4, 2, generator=_gen(0))
    x, _ = lg.sample(3, generator=_gen(1))
    mean = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="q_cov must be symmetric positive definite"):
        lg.elbo(x, mean, -torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="q_cov must be symmetric positive definite"):
        lg.elbo(x, mean, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="q_cov must be"):
        lg.elbo(x, mean, torch.eye(2, dtype=F64).expand(2, 2, 2))
    with pytest.raises(TypeError, match="q_mean must have the model's dtype"):
        lg.elbo(x, mean.float(), torch.eye(2, dtype=F64))


# --- probabilistic PCA -----------------------------------------------------------------------------


def _ppca_data(n=300, D=4, seed=0):
    g = _gen(seed)
    truth = LinearGaussian.random(D, 2, sigma=0.3, generator=g)
    x, _ = truth.sample(n, generator=g)
    return x


def test_ppca_is_the_closed_form_of_tipping_and_bishop():
    x = _ppca_data()
    fit = ppca(x, 2)
    xn = x.numpy()
    S = np.cov(xn.T, bias=True)
    lam, U = np.linalg.eigh(S)
    lam, U = lam[::-1], U[:, ::-1]
    sigma2 = lam[2:].mean()
    W = U[:, :2] * np.sqrt(lam[:2] - sigma2)
    np.testing.assert_allclose(fit.b.numpy(), xn.mean(0), atol=1e-12)
    assert fit.sigma**2 == pytest.approx(sigma2, rel=1e-10)
    # W is unique up to a rotation: compare W W^T.
    np.testing.assert_allclose((fit.W @ fit.W.T).numpy(), W @ W.T, atol=1e-10)


def test_ppca_log_likelihood_beats_every_perturbation():
    x = _ppca_data(seed=1)
    fit = ppca(x, 2)
    best = float(fit.log_evidence(x).sum())
    g = _gen(2)
    for scale in (1e-3, 1e-2, 1e-1):
        for _ in range(10):
            W = fit.W + scale * torch.randn(fit.W.shape, generator=g, dtype=F64)
            b = fit.b + scale * torch.randn(fit.b.shape, generator=g, dtype=F64)
            sigma = fit.sigma * math.exp(scale * float(torch.randn((), generator=g, dtype=F64)))
            assert float(LinearGaussian(W, b, sigma).log_evidence(x).sum()) <= best + 1e-9


def test_ppca_matches_a_numerical_maximisation():
    x = _ppca_data(n=200, seed=3)
    fit = ppca(x, 2)
    W = torch.randn(4, 2, generator=_gen(4), dtype=F64).requires_grad_(True)
    b = torch.zeros(4, dtype=F64, requires_grad=True)
    log_s2 = torch.zeros((), dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b, log_s2], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def nll():
        # The full D x D Gaussian density (no Woodbury identity, unlike log_evidence).
        opt.zero_grad()
        L = torch.linalg.cholesky(W @ W.T + log_s2.exp() * torch.eye(4, dtype=F64))
        r = x - b
        quad = (r.T * torch.cholesky_solve(r.T, L)).sum(0)
        loss = 0.5 * (4 * math.log(2 * math.pi) + 2 * torch.log(torch.diagonal(L)).sum() + quad.mean())
        loss.backward()
        return loss

    opt.step(nll)
    numerical = -float(nll().detach()) * x.shape[0]
    closed = float(fit.log_evidence(x).sum())
    assert numerical == pytest.approx(closed, abs=1e-6)
    assert math.exp(float(log_s2.detach())) == pytest.approx(fit.sigma**2, rel=1e-4)


def test_ppca_is_rotation_invariant():
    x = _ppca_data(seed=5)
    fit = ppca(x, 2)
    theta = 0.7
    R = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=F64)
    rotated = LinearGaussian(fit.W @ R, fit.b, fit.sigma)
    torch.testing.assert_close(rotated.log_evidence(x), fit.log_evidence(x), rtol=0, atol=1e-10)


def test_ppca_rejects_bad_input():
    x = _ppca_data()
    with pytest.raises(ValueError, match="z_dim must be smaller"):
        ppca(x, 4)
    with pytest.raises(ValueError, match="at least 2 rows"):
        ppca(x[:1], 1)
    flat = torch.zeros(10, 3, dtype=F64)
    flat[:, 0] = torch.arange(10, dtype=F64)  # data on a line: sigma^2 would be 0
    with pytest.raises(ValueError, match="subspace"):
        ppca(flat, 1)
    # Data in an exact 2-D subspace, computed with rounding: refused, not fitted with sigma ~ 1e-8.
    g = _gen(6)
    planar = torch.randn(50, 2, generator=g, dtype=F64) @ torch.randn(2, 5, generator=g, dtype=F64)
    with pytest.raises(ValueError, match="subspace"):
        ppca(planar, 2)
    assert ppca(planar, 1).sigma > 0.1  # but a 1-D model of 2-D data is fine
    with pytest.raises(TypeError, match="x must have dtype"):
        ppca(x.half(), 2)


# --- the evidence by brute force, and fitted Gaussians (chapters 1 and 3) ---------------------------


@pytest.mark.parametrize("z_dim, n_points", [(1, 401), (2, 161)])
def test_quadrature_recovers_the_exact_evidence_and_posterior(z_dim, n_points):
    lg = LinearGaussian.random(3, z_dim, sigma=1.0, generator=_gen(20 + z_dim))
    x, _ = lg.sample(4, generator=_gen(21))
    log_px = toy.log_evidence_quadrature(lg, x, n_points=n_points, bound=9.0)
    torch.testing.assert_close(log_px, lg.log_evidence(x), rtol=0, atol=1e-8)
    mean, cov = toy.posterior_moments_quadrature(lg, x, n_points=n_points, bound=9.0)
    post = lg.posterior(x)
    torch.testing.assert_close(mean, post.mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(cov, post.covariance_matrix, rtol=0, atol=1e-8)


def test_importance_sampling_estimates_of_the_evidence():
    lg = LinearGaussian.random(3, 2, sigma=0.8, generator=_gen(30))
    x, _ = lg.sample(3, generator=_gen(31))
    log_px = lg.log_evidence(x)
    # From the exact posterior, every weight is p(x): exact, with zero standard error.
    est, se = toy.log_evidence_importance(lg, x, 50, proposal=lg.posterior(x), generator=_gen(32))
    torch.testing.assert_close(est, log_px, rtol=0, atol=1e-10)
    assert bool((se < 1e-10).all())
    # From the prior: unbiased for p(x), so within a few (delta-method) standard errors of log p(x).
    est, se = toy.log_evidence_importance(lg, x, 100_000, generator=_gen(33))
    assert bool(((est - log_px).abs() < 5 * se).all()), (est - log_px) / se
    assert toy.log_importance_weights(lg, x, 10, generator=_gen(34)).shape == (10, 3)


def test_fitting_a_gaussian_q_closes_the_gap_or_stops_at_the_mean_field_optimum():
    lg = LinearGaussian.random(4, 2, sigma=0.5, generator=_gen(40))
    x, _ = lg.sample(2, generator=_gen(41))
    log_px = lg.log_evidence(x)
    full = toy.fit_gaussian_q(lg, x, full_covariance=True, steps=400, lr=0.05)
    # ELBO + KL(q || p(z|x)) = log p(x) at every iterate, and the full family reaches the posterior.
    torch.testing.assert_close(full.elbo + full.kl, log_px.expand_as(full.elbo), rtol=0, atol=1e-8)
    assert bool((full.kl[-1] < 1e-3).all())
    # The best mean-field q of a Gaussian posterior with precision L has diagonal precision diag(L), so
    # its KL is (sum_j log L_jj - log det L) / 2: the gap the mean-field fit cannot close.
    precision = torch.linalg.inv(lg.posterior(x).covariance_matrix[0])
    kl_floor = 0.5 * (torch.log(torch.diagonal(precision)).sum() - torch.logdet(precision))
    mean_field = toy.fit_gaussian_q(lg, x, full_covariance=False, steps=400, lr=0.05)
    assert bool((mean_field.kl[-1] >= kl_floor - 1e-9).all())
    torch.testing.assert_close(mean_field.kl[-1], kl_floor.expand(2), rtol=0, atol=1e-3)
    assert float(kl_floor) > 0.01  # the posterior is correlated: a real gap
