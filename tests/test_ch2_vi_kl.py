"""The identities chapter 2 (book/ch2_vi_kl.md) asserts, checked more generally.

Closed-form KL between Gaussians (eqs. ``kl-gaussians-full``, ``kl-gaussians``, ``kl-gaussians-1d``)
against ``torch.distributions`` and Monte Carlo; Gibbs' inequality; asymmetry and the failed triangle
inequality; invariance under a change of variables; moment matching of the forward KL; mode seeking of
the reverse KL; the mean-field reverse-KL fit to a Gaussian (eq. ``mean-field-reverse``) and the
forward-KL one (the marginals). Everything runs in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    LogNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from vaelib import gaussian_kl, kl_normal, log_normal, reparameterize

F64 = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)


def _diag_normal(mu: torch.Tensor, logvar: torch.Tensor) -> Independent:
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


def _random_params(seed: int, shape: tuple[int, ...], scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    mu_q, mu_p, logvar_q, logvar_p = scale * torch.randn((4, *shape), generator=g, dtype=F64)
    return mu_q, logvar_q, mu_p, logvar_p


def _minimise(loss_fn, *params: torch.Tensor) -> list[torch.Tensor]:
    """L-BFGS to a gradient of 1e-12, as in the chapter."""
    params = [p.clone().requires_grad_(True) for p in params]
    opt = torch.optim.LBFGS(
        params, max_iter=500, tolerance_grad=1e-12, tolerance_change=0.0, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = loss_fn(*params)
        loss.backward()
        return loss

    opt.step(closure)
    return [p.detach() for p in params]


def _kl_full(m_q, S_q, m_p, S_p) -> torch.Tensor:
    """Eq. ``kl-gaussians-full`` of chapter 2, written out."""
    d = m_q.shape[-1]
    S_p_inv = torch.linalg.inv(S_p)
    diff = (m_p - m_q).unsqueeze(-1)
    return 0.5 * (
        torch.einsum("...ij,...ji->...", S_p_inv, S_q)
        + (diff.mT @ S_p_inv @ diff)[..., 0, 0]
        - d
        + torch.logdet(S_p)
        - torch.logdet(S_q)
    )


def _random_spd(g: torch.Generator, n: int, d: int) -> torch.Tensor:
    L = torch.randn((n, d, d), generator=g, dtype=F64)
    return L @ L.mT + 0.1 * torch.eye(d, dtype=F64)


# --- the closed form against torch.distributions ---------------------------------------------------

finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 6),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.1, 3.0, **finite),
)
def test_kl_normal_matches_torch(batch, d, seed, scale):
    mu_q, logvar_q, mu_p, logvar_p = _random_params(seed, (batch, d), scale)
    ours = kl_normal(mu_q, logvar_q, mu_p, logvar_p)
    ref = kl_divergence(_diag_normal(mu_q, logvar_q), _diag_normal(mu_p, logvar_p))
    assert ours.shape == (batch,)
    torch.testing.assert_close(ours, ref, **TOL)


@settings(max_examples=60, deadline=None)
@given(
    mu=st.lists(st.floats(-5, 5, **finite), min_size=1, max_size=8),
    logvar=st.floats(-4, 4, **finite),
)
def test_gaussian_kl_is_kl_normal_to_standard_normal(mu, logvar):
    mu = torch.tensor(mu, dtype=F64)
    lv = torch.full_like(mu, logvar)
    zeros = torch.zeros_like(mu)
    ours = gaussian_kl(mu, lv)
    torch.testing.assert_close(ours, kl_normal(mu, lv, zeros, zeros), **TOL)
    torch.testing.assert_close(ours, kl_divergence(_diag_normal(mu, lv), _diag_normal(zeros, zeros)), **TOL)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("d", [1, 2, 5])
def test_full_covariance_formula_matches_torch(seed, d):
    g = torch.Generator().manual_seed(seed)
    m_q, m_p = torch.randn((2, 50, d), generator=g, dtype=F64)
    S_q, S_p = _random_spd(g, 50, d), _random_spd(g, 50, d)
    ours = _kl_full(m_q, S_q, m_p, S_p)
    ref = kl_divergence(MultivariateNormal(m_q, S_q), MultivariateNormal(m_p, S_p))
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_diagonal_case_of_full_formula_is_kl_normal(seed):
    mu_q, logvar_q, mu_p, logvar_p = _random_params(seed, (20, 4))
    full = _kl_full(mu_q, torch.diag_embed(logvar_q.exp()), mu_p, torch.diag_embed(logvar_p.exp()))
    torch.testing.assert_close(full, kl_normal(mu_q, logvar_q, mu_p, logvar_p), rtol=1e-10, atol=1e-12)


def test_univariate_formula():
    # eq. kl-gaussians-1d: log(s_p/s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2
    for m_q, s_q, m_p, s_p in [(0.0, 1.0, 1.0, 2.0), (1.0, 2.0, 0.0, 1.0), (-0.3, 0.2, 0.7, 1.5)]:
        expected = math.log(s_p / s_q) + (s_q**2 + (m_q - m_p) ** 2) / (2 * s_p**2) - 0.5
        got = kl_normal(
            torch.tensor([m_q], dtype=F64),
            torch.tensor([2 * math.log(s_q)], dtype=F64),
            torch.tensor([m_p], dtype=F64),
            torch.tensor([2 * math.log(s_p)], dtype=F64),
        )
        assert abs(got.item() - expected) < 1e-12


# --- the closed form against Monte Carlo ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("d", [1, 3, 8])
def test_kl_normal_matches_monte_carlo(seed, d):
    mu_q, logvar_q, mu_p, logvar_p = _random_params(seed, (4, d))
    g = torch.Generator().manual_seed(1000 + seed)
    n = 100_000
    z = reparameterize(mu_q, logvar_q, n_samples=n, generator=g)
    log_ratio = log_normal(z, mu_q, logvar_q) - log_normal(z, mu_p, logvar_p)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    exact = kl_normal(mu_q, logvar_q, mu_p, logvar_p)
    # 4.5 standard errors: a false alarm has probability < 1e-5 per pair (and the seeds are fixed).
    assert ((mc - exact).abs() < 4.5 * se).all(), ((mc - exact) / se)


# --- Gibbs' inequality, zero, asymmetry, not a metric ---------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    q=st.lists(st.floats(1e-3, 1.0, **finite), min_size=2, max_size=8),
    seed=st.integers(0, 2**31 - 1),
)
def test_gibbs_inequality_discrete(q, seed):
    q = torch.tensor(q, dtype=F64)
    q = q / q.sum()
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(2 * torch.randn(q.shape, generator=g, dtype=F64), -1)
    kl = (q * (q / p).log()).sum()
    ref = kl_divergence(Categorical(probs=q), Categorical(probs=p))
    torch.testing.assert_close(kl, ref, rtol=1e-10, atol=1e-12)
    assert kl >= -1e-15
    assert (q * (q / q).log()).sum() == 0


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 6), d=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_kl_normal_nonnegative_and_zero_on_itself(batch, d, seed):
    mu_q, logvar_q, mu_p, logvar_p = _random_params(seed, (batch, d), 2.0)
    assert (kl_normal(mu_q, logvar_q, mu_p, logvar_p) >= 0).all()
    assert (kl_normal(mu_q, logvar_q, mu_q, logvar_q) == 0).all()


def test_asymmetry_and_triangle_inequality_fail():
    one, zero = torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)
    log4 = math.log(4.0) * one
    kl_a = kl_normal(zero, zero, one, log4).item()  # KL(N(0,1) || N(1,4))
    kl_b = kl_normal(one, log4, zero, zero).item()
    assert abs(kl_a - (math.log(2) + 0.25 - 0.5)) < 1e-12
    assert abs(kl_b - (-math.log(2) + 2.5 - 0.5)) < 1e-12
    assert abs(kl_a - kl_b) > 0.8
    # KL(N(0,1) || N(delta,1)) = delta^2 / 2: halving a shift quarters it.
    for delta in [0.5, 1.0, 3.0]:
        direct = kl_normal(zero, zero, delta * one, zero).item()
        via_mid = 2 * kl_normal(zero, zero, 0.5 * delta * one, zero).item()
        assert abs(direct - delta**2 / 2) < 1e-12
        assert direct > via_mid


@pytest.mark.parametrize("a", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("b", [0.1, 0.5, 0.97])
def test_kl_bernoulli_formula(a, b):
    a_t, b_t = torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64)
    ours = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
    ref = kl_divergence(Bernoulli(probs=a_t), Bernoulli(probs=b_t)).item()
    assert abs(ours - ref) < 1e-12
    assert ours >= -1e-15


# --- invariance under a change of variables -------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(-5, 5, **finite).filter(lambda s: abs(s) > 0.05),
    shift=st.floats(-5, 5, **finite),
)
def test_kl_invariant_under_affine_map(seed, scale, shift):
    # y = scale * z + shift maps N(m, s^2) to N(scale m + shift, scale^2 s^2).
    mu_q, logvar_q, mu_p, logvar_p = _random_params(seed, (3, 1))
    log_a2 = math.log(scale**2)
    kl_z = kl_normal(mu_q, logvar_q, mu_p, logvar_p)
    kl_y = kl_normal(scale * mu_q + shift, logvar_q + log_a2, scale * mu_p + shift, logvar_p + log_a2)
    torch.testing.assert_close(kl_y, kl_z, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("seed", range(3))
def test_kl_invariant_under_exp_lognormal(seed):
    # y = exp(z): the KL between two log-normals, estimated in y-space with the log-normal densities
    # (whose Jacobian factors cancel), equals eq. kl-gaussians-1d.
    mu_q, logvar_q, mu_p, logvar_p = (t.item() for t in _random_params(seed, (1,)))
    q_y = LogNormal(torch.tensor(mu_q, dtype=F64), torch.tensor(math.exp(0.5 * logvar_q), dtype=F64))
    p_y = LogNormal(torch.tensor(mu_p, dtype=F64), torch.tensor(math.exp(0.5 * logvar_p), dtype=F64))
    torch.manual_seed(seed)
    y = q_y.sample((200_000,))
    log_ratio = q_y.log_prob(y) - p_y.log_prob(y)
    mc, se = log_ratio.mean(), log_ratio.std() / math.sqrt(y.numel())
    exact = kl_normal(*(torch.tensor([v], dtype=F64) for v in (mu_q, logvar_q, mu_p, logvar_p)))
    assert abs(mc - exact.item()) < 4.5 * se


# --- reverse versus forward KL for a 1-D mixture target -------------------------------------------

GRID = torch.linspace(-15, 15, 3001, dtype=F64)
DZ = GRID[1] - GRID[0]


def _mixture(seed: int, k: int):
    g = torch.Generator().manual_seed(seed)
    weights = torch.softmax(torch.randn(k, generator=g, dtype=F64), 0)
    means = 3 * torch.randn(k, generator=g, dtype=F64)
    stds = 0.4 + torch.rand(k, generator=g, dtype=F64)
    log_p = torch.logsumexp(
        log_normal(GRID[:, None, None], means[:, None], 2 * stds.log()[:, None]) + weights.log(), -1
    )
    return weights, means, stds, log_p


def _kl_both_ways(log_p, mu, log_sigma):
    log_q = log_normal(GRID[:, None], mu[..., None, None], 2 * log_sigma[..., None, None])
    reverse = (log_q.exp() * (log_q - log_p)).sum(-1) * DZ
    forward = (log_p.exp() * (log_p - log_q)).sum(-1) * DZ
    return reverse, forward


@pytest.mark.parametrize("seed", range(3))
def test_grid_quadrature_matches_closed_form(seed):
    mu_q, logvar_q, mu_p, logvar_p = _random_params(seed, (1,))
    log_q = log_normal(GRID[:, None], mu_q, logvar_q)
    log_p = log_normal(GRID[:, None], mu_p, logvar_p)
    quad = (log_q.exp() * (log_q - log_p)).sum() * DZ
    assert abs(quad - kl_normal(mu_q, logvar_q, mu_p, logvar_p)) < 1e-9


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 3])
def test_forward_kl_fit_matches_moments(seed, k):
    weights, means, stds, log_p = _mixture(seed, k)
    assert abs(log_p.exp().sum() * DZ - 1) < 1e-9
    mu, log_sigma = _minimise(
        lambda m, s: _kl_both_ways(log_p, m, s)[1], torch.tensor(0.0, dtype=F64), torch.tensor(0.0, dtype=F64)
    )
    m_p = (weights * means).sum()
    v_p = (weights * (stds**2 + means**2)).sum() - m_p**2
    assert abs(mu - m_p) < 1e-6
    assert abs((2 * log_sigma).exp() - v_p) < 1e-6 * max(1.0, v_p.item())


@pytest.mark.parametrize("mode", [0, 1])
def test_reverse_kl_fit_seeks_the_nearest_mode(mode):
    weights = torch.tensor([0.4, 0.6], dtype=F64)
    means, stds = torch.tensor([-2.0, 2.0], dtype=F64), torch.tensor([0.6, 0.6], dtype=F64)
    log_p = torch.logsumexp(
        log_normal(GRID[:, None, None], means[:, None], 2 * stds.log()[:, None]) + weights.log(), -1
    )
    start = torch.tensor(0.5 * means[mode].item(), dtype=F64)
    mu, log_sigma = _minimise(lambda m, s: _kl_both_ways(log_p, m, s)[0], start, torch.tensor(0.0, dtype=F64))
    assert abs(mu - means[mode]) < 0.05
    assert abs(log_sigma.exp() - stds[mode]) < 0.05
    rev, fwd = _kl_both_ways(log_p, mu, log_sigma)
    # Ignoring the other mode costs about -log(weight of the chosen one) nats.
    assert abs(rev + weights[mode].log()) < 0.01
    assert fwd > 5


# --- mean-field Gaussian fits to a correlated Gaussian --------------------------------------------


def _mean_field(m, log_s):
    return MultivariateNormal(m, torch.diag((2 * log_s).exp()))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("d", [2, 4])
def test_mean_field_reverse_kl_fit(seed, d):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g, dtype=F64)
    Sigma = _random_spd(g, 1, d)[0] + 0.5 * torch.eye(d, dtype=F64)
    Lambda = torch.linalg.inv(Sigma)
    target = MultivariateNormal(mu, covariance_matrix=Sigma)
    zeros = torch.zeros(d, dtype=F64)
    m, log_s = _minimise(lambda m, s: kl_divergence(_mean_field(m, s), target), zeros, zeros)
    var = (2 * log_s).exp()
    torch.testing.assert_close(m, mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(var, 1 / torch.diagonal(Lambda), rtol=1e-6, atol=1e-6)
    kl_min = kl_divergence(_mean_field(m, log_s), target)
    kl_theory = 0.5 * (torch.diagonal(Lambda).log().sum() - torch.logdet(Lambda))
    assert abs(kl_min - kl_theory) < 1e-9
    # Conditional variances never exceed the marginal ones (Schur complement).
    assert (1 / torch.diagonal(Lambda) <= torch.diagonal(Sigma) + 1e-12).all()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("d", [2, 3])
def test_mean_field_forward_kl_fit_is_the_marginals(seed, d):
    g = torch.Generator().manual_seed(100 + seed)
    mu = torch.randn(d, generator=g, dtype=F64)
    Sigma = _random_spd(g, 1, d)[0] + 0.5 * torch.eye(d, dtype=F64)
    target = MultivariateNormal(mu, covariance_matrix=Sigma)
    zeros = torch.zeros(d, dtype=F64)
    m, log_s = _minimise(lambda m, s: kl_divergence(target, _mean_field(m, s)), zeros, zeros)
    torch.testing.assert_close(m, mu, rtol=0, atol=1e-6)
    torch.testing.assert_close((2 * log_s).exp(), torch.diagonal(Sigma), rtol=1e-6, atol=1e-6)
    kl_min = kl_divergence(target, _mean_field(m, log_s))
    kl_theory = 0.5 * (torch.diagonal(Sigma).log().sum() - torch.logdet(Sigma))
    assert abs(kl_min - kl_theory) < 1e-9


@pytest.mark.parametrize("rho", [-0.95, -0.5, 0.0, 0.3, 0.9])
@pytest.mark.parametrize("sd", [(1.0, 1.0), (1.2, 1.0), (0.3, 2.5)])
def test_two_dim_mean_field_gaps_are_the_mutual_information(rho, sd):
    s = torch.tensor(sd, dtype=F64)
    Sigma = torch.outer(s, s) * torch.tensor([[1.0, rho], [rho, 1.0]], dtype=F64)
    Lambda = torch.linalg.inv(Sigma)
    target = MultivariateNormal(torch.zeros(2, dtype=F64), covariance_matrix=Sigma)
    mi = -0.5 * math.log(1 - rho**2)
    q_rev = _mean_field(torch.zeros(2, dtype=F64), 0.5 * (1 / torch.diagonal(Lambda)).log())
    q_fwd = _mean_field(torch.zeros(2, dtype=F64), 0.5 * torch.diagonal(Sigma).log())
    assert abs(kl_divergence(q_rev, target) - mi) < 1e-12
    assert abs(kl_divergence(target, q_fwd) - mi) < 1e-12
    torch.testing.assert_close(1 / torch.diagonal(Lambda), torch.diagonal(Sigma) * (1 - rho**2), **TOL)
