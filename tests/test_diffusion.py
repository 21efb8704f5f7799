"""vaelib.diffusion (chapter 12), DiscretisedGaussian and GreyLevelDecoder, each against an independent computation.

Every number here is checked against something computed another way: the marginal against simulating the
Markov chain, the forward posterior against generic Gaussian conditioning (a Schur complement), each
step's KL against torch's own KL of Gaussians, the bound's diffusion term against the sum of the per-step
KLs, its reconstruction term against Gauss-Hermite quadrature, Tweedie's formula against per-component
Gaussian conditioning, the discretised Gaussian against Normal cdf differences and mpmath, the exported
network against a NumPy re-implementation of the in-page sampler. Monte Carlo comparisons are within
five standard errors (float64, fixed seeds, so they are deterministic). Nets are tiny: the file runs in
well under half a minute on two cores.
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import (Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal,
                                 kl_divergence)

import vaelib
from vaelib import diffusion as D
from vaelib.distributions import DiagonalNormal, DiscretisedGaussian
from vaelib.model import GreyLevelDecoder, MLPEncoder

F64 = torch.float64
Z = 5.0  # Monte Carlo tolerance, in standard errors


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_net(d: int = 2, seed: int = 0, dtype: torch.dtype = F64) -> D.DenoisingMLP:
    return D.DenoisingMLP(d, width=16, blocks=1, frequencies=4, seed=seed).to(dtype)


def mean_se(v: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return v.mean(dim), v.std(dim) / math.sqrt(v.shape[dim])


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


SCHEDULES = [D.LinearLogSNR(), D.CosineLogSNR(), D.LinearLogSNR(10.0, -6.0), D.CosineLogSNR(4.0, -12.0)]
SCHEDULE_IDS = [repr(s) for s in SCHEDULES]


# --- schedules -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sched", SCHEDULES, ids=SCHEDULE_IDS)
def test_schedule_identities(sched):
    t = torch.linspace(0, 1, 201, dtype=F64)
    a, s, lam = sched.alpha(t), sched.sigma(t), sched.logsnr(t)
    assert a.dtype == F64 and a.shape == t.shape
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), rtol=0, atol=1e-14)
    torch.testing.assert_close(sched.snr(t), a**2 / s**2, rtol=1e-12, atol=0)
    torch.testing.assert_close(a**2, 1 / (1 + torch.exp(-lam)), rtol=1e-13, atol=0)
    assert bool((lam[1:] < lam[:-1]).all())  # strictly decreasing
    for end, value in ((0, sched.logsnr_max), (1, sched.logsnr_min)):
        assert float(sched.logsnr(torch.tensor(float(end), dtype=F64))) == pytest.approx(value, rel=1e-13, abs=1e-13)
        assert float(sched.logsnr(end)) == pytest.approx(value, rel=1e-5, abs=1e-5)  # a number: the default dtype
    # dlogsnr against a central finite difference (inside (0, 1))
    u = torch.linspace(0.01, 0.99, 50, dtype=F64)
    h = 1e-6
    fd = (sched.logsnr(u + h) - sched.logsnr(u - h)) / (2 * h)
    torch.testing.assert_close(sched.dlogsnr(u), fd, rtol=1e-7, atol=1e-7)
    assert bool((sched.dlogsnr(t) < 0).all())


@pytest.mark.parametrize("lmax, lmin", [(7.0, -9.0), (10.0, -6.0), (4.0, -12.0)])
def test_cosine_schedule_is_cos_of_a_line(lmax, lmin):
    # a, b from alpha^2 = sigmoid(lambda) at the end points (not the module's atan(exp(-lambda/2)))
    a = math.acos(math.sqrt(sigmoid(lmax)))
    b = math.acos(math.sqrt(sigmoid(lmin)))
    sched = D.CosineLogSNR(lmax, lmin)
    t = torch.linspace(0, 1, 101, dtype=F64)
    torch.testing.assert_close(sched.alpha(t), torch.cos(a + (b - a) * t), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sched.sigma(t), torch.sin(a + (b - a) * t), rtol=1e-12, atol=1e-14)


def test_schedule_errors():
    sched = D.LinearLogSNR()
    for bad in (-0.1, 1.1, math.nan, torch.tensor([0.5, 1.5]), torch.tensor([-1e-3]), torch.tensor(math.nan)):
        for method in (sched.logsnr, sched.dlogsnr, sched.alpha, sched.sigma, sched.snr,
                       D.CosineLogSNR().logsnr, D.CosineLogSNR().dlogsnr):
            with pytest.raises(ValueError, match="t "):
                method(bad)
    with pytest.raises(TypeError, match="t"):
        sched.alpha("0.5")
    for lmax, lmin in ((1.0, 1.0), (-9.0, 7.0), (40.0, -9.0), (7.0, -31.0)):
        for cls in (D.LinearLogSNR, D.CosineLogSNR):
            with pytest.raises(ValueError, match="logsnr_m"):
                cls(lmax, lmin)
    with pytest.raises(ValueError, match="logsnr_max"):
        D.LinearLogSNR(math.nan, -9.0)
    with pytest.raises(TypeError, match="logsnr_min"):
        D.LinearLogSNR(7.0, "-9")
    for t in (0, 1, 0.0, 1.0, torch.tensor([0.0, 1.0])):  # the end points themselves are allowed
        assert torch.isfinite(sched.alpha(t)).all()


# --- the forward process ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sched", SCHEDULES[:2], ids=SCHEDULE_IDS[:2])
def test_marginal_matches_the_simulated_chain(sched):
    """q(z_t|x) against z_0 ~ q(z_0|x) followed by transitions 0 -> 0.1 -> ... -> t, on many draws."""
    n = 40000
    x = torch.tensor([[1.5, -0.5, 0.0]], dtype=F64).expand(n, 3)
    g = gen(1)
    for t in (0.35, 0.73, 1.0):
        grid = [k / 10 for k in range(11) if k / 10 < t] + [t]
        z = D.marginal(sched, x, 0.0).sample(generator=g)
        for s, u in zip(grid[:-1], grid[1:]):
            z = D.transition(sched, z, s, u).sample(generator=g)
        q = D.marginal(sched, x, t)
        mean, var = q.loc[0], q.variance[0]
        m, se = mean_se(z)
        assert bool(((m - mean).abs() < Z * se).all()), (t, m, mean, se)
        v = z.var(0)
        se_v = var * math.sqrt(2 / (n - 1))
        assert bool(((v - var).abs() < Z * se_v).all()), (t, v, var)
        # and q's own formula: N(alpha_t x, sigma_t^2)
        torch.testing.assert_close(mean, float(sched.alpha(t)) * x[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sched", SCHEDULES, ids=SCHEDULE_IDS)
def test_transitions_compose_in_closed_form(sched):
    one = torch.ones(1, 1, dtype=F64)
    for s, u, t in ((0.0, 0.3, 0.31), (0.1, 0.5, 0.9), (0.25, 0.26, 1.0), (0.0, 0.5, 1.0)):
        a_us, v_us = D.transition(sched, one, s, u).loc.item(), D.transition(sched, one, s, u).variance.item()
        a_tu, v_tu = D.transition(sched, one, u, t).loc.item(), D.transition(sched, one, u, t).variance.item()
        a_ts, v_ts = D.transition(sched, one, s, t).loc.item(), D.transition(sched, one, s, t).variance.item()
        assert a_tu * a_us == pytest.approx(a_ts, rel=1e-12)
        assert a_tu**2 * v_us + v_tu == pytest.approx(v_ts, rel=1e-10)
        # the marginal at s, then s -> t: the marginal at t
        m_s, m_t = D.marginal(sched, one, s), D.marginal(sched, one, t)
        assert a_ts * m_s.loc.item() == pytest.approx(m_t.loc.item(), rel=1e-12)
        assert a_ts**2 * m_s.variance.item() + v_ts == pytest.approx(m_t.variance.item(), rel=1e-10)


@pytest.mark.parametrize("sched", SCHEDULES, ids=SCHEDULE_IDS)
def test_forward_posterior_is_gaussian_conditioning(sched):
    """q(z_s|z_t, x) against conditioning the joint of (z_s, z_t) given x: per coordinate a 2x2 Gaussian with
    cov(z_s, z_t) = alpha_{t|s} sigma_s^2, conditioned through its Schur complement."""
    g = gen(2)
    n, d = 6, 3
    x = torch.randn(n, d, generator=g, dtype=F64)
    z_t = torch.randn(n, d, generator=g, dtype=F64)
    s = torch.tensor([0.0, 0.1, 0.4, 0.5, 0.98, 0.3], dtype=F64)
    t = torch.tensor([0.05, 0.9, 0.41, 1.0, 0.99, 0.7], dtype=F64)
    for ss, tt in ((s, t), (0.2, 0.6)):
        q = D.forward_posterior(sched, z_t, x, ss, tt)
        ss_, tt_ = torch.as_tensor(ss, dtype=F64).expand(n), torch.as_tensor(tt, dtype=F64).expand(n)
        a_s, a_t = sched.alpha(ss_), sched.alpha(tt_)
        v_s, v_t = sched.sigma(ss_) ** 2, sched.sigma(tt_) ** 2
        c = a_t / a_s * v_s
        cov = torch.stack([torch.stack([v_s, c], -1), torch.stack([c, v_t], -1)], -2)  # (n, 2, 2)
        gain = cov[:, :1, 1:] @ torch.linalg.inv(cov[:, 1:, 1:])  # Sigma_12 Sigma_22^{-1}, (n, 1, 1)
        cond_var = (cov[:, :1, :1] - gain @ cov[:, 1:, :1])[:, 0, 0]
        cond_mean = a_s[:, None] * x + gain[:, :, 0] * (z_t - a_t[:, None] * x)
        torch.testing.assert_close(q.loc, cond_mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(q.variance, cond_var[:, None].expand(n, d), rtol=1e-10, atol=1e-12)


def test_forward_process_bad_inputs():
    sched = D.LinearLogSNR()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="s < t"):
        D.transition(sched, x, 0.5, 0.5)
    with pytest.raises(ValueError, match="s < t"):
        D.forward_posterior(sched, x, x, 0.6, 0.5)
    with pytest.raises(ValueError, match="s < t"):
        D.forward_posterior(sched, x, x, torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.2, 0.3, 0.3]))
    with pytest.raises(ValueError, match="t must lie in"):
        D.marginal(sched, x, 1.5)
    with pytest.raises(ValueError, match="t must lie in"):
        D.marginal(sched, x, torch.tensor([0.1, -0.1, 0.2]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        D.marginal(sched, x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        D.marginal(sched, x * math.nan, 0.5)
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        D.marginal(sched, x[0], 0.5)
    with pytest.raises(ValueError, match="same shape"):
        D.forward_posterior(sched, x, x[:, :1], 0.1, 0.2)
    with pytest.raises(TypeError, match="schedule"):
        D.marginal("linear", x, 0.5)


# --- each step's KL --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sched", SCHEDULES[:2], ids=SCHEDULE_IDS[:2])
def test_step_kl_four_ways(sched):
    g = gen(3)
    model = D.Diffusion(tiny_net(3), 3, sched)
    n = 7
    x = torch.randn(n, 3, generator=g, dtype=F64)
    eps = torch.randn(n, 3, generator=g, dtype=F64)
    for s, t in ((0.3, 0.4), (0.0, 0.05), (0.9, 1.0), (torch.rand(n, generator=g, dtype=F64) * 0.5,
                                                        0.5 + torch.rand(n, generator=g, dtype=F64) * 0.5)):
        st = torch.as_tensor(s, dtype=F64).expand(n)
        tt = torch.as_tensor(t, dtype=F64).expand(n)
        z_t = sched.alpha(tt)[:, None] * x + sched.sigma(tt)[:, None] * eps
        q = D.forward_posterior(sched, z_t, x, s, t)
        p = model.reverse(z_t, s, t)
        assert isinstance(q, DiagonalNormal) and isinstance(p, DiagonalNormal)
        kl_vaelib = kl_divergence(q, p)
        kl_torch = kl_divergence(Independent(Normal(q.loc, q.scale), 1), Independent(Normal(p.loc, p.scale), 1))
        x_hat = model.x_hat(z_t, t)
        eps_hat = model.eps(z_t, t)
        kl_x = 0.5 * (sched.snr(st) - sched.snr(tt)) * (x - x_hat).pow(2).sum(-1)
        kl_eps = 0.5 * torch.expm1(sched.logsnr(st) - sched.logsnr(tt)) * (eps - eps_hat).pow(2).sum(-1)
        for other in (kl_torch, kl_x, kl_eps):
            torch.testing.assert_close(kl_vaelib, other, rtol=1e-9, atol=1e-12)
        # the network's three views agree: x_hat from eps_hat, the score from eps_hat
        torch.testing.assert_close(x_hat, (z_t - sched.sigma(tt)[:, None] * eps_hat) / sched.alpha(tt)[:, None])
        torch.testing.assert_close(model.score(z_t, t), -eps_hat / sched.sigma(tt)[:, None])


# --- the bound -------------------------------------------------------------------------------------------

def _draws(model, x, n, **kw):
    """The ELBO's three terms for ``n`` independent draws per example: ``(n, batch)`` each (one draw per row of
    ``x`` repeated; the times are stratified over all rows, so the iid standard error is conservative)."""
    e = D.elbo(model, x.repeat(n, 1), **kw)
    return type(e)(*(v.detach().view(n, x.shape[0]) for v in e))


def test_discrete_elbo_is_the_sum_of_the_step_kls():
    sched = D.LinearLogSNR()
    model = D.Diffusion(tiny_net(), 2, sched)
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.2, 0.1]], dtype=F64)
    T, M = 4, 20000
    g = gen(4)
    exact, var = torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64)
    with torch.no_grad():
        for i in range(1, T + 1):
            s, t = (i - 1) / T, i / T
            xr = x.repeat(M, 1)
            eps = torch.randn(xr.shape, generator=g, dtype=F64)
            z_t = sched.alpha(torch.tensor(t, dtype=F64)) * xr + sched.sigma(torch.tensor(t, dtype=F64)) * eps
            kl = kl_divergence(D.forward_posterior(sched, z_t, xr, s, t), model.reverse(z_t, s, t)).view(M, 3)
            m, se = mean_se(kl)
            exact += m
            var += se**2
        e = _draws(model, x, 20000, steps=T, generator=gen(5))
    m, se = mean_se(e.diffusion)
    assert bool(((m - exact).abs() < Z * (se**2 + var).sqrt()).all()), (m, exact, se, var.sqrt())
    assert bool((exact > 0.1).all())  # an untrained net: a term far from zero, so the check has power


def test_continuous_elbo_is_the_limit_of_many_steps():
    model = D.Diffusion(tiny_net(), 2, D.LinearLogSNR())
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=F64)
    with torch.no_grad():
        cont = _draws(model, x, 20000, generator=gen(6))
        many = _draws(model, x, 20000, steps=1000, generator=gen(7))
        few = _draws(model, x, 20000, steps=2, generator=gen(8))
    (m1, s1), (m2, s2), (m3, s3) = mean_se(cont.diffusion), mean_se(many.diffusion), mean_se(few.diffusion)
    assert bool(((m1 - m2).abs() < Z * (s1**2 + s2**2).sqrt()).all()), (m1, m2, s1, s2)
    # two steps are a different (looser) bound: far from the limit, the comparison above has power
    assert bool(((m3 - m1).abs() > Z * (s1**2 + s3**2).sqrt()).all()), (m1, m3)
    for e in (cont, many):  # reconstruction and prior do not depend on steps
        torch.testing.assert_close(e.prior[0], cont.prior[0])
        torch.testing.assert_close(e.elbo, e.reconstruction - e.diffusion - e.prior)


def test_prior_term_is_the_closed_form_kl():
    for sched in SCHEDULES:
        model = D.Diffusion(tiny_net(), 2, sched)
        x = torch.tensor([[0.5, -1.0], [2.0, 0.3], [0.0, 0.0]], dtype=F64)
        a1 = math.sqrt(sigmoid(sched.logsnr_min))
        s1 = math.sqrt(sigmoid(-sched.logsnr_min))
        q = Independent(Normal(a1 * x, torch.full_like(x, s1)), 1)
        p = Independent(Normal(torch.zeros_like(x), torch.ones_like(x)), 1)
        e = D.elbo(model, x, generator=gen())
        torch.testing.assert_close(e.prior, kl_divergence(q, p), rtol=1e-10, atol=1e-14)


def test_reconstruction_term_continuous():
    """levels=None: log N(x; z_0/alpha_0, sigma_0/alpha_0) with z_0 = alpha_0 x + sigma_0 eps is
    C - |eps|^2/2, C = -d/2 log(2 pi) - d log(sigma_0/alpha_0): so C - term is |eps|^2/2 ~ Gamma(d/2, 1)."""
    d = 2
    for lmax in (7.0, 10.0):
        model = D.Diffusion(tiny_net(), d, D.LinearLogSNR(lmax, -9.0))
        x = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=F64)
        with torch.no_grad():
            e = _draws(model, x, 20000, generator=gen(9))
        c = -d / 2 * math.log(2 * math.pi) - d * (-lmax / 2)  # sigma_0/alpha_0 = exp(-lambda_max/2)
        half_chi2 = c - e.reconstruction
        assert bool((half_chi2 >= -1e-9).all())
        m, se = mean_se(half_chi2)
        assert bool(((m - d / 2).abs() < Z * se).all()), m  # Gamma(d/2, 1): mean d/2, variance d/2
        assert bool(((half_chi2.var(0) - d / 2).abs() < 0.1).all())


def _log_bin(a: float, b: float) -> float:
    """log(Phi(b) - Phi(a)) with math.erfc (the tail that keeps its digits)."""
    if a + b > 0:
        a, b = -b, -a
    return math.log(0.5 * math.erfc(-b / math.sqrt(2)) - 0.5 * math.erfc(-a / math.sqrt(2)))


def test_reconstruction_term_discretised_against_quadrature():
    """levels=17: each pixel's E log P(x | z_0) = E_eps log(Phi(h - eps) - Phi(-h - eps)), h = w/(2 r),
    r = sigma_0/alpha_0 (the end bins open to infinity), by Gauss-Hermite quadrature."""
    lmax = 7.0
    model = D.Diffusion(tiny_net(4), 4, D.LinearLogSNR(lmax, -9.0), levels=17)
    x = torch.tensor([[-1.0, -0.875, 0.0, 1.0], [0.5, 1.0, -1.0, 0.125]], dtype=F64)
    r, w = math.exp(-lmax / 2), 2 / 16
    h = w / (2 * r)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / math.sqrt(2 * math.pi)

    def expected(v: float) -> float:
        out = 0.0
        for e, wt in zip(nodes, weights):
            lo = -math.inf if v == -1.0 else -h - e
            hi = math.inf if v == 1.0 else h - e
            if hi == math.inf:
                val = math.log(0.5 * math.erfc(lo / math.sqrt(2)))  # Phi(-lo)
            elif lo == -math.inf:
                val = math.log(0.5 * math.erfc(-hi / math.sqrt(2)))
            else:
                val = _log_bin(lo, hi)
            out += wt * val
        return out

    exact = torch.tensor([sum(expected(float(v)) for v in row) for row in x], dtype=F64)
    with torch.no_grad():
        e = _draws(model, x, 20000, generator=gen(10))
    m, se = mean_se(e.reconstruction)
    assert bool(((m - exact).abs() < Z * se + 1e-6).all()), (m, exact, se)
    assert bool((e.reconstruction <= 0).all())  # a log-probability of a discrete value


# The Gaussian mixture of the optimal-denoiser tests: full covariances.
PI = torch.tensor([0.3, 0.7], dtype=F64)
MUS = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64)
COVS = torch.tensor([[[0.09, 0.03], [0.03, 0.16]], [[0.25, -0.05], [-0.05, 0.1]]], dtype=F64)


def mixture(scale: float = 1.0) -> MixtureSameFamily:
    return MixtureSameFamily(Categorical(probs=PI), MultivariateNormal(MUS, COVS * scale**2))


class OptimalDenoiser(nn.Module):
    """The exact E[eps | z_t] = -sigma_t * score of p(z_t) for mixture data, batched over rows with their own
    log-SNR: p(z_t) is the mixture with components N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) (checked against
    vaelib.diffusion.diffused_mixture row by row in test_optimal_denoiser_is_diffused_mixtures_score)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.covs = COVS * scale**2
        self.dtype_anchor = nn.Parameter(torch.zeros((), dtype=F64))  # the model's dtype is its parameters'

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        a2, s2 = torch.sigmoid(logsnr), torch.sigmoid(-logsnr)
        loc = a2.sqrt()[:, None, None] * MUS
        cov = a2[:, None, None, None] * self.covs + s2[:, None, None, None] * torch.eye(2, dtype=F64)
        with torch.enable_grad():
            zz = z.detach().requires_grad_()
            p = MixtureSameFamily(Categorical(probs=PI.expand(len(z), 2)), MultivariateNormal(loc, cov))
            (score,) = torch.autograd.grad(p.log_prob(zz).sum(), zz)
        return -s2.sqrt()[:, None] * score


def test_optimal_denoiser_is_diffused_mixtures_score():
    sched = D.LinearLogSNR()
    net = OptimalDenoiser()
    g = gen(11)
    z = torch.randn(12, 2, generator=g, dtype=F64) * 1.3
    t = torch.rand(12, generator=g, dtype=F64)
    eps = net(z, sched.logsnr(t))
    for i in range(12):
        zi = z[i:i + 1].clone().requires_grad_()
        (score,) = torch.autograd.grad(D.diffused_mixture(mixture(), sched, float(t[i])).log_prob(zi).sum(), zi)
        torch.testing.assert_close(eps[i:i + 1], -sched.sigma(t[i]) * score, rtol=1e-10, atol=1e-12)
    model = D.Diffusion(net, 2, sched)
    torch.testing.assert_close(model.score(z, t), -eps / sched.sigma(t)[:, None])


def test_elbo_with_the_optimal_denoiser_bounds_the_log_density():
    """With the exact denoiser for smooth mixture data, the continuous-time bound is below the data's log p(x)
    (within Monte Carlo error), and for logsnr_max=10 close to it.

    (The ELBO bounds the *model's* log-likelihood. With the exact denoiser the model is the data distribution
    smoothed by the likelihood's noise sigma_0/alpha_0, which for components of width 0.3 to 0.5 changes
    log p(x) by far less than the Monte Carlo error; for sharp data it would not: the next test.)"""
    x = torch.tensor([[-1.0, 0.4], [0.8, -0.6], [1.3, -0.2], [-0.7, 0.9]], dtype=F64)
    log_p = mixture().log_prob(x)
    for lmax in (7.0, 10.0):
        model = D.Diffusion(OptimalDenoiser(), 2, D.LinearLogSNR(lmax, -9.0))
        with torch.no_grad():
            e = _draws(model, x, 15000, generator=gen(12))
        m, se = mean_se(e.elbo)
        gap = log_p - m
        assert bool((gap > -Z * se).all()), (lmax, gap, se)  # below (up to Monte Carlo error)
        mean_gap, mean_gap_se = float(gap.mean()), float(se.pow(2).mean().sqrt() / 2)
        assert mean_gap > -Z * mean_gap_se, (lmax, mean_gap, mean_gap_se)
        if lmax == 10.0:  # close: on average over the four points (5 standard errors from 0.3), and each
            assert mean_gap < 0.3, (mean_gap, mean_gap_se)
            assert bool((gap < 0.3 + 3 * se).all()), (gap, se)


def test_elbo_is_below_the_data_log_density_on_average_for_sharp_data():
    """For data sharper than the likelihood's noise (sigma_0/alpha_0 = 0.03, components of width 0.01), the
    bound is well below the data's log density on average over data drawn from it (Gibbs' inequality and the
    bound: E_q log q >= E_q log p_model >= E_q ELBO), by about the KL between the data and the smoothed model,
    though at single points in the tails of a component it may lie above log q(x)."""
    mix = mixture(scale=1 / 30)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(13)
        x = mix.sample((16,))
    model = D.Diffusion(OptimalDenoiser(scale=1 / 30), 2, D.LinearLogSNR())
    with torch.no_grad():
        e = _draws(model, x, 4000, generator=gen(14))
    gap = mix.log_prob(x) - e.elbo.mean(0)
    m, se = float(gap.mean()), float(gap.std() / 4)  # over the data (it holds the Monte Carlo error too)
    assert m > 0.5 and m > Z * se, (m, se)


def test_schedules_with_equal_end_points_give_the_same_continuous_elbo():
    """The continuous-time bound depends on the schedule only through its end points (the net sees lambda)."""
    net = tiny_net()
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=F64)
    out = []
    for sched, seed in ((D.LinearLogSNR(7.0, -9.0), 15), (D.CosineLogSNR(7.0, -9.0), 16)):
        with torch.no_grad():
            out.append(mean_se(_draws(D.Diffusion(net, 2, sched), x, 20000, generator=gen(seed)).elbo))
    (m1, s1), (m2, s2) = out
    assert bool(((m1 - m2).abs() < Z * (s1**2 + s2**2).sqrt()).all()), (m1, m2, s1, s2)
    with torch.no_grad():  # while another end point gives another bound (the comparison has power)
        m3, s3 = mean_se(_draws(D.Diffusion(net, 2, D.CosineLogSNR(7.0, -2.0)), x, 20000, generator=gen(17)).elbo)
    assert bool(((m3 - m1).abs() > Z * (s1**2 + s3**2).sqrt()).all()), (m1, m3)


def test_elbo_bad_inputs_and_gradients():
    model = D.Diffusion(tiny_net(dtype=torch.float32), 2)
    x = torch.randn(5, 2, generator=gen())
    with pytest.raises(TypeError, match="dtype"):
        D.elbo(model, x.double())
    with pytest.raises(ValueError, match="last dimension 2"):
        D.elbo(model, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="2 dimensions"):
        D.elbo(model, x[0])
    with pytest.raises(ValueError, match="NaN"):
        D.elbo(model, x * math.nan)
    with pytest.raises(ValueError, match="steps"):
        D.elbo(model, x, steps=0)
    with pytest.raises(ValueError, match="n_t"):
        D.elbo(model, x, n_t=0)
    with pytest.raises(TypeError, match="model"):
        D.elbo(nn.Linear(2, 2), x)
    levels = D.Diffusion(tiny_net(dtype=torch.float32), 2, levels=17)
    with pytest.raises(ValueError, match="support"):
        D.elbo(levels, torch.full((3, 2), 0.01))
    # the bound is differentiable in the network's parameters (it is the training loss)
    e = D.elbo(model, x, generator=gen())
    grads = torch.autograd.grad(e.elbo.sum(), list(model.parameters()))
    assert all(torch.isfinite(g_).all() for g_ in grads) and any(g_.abs().sum() > 0 for g_ in grads)
    # reproducible with a generator
    torch.testing.assert_close(D.elbo(model, x, generator=gen(3)).elbo, D.elbo(model, x, generator=gen(3)).elbo,
                               rtol=0, atol=0)


# --- Tweedie ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_tweedie_is_the_posterior_mean(t):
    sched = D.LinearLogSNR()
    mix = mixture()
    z = torch.randn(7, 2, generator=gen(18), dtype=F64) * 1.2
    zz = z.clone().requires_grad_()
    (score,) = torch.autograd.grad(D.diffused_mixture(mix, sched, t).log_prob(zz).sum(), zz)
    a, s = float(sched.alpha(torch.tensor(t, dtype=F64))), float(sched.sigma(torch.tensor(t, dtype=F64)))
    got = D.tweedie(score, z, a, s)
    # per component: x | z, k ~ Gaussian conditioning of x ~ N(mu_k, S_k), z = a x + s e
    log_r, means = [], []
    for k in range(2):
        c = a**2 * COVS[k] + s**2 * torch.eye(2, dtype=F64)
        log_r.append(math.log(PI[k]) + MultivariateNormal(a * MUS[k], c).log_prob(z))
        gain = a * COVS[k] @ torch.linalg.inv(c)
        means.append(MUS[k] + (z - a * MUS[k]) @ gain.T)
    r = torch.softmax(torch.stack(log_r, -1), -1)
    exact = (r[..., None] * torch.stack(means, 1)).sum(1)
    torch.testing.assert_close(got, exact, rtol=1e-8, atol=1e-8)
    # tensors for alpha and sigma work the same
    torch.testing.assert_close(D.tweedie(score, z, torch.tensor(a, dtype=F64), torch.tensor(s, dtype=F64)), got)


def test_tweedie_and_diffused_mixture_bad_inputs():
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="same shape"):
        D.tweedie(z[:, :1], z, 0.5, 0.5)
    for bad, err in ((0.0, ValueError), (-0.5, ValueError), (math.nan, ValueError), ("a", TypeError),
                     (torch.tensor([0.5, 0.0]), ValueError)):
        with pytest.raises(err, match="alpha"):
            D.tweedie(z, z, bad, 0.5)
        with pytest.raises(err, match="sigma"):
            D.tweedie(z, z, 0.5, bad)
    with pytest.raises(TypeError, match="mixture"):
        D.diffused_mixture(Normal(0.0, 1.0), D.LinearLogSNR(), 0.5)
    with pytest.raises(ValueError, match="single time"):
        D.diffused_mixture(mixture(), D.LinearLogSNR(), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="t must lie"):
        D.diffused_mixture(mixture(), D.LinearLogSNR(), 1.2)


# --- DiscretisedGaussian -----------------------------------------------------------------------------------

GRID = torch.linspace(-1, 1, 17, dtype=F64)


def _reference_masses(loc: torch.Tensor, scale: torch.Tensor, levels: int = 17) -> torch.Tensor:
    """P(v_k) by torch Normal cdf differences, the end bins open: (..., levels)."""
    grid = torch.linspace(-1, 1, levels, dtype=loc.dtype)
    w = 2 / (levels - 1)
    n = Normal(loc[..., None], scale[..., None])
    up = torch.where(torch.arange(levels) == levels - 1, torch.ones(()), n.cdf(grid + w / 2))
    lo = torch.where(torch.arange(levels) == 0, torch.zeros(()), n.cdf(grid - w / 2))
    return up - lo


def _masses(dist_loc: torch.Tensor, scale: torch.Tensor, levels: int = 17) -> torch.Tensor:
    """P(v_k) by the public log_prob, one coordinate at a time (event size 1): (..., levels)."""
    d = DiscretisedGaussian(dist_loc[..., None], scale[..., None], levels)
    grid = torch.linspace(-1, 1, levels, dtype=dist_loc.dtype)
    return torch.stack([d.log_prob(grid[k].expand_as(dist_loc)[..., None]).exp() for k in range(levels)], -1)


def test_discretised_gaussian_masses():
    loc = torch.tensor([-3.0, -1.0, -0.97, -0.3, 0.0, 0.06, 0.5, 1.0, 2.0, 40.0, -40.0], dtype=F64)
    for s in (0.01, 0.03, 0.2, 1.0, 5.0):
        scale = torch.full_like(loc, s)
        p = _masses(loc, scale)
        torch.testing.assert_close(p.sum(-1), torch.ones_like(loc), rtol=0, atol=1e-12)
        ref = _reference_masses(loc, scale)
        bulk = ref > 1e-8
        torch.testing.assert_close(p[bulk], ref[bulk], rtol=1e-9, atol=1e-15)
        # the exact mean sums the grid's values (not loc: the end bins pull it inside)
        d = DiscretisedGaussian(loc[:, None], scale[:, None], 17)
        torch.testing.assert_close(d.mean[:, 0], (ref * GRID).sum(-1), rtol=1e-9, atol=1e-12)
    # other grids
    d = DiscretisedGaussian(torch.tensor([[0.3]], dtype=F64), torch.tensor([[0.4]], dtype=F64), 5, low=0.0, high=2.0)
    vals = torch.linspace(0, 2, 5, dtype=F64)
    probs = torch.stack([d.log_prob(v.reshape(1, 1)).exp() for v in vals]).flatten()
    n = Normal(torch.tensor(0.3, dtype=F64), torch.tensor(0.4, dtype=F64))
    edges = torch.tensor([-math.inf, 0.25, 0.75, 1.25, 1.75, math.inf], dtype=F64)
    torch.testing.assert_close(probs, n.cdf(edges[1:]) - n.cdf(edges[:-1]), rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(d.grid, vals)


def test_discretised_gaussian_deep_tails_against_mpmath():
    cases = [  # (loc, scale, value)
        (0.0, 0.03, 1.0), (0.0, 0.03, -1.0), (0.0, 0.03, 0.5), (0.0, 0.03, -0.5), (40.0, 0.03, -1.0),
        (40.0, 0.03, -0.875), (-40.0, 0.03, 1.0), (0.9, 0.001, 0.0), (1.0, 0.01, 0.875), (-1.0, 0.01, -1.0),
        (0.05, 0.2, 0.875), (0.0, 1e-3, 0.0), (0.5, 5.0, 0.125),
    ]
    loc = torch.tensor([[c[0] for c in cases]], dtype=F64)
    scale = torch.tensor([[c[1] for c in cases]], dtype=F64)
    value = torch.tensor([[c[2] for c in cases]], dtype=F64)
    per_coordinate = torch.stack([DiscretisedGaussian(loc[:, i:i + 1], scale[:, i:i + 1], 17).log_prob(
        value[:, i:i + 1])[0] for i in range(len(cases))])
    assert bool(torch.isfinite(per_coordinate).all())
    assert bool((per_coordinate <= 0).all())
    # float32 agrees to its own precision
    per32 = torch.stack([DiscretisedGaussian(loc[:, i:i + 1].float(), scale[:, i:i + 1].float(), 17).log_prob(
        value[:, i:i + 1].float())[0] for i in range(len(cases))])
    assert bool(torch.isfinite(per32).all())
    torch.testing.assert_close(per32.double(), per_coordinate, rtol=2e-5, atol=1e-5)
    # the whole event sums the coordinates
    torch.testing.assert_close(DiscretisedGaussian(loc, scale, 17).log_prob(value)[0], per_coordinate.sum())
    try:
        import mpmath
    except ImportError:  # pragma: no cover - mpmath comes with sympy, a dependency of torch
        pytest.skip("mpmath is not installed")
    mpmath.mp.dps = 50
    w = mpmath.mpf(2) / 16
    for (m, s, v), got in zip(cases, per_coordinate.tolist()):
        m, s, v = mpmath.mpf(m), mpmath.mpf(s), mpmath.mpf(v)
        a = -mpmath.inf if v == -1 else (v - w / 2 - m) / s
        b = mpmath.inf if v == 1 else (v + w / 2 - m) / s
        # Phi(b) - Phi(a), written as Phi(-a) - Phi(-b) in the upper tail (an identity, so mpmath keeps digits)
        p = mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)
        assert got == pytest.approx(float(mpmath.log(p)), rel=1e-12, abs=1e-12), (m, s, v)


def test_discretised_gaussian_samples_have_the_masses():
    loc = torch.tensor([0.3, 0.95, -1.2], dtype=F64)
    scale = torch.tensor([0.2, 0.1, 0.5], dtype=F64)
    d = DiscretisedGaussian(loc, scale, 17)
    n = 100000
    x = d.sample((n,), generator=gen(19))
    assert x.shape == (n, 3) and x.dtype == F64
    k = torch.round((x + 1) * 8)
    torch.testing.assert_close(x, k / 8 - 1, rtol=0, atol=0)  # exactly the grid's values
    assert bool(d.support.check(x).all())
    ref = _reference_masses(loc, scale)
    for j in range(3):
        counts = torch.bincount(k[:, j].long(), minlength=17).double()
        expected = n * ref[j]
        sd = (expected * (1 - ref[j])).sqrt()
        assert bool(((counts - expected).abs() <= Z * sd + 3).all()), (j, counts, expected)
        keep = expected > 5
        chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
        df = int(keep.sum()) - 1
        assert chi2 < df + Z * math.sqrt(2 * df), (j, chi2, df)
    torch.testing.assert_close(d.sample((5,), generator=gen(1)), d.sample((5,), generator=gen(1)), rtol=0, atol=0)
    with pytest.raises(NotImplementedError):
        d.rsample((2,))


def test_discretised_gaussian_refuses_values_off_the_grid():
    d = DiscretisedGaussian(torch.zeros(2, 3), torch.ones(2, 3), 17)
    for bad in (0.01, 1.125, -1.125, 0.0625):
        with pytest.raises(ValueError, match="grid"):
            d.log_prob(torch.full((2, 3), bad))
    assert torch.isfinite(d.log_prob(torch.full((2, 3), 0.875))).all()
    assert torch.isfinite(d.log_prob(torch.full((2, 3), 0.875 + 1e-7))).all()  # float32 rounding of a grid value
    DiscretisedGaussian(torch.zeros(2, 3), torch.ones(2, 3), 17, validate_args=False).log_prob(torch.full((2, 3), 0.01))
    with pytest.raises(ValueError, match="levels"):
        DiscretisedGaussian(torch.zeros(2, 3), torch.ones(2, 3), 1)
    with pytest.raises(ValueError, match="low < high"):
        DiscretisedGaussian(torch.zeros(2, 3), torch.ones(2, 3), 5, low=1.0, high=-1.0)
    with pytest.raises(TypeError, match="low"):
        DiscretisedGaussian(torch.zeros(2, 3), torch.ones(2, 3), 5, low=None)
    with pytest.raises(TypeError, match="scale"):
        DiscretisedGaussian(torch.zeros(2, 3), torch.ones(2, 3, dtype=F64), 5)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_discretised_gaussian_gradients_are_finite(dtype):
    locs = [-40.0, -3.0, -1.0, -0.97, 0.0, 0.3, 0.97, 1.0, 3.0, 40.0]
    scales = [1e-3, 0.03, 0.5, 3.0]
    loc = torch.tensor([[m for m in locs for _ in scales]], dtype=dtype, requires_grad=True)
    scale = torch.tensor([[s for _ in locs for s in scales]], dtype=dtype, requires_grad=True)
    d = DiscretisedGaussian(loc, scale, 17)
    for v in (-1.0, -0.875, 0.0, 0.875, 1.0):  # both end bins, their neighbours, the middle
        lp = d.log_prob(torch.full(loc.shape, v, dtype=dtype))
        assert torch.isfinite(lp).all()
        g_loc, g_scale = torch.autograd.grad(lp.sum(), [loc, scale])
        assert torch.isfinite(g_loc).all() and torch.isfinite(g_scale).all(), v
    g_loc, g_scale = torch.autograd.grad(d.mean.sum(), [loc, scale])  # the mean's gradient (was NaN)
    assert torch.isfinite(g_loc).all() and torch.isfinite(g_scale).all()
    if dtype == F64:  # against central finite differences, where the masses are not negligible
        for v in (-1.0, 0.125, 1.0):
            for m, s in ((-0.9, 0.2), (0.1, 0.3), (0.95, 0.05)):
                lt = torch.tensor([[m]], dtype=F64, requires_grad=True)
                st = torch.tensor([[s]], dtype=F64, requires_grad=True)
                val = torch.tensor([[v]], dtype=F64)
                gl, gs = torch.autograd.grad(DiscretisedGaussian(lt, st, 17).log_prob(val).sum(), [lt, st])
                h = 1e-6

                def f(mm, ss):
                    return float(DiscretisedGaussian(torch.tensor([[mm]], dtype=F64), torch.tensor([[ss]], dtype=F64),
                                                     17).log_prob(val))

                assert float(gl) == pytest.approx((f(m + h, s) - f(m - h, s)) / (2 * h), rel=1e-5, abs=1e-6)
                assert float(gs) == pytest.approx((f(m, s + h) - f(m, s - h)) / (2 * h), rel=1e-5, abs=1e-6)
                dm = torch.autograd.grad(DiscretisedGaussian(lt, st, 17).mean.sum(), lt)[0]
                mean = lambda mm: float(DiscretisedGaussian(torch.tensor([[mm]], dtype=F64),  # noqa: E731
                                                            torch.tensor([[s]], dtype=F64), 17).mean)
                assert float(dm) == pytest.approx((mean(m + h) - mean(m - h)) / (2 * h), rel=1e-5, abs=1e-7)


# --- GreyLevelDecoder in a VAE ---------------------------------------------------------------------------

def grey_vae(dtype: torch.dtype = torch.float32) -> vaelib.VAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = vaelib.VAE(64, 4, encoder=MLPEncoder(64, (16,), 4), decoder=GreyLevelDecoder(4, (16,), 64))
    return model.to(dtype)


def grey_data(n: int = 24, seed: int = 20, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randint(0, 17, (n, 64), generator=gen(seed)).to(dtype) / 8 - 1)


def test_grey_level_decoder_in_a_vae():
    model = grey_vae(F64)
    x = grey_data(dtype=F64)
    # log p(x|z) against Normal cdf differences of the decoder's own loc and scale
    z = torch.randn(x.shape[0], 4, generator=gen(21), dtype=F64)
    out = model.decoder(z)
    assert isinstance(out, DiscretisedGaussian)
    ref = _reference_masses(out.loc, out.scale)  # (n, 64, 17)
    k = torch.round((x + 1) * 8).long()
    expected = ref.gather(-1, k[..., None])[..., 0].log().sum(-1)
    torch.testing.assert_close(model.log_px_z(x, z), expected, rtol=1e-9, atol=1e-9)
    # the bounds of a discrete likelihood are log-probabilities: negative; IWAE(5) above the ELBO on average
    e = vaelib.elbo(model, x, generator=gen(22))
    iw = vaelib.iwae_bound(model, x, 5, generator=gen(23))
    assert torch.isfinite(e.elbo).all() and (e.elbo < 0).all() and (iw < 0).all()
    assert float(iw.detach().mean()) > float(e.elbo.detach().mean())
    m32 = grey_vae()
    before = [p.detach().clone() for p in m32.parameters()]
    h = vaelib.fit(m32, grey_data(), 1, batch_size=8, progress=False, seed=0)
    assert len(h.train_elbo) == 1 and math.isfinite(h.train_elbo[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, m32.parameters()))


def test_grey_level_decoder_refuses_off_grid_data():
    model = grey_vae()
    x = grey_data()
    for bad in (x + 0.01, (x + 1) / 2 * 0.9, x * 1.125):
        with pytest.raises(ValueError, match="support"):
            vaelib.elbo(model, bad)
        with pytest.raises(ValueError, match="support"):
            vaelib.iwae_bound(model, bad, 2)
        with pytest.raises(ValueError, match="support"):
            vaelib.fit(model, bad, 1, progress=False)
    with pytest.raises(ValueError, match="levels"):
        GreyLevelDecoder(4, (16,), 64, levels=1)
    with pytest.raises(TypeError, match="x_dim"):
        GreyLevelDecoder(4, (16,), 64.0)


# --- training ----------------------------------------------------------------------------------------------

def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_fit_is_deterministic_and_leaves_global_state_alone():
    x = torch.randn(64, 2, generator=gen(24))
    runs = []
    for _ in range(2):
        model = D.Diffusion(tiny_net(dtype=torch.float32), 2)
        rng, grad = torch.get_rng_state(), torch.is_grad_enabled()
        h = D.fit(model, x, 6, batch_size=16, seed=3, progress=False)
        assert torch.equal(rng, torch.get_rng_state()) and torch.is_grad_enabled() == grad
        assert len(h.loss) == 6 and len(h.seconds) == 6 and all(math.isfinite(v) for v in h.loss)
        runs.append(_params(model))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    other = D.Diffusion(tiny_net(dtype=torch.float32), 2)
    D.fit(other, x, 6, batch_size=16, seed=4, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(runs[0], other.parameters()))
    with torch.no_grad():  # trains inside no_grad too, and leaves it off
        rng = torch.get_rng_state()
        D.fit(D.Diffusion(tiny_net(dtype=torch.float32), 2), x, 2, batch_size=16, progress=False)
        assert not torch.is_grad_enabled() and torch.equal(rng, torch.get_rng_state())


def test_fit_keeps_the_moving_average_and_calls_back():
    x = torch.randn(32, 2, generator=gen(25), dtype=F64)
    start = D.Diffusion(tiny_net(), 2)
    w0 = _params(start)
    last = D.Diffusion(tiny_net(), 2)
    D.fit(last, x, 1, batch_size=8, ema=0.0, progress=False)  # ema=0: the weights after the one update
    w1 = _params(last)
    assert any(not torch.equal(a, b) for a, b in zip(w0, w1))
    avg = D.Diffusion(tiny_net(), 2)
    seen = []
    D.fit(avg, x, 1, batch_size=8, ema=0.25, progress=False, callback=lambda step, m: seen.append((step, _params(m))))
    for a, b0, b1 in zip(avg.parameters(), w0, w1):
        torch.testing.assert_close(a.detach(), 0.25 * b0 + 0.75 * b1, rtol=1e-12, atol=1e-14)
    assert [s for s, _ in seen] == [1] and all(torch.equal(a, b) for a, b in zip(seen[0][1], avg.parameters()))


def test_fit_lowers_the_loss():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(26)
        x = mixture().sample((256,)).float()
    model = D.Diffusion(D.DenoisingMLP(2, width=32, blocks=1, frequencies=8, seed=0), 2)
    before = float(D.elbo(model, x, n_t=8, generator=gen(27)).elbo.detach().mean())
    h = D.fit(model, x, 150, batch_size=64, lr=1e-2, ema=0.9, progress=False)
    after = float(D.elbo(model, x, n_t=8, generator=gen(27)).elbo.detach().mean())
    assert after > before + 1.0, (before, after)
    assert sum(h.loss[-20:]) / 20 < sum(h.loss[:20]) / 20


def test_fit_bad_arguments():
    model = D.Diffusion(tiny_net(dtype=torch.float32), 2)
    w = _params(model)
    x = torch.randn(16, 2, generator=gen())
    for kw, err, word in (({"steps": 0}, ValueError, "steps"), ({"ema": 1.0}, ValueError, "ema"),
                          ({"ema": -0.1}, ValueError, "ema"), ({"lr": 0.0}, ValueError, "lr"),
                          ({"batch_size": 0}, ValueError, "batch_size"), ({"batch_size": 17}, ValueError, "batch_size"),
                          ({"seed": -1}, ValueError, "seed"),
                          ({"callback": 3}, TypeError, "callback"), ({"x": x.double()}, TypeError, "dtype"),
                          ({"x": x[:, :1]}, ValueError, "last dimension"), ({"x": x * math.nan}, ValueError, "NaN")):
        args = {"model": model, "x": x, "steps": 2, "batch_size": 8, "progress": False, **kw}
        with pytest.raises(err, match=word):
            D.fit(**args)
    levels = D.Diffusion(tiny_net(dtype=torch.float32), 2, levels=17)
    with pytest.raises(ValueError, match="support"):
        D.fit(levels, x, 2, batch_size=8, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(w, model.parameters()))  # nothing trained

    def boom(step, m):
        raise RuntimeError("callback fails")

    with pytest.raises(RuntimeError, match="callback fails"):
        D.fit(model, x, 1, batch_size=8, progress=False, callback=boom)


# --- sampling --------------------------------------------------------------------------------------------

def _posterior_step(sched, z, x_hat, s, t, noise):
    """One ancestral step from the schedule's alpha and sigma (the book's eq. forward-posterior, written out)."""
    s_, t_ = torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64)
    a_s, a_t, v_s, v_t = sched.alpha(s_), sched.alpha(t_), sched.sigma(s_) ** 2, sched.sigma(t_) ** 2
    a_ts = a_t / a_s
    v_ts = v_t - a_ts**2 * v_s
    mean = a_ts * v_s / v_t * z + a_s * v_ts / v_t * x_hat
    return mean + torch.sqrt(v_ts * v_s / v_t) * noise


def test_reverse_process_is_the_ancestral_chain():
    sched = D.CosineLogSNR()
    model = D.Diffusion(tiny_net(3), 3, sched)
    T, n = 6, 4
    noise = torch.randn(T + 1, n, 3, generator=gen(28), dtype=F64)
    traj = D.reverse_process(model, n, T, noise=noise)
    assert traj.shape == (T + 1, n, 3)
    z = noise[0]
    expected = [z]
    with torch.no_grad():
        for k in range(1, T + 1):
            t, s = (T - k + 1) / T, (T - k) / T
            z = _posterior_step(sched, z, model.x_hat(z, t), s, t, noise[k])
            expected.append(z)
    torch.testing.assert_close(traj, torch.stack(expected), rtol=1e-10, atol=1e-12)
    a = D.reverse_process(model, n, T, generator=gen(29))
    b = D.reverse_process(model, n, T, generator=gen(29))
    c = D.reverse_process(model, n, T, generator=gen(30))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="noise must have shape"):
        D.reverse_process(model, n, T, noise=noise[:-1])
    with pytest.raises(TypeError, match="noise"):
        D.reverse_process(model, n, T, noise=noise.float())
    with pytest.raises(ValueError, match="steps"):
        D.reverse_process(model, n, 0)


def test_sampling_with_the_optimal_denoiser_draws_the_data():
    """End to end: ancestral sampling with the exact denoiser (100 steps) draws the mixture."""
    model = D.Diffusion(OptimalDenoiser(), 2, D.LinearLogSNR())
    n = 2000
    x = D.sample(model, n, 100, generator=gen(31))
    mix = mixture()
    mean = (PI[:, None] * MUS).sum(0)
    m, se = mean_se(x)
    assert bool(((m - mean).abs() < Z * se).all()), (m, mean)
    cov = torch.cov(x.T)
    ref = mix.variance
    assert bool(((cov.diagonal() - ref) / ref).abs().lt(0.1).all()), (cov, ref)
    frac = float((x[:, 0] < 0).double().mean())  # the components are well apart along the first axis
    assert abs(frac - 0.3) < Z * math.sqrt(0.21 / n)


def test_sample_of_a_levels_model_is_on_the_grid():
    model = D.Diffusion(tiny_net(4, dtype=torch.float32), 4, levels=17)
    x = D.sample(model, 50, 5, generator=gen(32))
    assert x.shape == (50, 4) and x.dtype == torch.float32
    k = (x + 1) * 8
    assert torch.equal(k, k.round()) and bool(((k >= 0) & (k <= 16)).all())
    assert torch.equal(x, D.sample(model, 50, 5, generator=gen(32)))
    cont = D.Diffusion(tiny_net(4, dtype=torch.float32), 4)
    assert D.sample(cont, 7, 3, generator=gen()).shape == (7, 4)


# --- export ----------------------------------------------------------------------------------------------

def _silu(v: np.ndarray) -> np.ndarray:
    return v / (1 + np.exp(-v))


def _numpy_net(exported: dict, z: np.ndarray, lam: float) -> np.ndarray:
    """The exported network, read as the in-page sampler reads it."""
    layers = []
    for layer in exported["layers"]:
        w = np.frombuffer(base64.b64decode(layer["weight"]), "<f4").reshape(layer["out"], layer["in"])
        b = np.frombuffer(base64.b64decode(layer["bias"]), "<f4")
        assert b.shape == (layer["out"],)
        layers.append((w.astype(np.float64), b.astype(np.float64)))
    omega = np.array(exported["omega"])
    feats = np.concatenate([z, np.broadcast_to(np.sin(omega * lam), (len(z), len(omega))),
                            np.broadcast_to(np.cos(omega * lam), (len(z), len(omega)))], 1)
    w, b = layers[0]
    h = feats @ w.T + b
    for i in range(exported["blocks"]):
        (w1, b1), (w2, b2) = layers[1 + 2 * i], layers[2 + 2 * i]
        h = h + _silu(_silu(h) @ w1.T + b1) @ w2.T + b2
    w, b = layers[-1]
    return _silu(h) @ w.T + b


def test_export_reverse_process():
    sched = D.CosineLogSNR(6.0, -8.0)
    net = D.DenoisingMLP(2, width=12, blocks=2, frequencies=3, seed=5)
    model = D.Diffusion(net, 2, sched)
    T = 7
    ex = json.loads(json.dumps(D.export_reverse_process(model, T)))  # JSON-ready
    assert ex["format"] == "vaelib-diffusion/1" and ex["x_dim"] == 2 and ex["steps"] == T and ex["blocks"] == 2
    assert [(layer["in"], layer["out"]) for layer in ex["layers"]] == [(2 + 6, 12), (12, 12), (12, 12), (12, 12),
                                                                      (12, 12), (12, 2)]
    lam = [float(sched.logsnr(torch.tensor(1 - k / T, dtype=F64))) for k in range(T + 1)]
    assert ex["logsnr"] == pytest.approx(lam, rel=1e-14, abs=1e-14)
    assert ex["logsnr"][0] == pytest.approx(-8.0) and ex["logsnr"][-1] == pytest.approx(6.0)
    assert ex["omega"] == pytest.approx(np.geomspace(1 / 16, 32, 3).tolist(), rel=1e-6)
    # a DenoisingMLP rebuilt from the decoded bytes alone computes the same noise prediction
    rebuilt = D.DenoisingMLP(ex["x_dim"], width=ex["layers"][0]["out"], blocks=ex["blocks"],
                             frequencies=len(ex["omega"]), seed=99)
    with torch.no_grad():
        for lin, layer in zip([rebuilt.inp, *[lin for block in rebuilt.hidden for lin in block], rebuilt.out],
                              ex["layers"], strict=True):
            w = np.frombuffer(base64.b64decode(layer["weight"]), "<f4").reshape(layer["out"], layer["in"])
            lin.weight.copy_(torch.from_numpy(w.copy()))
            lin.bias.copy_(torch.from_numpy(np.frombuffer(base64.b64decode(layer["bias"]), "<f4").copy()))
    z = torch.randn(5, 2, generator=gen(33))
    lam = sched.logsnr(torch.full((5,), 0.3))
    torch.testing.assert_close(rebuilt(z, lam), net(z, lam), rtol=0, atol=0)
    for k in (0, 3, T - 1):
        t = 1 - k / T
        got = _numpy_net(ex, z.double().numpy(), ex["logsnr"][k])
        np.testing.assert_allclose(got, model.eps(z, t).detach().numpy(), rtol=1e-4, atol=1e-5)
    # the in-page sampler: the ancestral chain in NumPy from the exported log-SNRs only
    noise = torch.randn(T + 1, 5, 2, generator=gen(34))
    zn = noise[0].double().numpy()
    for k in range(1, T + 1):
        lt, ls = ex["logsnr"][k - 1], ex["logsnr"][k]
        a_t, s_t = math.sqrt(sigmoid(lt)), math.sqrt(sigmoid(-lt))
        a_s, v_s = math.sqrt(sigmoid(ls)), sigmoid(-ls)
        x_hat = (zn - s_t * _numpy_net(ex, zn, lt)) / a_t
        one_minus = -math.expm1(lt - ls)
        mean = (a_t / a_s) * v_s / s_t**2 * zn + a_s * one_minus * x_hat
        zn = mean + math.sqrt(v_s * one_minus) * noise[k].double().numpy()
    np.testing.assert_allclose(zn, D.reverse_process(model, 5, T, noise=noise)[-1].numpy(), rtol=1e-4, atol=1e-4)


def test_export_refuses_other_networks():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, z, logsnr):
            return self.lin(z)

    with pytest.raises(ValueError, match="DenoisingMLP"):
        D.export_reverse_process(D.Diffusion(Net(), 2), 5)
    with pytest.raises(ValueError, match="steps"):
        D.export_reverse_process(D.Diffusion(tiny_net(), 2), 0)
    with pytest.raises(TypeError, match="model"):
        D.export_reverse_process(tiny_net(), 5)


# --- the model's own checks --------------------------------------------------------------------------------

def test_model_bad_inputs():
    model = D.Diffusion(tiny_net(dtype=torch.float32), 2)
    z = torch.zeros(3, 2)
    for method in (model.eps, model.x_hat, model.score):
        with pytest.raises(TypeError, match="dtype"):
            method(z.double(), 0.5)
        with pytest.raises(ValueError, match="last dimension"):
            method(torch.zeros(3, 3), 0.5)
        with pytest.raises(ValueError, match="t must lie"):
            method(z, 1.5)
        with pytest.raises(ValueError, match="NaN"):
            method(z * math.nan, 0.5)
    with pytest.raises(ValueError, match="s < t"):
        model.reverse(z, 0.5, 0.4)
    with pytest.raises(ValueError, match="x_dim"):
        D.Diffusion(tiny_net(3), 2)
    with pytest.raises(TypeError, match="net"):
        D.Diffusion(lambda z, lam: z, 2)
    with pytest.raises(ValueError, match="levels"):
        D.Diffusion(tiny_net(), 2, levels=1)

    class WrongShape(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 3)

        def forward(self, z, logsnr):
            return self.lin(z)

    with pytest.raises(ValueError, match="net must return"):
        D.Diffusion(WrongShape(), 2).eps(z, 0.5)
    prior = model.prior()
    assert prior.event_shape == (2,) and prior.dtype == torch.float32
    lik = D.Diffusion(tiny_net(), 2, levels=9).likelihood(torch.zeros(3, 2, dtype=F64))
    assert isinstance(lik, DiscretisedGaussian) and lik.levels == 9


def test_fit_trains_inside_inference_mode_and_refuses_a_model_made_there():
    """As vaelib.fit: a caller's inference mode is switched off inside (and back on after); data made there
    are copied; a network made there can never be trained and is refused by name."""
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    model = D.Diffusion(D.DenoisingMLP(2, width=8, blocks=1, seed=0), 2)
    reference = D.Diffusion(D.DenoisingMLP(2, width=8, blocks=1, seed=0), 2)
    D.fit(reference, x, 3, batch_size=16, progress=False)
    with torch.inference_mode():
        x_inf = x.clone()
        D.fit(model, x_inf, 3, batch_size=16, progress=False)
        assert torch.is_inference_mode_enabled()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))
    with torch.inference_mode():
        made_there = D.Diffusion(D.DenoisingMLP(2, width=8, blocks=1, seed=0), 2)
    with pytest.raises(ValueError, match="inference_mode"):
        D.fit(made_there, x, 3, batch_size=16, progress=False)
