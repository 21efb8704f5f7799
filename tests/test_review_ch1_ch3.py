"""Identities added to chapters 1 and 3 by the second review: the KL lower bound on the prior's relative
variance (remark rem-relvar-kl) and EM as coordinate ascent on the ELBO (thm-em-monotone), checked on
random linear-Gaussian models in float64, independently of the chapters' code."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from vaelib.toy import LinearGaussian, ppca

F64 = torch.float64


def _log1p_relvar(mean: torch.Tensor, cov: torch.Tensor) -> float:
    """log E_post[p(z|x)/p(z)] by quadrature-free closed form (chapter 1's eq-relvar-gaussian)."""
    d = len(mean)
    two_minus = 2 * torch.eye(d, dtype=F64) - cov
    return float(-0.5 * (torch.logdet(cov) + torch.logdet(two_minus)) + mean @ torch.linalg.solve(two_minus, mean))


@pytest.mark.parametrize("seed", range(6))
def test_relative_variance_is_at_least_exp_kl(seed):
    g = torch.Generator().manual_seed(seed)
    model = LinearGaussian.random(3, 2, sigma=0.7, generator=g)
    x, _ = model.sample(1, generator=g)
    post = model.posterior(x)
    mean, cov = post.mean[0], post.covariance_matrix[0]
    kl = float(kl_divergence(MultivariateNormal(mean, cov), MultivariateNormal(torch.zeros(2, dtype=F64),
                                                                                 torch.eye(2, dtype=F64))))
    # Monte Carlo of E_post[p(z|x)/p(z)], an estimate independent of the closed form
    z = MultivariateNormal(mean, cov).sample((200_000,))
    ratio = (MultivariateNormal(mean, cov).log_prob(z) - MultivariateNormal(
        torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)).log_prob(z)).exp()
    mc, se = ratio.mean().item(), ratio.std().item() / math.sqrt(len(ratio))
    assert abs(mc - math.exp(_log1p_relvar(mean, cov))) < 5 * se
    assert _log1p_relvar(mean, cov) >= kl


def _em(model: LinearGaussian, x: torch.Tensor, steps: int):
    n, D = x.shape
    b = x.mean(0)
    log_p, elbo_e, elbo_m = [], [], []
    for _ in range(steps):
        q = model.posterior(x)
        m_q, S = q.mean, q.covariance_matrix
        log_p.append(model.log_evidence(x).mean().item())
        elbo_e.append(model.elbo(x, m_q, S).mean().item())
        r = x - b
        Z = n * S[0] + m_q.T @ m_q
        W = (r.T @ m_q) @ torch.linalg.inv(Z)
        s2 = (r.pow(2).sum() - 2 * ((m_q @ W.T) * r).sum() + torch.trace(Z @ W.T @ W)) / (n * D)
        model = LinearGaussian(W, b, math.sqrt(s2.item()))
        elbo_m.append(model.elbo(x, m_q, S).mean().item())
    return model, log_p, elbo_e, elbo_m


@pytest.mark.parametrize("seed", range(3))
def test_em_touches_climbs_and_reaches_the_ppca_maximum(seed):
    g = torch.Generator().manual_seed(seed)
    truth = LinearGaussian.random(6, 2, sigma=0.5, generator=g)
    x, _ = truth.sample(400, generator=g)
    start = LinearGaussian(0.1 * torch.randn(6, 2, generator=g, dtype=F64), x.mean(0), 1.0)
    final, log_p, elbo_e, elbo_m = _em(start, x, 300)
    assert max(abs(a - b) for a, b in zip(log_p, elbo_e)) < 1e-10          # the E-step makes the bound tight
    assert max(a - b for a, b in zip(log_p[:-1], log_p[1:])) < 1e-10        # log p never falls
    assert min(m - e for m, e in zip(elbo_m, elbo_e)) > -1e-10              # the M-step never lowers the ELBO
    assert all(m <= nxt + 1e-10 for m, nxt in zip(elbo_m, log_p[1:]))       # ELBO(q_t, theta_t+1) <= log p_t+1
    best = ppca(x, 2).log_evidence(x).mean().item()
    assert best - log_p[-1] < 1e-6 and log_p[-1] <= best + 1e-9
