"""The reparameterisation in full (chapter 5): densities by the change of variables, the full-covariance
Gaussian z = mu + L eps, and the minibatch ("doubly stochastic") estimator of a data set's ELBO.

Each test mirrors a self-check of ``book/ch5_reparameterisation.md`` on other sizes and seeds, against an
independent computation: ``torch.distributions``, quadrature, a closed form, or an exhaustive enumeration.
Statistical checks allow 5 standard errors (two-sided normal tail 5.7e-7); every generator is seeded.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vaelib

DTYPE = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def log_std_normal(eps: torch.Tensor) -> torch.Tensor:
    return -0.5 * (math.log(2 * math.pi) + eps**2)


def random_scale_tril(d: int, g: torch.Generator) -> torch.Tensor:
    """A lower triangular L with positive diagonal, from unconstrained entries (as in chapters 3 and 5)."""
    below = torch.randn(d, d, generator=g, dtype=DTYPE)
    lam = 0.5 * torch.randn(d, generator=g, dtype=DTYPE)
    return torch.tril(below, -1) + torch.diag(lam.exp())


# --- eq. change-of-variables for the diagonal Gaussian (eq. diag-log-q) -----------------------------


@settings(max_examples=25, deadline=None, derandomize=True)
@given(batch=st.integers(1, 4), d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_diagonal_log_q_from_the_noise(batch, d, seed):
    g = gen(seed)
    mu = 3 * torch.randn(batch, d, generator=g, dtype=DTYPE)
    logvar = 2 * torch.randn(batch, d, generator=g, dtype=DTYPE)
    eps = torch.randn(7, batch, d, generator=g, dtype=DTYPE)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_q = log_std_normal(eps).sum(-1) - 0.5 * logvar.sum(-1)
    normal = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    torch.testing.assert_close(log_q, normal.log_prob(z).sum(-1), rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(log_q, vaelib.log_normal(z, mu, logvar), rtol=1e-12, atol=1e-11)


# --- a nonlinear invertible map: the formula's density has the map's moments -------------------------


@pytest.mark.parametrize("a,b", [(2.0, 2.0), (0.5, 1.0), (-0.5, 1.0), (4.0, 0.5)])
def test_change_of_variables_for_a_nonlinear_map(a, b):
    """g(eps) = eps + a tanh(b eps), b > 0: g' = 1 + ab sech^2(b eps) >= min(1, 1 + ab) > 0, so g is an
    increasing bijection of R, and |g(eps) - eps| <= |a| brackets g^-1(z) for bisection.

    int h(z) q(z) dz with q from eq. change-of-variables equals E[h(g(eps))] computed from the map alone,
    both by the trapezoid rule (error: rounding, ~1e-13); without the Jacobian the mass is not 1. (A map
    that contracts sharply, g' near 0, makes q spiky and would need a finer grid.)
    """
    assert b > 0 and 1 + min(a * b, 0) > 0

    def g_map(e):
        return e + a * torch.tanh(b * e)

    def g_inv(z):
        lo, hi = z - abs(a), z + abs(a)
        for _ in range(70):
            mid = 0.5 * (lo + hi)
            below = g_map(mid) < z
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    grid = torch.linspace(-16, 16, 6401, dtype=DTYPE)
    step = (grid[1] - grid[0]).item()
    eps = g_inv(grid)
    q = (log_std_normal(eps) - torch.log(1 + a * b / torch.cosh(b * eps) ** 2)).exp()
    phi = log_std_normal(grid).exp()
    for h in (torch.ones_like, torch.square, lambda z: z**4, torch.cos, lambda z: z**3 * torch.exp(z / 4)):
        by_density = step * (h(grid) * q).sum().item()
        by_map = step * (h(g_map(grid)) * phi).sum().item()
        assert abs(by_density - by_map) < 1e-10 * max(1.0, abs(by_map))
    mass_without_jacobian = step * log_std_normal(eps).exp().sum().item()
    assert abs(mass_without_jacobian - 1) > 0.1


def test_histogram_follows_the_change_of_variables_density():
    """Monte Carlo: the share of draws g(eps) in each bin matches the integral of q over the bin (5 SE)."""
    a, b = 2.0, 2.0
    draws = torch.randn(200_000, generator=gen(0), dtype=DTYPE)
    z = draws + a * torch.tanh(b * draws)
    edges = torch.linspace(-6, 6, 25, dtype=DTYPE)
    # P(z in [e0, e1]) = Phi(g^-1(e1)) - Phi(g^-1(e0)), g increasing; g^-1 by bisection
    lo, hi = edges - a, edges + a
    for _ in range(70):
        mid = 0.5 * (lo + hi)
        below = mid + a * torch.tanh(b * mid) < edges
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    cdf = torch.distributions.Normal(0.0, 1.0).cdf(0.5 * (lo + hi))
    p = cdf[1:] - cdf[:-1]
    counts = torch.histc(z, bins=24, min=-6, max=6)
    share = counts / len(z)
    se = torch.sqrt(p * (1 - p) / len(z))
    assert ((share - p).abs() < 5 * se + 1e-12).all()


# --- the full-covariance Gaussian (eq. full-log-q, eq. full-cov-gradient) ---------------------------


@settings(max_examples=25, deadline=None, derandomize=True)
@given(d=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_full_covariance_log_q_from_the_noise(d, seed):
    g = gen(seed)
    mu = torch.randn(d, generator=g, dtype=DTYPE)
    L = random_scale_tril(d, g)
    eps = torch.randn(50, d, generator=g, dtype=DTYPE)
    z = mu + eps @ L.T
    log_q = log_std_normal(eps).sum(-1) - torch.log(torch.diagonal(L)).sum()
    mvn = torch.distributions.MultivariateNormal(mu, scale_tril=L)
    torch.testing.assert_close(log_q, mvn.log_prob(z), rtol=1e-11, atol=1e-10)
    # log|det L| = sum log L_ii: the determinant of a triangular matrix
    torch.testing.assert_close(torch.linalg.slogdet(L).logabsdet, torch.log(torch.diagonal(L)).sum(),
                               rtol=1e-12, atol=1e-12)


def test_diagonal_is_the_special_case_of_full_covariance():
    g = gen(3)
    mu, logvar = torch.randn(4, generator=g, dtype=DTYPE), torch.randn(4, generator=g, dtype=DTYPE)
    eps = torch.randn(20, 4, generator=g, dtype=DTYPE)
    L = torch.diag(torch.exp(0.5 * logvar))
    z_full = mu + eps @ L.T
    z_diag = vaelib.reparameterize(mu[None], logvar[None], 20, generator=gen(9))[:, 0]
    eps_diag = (z_diag - mu) / torch.exp(0.5 * logvar)
    torch.testing.assert_close(z_full, mu + torch.exp(0.5 * logvar) * eps, rtol=1e-14, atol=1e-14)
    mvn = torch.distributions.MultivariateNormal(mu, scale_tril=L)
    torch.testing.assert_close(mvn.log_prob(z_diag), vaelib.log_normal(z_diag, mu, logvar), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(log_std_normal(eps_diag).sum(-1) - 0.5 * logvar.sum(), mvn.log_prob(z_diag),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,seed", [(1, 0), (2, 1), (3, 2), (5, 3)])
def test_full_covariance_pathwise_gradient_unbiased(d, seed):
    """d/dmu E[exp(c.z)] = F c and d/dL_ij = F (c c^T L)_ij (i >= j), F = exp(c.mu + |L^T c|^2 / 2)."""
    g = gen(100 + seed)
    mu = 0.3 * torch.randn(d, generator=g, dtype=DTYPE)
    L = 0.5 * random_scale_tril(d, g)
    c = 0.4 * torch.randn(d, generator=g, dtype=DTYPE)
    S = 100_000
    mu_s = mu.expand(S, d).clone().requires_grad_(True)
    L_s = L.expand(S, d, d).clone().requires_grad_(True)
    eps = torch.randn(S, d, 1, generator=gen(seed), dtype=DTYPE)
    z = mu_s + (torch.tril(L_s) @ eps).squeeze(-1)
    torch.exp(z @ c).sum().backward()
    F = torch.exp(c @ mu + 0.5 * (L.T @ c).pow(2).sum())
    lower = torch.tril(torch.ones(d, d, dtype=torch.bool))
    for draws, truth, free in ((mu_s.grad, F * c, torch.ones(d, dtype=torch.bool)),
                               (L_s.grad, torch.tril(F * torch.outer(c, c) @ L), lower)):
        mean, se = draws.mean(0), draws.std(0) / math.sqrt(S)
        assert ((mean - truth).abs()[free] < 5 * se[free]).all()
    assert (L_s.grad[:, ~lower] == 0).all()


@settings(max_examples=20, deadline=None, derandomize=True)
@given(d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_entropy_of_the_reparameterised_gaussian(d, seed):
    """Exercise ex-ch5-entropy: H = d/2 log(2 pi e) + sum log L_ii, dH/dlog L_ii = 1."""
    g = gen(seed)
    below = torch.randn(d, d, generator=g, dtype=DTYPE)
    lam = (0.5 * torch.randn(d, generator=g, dtype=DTYPE)).requires_grad_(True)
    L = torch.tril(below, -1) + torch.diag(lam.exp())
    H = 0.5 * d * math.log(2 * math.pi * math.e) + torch.log(torch.diagonal(L)).sum()
    ref = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=DTYPE), scale_tril=L.detach()).entropy()
    torch.testing.assert_close(H.detach(), ref, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(H, lam)
    torch.testing.assert_close(grad, torch.ones(d, dtype=DTYPE), rtol=1e-14, atol=1e-14)


# --- the minibatch estimator of the data set's ELBO (eq. minibatch-elbo, prop-minibatch) --------------


@pytest.fixture(scope="module")
def small_problem():
    """A small double-precision VAE and 12 binary 'images' of 20 pixels."""
    x = (torch.rand(12, 20, generator=gen(0)) < 0.4).to(DTYPE)
    model = vaelib.VAE(x_dim=20, z_dim=3, hidden=(8,), seed=0).to(DTYPE)
    return model, x


def single_draw_elbos(model, x, n_draws, seed):
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = vaelib.reparameterize(mu, logvar, n_draws, generator=gen(seed))
        return model.log_px_z(x, z) - vaelib.gaussian_kl(mu, logvar)  # (n_draws, N)


@pytest.mark.parametrize("M", [1, 2, 3, 6, 12])
def test_minibatch_average_over_all_subsets_is_the_full_sum(small_problem, M):
    """With the noise fixed, averaging (N/M) sum_{n in B} over every M-subset B gives the full sum exactly:
    each image is in a uniform M-subset with probability M/N (the first step of the proof)."""
    model, x = small_problem
    per_image = single_draw_elbos(model, x, 1, seed=5)[0]  # (N,)
    N = len(per_image)
    subsets = list(itertools.combinations(range(N), M))
    average = sum(N / M * per_image[list(B)].sum() for B in subsets) / len(subsets)
    torch.testing.assert_close(average, per_image.sum(), rtol=1e-12, atol=1e-9)


def test_minibatch_estimator_unbiased_and_its_variance(small_problem):
    """Mean of many estimates = the data set's ELBO (5 SE); variance = eq. minibatch-variance (5 SE)."""
    model, x = small_problem
    N = x.shape[0]
    ref = single_draw_elbos(model, x, 20_000, seed=1)
    a_hat, v_hat = ref.mean(0), ref.var(0)
    target, se_ref = a_hat.sum().item(), math.sqrt(v_hat.sum().item() / ref.shape[0])
    R = 20_000
    table = single_draw_elbos(model, x, R, seed=2)
    orders = torch.rand(R, N, generator=gen(3)).argsort(1)
    for M in (1, 3, 6, 12):
        est = N / M * table.gather(1, orders[:, :M]).sum(1)
        se = est.std().item() / math.sqrt(R)
        assert abs(est.mean().item() - target) < 5 * math.hypot(se, se_ref), M
        theory = N**2 / M * (1 - M / N) * a_hat.var().item() + N / M * v_hat.sum().item()
        sq = (est - est.mean()) ** 2
        assert abs(sq.mean().item() - theory) < 5 * (sq.std().item() / math.sqrt(R)), M
    # At M = N only the noise of eps is left.
    est = table.sum(1)
    assert abs(est.var().item() - v_hat.sum().item()) < 0.05 * v_hat.sum().item()


def test_a_missing_n_over_m_is_caught(small_problem):
    """The unbiasedness check has power: the plain minibatch sum misses by a factor M/N."""
    model, x = small_problem
    N, M = x.shape[0], 3
    table = single_draw_elbos(model, x, 4000, seed=7)
    orders = torch.rand(4000, N, generator=gen(8)).argsort(1)
    wrong = table.gather(1, orders[:, :M]).sum(1)
    target = table.mean(0).sum().item()
    se = wrong.std().item() / math.sqrt(len(wrong))
    assert abs(wrong.mean().item() - target) > 100 * se


@pytest.mark.parametrize("N,M,epochs", [(40, 8, 3), (30, 30, 2)])
def test_fit_is_the_n_over_m_loop_on_the_per_image_scale(N, M, epochs):
    """vaelib.fit = the chapter's loop: elbo_hat = N/M * sum over the minibatch, loss = -elbo_hat / N."""
    x = (torch.rand(N, 16, generator=gen(N)) < 0.5).to(DTYPE)

    def model():
        return vaelib.VAE(x_dim=16, z_dim=2, hidden=(6,), seed=1).to(DTYPE)

    mine = model()
    optimizer = torch.optim.Adam(mine.parameters(), lr=3e-3)
    g = gen(4)
    per_image = []
    for _ in range(epochs):
        order = torch.randperm(N, generator=g)
        total = 0.0
        for start in range(0, N, M):
            terms = vaelib.elbo(mine, x[order[start : start + M]], generator=g)
            elbo_hat = N / M * terms.elbo.sum()
            optimizer.zero_grad()
            (-elbo_hat / N).backward()
            optimizer.step()
            total += terms.elbo.sum().item()
        per_image.append(total / N)
    ref = model()
    history = vaelib.fit(ref, x, epochs, batch_size=M, lr=3e-3, seed=4, progress=False)
    largest = max(p.abs().max().item() for p in ref.parameters())
    for p, q in zip(mine.parameters(), ref.parameters()):
        assert (p - q).abs().max().item() < 1e-10 * largest
    for a, b in zip(per_image, history.train_elbo):
        assert abs(a - b) < 1e-10 * abs(b)
